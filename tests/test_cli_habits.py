"""The command line where researchers work: a fast parser (no torch to list the commands), --device and
--dtype on every command that runs a model, progress lines in a log, and a warning for a setting that
makes no sense for the run."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from _tiny_hub import save_folder, words

from attnlab.advice import AttnlabWarning, check_schedule
from attnlab.cli import COMMANDS, main
from attnlab.errors import ConfigError
from attnlab.models.loading import resolve_device, resolve_dtype

MODEL_COMMANDS = (["report"], ["stream", "eval", "--policy", "sinks"], ["stream", "generate"], ["explore"],
                  ["run", "offbyone"])


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_folder(tmp_path_factory.mktemp("cli") / "tiny-llama")


@pytest.fixture
def text(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(words(150))
    return path


# -- a fast parser ----------------------------------------------------------------------------------------
def test_the_parser_builds_without_importing_torch() -> None:
    done = _python("import attnlab.cli, sys; attnlab.cli.build_parser(); "
                   "assert 'torch' not in sys.modules, 'torch imported'")
    assert done.returncode == 0, done.stderr


def test_import_attnlab_is_lazy_and_its_names_still_work() -> None:
    done = _python(
        "import sys, types, attnlab\n"
        "assert 'torch' not in sys.modules, 'import attnlab imported torch'\n"
        "assert 'report' in dir(attnlab) and attnlab.__version__\n"
        "import attnlab.models.gpt  # binds the attnlab.attention subpackage on the package\n"
        "import torch\n"
        "q = torch.randn(1, 2, 4, 8)\n"
        "import attnlab.attention.registry as reg  # the subpackage stays callable: one object, both roles\n"
        "assert isinstance(attnlab.attention, types.ModuleType) and callable(attnlab.attention)\n"
        "assert reg.normalizer_names()[0] == 'softmax'\n"
        "assert attnlab.attention(q, q, q, normalizer='softmax1').shape == (1, 2, 4, 8)\n"
        "assert isinstance(attnlab.Sinks, type) and callable(attnlab.retrofit)\n"
        "assert attnlab.load_model.__module__ == 'attnlab.models.loading'\n"
        "assert attnlab.models.gpt.GPT\n"
        "try:\n    attnlab.nothing\nexcept AttributeError as e:\n    assert 'nothing' in str(e)\n"
        "else:\n    raise SystemExit('no AttributeError')\n")
    assert done.returncode == 0, done.stderr


def test_each_listed_help_line_is_the_command_s_own() -> None:
    """`attnlab --help` lists COMMANDS' lines without importing the modules; they must say what the
    modules register (update COMMANDS in attnlab/cli.py when a command's help changes)."""
    for name, (module_name, line) in COMMANDS.items():
        parser = argparse.ArgumentParser()
        subparsers = parser.add_subparsers()
        __import__(module_name, fromlist=["register"]).register(subparsers)
        helps = {a.dest: a.help for a in subparsers._choices_actions}
        assert helps.get(name) == line, f"{name}: {module_name} says {helps.get(name)!r}"


def test_commands_parse_on_demand(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--help"])
    assert exit_.value.code == 0 and "--device" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["reprot"])
    assert exit_.value.code == 2 and "invalid choice: 'reprot'" in capsys.readouterr().err


# -- --device and --dtype ---------------------------------------------------------------------------------
@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=" ".join)
def test_model_commands_take_device_and_dtype(command: list[str], capsys: pytest.CaptureFixture) -> None:
    from attnlab.cli import _command_parser, build_parser

    parser = build_parser()
    args = parser.parse_args([*command, "--device", "cuda:1", "--dtype", "bfloat16"])
    assert (args.device, args.dtype) == ("cuda:1", "bfloat16")
    with pytest.raises(SystemExit):
        _command_parser(parser, args).parse_args([*command[1:], "--device", "gpu"])
    assert "unknown device 'gpu'; use auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_device_and_dtype_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device 'cuda' asked for, but torch sees no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype("float64") is torch.float64
    with pytest.raises(ConfigError, match="unknown dtype 'int8'; use one of float32, bfloat16"):
        resolve_dtype("int8")


def test_one_device_resolver_for_loading_training_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading, training and the --device flag use one resolver: the same names, the same errors."""
    import attnlab.devices
    import attnlab.models.loading
    import attnlab.train.distributed as distributed
    from attnlab.cli_flags import device_name

    assert attnlab.models.loading.resolve_device is attnlab.devices.resolve_device
    assert distributed.resolve_device is attnlab.devices.resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.setup_distributed("auto").device == torch.device("cpu")
    for where in (attnlab.devices.resolve_device, distributed.setup_distributed):
        with pytest.raises(ConfigError, match="device 'cuda' asked for, but torch sees no CUDA GPU"):
            where("cuda")
        with pytest.raises(ConfigError, match="unknown device 'gpu'; use auto, cpu, cuda or cuda:N"):
            where("gpu")
    with pytest.raises(ConfigError, match="not supported for training"):
        distributed.setup_distributed("meta")
    assert device_name(" CUDA:1 ") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert attnlab.devices.resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert attnlab.devices.resolve_device("cuda") == torch.device("cuda")


def test_cuda_without_a_gpu_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                              tiny: Path, text: Path, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv in (["stream", "eval", "--policy", "sinks", "--model", str(tiny), "--text", str(text),
                  "--out", str(tmp_path / "s")],
                 ["report", str(tiny), "--text", str(text), "--out", str(tmp_path / "r")],
                 ["run", "offbyone", "--preset", "smoke", "--out", str(tmp_path / "o")]):
        assert main([*argv, "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "attnlab: error: device 'cuda' asked for, but torch sees no CUDA GPU" in err, argv
        assert err.count("\n") == 1, err


def test_dtype_loads_the_model_in_that_precision(tiny: Path, text: Path, tmp_path: Path) -> None:
    import json

    out = tmp_path / "s.json"
    assert main(["stream", "eval", "--model", str(tiny), "--text", str(text), "--policy", "window(8)",
                 "--tokens", "16", "--bin-size", "4", "--dtype", "float64", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["provenance"]["config"]["dtype"] == "float64"


def test_run_passes_device_and_precision_to_the_training(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    import attnlab.experiments
    from attnlab.experiments.common import study_training, train_loop

    seen: dict = {}
    monkeypatch.setattr(attnlab.experiments, "run_study", lambda *a, **kw: seen.update(kw) or {"claims": []})
    assert main(["run", "offbyone", "--preset", "smoke", "--device", "cpu", "--dtype", "bfloat16",
                 "--out", str(tmp_path / "o")]) == 0
    assert (seen["device"], seen["autocast"]) == ("cpu", "bf16")
    assert "attnlab: warning: --dtype bfloat16 on the CPU" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # run's --dtype lists only what it accepts
        main(["run", "offbyone", "--dtype", "float16", "--out", str(tmp_path / "o")])
    assert refused.value.code == 2
    assert "invalid choice: 'float16' (choose from 'float32', 'bfloat16')" in capsys.readouterr().err

    # and run_study's choice reaches every train_loop of the study
    calls: list[dict] = []

    def fake_fit(model, loss_fn, batch_fn, **kw):  # noqa: ANN001, ANN202
        calls.append(kw)
        return {"curve": [], "diverged_at": None, "seconds": 0.0, "steps": 0, "tokens_per_s": 0.0,
                "device": str(kw["device"])}

    monkeypatch.setattr(importlib.import_module("attnlab.train.fit"), "fit", fake_fit)
    model = torch.nn.Linear(2, 2)
    with study_training(device="cpu", autocast="off"):
        train_loop(model, None, None, steps=1, lr=0.1)
    train_loop(model, None, None, steps=1, lr=0.1)
    assert (calls[0]["device"], calls[0]["autocast"]) == ("cpu", "off")
    assert (calls[1]["device"], calls[1]["autocast"]) == (None, "auto")  # the study's own choice


# -- progress in a log ------------------------------------------------------------------------------------
def test_long_work_prints_progress_lines_when_stderr_is_not_a_terminal(tiny: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    import attnlab
    from attnlab.diagnose.report import run_report
    from attnlab.stream import make_policy
    from attnlab.stream.eval import stream_eval

    lm = attnlab.load_model(tiny)
    capsys.readouterr()
    run_report(lm, text=words(40), max_tokens=16, quick=True, out=None, progress=True, sensitivity_probes=1,
               lipschitz_iters=1, lipschitz_lengths=(8,), collapse_max=8)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("report tiny-llama: step 1/15 (7%) finished forward")
    assert lines[-1].startswith("report tiny-llama: step 15/15 (100%) finished lipschitz_vs_length")
    stream_eval(lm, words(40), make_policy("window", window=8), tokens=30, progress=True)
    err = capsys.readouterr().err
    assert "stream window(8): step 1/30" in err and "step 30/30 (100%)" in err and "\r" not in err
    assert len(err.splitlines()) <= 12  # step 1, every tenth, the end: a modest rate


# -- settings that make no sense --------------------------------------------------------------------------
def test_a_warmup_longer_than_the_run_warns() -> None:
    with pytest.warns(AttnlabWarning, match="--warmup 100 is not shorter than --steps 30: the learning rate "
                                            "only reaches 30% of its peak"):
        assert check_schedule(30, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not check_schedule(1000, 100)


def test_unused_or_pointless_stream_settings_warn_as_one_line_each(capsys: pytest.CaptureFixture,
                                                                   text: Path, tmp_path: Path) -> None:
    absent = str(tmp_path / "no-model")  # the warnings come before the model loads (and fails here)
    assert main(["stream", "eval", "--policy", "sinks", "--model", absent, "--text", str(text),
                 "--chunk", "64", "--stride", "3", "--tokens", "100", "--bin-size", "100",
                 "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("attnlab: warning: --chunk applies to --mode chunked")
    assert err[1].startswith("attnlab: warning: --stride 3 applies to the recompute policy only")
    assert err[2].startswith("attnlab: warning: --bin-size 100 is not smaller than --tokens 100")
    assert err[3].startswith("attnlab: error: no model named or at") and len(err) == 4
    assert main(["stream", "generate", "--model", absent, "--top-k", "5", "--prompt", "hi"]) == 2
    assert "attnlab: warning: --top-k 5 applies when sampling" in capsys.readouterr().err


def test_running_past_the_text_or_the_context_warns(tiny: Path, text: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    # the tiny model's context is 128 tokens, the text 150
    assert main(["stream", "eval", "--model", str(tiny), "--text", str(text), "--policy", "full",
                 "--mode", "chunked", "--chunk", "64", "--tokens", "200", "--bin-size", "50",
                 "--out", str(tmp_path / "s.json")]) == 0
    err = capsys.readouterr().err
    assert "warning: the text is 150 tokens for tiny-llama, so 149 are scored, not --tokens 200" in err
    assert "warning: --policy full keeps every token, and the stream runs past tiny-llama's context of 128" \
        in err


def test_a_report_asked_for_more_tokens_than_the_text_has_warns(tiny: Path) -> None:
    from attnlab.diagnose.report import run_report

    with pytest.warns(AttnlabWarning, match=r"only 12 tokens for tiny-llama, so the report reads 12, "
                                            r"not --max-tokens 40"):
        run_report(str(tiny), text=words(12), max_tokens=40, quick=True, out=None, progress=False,
                   sensitivity_probes=1, lipschitz_iters=1, lipschitz_lengths=(8,), collapse_max=8,
                   ablations=("full",))
