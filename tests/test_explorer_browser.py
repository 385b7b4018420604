"""End to end in a real browser: Debian's Chromium, headless, driven by Playwright (never a browser download).

Loads the page served for a tiny random Llama, moves a slider, and checks that the heatmap's pixels and a
per-layer metric change. Saves a screenshot to tmp_path, and also to $ATTNLAB_EXPLORER_SCREENSHOT if set.
The realmodel test does the same on SmolLM2 and is how docs/img/explorer.png is made:

    ATTNLAB_EXPLORER_SCREENSHOT=docs/img/explorer.png \
        .venv/bin/pytest tests/test_explorer_browser.py -m realmodel
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from attnlab.explorer.engine import Explorer
from attnlab.explorer.server import serve_in_thread

TIMEOUT_MS = 300_000  # generous: on 2 shared cores a SmolLM2 update can take tens of seconds under load
CHROMIUM = os.environ.get("ATTNLAB_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync", "--disable-quic"]


def _browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the browser test needs the 'playwright' pip package: .venv/bin/pip install playwright")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set ATTNLAB_CHROMIUM)")
    return sync_playwright


def tiny_loaded():
    from transformers import LlamaConfig, LlamaForCausalLM

    import attnlab.models.hf  # noqa: F401  (registers attn_implementation="attnlab")
    from attnlab.data.tokenizers import ByteTokenizer
    from attnlab.models.adapter import from_hf

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return from_hf(LlamaForCausalLM(cfg).eval(), ByteTokenizer(), "tiny-llama", "test")


def canvas_hash(page) -> str:
    """A hash of the heatmap canvas's own pixels, read back from the browser (not the app's attribute)."""
    return page.evaluate("""() => {
        const c = document.getElementById('heatmap');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let h = 2166136261;
        for (let k = 0; k < d.length; k++) { h ^= d[k]; h = Math.imul(h, 16777619) >>> 0; }
        return h.toString(16);
    }""")


def drive(url: str, shot: Path, *, viewport=(1440, 1010), tweak: bool = True) -> dict:
    """Open the page, wait for the first render, move the temperature slider, wait for the re-render."""
    sync_playwright = _browser_or_skip()
    out: dict = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)  # e.g. CSP
            page.goto(url)
            page.wait_for_selector("body[data-renders='1']", timeout=TIMEOUT_MS)
            out["checksum0"] = page.get_attribute("#heatmap", "data-checksum")
            out["pixels0"] = canvas_hash(page)
            out["entropy0"] = json.loads(page.get_attribute("#metric-entropy", "data-values"))
            out["status0"] = page.inner_text("#status")
            if tweak:
                page.locator("#temperature").fill("1.5")  # 2 ** 1.5 = 2.83: hotter attention everywhere
                page.wait_for_selector("body[data-renders='2']", timeout=TIMEOUT_MS)
                out["checksum1"] = page.get_attribute("#heatmap", "data-checksum")
                out["pixels1"] = canvas_hash(page)
                out["entropy1"] = json.loads(page.get_attribute("#metric-entropy", "data-values"))
                out["temperature_label"] = page.inner_text("#temperature-out")
                # A selector, not wait_for_function: the CSP (no 'unsafe-eval') forbids evaluating strings.
                page.wait_for_selector("body[data-continued='2']", timeout=TIMEOUT_MS)
                out["continuations"] = page.locator("#continuation .line").count()
            page.screenshot(path=str(shot), full_page=True)
            out["errors"] = errors
        finally:
            browser.close()
    return out


def _copy_screenshot(shot: Path) -> None:
    target = os.environ.get("ATTNLAB_EXPLORER_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        try:  # a 256-colour palette keeps the docs' PNG small; the page has few distinct colours
            from PIL import Image

            Image.open(shot).convert("RGB").quantize(colors=256).save(target, optimize=True)
        except ImportError:
            shutil.copyfile(shot, target)


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    _browser_or_skip()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        srv = serve_in_thread(Explorer(tiny_loaded(), name="tiny-llama"), "127.0.0.1", 0)
        yield srv
        srv.shutdown()
        srv.server_close()
    torch.set_num_threads(before)


@pytest.mark.slow
def test_slider_moves_heatmap_and_metrics_in_chromium(tiny_server, tmp_path):
    shot = tmp_path / "explorer.png"
    r = drive(tiny_server.url, shot)
    assert r["errors"] == []
    assert r["checksum0"] and r["checksum1"] != r["checksum0"]  # the heatmap was redrawn differently
    assert r["pixels1"] != r["pixels0"]
    assert r["temperature_label"] == "2.83"
    assert all(b > a for a, b in zip(r["entropy0"], r["entropy1"]))  # hotter attention: higher entropy
    assert r["continuations"] == 2  # overridden and unmodified continuation side by side
    assert "tokens" in r["status0"]
    assert shot.stat().st_size > 10_000
    _copy_screenshot(shot)


@pytest.mark.realmodel
@pytest.mark.slow
def test_smollm2_page_in_chromium(tmp_path):
    """The page on SmolLM2-135M (the docs' screenshot): the default passage, then a hotter temperature."""
    _browser_or_skip()
    import attnlab

    srv = serve_in_thread(Explorer(attnlab.load_model("smollm2-135m"), name="smollm2-135m"), "127.0.0.1", 0)
    try:
        shot = tmp_path / "explorer.png"
        r = drive(srv.url, shot, tweak=True)
    finally:
        srv.shutdown()
        srv.server_close()
    assert r["errors"] == [] and r["checksum1"] != r["checksum0"]
    assert len(r["entropy0"]) == 30
    _copy_screenshot(shot)
