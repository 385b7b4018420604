"""`attnlab train` edge cases: resuming a finished run, changing lr on resume, a diverging run never saving
NaN weights, and configs too big for the machine refused before they start."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from attnlab.cli import main as cli_main
from attnlab.errors import ConfigError
from attnlab.models.gpt import GPTConfig
from attnlab.train import TrainConfig, memory, train

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "Tomorrow, and tomorrow, and tomorrow,\nCreeps in this petty pace from day to day,\n" * 10
SMALL = ["--layers", "1", "--d-model", "16", "--heads", "2", "--context", "8", "--batch-size", "2",
         "--eval-every", "0", "--log-every", "1"]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(TEXT)
    return path


def _snapshot(folder):
    return {p.relative_to(folder): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*")
            if p.is_file()}


def test_resume_of_a_finished_run_says_so_and_touches_nothing(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", *SMALL, "--steps", "2", "--warmup", "1", "--text", str(text_file),
                     "--out", str(out)]) == 0
    capsys.readouterr()
    before = _snapshot(out)
    assert cli_main(["train", "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr()
    assert f"the run in {out} is already complete (step 2/2); nothing to do" in printed.out
    assert f"attnlab train --out {out} --resume --steps 4" in printed.out
    assert "error" not in printed.err
    assert _snapshot(out) == before
    assert json.loads((out / "summary.json").read_text())["final_loss"] is not None


def test_resume_may_lower_lr_but_not_change_the_batch(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", *SMALL, "--steps", "2", "--warmup", "1", "--lr", "1e-2", "--text",
                     str(text_file), "--out", str(out)]) == 0
    assert cli_main(["train", "--out", str(out), "--resume", "--steps", "4", "--lr", "1e-4",
                     "--weight-decay", "0.5", "--grad-clip", "0.5"]) == 0
    assert "with steps 2 -> 4, lr 0.01 -> 0.0001" in capsys.readouterr().err
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = {m["step"]: m["lr"] for m in metrics if m["split"] == "train"}
    assert lrs[2] > 1e-3 and lrs[3] <= 1e-4  # the new peak from the resumed step on
    saved = json.loads((out / "checkpoint" / "train_config.json").read_text())
    assert saved["lr"] == 1e-4 and saved["weight_decay"] == 0.5 and saved["grad_clip"] == 0.5
    optimizer = torch.load(out / "checkpoint" / "optimizer.pt", weights_only=True)
    assert optimizer["param_groups"][0]["weight_decay"] == 0.5  # not the checkpoint's 0.1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["changed_on_resume"]["lr"] == [1e-2, 1e-4]
    assert cli_main(["train", "--out", str(out), "--resume", "--steps", "6", "--batch-size", "4"]) == 2
    assert "batch_size: checkpoint 2, now 4" in capsys.readouterr().err


def test_a_diverging_run_never_saves_nan_weights(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli_main(["train", *SMALL, "--steps", "3", "--warmup", "1", "--lr", "1e30", "--save-every", "1",
                     "--text", str(text_file), "--out", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("train: step")]
    assert code == 2 and len(err) == 1 and err[0].startswith("attnlab: error: "), err
    assert "training diverged at step 2: the " in err[0]
    assert f"the last good checkpoint is {out / 'checkpoint'} (step 1)" in err[0]
    assert f"attnlab train --out {out} --resume --lr 0.001" in err[0]  # not 1e+29, which diverges too
    weights = load_file(out / "checkpoint" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert json.loads((out / "checkpoint" / "trainer.json").read_text())["step"] == 1
    # Without any checkpoint yet, nothing is written at all, and the advice is not a --resume that fails.
    argv = ["train", *SMALL, "--steps", "2", "--warmup", "1", "--lr", "1e30", "--text", str(text_file),
            "--out", str(tmp_path / "none")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "no checkpoint had been saved yet" in err and "--resume" not in err
    assert "rerun the same attnlab train command with --overwrite --lr 0.001" in err
    assert not (tmp_path / "none" / "checkpoint").exists()
    assert cli_main([*argv, "--overwrite", "--lr", "0.001"]) == 0  # the advice works


def test_a_resume_that_diverges_at_once_is_not_called_the_last_good_checkpoint(text_file, tmp_path, capsys):
    # The checkpoint saved one step before a divergence is finite but already ruined (lr 1e30): resuming it
    # with a sane lr diverges at once. It is not "the last good checkpoint", and resuming is not the fix.
    out = tmp_path / "run"
    argv = ["train", *SMALL, "--steps", "3", "--warmup", "1", "--lr", "1e30", "--save-every", "1", "--text",
            str(text_file), "--out", str(out)]
    assert cli_main(argv) == 2
    capsys.readouterr()
    assert cli_main(["train", "--out", str(out), "--resume", "--lr", "0.001"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("attnlab: error: ")]
    assert len(err) == 1 and "training diverged at step 2" in err[0], err
    assert f"it diverged at the first step after resuming from {out / 'checkpoint'} (step 1)" in err[0]
    assert "last good checkpoint" not in err[0] and "--resume" not in err[0]
    assert "rerun the same attnlab train command with --overwrite --lr 0.0001" in err[0]
    assert cli_main([*argv, "--overwrite", "--lr", "0.0001"]) == 0  # the advice works


def test_an_lr_beyond_float32_is_one_line(text_file, tmp_path, capsys):
    assert cli_main(["train", *SMALL, "--steps", "2", "--lr", "1e39", "--text", str(text_file),
                     "--out", str(tmp_path / "r")]) == 2
    assert "TrainConfig.lr must be at most 1e38, got 1e+39" in capsys.readouterr().err


def test_a_config_too_big_for_memory_is_refused_before_it_starts(monkeypatch, tmp_path, capsys):
    tokens = torch.zeros(1_000_010, dtype=torch.long)
    config = TrainConfig(model=GPTConfig(vocab_size=256, context=1_000_000), steps=1, batch_size=1,
                         eval_every=0, device="cpu")
    monkeypatch.setattr(memory, "available_bytes", lambda device: (16e9, "RAM available"))
    expected = (r"training at --batch-size 1 x --context 1000000 needs about [\d.]+ GB of memory per process "
                r"\(activations [\d.]+ GB.*but only 16.0 GB is RAM available; lower --batch-size or "
                r"--context")
    with pytest.raises(ConfigError, match=expected):
        train(config, progress=False, data=(tokens, tokens[:0]))
    monkeypatch.undo()
    # Far beyond any machine: refused with the real figure from psutil, in one line, exit 2.
    assert cli_main(["train", "--batch-size", "100000000", "--steps", "1", "--warmup", "0",
                     "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "PB of memory per process" in err and "RAM available" in err
    assert not (tmp_path / "x" / "metrics.jsonl").exists()


def test_memory_estimate_counts_the_dense_attention_path():
    fused = memory.estimate_gpt_bytes(GPTConfig(normalizer="sinks", context=4096), 8, torch.device("cpu"))
    dense = memory.estimate_gpt_bytes(GPTConfig(normalizer="sinks", context=4096), 8, torch.device("cuda"))
    # 8 x 4 heads x 4096^2 floats x 3 x 4 layers on the eager path
    assert dense["attention"] == 8 * 4 * 4096 * 4096 * 3 * 4 * 4
    assert fused["attention"] < 1e-3 * dense["attention"]
    small = memory.estimate_gpt_bytes(GPTConfig(), 16, torch.device("cpu"))
    assert 50e6 < small["total"] < 1e9  # the default config fits anywhere


def test_train_warns_when_the_warmup_is_not_shorter_than_the_run(text_file, tmp_path, capsys):
    assert cli_main(["train", *SMALL, "--steps", "2", "--warmup", "5", "--text", str(text_file),
                     "--out", str(tmp_path / "w")]) == 0
    err = capsys.readouterr().err
    assert "--warmup 5 is not shorter than --steps 2" in err
