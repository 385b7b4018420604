"""The explorer's JSON API and model side, on a tiny random Llama served on an ephemeral loopback port."""

from __future__ import annotations

import http.client
import json
import math

import pytest
import torch

from attnlab.attention import normalizer_names
from attnlab.explorer import directions as dirs
from attnlab.explorer.engine import Explorer, default_params
from attnlab.explorer.layer_metrics import METRIC_NAMES, layer_metrics
from attnlab.explorer.params import Limits, RequestError, parse_params
from attnlab.explorer.server import serve_in_thread
from attnlab.models.hooks import attention_override, pattern_name, record_attention
from attnlab.present.catalogue import catalogue_json

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer"


def tiny_loaded(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    import attnlab.models.hf  # noqa: F401  (registers attn_implementation="attnlab")
    from attnlab.data.tokenizers import ByteTokenizer
    from attnlab.models.adapter import from_hf

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return from_hf(LlamaForCausalLM(cfg).eval(), ByteTokenizer(), "tiny-llama", "test")


@pytest.fixture(scope="module")
def explorer(tmp_path_factory, one_thread):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield Explorer(tiny_loaded(), name="tiny-llama")


@pytest.fixture(scope="module")
def server(explorer):
    srv = serve_in_thread(explorer, "127.0.0.1", 0)
    yield srv
    srv.shutdown()
    srv.server_close()


def call(server, method: str, path: str, body: object = None, raw: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict | bytes]:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    res = conn.getresponse()
    payload = res.read()
    conn.close()
    if res.getheader("Content-Type", "").startswith("application/json"):
        return res.status, json.loads(payload)
    return res.status, payload


def analyze(server, **fields) -> tuple[int, dict]:
    return call(server, "POST", "/api/analyze", {"text": TEXT, **fields})


def test_info_describes_the_model(server):
    status, info = call(server, "GET", "/api/info")
    assert status == 200
    assert (info["n_layers"], info["n_heads"], info["d_model"]) == (3, 4, 32)
    # The menu is the registry: every built-in, clipped included, and the variants.
    assert info["normalizers"] == normalizer_names()
    assert info["normalizers"][:6] == ["softmax", "softmax1", "sinks", "clipped", "adaptive", "ssmax"]
    assert info["sink_normalizers"] == ["sinks"]
    assert info["limits"]["max_tokens"] == 256
    assert info["max_labelled_tokens"] == 48  # as the notebook's AttentionPattern labels its ticks
    assert len(info["explained"]) == 3 and len(info["explained"][0]) == info["n_directions"]
    assert 0 < len(info["default_text"]) and info["default_text"].startswith("Shall I compare")
    # The curves' keys in page order, each with the catalogue's words (what the page titles them with).
    assert list(info["metrics"]) == list(METRIC_NAMES)
    assert info["metrics"] == catalogue_json(METRIC_NAMES)
    assert info["metrics"]["entropy_nats_layer"]["unit"] == "nats"
    assert all(e["label"] and e["reading"] for e in info["metrics"].values())


def test_page_and_assets_are_served(server):
    for path, kind in [("/", b'<svg id="heatmap"'), ("/app.js", b"api/analyze"), ("/style.css", b"--accent")]:
        status, body = call(server, "GET", path)
        assert status == 200 and kind in body
    status, body = call(server, "GET", "/")
    assert b"http://" not in body and b"https://" not in body  # no CDN: everything is local


def test_analyze_default_is_a_causal_softmax_pattern(server):
    status, r = analyze(server, layer=2, head=3)
    assert status == 200, r
    t = r["n_tokens"]
    assert t == len(TEXT.encode()) and len(r["tokens"]) == t
    p = torch.tensor(r["pattern"])
    assert p.shape == (t, t)
    assert torch.allclose(p.sum(-1), torch.ones(t), atol=1e-2)
    assert torch.all(torch.triu(p, diagonal=1) == 0)  # no query sees the future
    assert set(r["metrics"]) == {"resid_norm", "uniformity", "entropy_nats_layer", "first_token_layer"}
    assert all(len(v) == 3 for v in r["metrics"].values())
    probs = [x["prob"] for x in r["top"]]
    assert probs == sorted(probs, reverse=True) and len(probs) == 10
    assert r["baseline_metrics"] is None  # nothing is overridden


def test_pattern_matches_a_direct_override_run(server, explorer):
    """The reference twin: the served pattern equals one recorded by hand under the same override."""
    status, r = analyze(server, layer=1, head=2, normalizer="ssmax", temperature=0.5, window=9, sinks=2)
    assert status == 200, r
    ids = explorer.encode(TEXT)
    from attnlab.attention import SinkWindow

    override = attention_override(normalizer="ssmax", span=SinkWindow(2, 9), temperature=0.5)
    with torch.inference_mode(), override, record_attention() as rec:
        explorer.loaded.logits(ids)
    want = rec[pattern_name(1)][0, 2]
    got = torch.tensor(r["pattern"])
    assert torch.allclose(got, want.float(), atol=2e-3)
    i = 40  # a query far enough in: keys 2 .. 31 are outside both the sinks and the window
    assert torch.all(got[i, 2 : i - 8] == 0) and got[i, :2].sum() > 0 and got[i, i - 8 : i + 1].sum() > 0


def test_override_changes_attention_and_metrics(server):
    _, base = analyze(server, layer=1, head=0)
    _, one = analyze(server, layer=1, head=0, normalizer="softmax1")
    rows = torch.tensor(one["pattern"]).sum(-1)
    assert torch.all(rows < 0.999)  # the extra 1 in the denominator takes mass from every row
    tok0, base_tok0 = one["metrics"]["first_token_layer"], base["metrics"]["first_token_layer"]
    assert all(a < b for a, b in zip(tok0, base_tok0))
    assert one["metrics"]["resid_norm"] != base["metrics"]["resid_norm"]
    assert one["baseline_metrics"] == base["metrics"]
    _, hot = analyze(server, layer=1, head=0, temperature=4.0)
    assert hot["metrics"]["entropy_nats_layer"][1] > base["metrics"]["entropy_nats_layer"][1]  # flatter rows
    _, sink = analyze(server, layer=1, head=0, normalizer="sinks", sink_logit=5.0)
    assert torch.tensor(sink["pattern"]).sum(-1).max() < rows.max()  # a larger sink logit takes more


def test_scope_layer_leaves_other_layers_alone(server):
    _, base = analyze(server, layer=2)
    _, r = analyze(server, layer=2, scope="layer", temperature=3.0)
    assert r["metrics"]["entropy_nats_layer"][:2] == base["metrics"]["entropy_nats_layer"][:2]
    assert r["metrics"]["entropy_nats_layer"][2] != base["metrics"]["entropy_nats_layer"][2]


def test_head_and_layer_moves_reuse_the_forward(server):
    analyze(server, layer=0, head=0, temperature=1.7)
    status, r = analyze(server, layer=2, head=3, temperature=1.7)
    assert status == 200 and r["cached"] is True


def test_grid_of_heads_holds_every_head_of_the_layer(server):
    """Short text (<= 64 tokens): the thumbnails are the patterns themselves, one per head."""
    short = "To be, or not to be, that is the question"
    _, r = call(server, "POST", "/api/analyze", {"text": short, "layer": 2, "head": 1, "grid": "heads"})
    g = r["grid"]
    assert g["kind"] == "heads" and g["side"] == r["n_tokens"] == len(short) and len(g["maps"]) == 4
    for head in range(4):
        _, one = call(server, "POST", "/api/analyze", {"text": short, "layer": 2, "head": head})
        assert one["grid"] is None  # no grid unless asked for
        assert torch.allclose(torch.tensor(g["maps"][head]), torch.tensor(one["pattern"]), atol=1e-4)


def test_grid_of_layers_is_block_averaged_past_64_tokens(server):
    _, r = analyze(server, layer=1, head=2, grid="layers", normalizer="softmax1")
    g = r["grid"]
    assert r["n_tokens"] > 64 and g["kind"] == "layers" and g["side"] == 64 and len(g["maps"]) == 3
    want = torch.nn.functional.adaptive_avg_pool2d(torch.tensor(r["pattern"])[None], 64)[0]
    got = torch.tensor(g["maps"][1])  # the chosen layer's thumbnail is its pattern, averaged in blocks
    assert got.shape == (64, 64) and torch.allclose(got, want, atol=1e-3)
    _, other = analyze(server, layer=0, head=2, grid="layers", normalizer="softmax1")
    assert other["cached"] is True and other["grid"]["maps"] == g["maps"]  # the same forward, any layer


def test_steering_moves_the_next_token_distribution(server, explorer):
    before = explorer.loaded.logits(explorer.encode(TEXT)).detach()
    _, base = analyze(server, steer_layer=1)
    _, r = analyze(server, steer_layer=1, alphas=[3.0, 0, 0, -2.0])
    assert r["baseline_top"] == base["top"]
    moved = {t["id"]: t["prob"] for t in r["top"]}
    assert any(abs(moved[t["id"]] - t["baseline_prob"]) > 1e-4 for t in r["top"])
    # blocks before the steered one unchanged
    assert r["metrics"]["resid_norm"][0] == base["metrics"]["resid_norm"][0]
    assert r["metrics"]["resid_norm"][1] != base["metrics"]["resid_norm"][1]
    after = explorer.loaded.logits(explorer.encode(TEXT)).detach()
    assert torch.equal(before, after)  # the steering hook is gone after the request


@pytest.mark.parametrize("fields", [{}, {"window": 5, "sinks": 1, "normalizer": "softmax1"},
                                    {"alphas": [2.0, -1.0], "steer_layer": 0}])
def test_continuation_matches_recomputing_without_a_cache(server, explorer, fields):
    """The KV-cache decode (the fast path) against argmax over the whole sequence, recomputed each step."""
    status, r = call(server, "POST", "/api/continue", {"text": TEXT, **fields})
    assert status == 200, r
    p = parse_params({"text": TEXT, **fields}, explorer.limits, n_layers=3, n_heads=4, n_directions=4)
    seq = explorer.encode(TEXT)
    with torch.inference_mode(), explorer._override(p), explorer._steer(p):
        for _ in range(explorer.limits.continuation_tokens):
            nxt = explorer.loaded.logits(seq)[0, -1].argmax().view(1, 1)
            seq = torch.cat([seq, nxt], dim=1)
    want = explorer.loaded.decode(seq[0, -explorer.limits.continuation_tokens:])
    assert r["continuation"] == want
    if fields:
        _, plain = call(server, "POST", "/api/continue", {"text": TEXT})
        assert r["baseline_continuation"] == plain["continuation"]
    else:
        assert r["baseline_continuation"] is None
    _, again = call(server, "POST", "/api/continue", {"text": TEXT, **fields})
    assert again["continuation"] == r["continuation"]  # decoding did not disturb the cached KV


@pytest.mark.parametrize("fields, status, message", [
    ({"text": ""}, 400, "non-empty string"),
    ({"text": "x" * 300}, 400, "300 tokens long; the limit is 256"),
    ({"text": "x" * 4001}, 400, "4001 characters; the limit is 4000"),
    ({"temperature": 0}, 400, r"'temperature' must be in \[0.1, 10\]"),
    ({"temperature": "hot"}, 400, "'temperature' must be a finite number"),
    ({"normalizer": "sparsemax"}, 400, "unknown normalizer 'sparsemax'; choose one of softmax"),
    ({"layer": 3}, 400, r"'layer' must be in \[0, 2\], got 3"),
    ({"head": -1}, 400, r"'head' must be in \[0, 3\]"),
    ({"window": 257}, 400, r"'window' must be in \[0, 256\]"),
    ({"sinks": 17}, 400, r"'sinks' must be in \[0, 16\]"),
    ({"alphas": [0, 0, 0, 0, 1]}, 400, "at most 4 numbers"),
    ({"alphas": [9]}, 400, r"'alphas\[0\]' must be in \[-4, 4\]"),
    ({"scope": "some"}, 400, "'scope' must be 'all'"),
    ({"grid": "all"}, 400, r"'grid' must be 'heads' \(every head of the layer\), 'layers'"),
    ({"path": "/etc/passwd"}, 400, "unknown field"),
])
def test_bad_input_is_refused_with_a_message(server, fields, status, message):
    import re

    got, body = analyze(server, **fields)
    assert got == status
    assert re.search(message, body["error"]), body["error"]


def test_malformed_bodies_are_refused(server):
    status, body = call(server, "POST", "/api/analyze", raw=b"{not json")
    assert status == 400 and "not valid UTF-8 JSON" in body["error"]
    status, body = call(server, "POST", "/api/analyze", raw=b"[1, 2]")
    assert status == 400 and "must be a JSON object" in body["error"]
    status, body = call(server, "POST", "/api/analyze", raw=b'{"text": "' + b"a" * 70000 + b'"}')
    assert status == 413 and "limit is 65536" in body["error"]
    status, body = call(server, "GET", "/api/analyze")
    assert status == 405 and "use POST" in body["error"]
    status, body = call(server, "POST", "/api/continue", {"text": "x" * 300})
    assert status == 400 and "the limit is 256" in body["error"]


@pytest.mark.parametrize("path", [
    "/../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/static/../server.py",
    "/app.js/../../server.py", "//etc/passwd", "/..%2fengine.py", "/server.py", "/static/app.js",
    "/index.html%00.py", "/?file=/etc/passwd",
])
def test_no_file_outside_the_allow_list_is_served(server, path):
    status, body = call(server, "GET", path)
    if path == "/?file=/etc/passwd":  # the query string is ignored: this is the page itself
        assert status == 200 and b'<svg id="heatmap"' in body
        return
    assert status == 404
    assert "serves only its own page" in body["error"]


def test_a_waiting_request_is_superseded_by_a_newer_one(server, explorer):
    import threading
    import time

    results: dict[str, tuple] = {}

    def post(name: str, temperature: float) -> None:
        results[name] = analyze(server, temperature=temperature)

    first = threading.Thread(target=post, args=("first", 1.11))
    second = threading.Thread(target=post, args=("second", 1.12))
    with explorer._lock:  # the model is busy: both requests queue behind it
        start = server._tickets
        first.start()
        while server._tickets < start + 1:
            time.sleep(0.01)
        second.start()
        while server._tickets < start + 2:
            time.sleep(0.01)
    first.join(30)
    second.join(30)
    assert results["first"][0] == 409 and "superseded" in results["first"][1]["error"]
    assert results["second"][0] == 200 and results["second"][1]["cached"] is False


def test_foreign_host_header_is_refused(server):
    status, body = call(server, "GET", "/api/info", headers={"Host": "attacker.example:80"})
    assert status == 403 and "unexpected Host header" in body["error"]


def test_directions_are_orthonormal_and_cached(explorer, tmp_path, monkeypatch):
    d = explorer.directions[1]
    c = d.components.double()
    assert torch.allclose(c @ c.T, torch.eye(c.shape[0], dtype=torch.float64), atol=1e-5)
    assert d.typical_norm > 0 and torch.all(d.explained[:-1] >= d.explained[1:])
    delta = d.delta((1.0, 0.0, 0.0, 0.0))
    assert math.isclose(float(delta.norm()), d.typical_norm, rel_tol=1e-5)
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    key = dirs.model_key("m", explorer.loaded.model, ("a b c",), 4)
    assert dirs.load_cached(key, 1) is None
    path = dirs.save_cached(key, d)
    assert path.is_relative_to(tmp_path / "explorer")
    again = dirs.load_cached(key, 1)
    assert again is not None and torch.equal(again.components, d.components)
    other = dirs.model_key("m", tiny_loaded(seed=1).model, ("a b c",), 4)
    assert other != key  # different weights, different cache entry


def test_pca_recovers_a_planted_direction():
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(16, generator=g), dim=0)
    x = 10 * torch.randn(200, 1, generator=g) * u + 0.1 * torch.randn(200, 16, generator=g) + 3.0
    d = dirs.pca_directions(x, layer=0, k=3)
    assert abs(float(d.components[0] @ u)) > 0.999 and d.explained[0] > 0.95


def test_layer_metrics_summaries():
    t = 6
    x = torch.randn(1, 8, dtype=torch.float64).repeat(t, 1)
    uniform = torch.tril(torch.ones(2, t, t, dtype=torch.float64)) / torch.arange(1, t + 1)[:, None]
    m = layer_metrics(x, uniform)
    assert m["uniformity"] < 1e-6  # identical rows: the rank-one limit of uniform attention
    assert math.isclose(m["resid_norm"], float(x[0].norm()), rel_tol=1e-9)
    want = float(torch.log(torch.arange(1, t + 1).double()).mean())
    assert math.isclose(m["entropy_nats_layer"], want, rel_tol=1e-9)
    assert math.isclose(m["first_token_layer"], float((1 / torch.arange(2, t + 1).double()).mean()),
                        rel_tol=1e-9)
    first = torch.zeros(1, t, t)
    first[..., 0] = 0.5  # softmax1-like rows summing to 0.5: sink mass is not renormalised, entropy is
    m = layer_metrics(x, first)
    assert m["first_token_layer"] == 0.5 and m["entropy_nats_layer"] == 0.0
    assert math.isnan(layer_metrics(x, None)["entropy_nats_layer"])


def test_parse_params_defaults_fill_alphas():
    p = parse_params({"text": "hi", "alphas": [0.5]}, Limits(), n_layers=4, n_heads=2, n_directions=3)
    assert p.alphas == (0.5, 0.0, 0.0) and p.steer_layer == 2 and p.steering and not p.overriding
    with pytest.raises(RequestError, match="must be a JSON object"):
        parse_params([], Limits(), n_layers=4, n_heads=2, n_directions=3)


def test_default_text_fits_the_token_budget(explorer):
    assert explorer.encode(explorer.default_text).shape[-1] <= 128
    r = explorer.analyze(default_params(explorer))
    assert r["n_tokens"] == explorer.encode(explorer.default_text).shape[-1]


def test_cli_registers_explore_and_checks_the_port():
    import argparse

    from attnlab.errors import ConfigError
    from attnlab.explorer import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["explore", "--no-browser"])
    assert (args.model, args.port, args.host, args.no_browser) == ("smollm2-135m", 8765, "127.0.0.1", True)
    with pytest.raises(ConfigError, match="--port must be in"):
        cli.run(parser.parse_args(["explore", "--port", "70000"]))


def test_cli_run_serves_on_the_given_port_and_prints_the_url(monkeypatch, capsys, tmp_path, one_thread):
    import argparse

    import attnlab
    from attnlab.explorer import cli
    from attnlab.explorer.server import ExplorerServer

    seen = {}
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(attnlab, "load_model", lambda name: seen.setdefault("model", name) and tiny_loaded())
    monkeypatch.setattr(ExplorerServer, "serve_forever",
                        lambda self: seen.setdefault("address", self.server_address))
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    assert cli.run(parser.parse_args(["explore", "--model", "tiny", "--port", "0", "--no-browser"])) == 0
    host, port = seen["address"][:2]
    assert seen["model"] == "tiny" and host == "127.0.0.1" and port > 0
    assert f"serving tiny at http://127.0.0.1:{port}/" in capsys.readouterr().out
