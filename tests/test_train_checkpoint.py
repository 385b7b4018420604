"""Checkpoints survive a kill at every point of a save, and unreadable checkpoint files fail in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

from attnlab.cli import main as cli_main
from attnlab.train import TrainConfig, train
from attnlab.train import checkpoint as ck
from attnlab.train.fit import make_adamw

pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(BaseException):
    """A simulated SIGKILL: not an Exception, so no cleanup handler of the save runs."""


def _model_and_optimizer(step: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(step))  # the weights say which step they belong to
    opt = make_adamw(model, 1e-3)
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    return model, opt


def _save(out, step):
    model, opt = _model_and_optimizer(step)
    return ck.save_checkpoint(out, model, opt, step, files={"meta.json": {"step": step}})


def _weights_step(folder) -> float:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    ck.load_model_weights(model, folder)
    return float(model[1].bias.detach()[0])  # fill_(step) then one AdamW step moves it by ~1e-3


def _assert_single_good_checkpoint(out, step):
    folder = ck.recover_checkpoint(out)
    assert folder == out / ck.CHECKPOINT and ck.checkpoint_step(folder) == step
    leftovers = [p.name for p in out.iterdir() if p.name != ck.CHECKPOINT]
    assert leftovers == []
    assert abs(_weights_step(folder) - step) < 0.01
    assert ck.load_state_file(folder)["step"] == step
    _, opt = _model_and_optimizer(0)
    ck.load_optimizer_state(folder, opt, torch.device("cpu"))


@pytest.mark.parametrize("start", ["checkpoint", "old_only"])
def test_a_kill_at_every_point_of_a_save_leaves_a_complete_checkpoint(tmp_path, monkeypatch, start):
    """Kill the save of step 2 at its k-th filesystem operation, for every k. `old_only` starts from what a
    kill between the two renames of an earlier save leaves: .checkpoint.old and no checkpoint/."""
    real = {"replace": os.replace, "rmtree": shutil.rmtree, "save": torch.save}
    promoted_a_tmp = False
    k = 0
    while True:
        out = tmp_path / f"k{k}"
        out.mkdir()
        _save(out, 1)
        if start == "old_only":
            os.replace(out / ck.CHECKPOINT, out / ck.OLD)
        calls = {"n": 0}

        def counted(name, calls=calls, k=k):
            def op(*args, **kwargs):
                calls["n"] += 1
                if calls["n"] > k:
                    raise Killed
                return real[name](*args, **kwargs)
            return op

        monkeypatch.setattr(os, "replace", counted("replace"))
        monkeypatch.setattr(shutil, "rmtree", counted("rmtree"))
        monkeypatch.setattr(torch, "save", counted("save"))
        try:
            _save(out, 2)
            finished = True
        except Killed:
            finished = False
        finally:
            monkeypatch.undo()
        found = ck.find_checkpoint(out)
        assert found is not None, f"no complete checkpoint after a kill at operation {k}"
        step = ck.checkpoint_step(found)
        assert step in (1, 2), k
        promoted_a_tmp |= found.name.startswith(ck.TMP_PREFIX)
        _assert_single_good_checkpoint(out, step)
        _save(out, 3)  # the run goes on from there
        _assert_single_good_checkpoint(out, 3)
        if finished:
            assert step == 2
            break
        k += 1
    assert k >= 5 and promoted_a_tmp  # every operation was hit, including "tmp complete, not yet renamed"


def test_each_intermediate_state_is_recovered(tmp_path):
    def state(name, **folders):
        out = tmp_path / name
        out.mkdir()
        for target, step in folders.items():
            source = tmp_path / f"{name}-{target}"
            source.mkdir()
            src = _save(source, step)
            dest = {"ckpt": ck.CHECKPOINT, "old": ck.OLD, "tmp": ck.TMP_PREFIX + "abc"}[target]
            os.replace(src, out / dest)
        return out

    # a complete tmp beside an older checkpoint (killed before the first rename): the tmp wins
    out = state("a", ckpt=1, tmp=2)
    assert ck.find_checkpoint(out).name == ck.TMP_PREFIX + "abc"
    _assert_single_good_checkpoint(out, 2)
    # killed between the renames: the tmp and .old, no checkpoint/
    _assert_single_good_checkpoint(state("b", old=1, tmp=2), 2)
    # killed before .old was discarded
    _assert_single_good_checkpoint(state("c", ckpt=2, old=1), 2)
    # an incomplete tmp (no marker yet) and a half-deleted folder in the trash are dropped
    out = state("d", ckpt=1, tmp=2)
    (out / (ck.TMP_PREFIX + "abc") / ck.MARKER).unlink()
    (out / (ck.TRASH_PREFIX + "x")).mkdir()
    _assert_single_good_checkpoint(out, 1)
    # checkpoint/ missing a listed file: .old is the last good one
    out = state("e", ckpt=2, old=1)
    (out / ck.CHECKPOINT / ck.OPTIMIZER_FILE).unlink()
    assert ck.find_checkpoint(out) == out / ck.OLD
    _assert_single_good_checkpoint(out, 1)


# ---------------------------------------------------------------- unreadable files of a real run
TEXT = "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n" * 10


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    text = base / "t.txt"
    text.write_text(TEXT)
    from attnlab.models.gpt import GPTConfig

    config = TrainConfig(model=GPTConfig(n_layers=1, d_model=16, n_heads=2, context=8), steps=2, batch_size=2,
                         warmup=1, eval_every=0, log_every=1, text=str(text), out=str(base / "run"))
    train(config, progress=False)
    return base / "run"


@pytest.mark.parametrize(("name", "garbage"), [
    (ck.OPTIMIZER_FILE, b"not a torch file"),
    (ck.STATE_FILE, b"PK\x03\x04 truncated zip"),
    (ck.TRAIN_CONFIG_FILE, b'{"steps": 2, "batch_'),
    ("model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage}"),
])
def test_a_corrupt_checkpoint_file_fails_in_one_line(finished_run, tmp_path, capsys, name, garbage):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / ck.CHECKPOINT / name).write_bytes(garbage)
    assert cli_main(["train", "--out", str(out), "--resume", "--steps", "3"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("attnlab: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert f"checkpoint file {out / ck.CHECKPOINT / name} is unreadable" in errors[0]
    assert errors[0].endswith("restore the file or start the run over with --overwrite")


# -- a full disk, the umask ---------------------------------------------------------------------------------
TINY = ["--layers", "1", "--d-model", "16", "--heads", "2", "--context", "8", "--batch-size", "2",
        "--eval-every", "0", "--warmup", "0", "--save-every", "1"]


def _tiny_text(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("Tomorrow, and tomorrow, and tomorrow, creeps in this petty pace.\n" * 10)
    return path


def _one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("train: step")]
    assert len(err) == 1 and err[0].startswith("attnlab: error: ") and "Traceback" not in err[0], err
    return err[0]


def test_a_full_disk_in_train_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    # torch.save reports a full disk as this RuntimeError (inline_container.cc), not as an OSError.
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) > 2:  # the first checkpoint (optimizer.pt, state.pt) fits; the second does not
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 66624 vs 66512")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "run"
    argv = ["train", *TINY, "--steps", "3", "--text", str(_tiny_text(tmp_path)), "--out", str(out)]
    assert cli_main(argv) == 2
    line = _one_error_line(capsys)
    assert f"cannot save the step-2 checkpoint in {out} (no space left on device)" in line
    assert f"the last good checkpoint, {out / 'checkpoint'} (step 1), is kept" in line
    assert ck.checkpoint_step(out / "checkpoint") == 1
    assert not list(out.glob(".checkpoint.*"))  # the failed copy is gone, not left to fill the disk


def test_a_real_full_disk_in_train(tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    # 200 KiB: the first checkpoint (~125 KiB) fits, a second next to it does not. Needs root (CI may skip).
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)],
                                           capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (the injected test above covers the message)")
    try:
        out = disk / "run"
        argv = ["train", *TINY, "--steps", "3", "--text", str(_tiny_text(tmp_path)), "--out", str(out)]
        assert cli_main(argv) == 2
        line = _one_error_line(capsys)
        assert "cannot save the step-2 checkpoint" in line and "(step 1), is kept" in line, line
        assert ck.checkpoint_step(out / "checkpoint") == 1
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_checkpoint_folders_follow_the_umask(tmp_path, umask):
    before = os.umask(umask)
    try:
        (tmp_path / "run").mkdir()
        folder = _save(tmp_path / "run", 1)
    finally:
        os.umask(before)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask  # was 0700 (mkdtemp's) whatever the umask


# -- kill -9 in the final save: the next --resume finishes the run's records ---------------------------------
_KILL_IN_FINAL_SAVE = """
import os, signal, sys
from pathlib import Path
from attnlab.train import checkpoint as ck

real = ck._discard

def discard(path):
    # The final save moved the previous checkpoint aside; die while discarding it ({where}).
    if path.name == ck.OLD and ck.checkpoint_step(path.parent / ck.CHECKPOINT) == {steps}:
        if "{where}" == "after the rename":
            os.replace(path, path.with_name(ck.TRASH_PREFIX + "killed"))
        os.kill(os.getpid(), signal.SIGKILL)
    real(path)

ck._discard = discard
from attnlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("where", ["before the rename", "after the rename"])
def test_resume_after_a_kill_in_the_final_save_finishes_the_records(tmp_path, capsys, where):
    out = tmp_path / "run"
    argv = ["train", *TINY, "--steps", "2", "--text", str(_tiny_text(tmp_path)), "--out", str(out)]
    script = _KILL_IN_FINAL_SAVE.replace("{steps}", "2").replace("{where}", where)
    killed = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    leftovers = sorted(p.name for p in out.glob(".checkpoint.*"))
    assert leftovers and not (out / "summary.json").exists()  # what the kill leaves: a full stale copy
    assert cli_main(["train", "--out", str(out), "--resume"]) == 0
    assert "is already complete (step 2/2)" in capsys.readouterr().out
    assert not list(out.glob(".checkpoint.*")) and ck.checkpoint_step(out / "checkpoint") == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["final_loss"] is not None
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert cli_main(["train", "--out", str(out), "--resume"]) == 0  # a finished run: nothing touched now
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_metrics_log_moved_and_still_importable_from_checkpoint() -> None:
    from pathlib import Path

    from attnlab.train import checkpoint, metrics_log

    assert checkpoint.MetricsLog is metrics_log.MetricsLog and checkpoint.METRICS == "metrics.jsonl"
    assert "class MetricsLog" not in Path(checkpoint.__file__).read_text(encoding="utf-8")  # one definition
