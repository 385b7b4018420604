"""`run_report`: every diagnostic of one or more models on one text, as report.json and report.html.

The JSON schema (version SCHEMA_VERSION) is documented key by key in docs/diagnostics.md. In short:

    {"schema_version", "kind": "attnlab.report", "provenance": {config, seed, versions, created},
     "text": {source, offset, n_chars, sha256},
     "models": [{"model": {...}, "tokens": {...}, "loss": {...}, "timings_s": {...}, "summary": {...},
                 "embeddings": {...}, "layers": [one entry per block], "ablations": {...},
                 "quantization": {...}, "sensitivity": {...}, "collapse_probe": {...},
                 "lipschitz": {...}}, ...],
     "timings_s": {"total": ...}}

Numbers that are undefined (nan) or infinite are written as null. Analyses of activations are functions
of the cache that `LoadedModel.run_with_cache` returns (see attnlab.diagnose.metrics); the model-level
probes (sensitivity, collapse, Lipschitz, quantization, ablations) need the model and run after it.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from attnlab.diagnose.ablate import ABLATIONS, ablation_curves
from attnlab.diagnose.lipschitz import block_lipschitz, lipschitz_vs_length
from attnlab.diagnose.metrics import cache_metrics, fitted_growth
from attnlab.diagnose.quantize import next_token_loss, perplexity, quantization_cost
from attnlab.diagnose.sensitivity import collapse_probe, default_probe_lengths, sensitivity_profile
from attnlab.errors import ConfigError, DataError

SCHEMA_VERSION = "1.0"
DEFAULT_MODEL = "smollm2-135m"
# The default passage: Hamlet's soliloquy, found by this line in the Shakespeare corpus (first occurrence in
# sorted file order), so the report reads a passage a person recognises.
PASSAGE_ANCHOR = "To be, or not to be"
CHARS_PER_TOKEN_BOUND = 12  # a window of 12 characters per wanted token always holds enough text


@dataclass
class ReportConfig:
    """What the report computes; the heavy parts are sized here. `quick()` is the --quick preset."""

    max_tokens: int = 512
    top_k: int = 5  # massive activations listed per layer
    ablations: tuple[str, ...] = ABLATIONS
    quant_modes: tuple[str, ...] = ("w8a8", "w8", "a8")
    sensitivity_probes: int = 4  # backward passes of the over-squashing estimator
    collapse_max: int = 256  # longest run of ones in the collapse probe (capped by max_tokens)
    lipschitz_iters: int = 6  # power-iteration steps per constant
    lipschitz_block_tokens: int = 64  # tokens of the passage for the per-block constants
    lipschitz_lengths: tuple[int, ...] = (16, 32, 64, 128)  # capped by the tokens available
    seed: int = 0

    @staticmethod
    def quick(**overrides: Any) -> ReportConfig:
        base = ReportConfig(max_tokens=128, quant_modes=("w8a8",), sensitivity_probes=2, collapse_max=64,
                            lipschitz_iters=4, lipschitz_block_tokens=32, lipschitz_lengths=(8, 16, 32))
        return replace(base, **overrides)

    def validate(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 2:
            raise ConfigError(f"max_tokens must be an int >= 2 (one prediction needs two tokens), "
                              f"got {self.max_tokens!r}")
        for name in ("sensitivity_probes", "lipschitz_iters", "lipschitz_block_tokens", "top_k"):
            val = getattr(self, name)
            if not isinstance(val, int) or val < 1:
                raise ConfigError(f"{name} must be a positive int, got {val!r}")
        bad = [a for a in self.ablations if a not in ABLATIONS]
        if bad:
            raise ConfigError(f"unknown ablation(s) {bad}; choose from {', '.join(ABLATIONS)}")


# -- text -------------------------------------------------------------------------------------------------
@dataclass
class Passage:
    text: str
    source: str
    offset: int
    info: dict[str, Any] = field(default_factory=dict)


def choose_passage(text: str | Path | None, max_tokens: int) -> Passage:
    """The characters every model reads: the Shakespeare passage (default), a file's text (Path), or the
    given string, from `offset`, at most CHARS_PER_TOKEN_BOUND * max_tokens characters (each model then
    keeps its first max_tokens tokens)."""
    if text is None:
        from attnlab.data.corpus import load_text

        full, source = load_text(None), "shakespeare"
        found = full.find(PASSAGE_ANCHOR)
        offset = full.rfind("\n", 0, found) + 1 if found >= 0 else 0
    elif isinstance(text, Path):
        from attnlab.data.corpus import load_text

        full, source, offset = load_text(text), str(text), 0
    elif isinstance(text, str):
        full, source, offset = text, "string", 0
    else:
        raise TypeError(f"text must be None (Shakespeare), a pathlib.Path or a str, "
                        f"got {type(text).__name__}")
    if not full.strip():
        raise DataError(f"the text ({source}) is empty or only whitespace; pass a text with some words in it")
    window = full[offset: offset + CHARS_PER_TOKEN_BOUND * max_tokens]
    return Passage(window, source, offset, {
        "source": source, "offset": offset, "n_chars": len(window),
        "sha256": hashlib.sha256(window.encode("utf-8")).hexdigest(),
        "full_sha256": hashlib.sha256(full.encode("utf-8")).hexdigest()})


# -- one model --------------------------------------------------------------------------------------------
class _Steps:
    """A tqdm bar over the report's steps (stderr; silent when progress is off), timing each step."""

    def __init__(self, total: int, desc: str, progress: bool) -> None:
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=True, dynamic_ncols=True)
        self.timings: dict[str, float] = {}

    def run(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.bar is not None:
            self.bar.set_postfix_str(name)
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        self.tick()
        return out

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _load(model: Any) -> Any:
    if hasattr(model, "run_with_cache") and hasattr(model, "blocks"):
        return model
    if not isinstance(model, (str, Path)):
        raise TypeError(f"a model is a name, a path or a LoadedModel, got {type(model).__name__}")
    from attnlab.models.loading import load_model

    return load_model(str(model))


def _model_info(lm: Any) -> dict[str, Any]:
    return {"name": lm.name, "source": str(lm.source), "kind": lm.kind, "n_layers": lm.n_layers,
            "n_heads": lm.n_heads, "n_kv_heads": lm.n_kv_heads, "head_dim": lm.head_dim,
            "d_model": lm.d_model, "vocab_size": lm.vocab_size, "max_context": lm.max_context,
            "n_params": int(sum(p.numel() for p in lm.model.parameters())),
            "dtype": str(lm.dtype).replace("torch.", ""), "device": str(lm.device)}


def _tokens(lm: Any, passage: Passage, cfg: ReportConfig) -> torch.Tensor:
    if lm.max_context and cfg.max_tokens > lm.max_context:
        raise ConfigError(f"--max-tokens {cfg.max_tokens} is beyond {lm.name}'s context of {lm.max_context} "
                          f"tokens; pass --max-tokens {lm.max_context} or less")
    ids = lm.encode(passage.text)[:, :cfg.max_tokens]
    if ids.shape[1] < 2:
        raise DataError(f"the text encodes to {ids.shape[1]} token(s) for {lm.name}; the report needs at "
                        f"least 2 (one prediction), pass a longer text")
    return ids


def report_model(lm: Any, passage: Passage, cfg: ReportConfig, progress: bool = True) -> dict[str, Any]:
    """The report section of one loaded model (see the module docstring)."""
    ids = _tokens(lm, passage, cfg)
    n_tok = int(ids.shape[1])
    block_tokens = min(cfg.lipschitz_block_tokens, n_tok)
    lengths = sorted({min(n, n_tok) for n in cfg.lipschitz_lengths})
    collapse_lengths = default_probe_lengths(min(cfg.collapse_max, max(4, (lm.max_context or n_tok) - 2)),
                                             start=4)
    n_ablations = len([a for a in cfg.ablations if a != "full"])
    steps = _Steps(7 + n_ablations + len(cfg.quant_modes) + lm.n_layers + len(lengths), f"report {lm.name}",
                   progress)
    try:
        with torch.no_grad():
            logits = steps.run("forward", lm.logits, ids)
            loss = next_token_loss(logits, ids)
            del logits
            _, cache = steps.run("capture", lm.run_with_cache, ids)
        metric_times: dict[str, float] = {}
        metrics = steps.run("metrics", cache_metrics, cache, lm.n_layers, cfg.top_k, metric_times)
        del cache  # the patterns are the largest thing the report holds; free them before the probes
        ablations = {}
        for mode in cfg.ablations:
            if mode == "full":  # the capture already holds the unablated stream
                ablations["full"] = _full_curves(metrics)
                continue
            ablations.update(steps.run(f"ablation_{mode}", ablation_curves, lm, ids, [mode]))
        quant: dict[str, Any] = {}
        for mode in cfg.quant_modes:
            quant.update(steps.run(f"quantization_{mode}", quantization_cost, lm, ids, modes=(mode,),
                                   base_loss=loss))
        sens = steps.run("sensitivity", sensitivity_profile, lm, ids, cfg.sensitivity_probes, cfg.seed)
        collapse = steps.run("collapse_probe", collapse_probe, lm, collapse_lengths)
        blocks = steps.run("lipschitz_blocks", block_lipschitz, lm, ids[:, :block_tokens],
                           n_iter=cfg.lipschitz_iters, seed=cfg.seed, progress=steps.tick)
        vs_len = steps.run("lipschitz_vs_length", lipschitz_vs_length, lm, ids, lengths,
                           n_iter=cfg.lipschitz_iters, seed=cfg.seed, progress=steps.tick)
    finally:
        steps.close()
    for entry, lip in zip(metrics["layers"], blocks):
        entry["lipschitz"] = lip
    timings = dict(steps.timings)
    timings.update({f"metrics.{k}": v for k, v in metric_times.items()})
    timings["capture_overhead"] = timings["capture"] / timings["forward"] if timings["forward"] > 0 else None
    sens_list = sens.tolist()
    total_sens = sum(sens_list)
    section = {
        "model": _model_info(lm),
        "tokens": {"n": n_tok, "ids_sha256": hashlib.sha256(str(ids[0].tolist()).encode()).hexdigest(),
                   "first": lm.decode(ids[0, :12])},
        "loss": {"nats": loss, "ppl": perplexity(loss)},
        "timings_s": timings,
        "embeddings": metrics["embeddings"],
        "layers": metrics["layers"],
        "ablations": {"definition": "see attnlab.diagnose.ablate", **ablations},
        "quantization": quant,
        "sensitivity": {"estimator": f"Gaussian random projections, {cfg.sensitivity_probes} probes",
                        "norm": sens_list,
                        "normalized": [s / total_sens if total_sens > 0 else None for s in sens_list]},
        "collapse_probe": collapse,
        "lipschitz": {"iterations": cfg.lipschitz_iters, "block_tokens": block_tokens,
                      "blocks": blocks, "vs_length": vs_len},
    }
    section["summary"] = summarize(section)
    return section


def _full_curves(metrics: dict[str, Any]) -> dict[str, list]:
    """The "full" entry of ablation_curves, read from the per-layer metrics instead of a second pass."""
    rows = [metrics["embeddings"]] + metrics["layers"]
    return {"ratio": [r["uniformity"]["ratio"] for r in rows],
            "ratio_excl_first": [(r["uniformity_excl_first"] or {}).get("ratio", math.nan) for r in rows],
            "norm": [r["residual"]["mean_all"] for r in rows]}


def summarize(section: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of one model's section (each documented in docs/diagnostics.md)."""
    layers = section["layers"]
    norms = [section["embeddings"]["residual"]["mean"]] + [e["residual"]["mean"] for e in layers]
    growth = fitted_growth(norms, skip_first=1) if len(layers) >= 2 and min(norms[1:]) > 0 else None
    firsts = [h for e in layers if e.get("attention") for h in e["attention"]["first_token"]]
    from attnlab.diagnose.attention_stats import SINK_THRESHOLD

    ratio = [e["uniformity"]["ratio"] for e in layers]
    top = max(layers, key=lambda e: e["outliers"]["max_abs"])
    out = {
        "loss_nats": section["loss"]["nats"],
        "norm_growth_per_layer": growth,
        "norm_first_over_rest_last": _div(layers[-1]["residual"]["first"], layers[-1]["residual"]["mean"]),
        "sink_rate": (sum(a > SINK_THRESHOLD for a in firsts) / len(firsts)) if firsts else None,
        "uniformity_last": ratio[-1],
        "uniformity_excl_first_last": (layers[-1]["uniformity_excl_first"] or {}).get("ratio"),
        "kurtosis_max": max(e["outliers"]["kurtosis_max"] for e in layers),
        "max_abs": top["outliers"]["max_abs"],
        "max_abs_where": {"layer": top["index"], **{k: top["outliers"]["massive"]["top"][0][k]
                                                    for k in ("token", "dim")}},
        "lipschitz_exponent": section["lipschitz"]["vs_length"].get("exponent"),
        "lipschitz_model_max_len": section["lipschitz"]["vs_length"]["value"][-1],
    }
    for mode in ("w8a8", "w8", "a8"):
        if mode in section["quantization"]:
            out[f"quant_{mode}_delta_ppl"] = section["quantization"][mode]["delta_ppl"]
    for mode in ("no_skip", "pure_attention"):
        if mode in section["ablations"]:
            out[f"uniformity_last_{mode}"] = section["ablations"][mode]["ratio"][-1]
    sens = section["sensitivity"]["norm"]
    out["sensitivity_first_over_last"] = _div(sens[0], sens[-1])
    return out


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


# -- the report -------------------------------------------------------------------------------------------
def run_report(model_name_or_path: str | Path | Any | Sequence[str | Path | Any] = DEFAULT_MODEL,
               text: str | Path | None = None, max_tokens: int | None = None,
               out: str | Path | None = "report", progress: bool = True, quick: bool = False,
               config: ReportConfig | None = None,
               **overrides: Any) -> dict[str, Any]:
    """Diagnose one model, or several side by side, and write out/report.json and out/report.html.

    Args:
        model_name_or_path: a name ("smollm2-135m"), a path, a LoadedModel, or a list of them.
        text: None for the default Shakespeare passage, a Path to read, or the text itself (str).
        max_tokens: tokens each model reads (its first max_tokens of the passage); default 512, or 128
            with quick.
        out: output folder (created); None writes nothing and only returns the report.
        quick: the small preset (ReportConfig.quick); `config` or keyword overrides of ReportConfig
            fields size the heavy parts instead.
    Returns the report dict (what report.json holds).
    """
    start = time.perf_counter()
    if config is None:
        config = ReportConfig.quick() if quick else ReportConfig()
    if max_tokens is not None:
        overrides["max_tokens"] = max_tokens
    try:
        config = replace(config, **overrides)
    except TypeError as exc:
        names = ", ".join(ReportConfig.__dataclass_fields__)
        raise ConfigError(f"unknown report setting ({exc}); known settings: {names}") from None
    config.validate()
    many = isinstance(model_name_or_path, (list, tuple))
    models = list(model_name_or_path) if many else [model_name_or_path]
    if not models:
        raise ConfigError("no model given; pass at least one model name or path")
    passage = choose_passage(text, config.max_tokens)
    sections = []
    for m in models:
        t0 = time.perf_counter()
        lm = _load(m)
        load_s = time.perf_counter() - t0
        section = report_model(lm, passage, config, progress)
        section["timings_s"] = {"load": load_s, **section["timings_s"]}
        sections.append(section)
    from attnlab.io import provenance

    report = {
        "schema_version": SCHEMA_VERSION,
        "kind": "attnlab.report",
        "provenance": provenance(asdict(config), config.seed),
        "text": passage.info,
        "models": sections,
        "timings_s": {"total": time.perf_counter() - start},
    }
    report = clean_json(report)
    if out is not None:
        write_report(report, Path(out))
    return report


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write report.json and report.html into `out` atomically; returns their paths."""
    from attnlab.diagnose.html import render_html
    from attnlab.io import atomic_write_json, atomic_write_text

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder for report.json and report.html")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output folder {out} ({exc.strerror}); pass a writable --out") \
            from None
    html_path = atomic_write_text(out / "report.html", render_html(report))
    json_path = atomic_write_json(out / "report.json", report)
    return json_path, html_path


def clean_json(obj: Any) -> Any:
    """Recursively: non-finite floats -> None, tuples -> lists, tensors -> lists (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return clean_json(obj.tolist())
    return obj
