"""Every user mistake on the command line ends in one line on stderr that names the file or flag, exit 2.

Fast on purpose: tiny files in tmp_path, and where a check must come before the work, a model path that
does not exist (or a stubbed study) shows that the check ran first. The models loaded are tiny.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest
from transformers import LlamaConfig

from attnlab.cli import _is_internal, main
from attnlab.data.corpus import TEXT_LIMIT

NOWHERE = "/nonexistent/attnlab-model"


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    """Run `attnlab argv`, expect exit 2 and one error line holding every needle; return that line."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("attnlab: error:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _llama_folder(path: Path, **overrides: object) -> Path:
    """A HF model folder with a tiny Llama config.json (and whatever weights the test writes)."""
    cfg = dict(vocab_size=16, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    LlamaConfig(**cfg).save_pretrained(path)
    if overrides:
        data = json.loads((path / "config.json").read_text())
        data.update(overrides)
        (path / "config.json").write_text(json.dumps(data))
    return path


def _tiny_checkpoint(path: Path) -> Path:
    from attnlab.models.gpt import GPT, GPTConfig

    GPT(GPTConfig(vocab_size=256, n_layers=1, d_model=16, n_heads=2, n_kv_heads=1, context=64)).save(path)
    return path


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "t.txt"
    path.write_text("to be or not to be, that is the question\n" * 4)
    return path


# -- --model: files attnlab opens --------------------------------------------------------------------------
def test_corrupt_safetensors_in_a_hf_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _llama_folder(tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"\x00" * 40)
    _fails(capsys, ["stream", "generate", "--model", str(folder), "--prompt", "hi"],
           f"{folder / 'model.safetensors'} is not a readable safetensors file", "save the model again")


def test_corrupt_safetensors_in_an_attnlab_checkpoint(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _tiny_checkpoint(tmp_path / "ck")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    _fails(capsys, ["stream", "generate", "--model", str(ckpt), "--prompt", "hi"],
           f"{weights} is not a readable safetensors file", "truncated or corrupt")


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"num_attention_heads": 0}, "ZeroDivisionError"),  # raised inside the config class
    ({"hidden_size": "big"}, "hidden_size"),
])
def test_config_value_the_config_class_rejects(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               overrides: dict, needle: str) -> None:
    folder = _llama_folder(tmp_path / "m", **overrides)
    (folder / "model.safetensors").write_bytes(b"never read")
    _fails(capsys, ["report", str(folder), "--out", str(tmp_path / "r")],
           f"{folder / 'config.json'} is not a valid 'llama' config", needle)


def test_config_json_that_is_not_an_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("[1, 2]")
    _fails(capsys, ["explore", "--model", str(tmp_path / "m"), "--no-browser"],
           f"{tmp_path / 'm' / 'config.json'} holds a JSON list, not an object")


def test_weights_that_do_not_match_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import LlamaForCausalLM

    folder = _llama_folder(tmp_path / "m")
    LlamaForCausalLM(LlamaConfig.from_pretrained(folder)).save_pretrained(folder)
    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, "intermediate_size": 64}))
    _fails(capsys, ["stream", "generate", "--model", str(folder), "--prompt", "hi"],
           f"{folder}: the weights do not match config.json (wrong shape model.layers.0.mlp.down_proj.weight "
           f"(32x48 in the file, 32x64 in the config)", "strict=False")


def test_corrupt_tokenizer_next_to_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import LlamaForCausalLM

    folder = _llama_folder(tmp_path / "m")
    LlamaForCausalLM(LlamaConfig.from_pretrained(folder)).save_pretrained(folder)
    (folder / "tokenizer.json").write_text("{}")
    _fails(capsys, ["stream", "generate", "--model", str(folder), "--prompt", "hi"],
           f"cannot read the tokenizer in {folder} (tokenizer.json:")


def test_gguf_of_16_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + bytes(12))  # the magic, then a header cut short
    _fails(capsys, ["stream", "generate", "--model", str(gguf), "--prompt", "hi"],
           f"transformers cannot load {gguf}", "not truncated")


def test_cache_folder_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tmp_path / "cache"
    plain.write_text("not a folder")
    monkeypatch.setenv("ATTNLAB_CACHE", str(plain))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + bytes(12))
    _fails(capsys, ["stream", "generate", "--model", str(gguf), "--prompt", "hi"],
           f"ATTNLAB_CACHE={plain} is a file", "point ATTNLAB_CACHE at a writable folder")


# -- --out: checked before the work ------------------------------------------------------------------------
def test_stream_eval_checks_out_and_plot_before_loading(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plain"
    plain.write_text("x")
    base = ["stream", "eval", "--policy", "sinks", "--model", NOWHERE, "--text", str(_text(tmp_path))]
    _fails(capsys, [*base, "--out", str(plain / "r.json")], f"--out {plain / 'r.json'}", "is a file")
    _fails(capsys, [*base, "--out", str(plain)], f"--out {plain} is a file; pass a folder")  # folder form
    _fails(capsys, [*base, "--out", str(tmp_path)], "no model named or at")  # a folder is a fine --out
    _fails(capsys, [*base, "--out", str(tmp_path / "r.json"), "--plot", str(tmp_path)],
           f"--plot {tmp_path} is a folder")


def test_report_checks_out_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plain"
    plain.write_text("x")
    _fails(capsys, ["report", NOWHERE, "--text", str(_text(tmp_path)), "--out", str(plain)],
           f"--out {plain} is a file; pass a folder")


@pytest.fixture
def no_study(monkeypatch: pytest.MonkeyPatch) -> None:
    """Studies must not start: a check that comes after the work fails the test."""
    import attnlab.experiments

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("the study started before its arguments were checked")

    monkeypatch.setattr(attnlab.experiments, "run_study", started)


@pytest.mark.usefixtures("no_study")
def test_run_and_compare_check_out_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tmp_path / "plain"
    plain.write_text("x")
    _fails(capsys, ["compare", "--preset", "smoke", "--out", str(plain)], f"--out {plain} is a file")
    _fails(capsys, ["run", "dispersion", "--preset", "smoke", "--out", str(plain / "sub")],
           f"cannot create the --out folder {plain / 'sub'}")

    def read_only(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied")  # what a read-only folder gives a non-root user

    import tempfile

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    _fails(capsys, ["run", "offbyone", "--preset", "smoke", "--out", str(tmp_path / "ro")],
           f"cannot write in the --out folder {tmp_path / 'ro'} (Permission denied)")


@pytest.mark.usefixtures("no_study")
@pytest.mark.parametrize("argv", [
    ["run", "offbyone", "--preset", "smoke"], ["compare", "--preset", "smoke"], ["train", "--steps", "1"],
    ["stream", "eval", "--policy", "full", "--model", NOWHERE], ["report", NOWHERE]])
def test_empty_out_is_refused_not_taken_as_here(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    # Path("") is "."; an unset shell variable must not write a run into the current folder or the default.
    monkeypatch.chdir(tmp_path)
    _fails(capsys, [*argv, "--out", ""], "--out is empty; pass a folder")
    assert not any(tmp_path.iterdir()) and not Path("runs").exists()


@pytest.mark.parametrize("argv", [["train", "--steps", "1", "--out", "o"], ["data", "info"],
                                  ["report", NOWHERE, "--out", "o"]])
def test_empty_text_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here.txt").write_text("a text in the current folder must not be read instead")
    _fails(capsys, [*argv, "--text", ""], "is empty; pass a")


@pytest.mark.usefixtures("no_study")
def test_seed_count_has_an_upper_bound(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["run", "offbyone", "--seeds", "65", "--out", str(tmp_path / "r")],
           "--seeds must be a positive integer, at most 64", "got 65")
    _fails(capsys, ["compare", "--seeds", "65", "--out", str(tmp_path / "r")], "--seeds must be in 1..64",
           "got 65")
    _fails(capsys, ["compare", "--seeds", "0", "--out", str(tmp_path / "r")], "--seeds", "got 0")
    assert not (tmp_path / "r").exists()  # refused before the output folder was made


# -- stream generate: settings checked before the model loads ----------------------------------------------
@pytest.mark.parametrize(("flags", "needle"), [
    (["--temperature", "nan"], "--temperature) must be a finite number >= 0"),
    (["--temperature", "inf"], "--temperature) must be a finite number >= 0"),
    (["--temperature", "-1"], "--temperature) must be a finite number >= 0"),
    (["--top-k", "-3"], "--top-k) must be an integer >= 1, or 0 for no top-k cut"),
    (["--max-new-tokens", "0"], "--max-new-tokens) must be an integer >= 1"),
    (["--seed", str(2**64)], "--seed) must be an integer in [0, 2**64 - 1]"),
    (["--prompt", ""], "--prompt is empty"),
    (["--prompt", "  "], "--prompt is empty"),
])
def test_generate_settings(capsys: pytest.CaptureFixture[str], flags: list[str], needle: str) -> None:
    prompt = [] if "--prompt" in flags else ["--prompt", "hi"]
    _fails(capsys, ["stream", "generate", "--model", NOWHERE, *prompt, *flags], needle)


def test_generate_with_non_utf8_stdin_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = _tiny_checkpoint(tmp_path / "ck")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"to be\ncaf\xe9\n"), encoding="utf-8"))
    _fails(capsys, ["stream", "generate", "--model", str(ckpt), "--policy", "window", "--window", "32",
                    "--max-new-tokens", "2"],
           "line 2 of stdin is not UTF-8 (invalid byte 0xe9 at byte 3)", "iconv")


def test_generate_top_k_zero_is_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _tiny_checkpoint(tmp_path / "ck")
    argv = ["stream", "generate", "--model", str(ckpt), "--policy", "window", "--window", "32",
            "--max-new-tokens", "3", "--temperature", "1", "--top-k", "0", "--prompt", "to be"]
    assert main(argv) == 0
    assert "3 tokens in" in capsys.readouterr().err


# -- data info ---------------------------------------------------------------------------------------------
def test_data_info_stray_argument_shows_its_own_usage(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["data", "info", str(_text(tmp_path))])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith("usage: attnlab data info") and "--text FILE" in err
    assert "attnlab data info: error: unrecognized arguments:" in err


def test_data_info_bad_tokenizer_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    _fails(capsys, ["data", "info", "--text", str(_text(tmp_path)), "--tokenizer", str(tmp_path / "tok")],
           f"{tmp_path / 'tok'} does not hold a Hugging Face tokenizer")


def test_unreadable_text_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    text = _text(tmp_path)

    real_open = os.open

    def unreadable(path: object, flags: int, *args: object) -> int:  # chmod 000 does not stop root
        if Path(str(path)) == text:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", unreadable)
    _fails(capsys, ["data", "info", "--text", str(text)], f"cannot read text {text} (Permission denied)")


@pytest.mark.parametrize("kind", ["device", "urandom", "fifo", "socket", "folder"])
def test_file_arguments_must_be_regular_files(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              kind: str) -> None:
    # Each of these used to hang (a device or FIFO is read forever) or fail obscurely; now one line, at once.
    if kind == "device":
        path, what = Path("/dev/zero"), "a character device"
    elif kind == "urandom":
        path, what = Path("/dev/urandom"), "a character device"
    elif kind == "fifo":
        path, what = tmp_path / "pipe.txt", "a named pipe (FIFO)"
        os.mkfifo(path)
    elif kind == "socket":
        path, what = tmp_path / "s.txt", "a socket"
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
    else:
        path, what = tmp_path / "dir.yaml", "a folder"
        path.mkdir()
    start = time.monotonic()
    for argv, label in ((["data", "info", "--text", str(path)], "text"),
                        (["train", "--text", str(path), "--out", str(tmp_path / "o")], "text"),
                        (["train", "--config", str(path), "--out", str(tmp_path / "o")], "config file")):
        if kind == "folder" and label == "text":
            continue  # a folder of .txt files is a valid --text
        _fails(capsys, argv, f"{label} {path} is {what}, not a regular file")
    assert time.monotonic() - start < 20


def test_a_text_over_the_size_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.txt"
    with open(big, "wb") as fh:  # sparse: no disk used, and refused from its size before any read
        fh.truncate(TEXT_LIMIT + 1)
    _fails(capsys, ["data", "info", "--text", str(big)], f"text {big} is over the 1024 MiB limit")


# -- what stays a traceback --------------------------------------------------------------------------------
def _raise_in(filename: str, exc: BaseException) -> BaseException:
    code = compile("def boom(exc):\n    raise exc\n", filename, "exec")
    scope: dict = {}
    exec(code, scope)  # noqa: S102 - a function whose frame claims to live in `filename`
    try:
        scope["boom"](exc)
    except BaseException as caught:  # noqa: BLE001
        return caught
    raise AssertionError("boom did not raise")


def test_errors_raised_inside_libraries_keep_their_traceback() -> None:
    # A checkout or venv with "attnlab" in its path must not make torch's frames look like attnlab's.
    torch_frame = "/home/me/attnlab/.venv/lib/python3.11/site-packages/torch/functional.py"
    assert _is_internal(_raise_in(torch_frame, ValueError("shape mismatch")))
    import attnlab.stream.cli

    assert not _is_internal(_raise_in(attnlab.stream.cli.__file__, ValueError("bad flag")))
    # An OSError naming a file is about that file, wherever it was raised.
    assert not _is_internal(_raise_in(torch_frame, PermissionError(13, "Permission denied", "/x/y")))


def test_internal_bug_is_reraised_by_main(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import attnlab.data.corpus

    def buggy(path: object) -> str:
        raise _raise_in("/site-packages/numpy/core.py", ValueError("internal"))

    monkeypatch.setattr(attnlab.data.corpus, "load_text", buggy)
    with pytest.raises(ValueError, match="^internal$"):
        main(["data", "info", "--text", str(_text(tmp_path))])


def test_generate_from_a_nan_model_prints_no_nul_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # NaN scores used to be argmaxed into token 0, a NUL byte with the byte tokenizer, printed as the reply.
    import torch

    import attnlab.models.loading as loading

    real = loading.load_model

    def nan_model(*args: object, **kwargs: object) -> object:
        lm = real(*args, **kwargs)  # finite at load (the load check passes); NaN appears afterwards
        with torch.no_grad():
            next(lm.model.parameters()).fill_(float("nan"))
        return lm

    monkeypatch.setattr(loading, "load_model", nan_model)
    ckpt = _tiny_checkpoint(tmp_path / "ck")
    code = main(["stream", "generate", "--model", str(ckpt), "--policy", "window", "--window", "32",
                 "--prompt", "to be", "--max-new-tokens", "3"])
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.startswith("attnlab: error:")]
    assert code == 2 and len(lines) == 1 and "gave NaN (or no finite) next-token scores" in lines[0], err
    assert "\x00" not in out


@pytest.mark.parametrize(("policy", "needle"), [(["--policy", "full"], "keeps them all"),
                                                (["--policy", "sinks", "--sinks", "2", "--window", "20"],
                                                 "sees only those it keeps")])
def test_generate_warns_of_a_prompt_past_the_context(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     policy: list[str], needle: str) -> None:
    ckpt = _tiny_checkpoint(tmp_path / "ck")  # context 64
    assert main(["stream", "generate", "--model", str(ckpt), *policy, "--prompt", "x" * 100,
                 "--max-new-tokens", "2"]) == 0
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("attnlab: warning:")]
    assert len(warnings) == 1 and "the prompt is 10" in warnings[0] and needle in warnings[0], warnings


# -- settings that run but are ignored: one warning line each ----------------------------------------------
def _warnings(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("attnlab: warning:")]


@pytest.mark.parametrize(("argv", "unused"), [
    (["eval", "--policy", "sinks(4,16)", "--sinks", "2", "--window", "8"], ["--sinks 2", "--window 8"]),
    (["eval", "--policy", "full", "--sinks", "2"], ["--sinks 2"]),
    (["eval", "--policy", "window", "--policy", "sinks(2,8)", "--chunk-size", "8"], ["--chunk-size 8"]),
    (["eval", "--policy", "sinks", "--sinks", "2", "--window", "8"], []),  # read: no warning
    (["generate", "--policy", "window(8)", "--window", "8", "--prompt", "hi"], ["--window 8"]),
])
def test_size_flags_no_policy_reads_warn(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                         unused: list[str]) -> None:
    out = ["--out", str(tmp_path / "r.json")] if argv[0] == "eval" else []
    assert main(["stream", *argv, "--model", NOWHERE, *out]) == 2  # warned before the model loads
    got = _warnings(capsys)
    assert len(got) == len(unused), got
    for line, flag in zip(got, unused, strict=True):
        assert f"{flag} is unused" in line, line


def test_train_eval_every_without_validation_text_warns(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    tiny = ["--layers", "1", "--d-model", "16", "--heads", "2", "--context", "16", "--batch-size", "2",
            "--steps", "1", "--warmup", "0", "--text", str(_text(tmp_path))]
    argv = ["train", *tiny, "--val-fraction", "0", "--eval-every", "2", "--out", str(tmp_path / "a")]
    assert main(argv) == 0
    got = _warnings(capsys)
    assert len(got) == 1 and "--eval-every 2 is unused: --val-fraction 0" in got[0], got


def test_train_seed_out_of_range_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["train", "--seed", "99999999999999999999999", "--out", str(tmp_path / "o")],
           "--seed must be an integer in [0, 2**63 - 1], got 99999999999999999999999")


def test_run_help_lists_only_the_dtypes_run_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--dtype {float32,bfloat16}" in capsys.readouterr().out  # float16/64 were listed, then refused
    with pytest.raises(SystemExit) as refused:
        main(["run", "offbyone", "--dtype", "float16"])
    assert refused.value.code == 2 and "invalid choice: 'float16'" in capsys.readouterr().err
