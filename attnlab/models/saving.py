"""`LoadedModel.save_pretrained(dir)`: the model and its tokenizer in one folder that `attnlab.load_model`
(and, for a Hugging Face model, plain transformers) reads back, tokenizer included."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from attnlab.errors import OutputError


def save_loaded(lm: Any, directory: str | os.PathLike) -> Path:
    """Write `lm.model` (HF `save_pretrained`, or `GPT.save`) and `lm.tokenizer` into `directory`."""
    folder = Path(directory).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot save the model into {folder}: it is a file; pass a folder")
    folder.mkdir(parents=True, exist_ok=True)
    if lm.kind == "hf":
        lm.model.save_pretrained(str(folder))
    else:
        lm.model.save(folder)
    if lm.tokenizer is not None:
        lm.tokenizer.save_pretrained(folder)
    return folder


__all__ = ["save_loaded"]
