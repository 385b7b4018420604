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
of the cache that `LoadedModel.run_with_cache` returns (per-layer entries: attnlab.diagnose.metrics; the
summary's activation keys: attnlab.diagnose.summary.summarize, shared with the studies); the model-level
probes (sensitivity, collapse, Lipschitz, quantization, ablations) need the model and run after it.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from attnlab.diagnose.ablate import ABLATIONS, ablation_curves
from attnlab.diagnose.lipschitz import block_lipschitz, lipschitz_vs_length
from attnlab.diagnose.metrics import cache_metrics
from attnlab.diagnose.quantize import next_token_loss, perplexity, quantization_cost
from attnlab.diagnose.sensitivity import collapse_probe, default_probe_lengths, sensitivity_profile
from attnlab.diagnose.summary import summarize
from attnlab.errors import ConfigError, DataError, ModelError

SCHEMA_VERSION = "2.0"  # 2.0: summary.kurtosis_max is the pooled layer kurtosis (docs/diagnostics.md)
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


_REPORT_POINTS = ("hook_resid_pre", "hook_resid_post", "attn.hook_pattern", "ln_final.hook_normalized")


def _report_points(name: str) -> bool:
    """The hook points the report's metrics and summary read."""
    return name.endswith(_REPORT_POINTS)


# -- one model --------------------------------------------------------------------------------------------
class _Steps:
    """Progress over the report's steps (`attnlab.train.progress.Progress`: a tqdm bar on a terminal, a
    plain line now and then in a log or notebook; nothing when progress is off), timing each step."""

    def __init__(self, total: int, desc: str, progress: bool) -> None:
        from attnlab.train.progress import Progress

        self.bar = Progress(total, desc=desc, enabled=progress)
        self.done = 0
        self.timings: dict[str, float] = {}

    def run(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        self.tick(name)
        return out

    def tick(self, name: str | None = None) -> None:
        self.done += 1
        self.bar.update(self.done, finished=name)

    def close(self) -> None:
        self.bar.close()


def _load(model: Any, **placement: Any) -> Any:
    """A LoadedModel from itself, a name, a hub id or a path; `placement` (device, dtype) for load_model."""
    if hasattr(model, "run_with_cache") and hasattr(model, "blocks"):
        if placement:
            raise ConfigError(f"device/dtype apply to models the report loads, and {model.name} is loaded "
                              f"already: pass its name instead, or load it with "
                              f"attnlab.load_model(..., device=, dtype=)")
        return model
    if not isinstance(model, (str, Path)):
        raise TypeError(f"a model is a name, a path or a LoadedModel, got {type(model).__name__}")
    from attnlab.models.loading import load_model

    return load_model(str(model), **placement)


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


def _not_finite(lm: Any, cache: Any, loss: float) -> str:
    """Where a model's activations first stop being numbers, for the one-line error: every metric past it
    would be NaN (and a spectrum of NaN raises deep inside torch)."""
    first = next((name for name, x in cache.items() if isinstance(x, torch.Tensor) and x.is_floating_point()
                  and not bool(torch.isfinite(x).all())), None)
    where = f"first at {first}" if first is not None else "in the logits"
    return (f"{lm.name} computes non-finite activations on this text ({where}; loss {loss}), so no pathology "
            f"can be measured: check the model's weights for NaN or inf, or use a wider --dtype if they "
            f"overflow")


def report_model(lm: Any, passage: Passage, cfg: ReportConfig, progress: bool = True) -> dict[str, Any]:
    """The report section of one loaded model (see the module docstring)."""
    ids = _tokens(lm, passage, cfg)
    n_tok = int(ids.shape[1])
    block_tokens = min(cfg.lipschitz_block_tokens, n_tok)
    lengths = sorted({min(n, n_tok) for n in cfg.lipschitz_lengths})
    collapse_lengths = default_probe_lengths(min(cfg.collapse_max, max(4, (lm.max_context or n_tok) - 2)),
                                             start=4)
    n_ablations = len([a for a in cfg.ablations if a != "full"])
    steps = _Steps(8 + n_ablations + len(cfg.quant_modes) + lm.n_layers + len(lengths), f"report {lm.name}",
                   progress)
    try:
        with torch.no_grad():
            logits = steps.run("forward", lm.logits, ids)
            loss = next_token_loss(logits, ids)
            del logits
            # only what the metrics and the summary read: every hook point would hold ~7 more (B, T, d)
            # tensors per layer
            _, cache = steps.run("capture", lm.run_with_cache, ids, names_filter=_report_points)
        if not math.isfinite(loss):
            raise ModelError(_not_finite(lm, cache, loss))
        metric_times: dict[str, float] = {}
        metrics = steps.run("metrics", cache_metrics, cache, lm.n_layers, cfg.top_k, metric_times)
        summary = steps.run("summary", summarize, cache, lm.n_layers)
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
    section["summary"] = {**summary, **_model_level_summary(section)}
    return section


def _full_curves(metrics: dict[str, Any]) -> dict[str, list]:
    """The "full" entry of ablation_curves, read from the per-layer metrics instead of a second pass."""
    rows = [metrics["embeddings"]] + metrics["layers"]
    return {"ratio": [r["uniformity"]["ratio"] for r in rows],
            "ratio_excl_first": [(r["uniformity_excl_first"] or {}).get("ratio", math.nan) for r in rows],
            "norm": [r["residual"]["mean_all"] for r in rows]}


def _model_level_summary(section: dict[str, Any]) -> dict[str, Any]:
    """The summary keys that need the model, not only the activations (loss, probes, quantization,
    ablations); the activation keys come from `attnlab.diagnose.summary.summarize`. All in
    docs/diagnostics.md."""
    out = {
        "loss_nats": section["loss"]["nats"],
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
               config: ReportConfig | None = None, device: str | None = None, dtype: str | None = None,
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
        device, dtype: where and in which precision the named models load (see `load_model`; default
            cpu, float32).
    Returns the report dict (what report.json holds); `report(...)` wraps it for a notebook.
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
    placement = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    sections = []
    for m in models:
        t0 = time.perf_counter()
        lm = _load(m, **placement)
        load_s = time.perf_counter() - t0
        section = report_model(lm, passage, config, progress)
        if max_tokens is not None and section["tokens"]["n"] < max_tokens:
            from attnlab.advice import advise

            advise(f"the text ({passage.source}) is only {section['tokens']['n']} tokens for {lm.name}, so "
                   f"the report reads {section['tokens']['n']}, not --max-tokens {max_tokens}; pass a longer "
                   f"text, or a --max-tokens it can fill")
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


def write_report(report: dict[str, Any], out: Path, page: str | None = None) -> tuple[Path, Path]:
    """Write report.json and report.html (`page`, drawn from the report when None) into `out` atomically;
    returns their paths."""
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
    html_path = atomic_write_text(out / "report.html", render_html(report) if page is None else page)
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


# -- in a notebook ----------------------------------------------------------------------------------------
class Report:
    """A finished report in Python (Jupyter): shown inline as the page `attnlab report` writes.

    `to_json()` is the report dict (what report.json holds; `report["models"]` indexes it), `html()` the
    self-contained page, `save(dir)` writes dir/report.json and dir/report.html atomically.
    """

    # The inline view is the page in an iframe: the page's stylesheet styles `body`, `h2`, `table`..., which
    # would restyle the whole notebook if the page were pasted in directly.
    FRAME_HEIGHT_PX = 720

    def __init__(self, data: dict[str, Any]) -> None:
        if not isinstance(data, dict) or data.get("kind") != "attnlab.report":
            raise TypeError("Report wraps the dict run_report returns (kind 'attnlab.report')")
        self.data = data
        self._html: str | None = None

    def to_json(self) -> dict[str, Any]:
        return self.data

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    @property
    def summaries(self) -> dict[str, dict[str, Any]]:
        """Each model's summary keys (docs/diagnostics.md), by model name."""
        return {s["model"]["name"]: s["summary"] for s in self.data["models"]}

    def html(self) -> str:
        if self._html is None:
            from attnlab.diagnose.html import render_html

            self._html = render_html(self.data)
        return self._html

    def save(self, out: str | Path) -> Path:
        """Write out/report.json and out/report.html (atomically); returns the folder."""
        write_report(self.data, Path(out), page=self.html())
        return Path(out)

    def _repr_html_(self) -> str:
        import html

        return (f"<iframe srcdoc=\"{html.escape(self.html(), quote=True)}\" title='attnlab report' "
                f"style='width:100%;height:{self.FRAME_HEIGHT_PX}px;border:1px solid #dde2ea;"
                f"resize:vertical'></iframe>")

    def __repr__(self) -> str:
        parts = [f"{s['model']['name']}: {s['tokens']['n']} tokens, loss {s['summary']['loss_nats']:.4g} nats"
                 for s in self.data["models"]]
        return f"Report({'; '.join(parts)})"


def report(model: str | Path | Any | Sequence[str | Path | Any] = DEFAULT_MODEL,
           text: str | Path | None = None, max_tokens: int | None = None, quick: bool = False, *,
           progress: bool = True,
           device: str | None = None, dtype: str | None = None, **overrides: Any) -> Report:
    """`attnlab.report(...)`: `run_report` for a notebook. Writes nothing (call `.save(dir)`); the result
    shows inline as the report page. `text` is the text itself (str), a file (Path) or None (the Shakespeare
    passage); `model` a name, hub id, path, LoadedModel, or a list of them side by side."""
    return Report(run_report(model, text=text, max_tokens=max_tokens, out=None, progress=progress,
                             quick=quick, device=device, dtype=dtype, **overrides))
