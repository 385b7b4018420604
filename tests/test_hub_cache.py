"""Hugging Face hub ids ("gpt2", "org/name") resolve offline from the local hub cache, as
`from_pretrained(id, local_files_only=True)` resolves them; an absent id names the cache it looked in."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from _tiny_hub import COMMIT, save_folder, save_in_hub_cache, words

from attnlab.errors import ModelNotFoundError
from attnlab.models.loading import hub_cache_dir, is_hub_id, load_model

HUB_ENV = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("hf") / "hub"
    save_in_hub_cache(cache, "org/tiny")
    save_in_hub_cache(cache, "tiny", seed=1)  # an id without an organisation, like "gpt2"
    return cache


@pytest.fixture
def hub_env(cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in HUB_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a network call would fail instead of passing unnoticed
    return cache


def test_a_hub_id_loads_from_the_cache_like_from_pretrained(hub_env: Path, one_thread: None) -> None:
    from transformers import AutoModelForCausalLM

    lm = load_model("org/tiny")
    snapshot = hub_env / "models--org--tiny" / "snapshots" / COMMIT
    assert (lm.name, lm.source, lm.kind) == ("org/tiny", str(snapshot), "hf")
    assert lm.model.config._attn_implementation == "attnlab"
    ids = lm.encode(words(12))
    assert ids.shape == (1, 12)
    # transformers' own offline resolution of the same id in the same cache gives the same model
    reference = AutoModelForCausalLM.from_pretrained("org/tiny", cache_dir=str(hub_env),
                                                     local_files_only=True, attn_implementation="eager")
    with torch.no_grad():
        torch.testing.assert_close(lm.logits(ids), reference(ids).logits, atol=1e-5, rtol=1e-5)
    bare = load_model("tiny", dtype="float64")  # no organisation; the dtype by name
    assert bare.name == "tiny" and bare.dtype == torch.float64
    assert not torch.equal(bare.model.lm_head.weight.float(), lm.model.lm_head.weight)  # the other model


def test_an_absent_id_names_the_cache_it_looked_in(hub_env: Path) -> None:
    for repo_id, folder in (("org/absent", "models--org--absent"), ("gpt2", "models--gpt2")):
        with pytest.raises(ModelNotFoundError, match=re.escape(f"cache {hub_env} has no {folder}")):
            load_model(repo_id)
    with pytest.raises(ModelNotFoundError, match="known names: .*smollm2.*Supported"):
        load_model("gpt-17-ultra")


def test_the_cache_location_follows_the_hugging_face_variables(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    for name in HUB_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    assert hub_cache_dir() == tmp_path / "hf-home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    assert hub_cache_dir() == tmp_path / "hub-cache"


def test_hf_home_finds_the_model(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in HUB_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(cache.parent))  # the cache is HF_HOME/hub
    assert load_model("org/tiny").name == "org/tiny"


def test_a_broken_cache_entry_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hub"
    save_in_hub_cache(cache, "org/broken")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    (cache / "models--org--broken" / "refs" / "main").write_text("f" * 40)
    with pytest.raises(ModelNotFoundError, match="names commit ffffffffffff, but .* is missing"):
        load_model("org/broken")


def test_a_folder_on_disk_wins_over_the_cache(hub_env: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    save_folder(tmp_path / "org" / "tiny", seed=2)
    monkeypatch.chdir(tmp_path)
    lm = load_model("org/tiny")
    assert lm.source == "org/tiny" and lm.name == "tiny"  # the folder, as before hub ids were accepted


def test_hub_ids_are_told_from_paths() -> None:
    assert all(is_hub_id(s) for s in ("gpt2", "org/name", "HuggingFaceTB/SmolLM2-135M", "a.b-c_d/e.f"))
    assert not any(is_hub_id(s) for s in ("/abs/path", "./rel", "a/b/c", "x.gguf", "a--b", "a/../b", "~/m",
                                          "", Path("gpt2")))


def test_every_model_command_takes_a_hub_id(hub_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    from attnlab.cli import main

    text = tmp_path / "text.txt"
    text.write_text(words(40))
    out = tmp_path / "s.json"
    assert main(["stream", "eval", "--model", "org/tiny", "--policy", "sinks(2,8)", "--text", str(text),
                 "--tokens", "20", "--bin-size", "10", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["results"]["model"] == "org/tiny"
    assert main(["stream", "generate", "--model", "org/tiny", "--policy", "sinks(2,8)", "--prompt", words(4),
                 "--max-new-tokens", "2"]) == 0
    import attnlab.diagnose.html

    # the page itself is checked in test_notebook.py; here only that `report` loads the id
    monkeypatch.setattr(attnlab.diagnose.html, "render_html", lambda report: "<html></html>")
    assert main(["report", "org/tiny", "--text", str(text), "--max-tokens", "16", "--quick", "--no-progress",
                 "--out", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["models"][0]["model"]["name"] == "org/tiny"
    assert "org/tiny: 16 tokens" in capsys.readouterr().out
