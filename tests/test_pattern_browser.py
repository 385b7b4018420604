"""The notebook attention view (`attnlab.attention_pattern(...)._repr_html_()`) in headless Chromium, under a
Content-Security-Policy that allows inline script and style and nothing else (so any fetch would fail and be
reported): it draws, the head selector and the small multiples switch the head, and hovering a cell shows
both tokens and the weight. Skipped without Chromium or playwright, like the explorer's browser test."""

from __future__ import annotations

import hashlib
import re

import pytest
import torch
from test_explorer_browser import ARGS, CHROMIUM, _browser_or_skip, tiny_loaded

import attnlab

CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"
TEXT = "To be, or not to be"


def _page_html(fragment: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='Content-Security-Policy' "
            f"content=\"{CSP}\"></head><body>{fragment}</body></html>")


@pytest.mark.slow  # starts a browser (~5 s)
def test_attention_view_selects_heads_and_hovers_in_chromium(one_thread: None) -> None:
    sync_playwright = _browser_or_skip()
    lm = tiny_loaded()
    pat = attnlab.attention_pattern(lm, TEXT, layer=1, head=2)
    n, heads = len(pat.tokens), pat.heads.shape[0]
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("request", lambda r: requests.append(r.url))
            page.set_content(_page_html(pat._repr_html_()))
            root = page.locator(".attnlab-pattern")
            page.wait_for_selector(".attnlab-pattern[data-ready='1']", timeout=30_000)
            assert root.get_attribute("data-head") == "2"
            assert page.locator(".ap-head option").count() == heads + 1  # mean + every head
            assert page.locator(".ap-cell canvas").count() == heads  # small multiples
            main = page.locator("canvas.ap-main")
            first = hashlib.sha256(main.screenshot()).hexdigest()

            # hover query 7, key 3: the line names both tokens and the weight of head 2
            width = int(main.evaluate("c => c.width"))
            box = main.bounding_box()
            cell = max(6, min(22, 560 // n))
            margin = 90 if n <= 48 else 0
            scale = box["width"] / width
            i, j = 7, 3
            page.mouse.move(box["x"] + (margin + (j + 0.5) * cell) * scale,
                            box["y"] + (margin + (i + 0.5) * cell) * scale)
            assert root.get_attribute("data-hover") == f"{i},{j}"
            tip = page.inner_text(".ap-tip")
            m = re.fullmatch(r'query 7 "(.*)" → key 3 "(.*)": ([0-9.e-]+)', tip)
            assert m, tip
            assert (m.group(1), m.group(2)) == (pat.tokens[i], pat.tokens[j])
            assert float(m.group(3)) == pytest.approx(float(pat.heads[2, i, j]), rel=1e-3)

            page.select_option(".ap-head", "0")  # the selector switches the big view
            assert root.get_attribute("data-head") == "0"
            second = hashlib.sha256(main.screenshot()).hexdigest()
            assert second != first
            page.locator(".ap-cell[data-head='3']").click()  # and so does a small multiple
            assert root.get_attribute("data-head") == "3"
            assert page.locator(".ap-head").input_value() == "3"
            assert page.locator(".ap-cell.ap-on").get_attribute("data-head") == "3"
            page.select_option(".ap-head", "-1")
            page.mouse.move(box["x"] + (margin + 1.5 * cell) * scale,
                            box["y"] + (margin + 4.5 * cell) * scale)
            mean = float(page.inner_text(".ap-tip").rsplit(": ", 1)[1])  # query 4, key 1, mean over heads
            assert mean == pytest.approx(float(pat.heads[:, 4, 1].mean()), rel=1e-3)
        finally:
            browser.close()
    assert errors == []
    assert [u for u in requests if not u.startswith(("about:", "data:"))] == []
    assert torch.equal(pat.weights, pat.heads[2])
