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
    follow_umask(folder)
    return folder


def follow_umask(folder: Path) -> None:
    """Give the weight files transformers just saved the mode any other file gets (0666 less the umask):
    `save_pretrained` writes them through a private temporary file, so they come out 0600 beside 0644
    config and tokenizer files, unreadable to the group that can read the rest of the folder."""
    from attnlab.io import _umask

    mode = 0o666 & ~_umask()
    for file in [*folder.glob("*.safetensors"), *folder.glob("*.safetensors.index.json"),
                 *folder.glob("pytorch_model*.bin")]:
        private = (file.stat().st_mode & 0o777) == 0o600  # only what the temporary file left; keep the rest
        if file.is_file() and not file.is_symlink() and private:
            file.chmod(mode)


__all__ = ["follow_umask", "save_loaded"]
