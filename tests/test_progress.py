"""The one progress module: plain lines in a log, a bar on a terminal, a bar (not 17 plain lines) in a
Jupyter kernel, and tqdm's counting habit for the studies' loops."""

from __future__ import annotations

import io
import sys
import types

import pytest

from attnlab.train.progress import Progress, counter, in_notebook


class _Kernel:
    kernel = object()  # what an IPython shell inside a Jupyter kernel has


@pytest.fixture
def fake_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: _Kernel()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)


def test_log_gets_plain_lines() -> None:
    log = io.StringIO()
    p = Progress(20, desc="train", stream=log)
    for step in range(1, 21):
        p.update(step, loss=1.0)
    p.close()
    lines = log.getvalue().splitlines()
    assert p.bar is None and "\r" not in log.getvalue()
    assert lines[0].startswith("train: step 1/20 (5%) loss 1.0000")
    assert lines[-1].startswith("train: step 20/20")
    assert 2 < len(lines) <= 12  # step 1, every 10%, the end


def test_notebook_kernel_gets_a_bar_not_lines(fake_kernel: None, capsys: pytest.CaptureFixture) -> None:
    assert in_notebook()  # and stderr (pytest's capture, like a kernel's) is not a terminal
    p = Progress(17, desc="report")
    assert p.notebook and p.bar is not None
    for step in range(1, 18):
        p.update(step)
    p.close()
    out = capsys.readouterr().err
    assert "step 1/17" not in out  # no plain lines
    assert "report" in out and "17/17" in out  # the (text) bar, redrawn in place with carriage returns


def test_outside_a_kernel_is_not_a_notebook(monkeypatch: pytest.MonkeyPatch) -> None:
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: None  # type: ignore[attr-defined]  # IPython imported, no shell
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    assert not in_notebook()
    monkeypatch.delitem(sys.modules, "IPython")
    assert not in_notebook()


def test_counter_counts_like_tqdm(capsys: pytest.CaptureFixture) -> None:
    bar = counter(4, "probe x")
    for _ in range(4):
        bar.update()
    bar.close()
    assert bar.n == 4 and capsys.readouterr().err.splitlines()[-1].startswith("probe x: step 4/4 (100%)")
    off = counter(4, "off", enabled=False)
    off.update(4)
    off.close()
    assert capsys.readouterr().err == ""


def test_studies_progress_goes_through_the_progress_module() -> None:
    from attnlab.experiments.common import progress_bar

    bar = progress_bar(3, "study", enabled=False)
    assert type(bar).__module__ == "attnlab.train.progress"
