"""Study 6, `streaming`: the StreamingLLM reproduction (Xiao et al. 2024), delegated to `attnlab.stream`.

Xiao, Tian, Chen, Han & Lewis 2024, "Efficient streaming language models with attention sinks" (ICLR):
with a sliding-window KV cache, perplexity explodes once the first tokens are evicted (Llama-2-13B on PG19:
window 5158 vs sliding window with re-computation 5.43), because those tokens are attention sinks; keeping
the first 4 tokens' KV next to the window (sinks(4, W)) restores it (5.40). At a fixed cache budget the
number of sink tokens matters little beyond one: 0 / 1 / 2 / 4 / 8 sinks give 3360 / 11.9 / 10.5 / 9.6 /
9.5 (their Table 2, Llama-2-7B).

Here: a real model (SmolLM2-135M by default; the smoke preset streams through an untrained byte GPT) reads
the concatenated Shakespeare corpus as one stream, token by token semantics (`stream_eval` chunked mode,
exact), under window(B), sinks(s, B - s) for each sink count s, and recompute(B) (scored every `stride`
tokens: an unbiased subsample, each scored position exact). B is the cache budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnlab.experiments.base import Parts, check_fields, claim, finish, fmt


@dataclass(frozen=True)
class Config:
    model: str = "smollm2-135m"  # or "tiny": an untrained byte GPT (no files needed)
    seeds: tuple[int, ...] = (0,)  # the stream is deterministic; kept for the common frame
    tokens: int = 3000
    budget: int = 256  # cache size B: window(B), sinks(s, B - s), recompute(B)
    sink_counts: tuple[int, ...] = (0, 1, 2, 4, 8)
    recompute_stride: int = 30
    matched: bool = True  # claims compare every policy on the positions recompute scored (same tokens)
    chunk: int = 128
    bin_size: int = 500
    text_offset: int = 20_000  # characters skipped at the start of the corpus (front matter)


PRESETS: dict[str, Config] = {
    "smoke": Config(model="tiny", tokens=160, budget=32, sink_counts=(0, 4), recompute_stride=16, chunk=32,
                    bin_size=40),
    "quick": Config(),
    "full": Config(tokens=20_000, budget=1024, recompute_stride=100, chunk=256, bin_size=1000),
}

SUMMARY = ("StreamingLLM on a real model over the Shakespeare stream: window vs attention sinks vs sliding "
           "window with re-computation at one cache budget, and the sink-count table.")


def validate(config: Config) -> None:
    check_fields(config, tokens=lambda t: t > 2 * config.budget, budget=lambda b: b >= 8,
                 sink_counts=lambda s: 0 in s and 4 in s and all(0 <= x < config.budget for x in s),
                 recompute_stride=lambda s: s >= 1, chunk=lambda c: c >= 1)


def _model(config: Config) -> Any:
    if config.model == "tiny":
        import torch

        from attnlab.experiments.probes import wrap
        from attnlab.models.gpt import GPT, GPTConfig

        torch.manual_seed(0)
        return wrap(GPT(GPTConfig(n_layers=2, d_model=32, n_heads=2, context=256)).eval(), "tiny byte GPT")
    from attnlab.models.loading import load_model

    return load_model(config.model)


def _policy_specs(config: Config) -> dict[str, str]:
    names = [_name(s, config.budget) for s in config.sink_counts] + [f"recompute({config.budget})"]
    return {name: name for name in names}


def _one(config: Config, spec: str, progress: bool) -> dict[str, Any]:
    from attnlab.data import load_text
    from attnlab.stream import parse_policy
    from attnlab.stream.eval import stream_eval

    lm = _model(config)
    policy = parse_policy(spec, max_context=getattr(lm, "max_context", None))
    text = load_text()[config.text_offset:config.text_offset + 12 * config.tokens]
    is_recompute = spec.startswith("recompute")
    res = stream_eval(lm, text, policy, tokens=config.tokens, mode="chunked", chunk=config.chunk,
                      stride=config.recompute_stride if is_recompute else 1, bin_size=config.bin_size,
                      progress=progress)
    return res


def run(config: Config, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    validate(config)
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    parts = Parts(out_dir, config)
    res = {name: parts.get(name, lambda s=spec: _one(config, s, progress))
           for name, spec in _policy_specs(config).items()}
    B = config.budget
    matched = _matched_perplexity(res, f"recompute({B})")
    ppl = matched if config.matched else {name: r["perplexity"] for name, r in res.items()}
    claims = make_claims(config, ppl)
    for r in res.values():
        r.pop("nll", None)  # per-token NLLs stay in parts/, out of results.json (size)
    rows = [[name, fmt(r["perplexity"]), fmt(matched[name]), fmt(r["tokens_per_s"]), r["tokens"],
             " ".join(fmt(b["perplexity"]) for b in r["bins"])] for name, r in res.items()]
    tables = [{"title": f"Streaming perplexity, cache budget {B}",
               "columns": ["policy", "perplexity", "on recompute's positions", "tokens/s", "scored tokens",
                           "perplexity per bin"],
               "rows": rows,
               "note": f"{res[next(iter(res))]['model']}, {config.tokens} tokens of Shakespeare, bins of "
                       f"{config.bin_size}; recompute scored every {config.recompute_stride} tokens."},
              {"title": "Sink-count table (fixed budget)",
               "columns": ["sinks"] + [str(s) for s in config.sink_counts],
               "rows": [["ours (all tokens)"]
                        + [fmt(res[_name(s, B)]["perplexity"]) for s in config.sink_counts],
                        ["paper (Llama-2-7B)"] + [PAPER_SINKS.get(s, "–") for s in config.sink_counts]]}]
    figures = _figures(config, res, out_dir)
    timings = {"total": time.perf_counter() - t0, **{f"part {k}": v for k, v in parts.seconds.items()}}
    return finish("streaming", config, out_dir, results={"policies": res, "perplexity_matched": matched},
                  claims=claims,
                  tables=tables, figures=figures, timings=timings, parts=parts, summary=SUMMARY,
                  command=f"attnlab run streaming --out {out_dir}")


def _matched_perplexity(res: dict[str, Any], reference: str) -> dict[str, float]:
    """Perplexity of every policy over the positions `reference` (recompute, strided) scored."""
    import math

    ref = res[reference]["nll"]
    keep = [i for i, x in enumerate(ref) if x is not None]
    out = {}
    for name, r in res.items():
        vals = [r["nll"][i] for i in keep if r["nll"][i] is not None]
        out[name] = math.exp(sum(vals) / len(vals)) if vals else float("nan")
    return out


PAPER_SINKS = {0: "3360", 1: "11.9", 2: "10.5", 4: "9.6", 8: "9.5"}


def _name(s: int, B: int) -> str:
    return f"sinks({s},{B - s})" if s else f"window({B})"


def make_claims(config: Config, ppl: dict[str, float]) -> list[dict[str, Any]]:
    B = config.budget
    src = "Xiao et al. 2024"
    window, sinks4, recompute = ppl[_name(0, B)], ppl[_name(4, B)], ppl[f"recompute({B})"]
    claims = [
        claim("window attention blows up once the first tokens are evicted", src, "5158 vs 5.43 (950x)",
              "perplexity window / recompute", [window / recompute], threshold=2.0, direction="above"),
        claim("4 attention sinks + window stay close to recompute", src, "5.40 vs 5.43",
              "perplexity sinks(4) / recompute", [sinks4 / recompute], threshold=1.05, direction="below"),
    ]
    if 1 in config.sink_counts:
        one = ppl[_name(1, B)]
        share = (window - one) / (window - sinks4) if window != sinks4 else float("nan")
        claims.append(claim("one sink token recovers most of the loss", src, "3360 -> 11.9 (4 sinks: 9.6)",
                            "(ppl window - ppl 1 sink) / (ppl window - ppl 4 sinks)", [share], threshold=0.9,
                            direction="above",
                            premise=("perplexity window / recompute", [window / recompute], 2.0, "above")))
    return claims


def _figures(config: Config, res: dict[str, Any], out_dir: Path) -> list[tuple[str, str]]:
    from attnlab.experiments.html import line_plot

    s = {name: ([b["start"] for b in r["bins"]], [b["perplexity"] for b in r["bins"]], None)
         for name, r in res.items()}
    line_plot(out_dir / "ppl_bins.png", s, xlabel="stream position (tokens)", ylabel="perplexity per bin",
              title=f"Streaming perplexity, budget {config.budget}", logy=True)
    return [("ppl_bins.png", "Perplexity per bin along the stream: window climbs once token 0 leaves the "
                             "cache; sinks stay flat.")]

