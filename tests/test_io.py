"""attnlab.io: atomic writes (permissions, failures), output-path checks before work, the cache folder."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from attnlab.errors import AttnlabError, ConfigError, DataError, OutputError
from attnlab.io import (
    atomic_folder,
    atomic_write_bytes,
    atomic_write_json,
    cache_dir,
    check_out_dir,
    check_out_file,
    read_file_capped,
    remove_stale_temps,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_respects_the_umask(tmp_path: Path, umask: int) -> None:
    before = os.umask(umask)
    try:
        written = atomic_write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(before)
    assert _mode(written) == 0o666 & ~umask
    assert written.read_text() == '{\n  "a": 1\n}\n'


def test_write_under_a_file_names_the_path(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("x")
    with pytest.raises(OutputError, match=f"cannot write {plain / 'r.json'}: {plain} is a file, not a "):
        atomic_write_bytes(plain / "r.json", b"data")
    with pytest.raises(OutputError, match=f"cannot write {plain / 'a' / 'r.json'} "
                                          r"\(Not a directory\); choose a writable location"):
        atomic_write_bytes(plain / "a" / "r.json", b"data")


def test_failed_write_is_an_oserror_and_leaves_no_temporary_file(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def full(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match=r"cannot write .*r\.json \(No space left on device\)") as info:
        atomic_write_bytes(tmp_path / "r.json", b"data")
    assert isinstance(info.value, AttnlabError)  # the CLI prints it as one line
    assert list(tmp_path.iterdir()) == []


def test_check_out_dir_creates_the_folder_and_leaves_it_empty(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    assert check_out_dir(out) == out
    assert out.is_dir() and list(out.iterdir()) == []


def test_check_out_dir_refuses_a_file_or_a_path_under_one(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("x")
    with pytest.raises(OutputError, match=f"--out {plain} is a file; pass a folder"):
        check_out_dir(plain)
    with pytest.raises(OutputError, match=f"cannot create the --out folder {plain / 'sub'} "
                                          r"\(Not a directory\)"):
        check_out_dir(plain / "sub")


def test_check_out_dir_proves_the_folder_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests may run as root, for whom a read-only folder is writable: refuse the probe file instead.
    def read_only(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OutputError, match=f"cannot write in the --out folder {tmp_path} "
                                          r"\(Permission denied\); pass a writable folder"):
        check_out_dir(tmp_path)


def test_check_out_file(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=f"--plot {tmp_path} is a folder; pass a file name"):
        check_out_file(tmp_path, flag="--plot")
    (tmp_path / "plain").write_text("x")
    with pytest.raises(OutputError, match="plain is a file, not a folder"):
        check_out_file(tmp_path / "plain" / "r.json")
    target = tmp_path / "new" / "r.json"
    assert check_out_file(target) == target
    assert target.parent.is_dir() and not target.exists()


def test_cache_dir_that_is_a_file_says_which_variable(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tmp_path / "plain"
    plain.write_text("x")
    monkeypatch.setenv("ATTNLAB_CACHE", str(plain))
    with pytest.raises(OutputError, match=f"ATTNLAB_CACHE={plain} is a file, not a folder; point "
                                          "ATTNLAB_CACHE at a writable folder"):
        cache_dir()
    monkeypatch.setenv("ATTNLAB_CACHE", str(plain / "sub"))
    with pytest.raises(OutputError, match=f"cannot create ATTNLAB_CACHE={plain / 'sub'} "
                                          r"\(Not a directory\)"):
        cache_dir()
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache" and (tmp_path / "cache").is_dir()


def test_atomic_folder_swaps_in_only_a_finished_folder(tmp_path):
    from attnlab.io import atomic_folder

    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="crash"), atomic_folder(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("crash mid-save")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp sibling left behind
    assert (target / "old.txt").exists() and not (target / "half.txt").exists()
    with atomic_folder(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]


def test_atomic_folder_keeps_a_complete_folder_written_first(tmp_path):
    from attnlab.io import atomic_folder

    target = tmp_path / "converted"
    with atomic_folder(target, complete=lambda f: (f / "done").exists()) as tmp:
        (tmp / "done").write_text("first")
        (target).mkdir()  # another process finished the same conversion meanwhile
        (target / "done").write_text("other")
    assert (target / "done").read_text() == "other"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"]


def test_atomic_folder_interrupted_at_the_swap_keeps_the_previous_copy(tmp_path, monkeypatch):
    # A Ctrl-C between moving the old copy aside and renaming the new one in must not lose both.
    import attnlab.io as io_mod

    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    real_replace = os.replace
    calls = []

    def interrupted(src, dst):
        calls.append(Path(src).name)
        if Path(dst) == target and len(calls) == 2:  # the new copy's rename, after the old one moved aside
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(io_mod.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt), io_mod.atomic_folder(target) as tmp:
        (tmp / "new.txt").write_text("new")
    monkeypatch.setattr(io_mod.os, "replace", real_replace)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]


def test_atomic_folder_leftover_previous_copy_is_removed_by_the_next_write(tmp_path, monkeypatch):
    # Killed while deleting the previous copy: the new one is in place, the leftover goes with the next write.
    import attnlab.io as io_mod

    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    monkeypatch.setattr(io_mod.shutil, "rmtree", lambda *a, **k: None)
    with io_mod.atomic_folder(target) as tmp:
        (tmp / "new.txt").write_text("new")
    monkeypatch.undo()
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert len(list(tmp_path.iterdir())) == 2  # the unremoved previous copy, under a temporary's name
    with io_mod.atomic_folder(target) as tmp:
        (tmp / "newer.txt").write_text("newer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert sorted(p.name for p in target.iterdir()) == ["newer.txt"]


def test_atomic_folder_unwritable_parent_is_one_line(tmp_path):
    from attnlab.errors import OutputError
    from attnlab.io import atomic_folder

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write in .*set X"), \
            atomic_folder(blocker / "sub", fix="set X"):
        pass


def test_read_file_capped_reads_only_a_regular_file_within_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"12345")
    assert read_file_capped(path, "text", 5) == b"12345"
    with pytest.raises(DataError, match=r"text .*a\.txt is over the .* MiB limit for a file read whole"):
        read_file_capped(path, "text", 4)
    with pytest.raises(ConfigError, match=r"config file /dev/null is a character device, not a regular file"):
        read_file_capped("/dev/null", "config file", 10, ConfigError)
    with pytest.raises(DataError, match=r"cannot read text .*missing\.txt \(No such file or directory\)"):
        read_file_capped(tmp_path / "missing.txt", "text", 10)


# -- leftovers of killed writes --------------------------------------------------------------------------
_KILLED_WRITE = """
import os, signal, sys
from pathlib import Path
from attnlab import io

target, kind = Path(sys.argv[1]), sys.argv[2]
if kind == "file":
    real = os.fsync
    os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # dies mid-write, the temporary on disk
    io.atomic_write_text(target, "x" * 100_000)
else:
    with io.atomic_folder(target) as tmp:
        (tmp / "model.safetensors").write_bytes(b"x" * 100_000)
        os.kill(os.getpid(), signal.SIGKILL)  # a conversion killed before its rename
"""


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_the_next_write_removes_what_a_killed_write_left(tmp_path: Path, kind: str) -> None:
    target = tmp_path / ("report.json" if kind == "file" else "smollm2-135m")
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITE, str(target), kind], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == -9, done.stderr[-2000:]
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".{target.name}."), left  # what the kill leaves
    if kind == "file":
        atomic_write_json(target, {"ok": True})
    else:
        with atomic_folder(target) as tmp:
            (tmp / "marker").write_text("done")
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_live_writer_keeps_its_temporary(tmp_path: Path) -> None:
    # The cleanup takes only temporaries whose writer is gone: one being written now is left alone.
    target = tmp_path / "model"
    with atomic_folder(target) as tmp:
        (tmp / "weights").write_text("half")
        remove_stale_temps(tmp_path, "model", folders=True)
        assert tmp.is_dir() and (tmp / "weights").read_text() == "half"
    assert (target / "weights").is_file() and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_cache_folder_that_refuses_writes_says_which_variable(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # chmod does not stop root, who may run the tests: refuse the probe as a read-only folder would.
    folder = tmp_path / "ro"
    folder.mkdir()

    def read_only(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setenv("ATTNLAB_CACHE", str(folder))
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OutputError, match=f"cannot write in ATTNLAB_CACHE={folder} \\(Permission denied\\); "
                                          "point ATTNLAB_CACHE at a writable folder \\(or unset it\\)"):
        cache_dir()


def test_a_full_disk_in_atomic_folder_is_one_line_and_keeps_the_old_copy(tmp_path: Path) -> None:
    # safetensors reports a full disk as its own error type, "... os error 28", not as an OSError.
    class SafetensorError(Exception):
        pass

    target = tmp_path / "model"
    with atomic_folder(target) as tmp:
        (tmp / "weights").write_text("old")
    with pytest.raises(OutputError, match=r"cannot write .*model \(no space left on device\) \(the previous "
                                          r"copy is kept\); free some space"):
        with atomic_folder(target) as tmp:
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                                  "message: \"No space left on device\" }) os error 28")
    assert (target / "weights").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["model"]
