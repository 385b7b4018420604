"""Atomic writes, the cache folder, and the provenance stamped into every result file."""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock, so killed writes' temporaries are left alone
    fcntl = None  # type: ignore[assignment]

from attnlab.errors import AttnlabError, ConfigError, DataError, OutputError


def cache_dir() -> Path:
    """attnlab's cache: $ATTNLAB_CACHE, else ~/.cache/attnlab. Created on first use."""
    env = os.environ.get("ATTNLAB_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "attnlab"
    fix = "point ATTNLAB_CACHE at a writable folder" + (" (or unset it)" if env else "")
    where = f"ATTNLAB_CACHE={env}" if env else f"the cache folder {path}"
    if path.exists() and not path.is_dir():
        raise OutputError(f"{where} is a file, not a folder; {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)  # every call: a cache deleted mid-process comes back
    except OSError as exc:
        raise OutputError(f"cannot create {where} ({_reason(exc)}); {fix}") from exc
    if path not in _WRITABLE_CACHES:
        # An existing folder may still refuse writes (read-only, another user's): say so here, once, rather
        # than as a bare errno from whichever write comes first.
        _ensure_writable(path, where, fix)
        _WRITABLE_CACHES.add(path)
    return path


_WRITABLE_CACHES: set[Path] = set()  # cache folders proven writable in this process


def reject_empty(value: str | Path | None, flag: str = "--out", what: str = "") -> None:
    """An empty flag value is a mistake (a shell variable that was never set), not "here": Path("") is
    the current folder, so refuse it before it becomes one. `what`: what to pass instead."""
    if isinstance(value, str) and not value.strip():
        what = what or (f"a folder, e.g. {flag} runs/x" if flag == "--out" else "a path")
        raise ConfigError(f"{flag} is empty; pass {what} (or leave the flag out for the default)")


def check_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """Create the output folder `path` (or find it) and prove it writable by creating and removing a
    temporary file, so a bad `--out` fails before the work, not after it. Returns the path."""
    reject_empty(path, flag)
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file; pass a folder (it is created if missing)")
    _ensure_writable(path, f"the {flag} folder {path}", "pass a writable folder")
    return path


def check_out_file(path: str | Path, flag: str = "--out") -> Path:
    """`check_out_dir` for an output file: its folder must be writable and the path not a folder."""
    reject_empty(path, flag)
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; pass a file name, e.g. {path / 'results.json'}")
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{flag} {path}: {folder} is a file, not a folder; pass a path in a folder")
    _ensure_writable(folder, f"{folder} (the folder of {flag} {path})", "pass a writable path")
    return path


def _ensure_writable(folder: Path, label: str, fix: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {label} ({_reason(exc)}); {fix}") from exc
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".attnlab-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write in {label} ({_reason(exc)}); {fix}") from exc


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _not_regular(mode: int) -> str | None:
    """What a stat mode is when it is not a regular file ("a folder", "a socket", ...), else None."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def read_file_capped(path: str | Path, what: str, limit: int,
                     error: type[AttnlabError] = DataError) -> bytes:
    """The bytes of the regular file `path`, read whole; `error` naming `what` (e.g. "text") for anything
    else: a device (/dev/zero never ends), a FIFO or socket (a read waits forever), a folder, or a file over
    `limit` bytes. The FIFO is opened non-blocking and everything is checked on the open descriptor, so a
    path swapped between the check and the read cannot get past it."""
    path = Path(path).expanduser()
    try:
        kind = _not_regular(os.stat(path).st_mode)
        if kind is None:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as fh:
                info = os.fstat(fh.fileno())
                kind = _not_regular(info.st_mode)
                if kind is None and info.st_size <= limit:
                    data = fh.read(limit + 1)
                    if len(data) <= limit:
                        return data
    except OSError as exc:
        raise error(f"cannot read {what} {path} ({_reason(exc)}); pass a readable file") from exc
    if kind is not None:
        raise error(f"{what} {path} is {kind}, not a regular file; pass a file (copy the data into one)")
    raise error(f"{what} {path} is over the {limit / 2**20:g} MiB limit for a file read whole; pass a "
                f"smaller file (e.g. the first part: head -c 100M {path} > part.txt)")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename: a reader never sees half a file.

    The file gets the mode any other tool would give it (0666 less the umask), not mkstemp's private 0600.
    An OSError becomes `OutputError`, naming the file.
    """
    path = Path(path)
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: {path.parent} is a file, not a folder; choose another "
                          f"location")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent, path.name, folders=False)
        while True:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            if _claim(fd):
                break
            os.close(fd)  # another run's cleanup took it between mkstemp and the lock: make another
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({_reason(exc)}); choose a writable location") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            os.chmod(tmp, 0o666 & ~_umask())
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            os.replace(tmp, path)  # while the lock is held: a cleanup never takes a finished temporary
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(f"cannot write {path} ({_reason(exc)}); choose a writable location with "
                              f"free space") from exc
        raise
    return path


@contextmanager
def atomic_folder(folder: str | Path, *, complete: Callable[[Path], bool] | None = None,
                  fix: str = "choose a writable location") -> Iterator[Path]:
    """Yield a temporary sibling of `folder` to write into; on success it replaces `folder` with one rename,
    so a reader never sees half a folder (a model save, a converted model). On any error it is removed.

    complete: an existing `folder` that passes it is kept and the new copy dropped (another process wrote
    the same thing first); an incomplete one is replaced. OSError opening the sibling is an OutputError.
    """
    folder = Path(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(folder.parent, folder.name, folders=True)
        while True:
            tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
            lock = os.open(tmp, os.O_RDONLY)
            if _claim(lock):
                break
            os.close(lock)
        private_dir_to_umask(tmp)  # mkdtemp makes it private; a saved model is a plain readable folder
    except OSError as exc:
        raise OutputError(f"cannot write in {folder.parent} ({_reason(exc)}); {fix}") from exc
    aside: Path | None = None
    aside_lock: int | None = None
    try:
        yield tmp
        if folder.exists() and complete is not None and complete(folder):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if folder.exists():
            # The previous copy is moved aside, not deleted, until the new one carries the name: an interrupt
            # between the two renames puts it back (below). Locked, so no other writer's cleanup of killed
            # temporaries takes it meanwhile; unlocked, a leftover is such a temporary.
            aside_lock = os.open(folder, os.O_RDONLY)
            _claim(aside_lock)
            aside = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}")
            os.replace(folder, aside)
        try:
            os.replace(tmp, folder)
        except OSError:
            if complete is None or not complete(folder):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent writer finished between the check and here
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException as exc:
        if aside is not None and aside.exists() and not folder.exists():
            os.replace(aside, folder)
        shutil.rmtree(tmp, ignore_errors=True)
        reason = write_failure(exc)
        if reason is not None and not isinstance(exc, OutputError):
            kept = " (the previous copy is kept)" if folder.exists() else ""
            raise OutputError(f"cannot write {folder} ({reason}){kept}; free some space or "
                              f"{fix}") from exc
        raise
    finally:
        os.close(lock)
        if aside_lock is not None:
            os.close(aside_lock)


# -- leftovers of killed writes -----------------------------------------------------------------------------
# A write in progress holds an exclusive flock on its temporary file (or folder) until it is renamed into
# place or removed; a temporary whose lock can be taken belongs to a writer that was killed, and the next
# write of the same name removes it (a killed report write left `.report.json.*.tmp`, a killed SmolLM2
# conversion a 213 MB `.smollm2-135m.*` folder). Where flock does not exist nothing is removed.


def _claim(fd: int) -> bool:
    """Lock a new temporary for this writer; False if a cleanup removed it first (its link count is 0)."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)
    return os.fstat(fd).st_nlink > 0


def remove_stale_temps(folder: Path, name: str, *, folders: bool) -> None:
    """Remove the temporaries of killed writes of `folder/name`: `.NAME.XXXXXXXX.tmp` files (atomic_write_*)
    or `.NAME.XXXXXXXX` folders (atomic_folder) that no live writer holds."""
    if fcntl is None:
        return
    pattern = re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}" + ("" if folders else r"\.tmp"))
    try:
        entries = [e for e in os.scandir(folder) if pattern.fullmatch(e.name)]
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False) != folders:
                continue
            fd = os.open(entry.path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live writer holds it
            os.close(fd)
            continue
        try:  # removed while locked: a writer that has just made it sees a link count of 0 and retries
            if folders:
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:
            pass
        finally:
            os.close(fd)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


_FULL_DISK = ("No space left on device", "os error 28", "unexpected pos", "Disk quota exceeded")


def write_failure(exc: BaseException) -> str | None:
    """Why a write failed, when it is the disk's fault (full, over quota, or an I/O error), else None.
    Writers below attnlab do not all raise OSError: torch.save reports a full disk as RuntimeError
    ("PytorchStreamWriter failed writing file ...: unexpected pos ..."), safetensors as its own error
    ("... os error 28")."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG):
        return _reason(exc)
    text = str(exc)
    if isinstance(exc, OSError | RuntimeError) or type(exc).__name__ == "SafetensorError":
        if any(marker in text for marker in _FULL_DISK):
            return "no space left on device"
    return None


def private_dir_to_umask(path: Path) -> None:
    """mkdtemp makes a folder 0700; one that will be renamed into a result gets the usual 0777 less the
    umask, as mkdir would have given it."""
    path.chmod(0o777 & ~_umask())


def _umask() -> int:
    """The process umask. Read from /proc where it exists, because setting and restoring it (the only
    portable way) briefly changes it for every thread."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, *, strict: bool = False) -> Path:
    """`obj` as JSON. strict: a non-finite float is written as null (JSON has no NaN; most readers other than
    Python's refuse the bare `NaN` it would otherwise write); the writer says why next to it."""
    if strict:
        obj = finite_or_null(json.loads(json.dumps(obj, default=_json_default)))
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default,
                                              allow_nan=not strict) + "\n")


def finite_or_null(obj: Any) -> Any:
    """A copy of decoded JSON with every NaN or infinite float replaced by None."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_or_null(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def versions() -> dict[str, str]:
    """Library versions that decide the numbers in a result file."""
    import torch

    from attnlab._version import __version__

    out = {"attnlab": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
           "platform": platform.platform()}
    for name in ("transformers", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    commit = _git_commit()
    if commit:
        out["git_commit"] = commit
    return out


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        res = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
        return res.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(config: Any = None, seed: int | None = None) -> dict[str, Any]:
    """The block every result file carries: config, seed, versions, and when it was made."""
    from dataclasses import asdict, is_dataclass

    if is_dataclass(config) and not isinstance(config, type):
        config = asdict(config)
    return {"config": config, "seed": seed, "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
