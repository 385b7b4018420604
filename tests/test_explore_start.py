"""`attnlab explore` starting up: a busy port is reported in one line before the model loads, and the slow
first start (the steering directions) shows progress."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from test_cli_errors import _fails
from test_explorer_browser import tiny_loaded

from attnlab.explorer.engine import Explorer


def test_busy_port_is_reported_before_the_model_loads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        line = _fails(capsys, ["explore", "--model", str(tmp_path / "no-model"), "--port", str(port),
                               "--no-browser"], f"cannot listen on 127.0.0.1:{port}", "pick another --port")
    assert "no-model" not in line  # the model was never looked at


def test_first_start_shows_progress_of_the_directions(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      one_thread: None) -> None:
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    lm = tiny_loaded()
    Explorer(lm, name="tiny-llama", progress=True)
    err = capsys.readouterr().err
    assert "explore: steering directions (first start only, then cached): step 1/8" in err
    assert "step 8/8 (100%)" in err
    Explorer(lm, name="tiny-llama", progress=True)  # cached now: nothing to show
    assert capsys.readouterr().err == ""
    Explorer(lm, name="tiny-llama-2")  # library use stays quiet unless asked
    assert capsys.readouterr().err == ""
