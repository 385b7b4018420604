"""Training: exact resume after a kill, Ctrl-C, metrics without duplicates, the CLI, bad input. Tiny runs."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from attnlab.cli import main as cli_main
from attnlab.errors import ConfigError, DataError, OutputError
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.train import TrainConfig, train
from attnlab.train.loop import lr_at

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n") * 6


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT)
    return path


def cfg(text_file, out=None, **kw) -> TrainConfig:
    model = GPTConfig(n_layers=2, d_model=32, n_heads=4, context=16, **kw.pop("model", {}))
    base = dict(model=model, steps=6, batch_size=4, lr=3e-3, warmup=2, eval_every=3, eval_batches=2,
                log_every=1, save_every=3, text=str(text_file), out=None if out is None else str(out))
    base.update(kw)
    return TrainConfig(**base)


class Crash(Exception):
    pass


def _losses(metrics):
    return [(r["step"], r["loss"]) for r in metrics if r["split"] == "train"]


def test_resume_after_kill_matches_uninterrupted_run(text_file, tmp_path):
    model = {"normalizer": "sinks", "dropout": 0.1}
    straight = train(cfg(text_file, tmp_path / "a", model=model), progress=False)

    def crash_at_5(step, record):
        if step == 5:  # dies after step 5; the last checkpoint is step 3
            raise Crash

    with pytest.raises(Crash):
        train(cfg(text_file, tmp_path / "b", model=model), progress=False, callback=crash_at_5)
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert max(json.loads(line)["step"] for line in lines) == 5  # steps 4, 5 were logged, then lost
    resumed = train(cfg(text_file, tmp_path / "b", model=model, resume=True), progress=False)
    assert resumed["resumed_from"] == 3 and resumed["step"] == 6
    on_disk = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in on_disk if r["split"] == "train"]
    assert steps == sorted(set(steps)) == [1, 2, 3, 4, 5, 6]  # no duplicated lines
    assert _losses(on_disk) == _losses(straight["metrics"])  # bitwise: same data, optimizer, RNG
    a = GPT.from_pretrained(tmp_path / "a" / "checkpoint")
    b = GPT.from_pretrained(tmp_path / "b" / "checkpoint")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert straight["val_loss"] == resumed["val_loss"]


def test_ctrl_c_saves_and_resumes(text_file, tmp_path):
    def interrupt_at_2(step, record):
        if step == 2:
            signal.raise_signal(signal.SIGINT)

    previous = signal.getsignal(signal.SIGINT)
    summary = train(cfg(text_file, tmp_path / "r"), progress=False, callback=interrupt_at_2)
    assert signal.getsignal(signal.SIGINT) is previous  # handler restored
    assert summary["interrupted"] and summary["step"] == 2
    assert summary["resume_command"] == f"attnlab train --out {tmp_path / 'r'} --resume"
    state = json.loads((tmp_path / "r" / "checkpoint" / "trainer.json").read_text())
    assert state["step"] == 2
    done = train(cfg(text_file, tmp_path / "r", resume=True), progress=False)
    assert done["resumed_from"] == 2 and done["step"] == 6 and not done["interrupted"]


def test_cli_trains_with_config_file_and_flags_win(text_file, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("steps: 3\nbatch_size: 2\nmodel:\n  normalizer: softmax1\n  n_layers: 3\n"
                      "log-every: 1\n")
    out = tmp_path / "cli"
    code = cli_main(["train", "--config", str(config), "--layers", "2", "--d-model", "32", "--context", "16",
                     "--eval-every", "0", "--text", str(text_file), "--out", str(out)])
    assert code == 0
    assert "trained 3 steps" in capsys.readouterr().out
    saved = json.loads((out / "checkpoint" / "config.json").read_text())
    # from the file, and the flag that overrides it
    assert saved["normalizer"] == "softmax1" and saved["n_layers"] == 2
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and all("loss" in m for m in metrics)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 3 and "versions" in summary and summary["config"]["batch_size"] == 2
    # --resume takes the run's own settings from its checkpoint; --steps extends it.
    assert cli_main(["train", "--out", str(out), "--resume", "--steps", "4"]) == 0
    assert json.loads((out / "checkpoint" / "trainer.json").read_text())["step"] == 4


def test_resume_into_another_config_fails_clearly(text_file, tmp_path):
    train(cfg(text_file, tmp_path / "x", steps=2), progress=False)
    expected = r"another config \(normalizer: checkpoint 'softmax', now 'ssmax'.*batch_size: .*only steps, lr"
    with pytest.raises(ConfigError, match=expected):
        train(cfg(text_file, tmp_path / "x", steps=4, batch_size=2, resume=True,
                  model={"normalizer": "ssmax"}), progress=False)
    with pytest.raises(ConfigError, match="already holds a training run; pass --resume"):
        train(cfg(text_file, tmp_path / "x"), progress=False)
    with pytest.raises(ConfigError, match="no checkpoint in .*without --resume"):
        train(cfg(text_file, tmp_path / "empty", resume=True), progress=False)


def test_bad_input_fails_clearly(text_file, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(DataError, match="one context needs"):
        train(cfg(short), progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # The one writability check (attnlab.io.check_out_dir), as every other command's --out gets.
    with pytest.raises(OutputError, match=f"cannot create the --out folder {blocker / 'run'} .*; pass a "
                                          f"writable folder"):
        train(cfg(text_file, blocker / "run"), progress=False)
    argv = ["train", "--span", "windw(3)", "--text", str(text_file), "--out", str(tmp_path / "s")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("attnlab: error:") and "unknown span" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as exc:
        cli_main(["train", "--normalizer", "softmax2"])
    assert exc.value.code == 2 and "invalid choice: 'softmax2'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown field.*n_layrs"):
        TrainConfig.from_dict({"n_layrs": 2})


def test_train_is_clean_to_call_in_process(text_file):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    summary = train(cfg(text_file, steps=2, eval_every=0), progress=False)
    assert torch.equal(torch.rand(3), expected)  # the caller's RNG stream is untouched
    assert isinstance(summary["model"], GPT) and summary["out"] is None and summary["checkpoint"] is None
    again = train(cfg(text_file, steps=2, eval_every=0), progress=False)
    assert _losses(again["metrics"]) == _losses(summary["metrics"])  # a pure function of the config


def test_training_on_tokens_lowers_the_loss():
    pattern = torch.arange(8).repeat(64)  # a periodic stream is easy to learn
    config = TrainConfig(model=GPTConfig(vocab_size=8, n_layers=1, d_model=16, n_heads=2, context=8),
                         steps=30, batch_size=8, lr=2e-2, warmup=3, eval_every=30, log_every=30)
    summary = train(config, progress=False, data=(pattern, pattern))
    losses = _losses(summary["metrics"])
    assert losses[-1][1] < 0.5 * losses[0][1] and summary["val_loss"] < 0.5


def test_lr_schedule():
    c = TrainConfig(steps=110, warmup=10, lr=1.0, min_lr=0.1)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0) and lr_at(60, c) == pytest.approx(0.55)
    assert lr_at(110, c) == pytest.approx(0.1)
