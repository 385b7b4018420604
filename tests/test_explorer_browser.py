"""End to end in a real browser: Debian's Chromium, headless, driven by Playwright (never a browser download).

Loads the page served for a tiny random Llama, moves a slider, and checks that the heatmap's pixels and a
per-layer metric change; then, on a short passage, that the heatmap's axes name the tokens, that
the grid of small multiples is drawn and a click on it focuses the big view, and that the SVG export
downloads a file that renders on its own. Saves screenshots to tmp_path, and the first one also to
$ATTNLAB_EXPLORER_SCREENSHOT if set.
The realmodel test does the same on SmolLM2 and is how docs/img/explorer.png is made:

    ATTNLAB_EXPLORER_SCREENSHOT=docs/img/explorer.png \
        .venv/bin/pytest tests/test_explorer_browser.py -m realmodel
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from attnlab.explorer.engine import Explorer
from attnlab.explorer.layer_metrics import METRIC_NAMES
from attnlab.explorer.server import serve_in_thread
from attnlab.present.catalogue import label, metric

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


def heatmap_pixels(page) -> str:
    """A hash of the heatmap as the browser painted it (a screenshot of the element, not an attribute)."""
    return hashlib.sha256(page.locator("#heatmap").screenshot()).hexdigest()


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
            out["pixels0"] = heatmap_pixels(page)
            out["entropy0"] = json.loads(page.get_attribute("#metric-entropy_nats_layer", "data-values"))
            out["curve_ids"] = [page.locator("#curves svg").nth(i).get_attribute("id")
                                for i in range(page.locator("#curves svg").count())]
            out["curve_titles"] = page.locator("#curves svg text.title").all_text_contents()
            out["curve_tooltips"] = page.locator("#curves svg > title").all_text_contents()
            out["status0"] = page.inner_text("#status")
            out["grid_cells"] = page.locator("#grid g.cell").count()
            if tweak:
                page.locator("#temperature").fill("1.5")  # 2 ** 1.5 = 2.83: hotter attention everywhere
                page.wait_for_selector("body[data-renders='2']", timeout=TIMEOUT_MS)
                out["checksum1"] = page.get_attribute("#heatmap", "data-checksum")
                out["pixels1"] = heatmap_pixels(page)
                out["entropy1"] = json.loads(page.get_attribute("#metric-entropy_nats_layer", "data-values"))
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
    # The curves are the catalogue's keys, titled and explained (tooltip) in the catalogue's words.
    assert r["curve_ids"] == [f"metric-{k}" for k in METRIC_NAMES]
    for key, title, tip in zip(METRIC_NAMES, r["curve_titles"], r["curve_tooltips"]):
        assert title.startswith(label(key)) and tip == metric(key).reading
    assert r["continuations"] == 2  # overridden and unmodified continuation side by side
    assert r["grid_cells"] == 4  # every head of the chosen layer
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
    assert r["grid_cells"] == 9  # SmolLM2's nine query heads
    _copy_screenshot(shot)


SHORT = "To be, or not to be"  # 19 bytes: the tiny model's byte tokenizer makes one token of each


def shown(text: str) -> list[str]:
    """The page's token labels for a byte-tokenized text (whitespace made visible, as showTok does)."""
    return [c.replace(" ", "␣").replace("\n", "⏎") for c in text]


def not_blank(png: Path, min_colours: int = 20):
    """The screenshot as a PIL image, after checking it has real content: varied pixels, many colours."""
    from PIL import Image, ImageStat

    img = Image.open(png).convert("RGB")
    assert ImageStat.Stat(img.convert("L")).var[0] > 100, f"{png} looks blank"
    assert len(img.getcolors(1 << 24)) >= min_colours, f"{png} has too few colours for a heatmap"
    return img


def element_shot(page, selector: str, path: Path) -> Path:
    page.locator(selector).screenshot(path=str(path))
    return path


def download(page, button: str, target: Path) -> str:
    with page.expect_download() as info:
        page.click(button)
    info.value.save_as(target)
    return target.read_text(encoding="utf-8")


@pytest.mark.slow
def test_grid_token_labels_and_export_in_chromium(tiny_server, tmp_path):
    import xml.etree.ElementTree as ET

    from PIL import ImageStat

    sync_playwright = _browser_or_skip()
    svg_ns = "{http://www.w3.org/2000/svg}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 1010}, accept_downloads=True)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(tiny_server.url)
            page.wait_for_selector("body[data-renders='1']", timeout=TIMEOUT_MS)
            assert page.get_attribute("#heatmap", "data-labelled") == "false"  # the default passage is long
            page.locator("#text").fill(SHORT)
            page.wait_for_selector(f"#heatmap[data-n-tokens='{len(SHORT)}']", timeout=TIMEOUT_MS)

            # Token labels: both axes name the passage's tokens, and they are painted (the label strip of
            # the heatmap's own screenshot is not blank).
            assert page.locator("#heatmap text.tok-x").all_text_contents() == shown(SHORT)
            assert page.locator("#heatmap text.tok-y").all_text_contents() == shown(SHORT)
            heat = not_blank(element_shot(page, "#heatmap", tmp_path / "heatmap.png"))
            left = int(page.get_attribute("#heatmap", "data-left"))
            labels_strip = heat.crop((left - 12, 0, left - 2, 150))  # the first rows' y labels, not the title
            assert ImageStat.Stat(labels_strip.convert("L")).var[0] > 50

            # Hovering a cell names both tokens.
            box = page.locator("#heatmap").bounding_box()
            side = float(page.get_attribute("#heatmap", "data-side"))
            top = int(page.get_attribute("#heatmap", "data-top"))
            cell = side / len(SHORT)
            page.mouse.move(box["x"] + left + 2.5 * cell, box["y"] + top + 5.5 * cell)  # query 5, key 2
            assert page.inner_text("#hover").startswith("query 5 “,” → key 2 “␣”: ")

            # The grid: one map per head, painted, and a click focuses the big view on that head.
            assert page.locator("#grid g.cell").count() == 4
            grid = not_blank(element_shot(page, "#grid", tmp_path / "grid.png"))
            assert grid.width >= 400 and grid.height >= 300
            before = (page.get_attribute("#heatmap", "data-checksum"), heatmap_pixels(page))
            assert page.inner_text("#head-out") == "0"
            page.click("#grid g.cell[data-index='2']")
            page.wait_for_selector("#grid g.cell.chosen[data-index='2']", timeout=TIMEOUT_MS)
            assert page.inner_text("#head-out") == "2" and "head 2" in page.text_content("#heat-title")
            after = (page.get_attribute("#heatmap", "data-checksum"), heatmap_pixels(page))
            assert after[0] != before[0] and after[1] != before[1]

            # Every layer of the head: three maps; a click moves the layer.
            page.select_option("#grid-view", "layers")
            page.wait_for_selector("#grid[data-kind='layers']", timeout=TIMEOUT_MS)
            assert page.locator("#grid g.cell").count() == 3
            page.click("#grid g.cell[data-index='0']")
            page.wait_for_selector("#grid g.cell.chosen[data-index='0']", timeout=TIMEOUT_MS)
            assert "layer 0, head 2" in page.text_content("#heat-title")

            # Export: standalone SVG files, made in the page.
            text = download(page, "#export-heatmap", tmp_path / "heatmap.svg")
            root = ET.fromstring(text.encode())
            labels = [t.text for t in root.iter(f"{svg_ns}text") if t.get("class") == "tok-x"]
            assert labels == shown(SHORT) and "layer 0, head 2" in text
            images = [i.get("href", "") for i in root.iter(f"{svg_ns}image")]
            assert len(images) == 1 and images[0].startswith("data:image/png;base64,")
            grid_svg = ET.fromstring(download(page, "#export-grid", tmp_path / "grid.svg").encode())
            assert len([g for g in grid_svg.iter(f"{svg_ns}g") if "cell" in (g.get("class") or "")]) == 3
            curves = ET.fromstring(download(page, "#export-curves", tmp_path / "curves.svg").encode())
            assert len(list(curves.iter(f"{svg_ns}svg"))) == 1 + 4  # the page's four, side by side
            # The exported heatmap renders on its own, without the page's stylesheet.
            page.goto((tmp_path / "heatmap.svg").as_uri())
            page.screenshot(path=str(tmp_path / "heatmap-export.png"))
            not_blank(tmp_path / "heatmap-export.png")
            assert errors == []
        finally:
            browser.close()
