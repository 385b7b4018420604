"""`attnlab compare`: does adding one to the softmax denominator help, and with what? Asked of a real
pretrained LM (SmolLM2-135M by default), retrofitted with each attention variant and fine-tuned alike.

Arms (config.ARMS): `pretrained` (no fine-tuning, the reference row), `softmax` (fine-tuned with nothing
changed: the control that separates fine-tuning from the variant), `softmax1`, `sinks` (a learned sink logit
per layer and head, gpt-oss style), `clipped` (Bondarenko et al. 2023), `gated` (a per-head output gate from
the block's normed input, Bondarenko et al. 2023 / Qiu et al. 2025, exactly open at init) and
`softmax1+gated`. Each arm is `attnlab.retrofit(model, ...)` on a copy of the same weights, fine-tuned on
the same token stream with the same optimizer, schedule and trainable set (config.py), then measured on
held-out windows (measure.py); intervals and verdicts come from analysis.py, the page from page.py.

Outputs in OUT: results.json (schema in docs/experiments.md, "compare"), compare.html, one folder per
fine-tuned arm (seed 0) that `attnlab.load_model(OUT/ARM)` and every `--model` flag accept, and parts/
(the per-arm, per-seed results a resumed run reuses). The from-scratch GPT study is `attnlab run offbyone`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from attnlab.experiments.compare.config import ARMS, CONTROL, PRESETS, Config, check_config

QUESTION = "Does adding one to the softmax denominator help, and with what?"


def run(config: Config, out_dir: str | Path, progress: bool = True,
        command: str | None = None) -> dict[str, Any]:
    """Run the study (resuming finished parts in OUT/parts) and write results.json and compare.html."""
    from attnlab.experiments.base import Parts
    from attnlab.experiments.compare.data import check_train_tokens, eval_windows, token_streams
    from attnlab.experiments.compare.run import _say, load_base, run_arm
    from attnlab.io import check_out_dir

    check_config(config)
    out = check_out_dir(out_dir)
    t0 = time.perf_counter()
    base = load_base(config)
    train_tokens, held, data_desc = token_streams(base.tokenizer, config.train_text, config.text)
    windows = eval_windows(held, config.eval_windows, config.eval_context)
    if any(ARMS[a] is not None for a in config.arms):
        check_train_tokens(train_tokens, config.context)
    timings = {"load": time.perf_counter() - t0}
    parts = Parts(out, config)
    per_arm: dict[str, dict[int, dict[str, Any]]] = {}
    for arm in config.arms:
        seeds = config.seeds[:1] if ARMS[arm] is None else config.seeds
        for seed in seeds:
            _say(progress, f"arm {arm}, seed {seed}")
            res = parts.get(f"{arm}-seed{seed}",
                            lambda arm=arm, seed=seed: run_arm(base, arm, seed, config, train_tokens, windows,
                                                               out, progress))
            per_arm.setdefault(arm, {})[seed] = res
    timings["arms"] = time.perf_counter() - t0 - timings["load"]
    doc = assemble(config, per_arm, windows.shape, data_desc, base, timings, parts, command)
    from attnlab.experiments.compare.page import write_page

    write_page(doc, out)
    return doc


def assemble(config: Config, per_arm: dict[str, dict[int, dict[str, Any]]], windows_shape: tuple[int, ...],
             data_desc: str, base: Any, timings: dict[str, float], parts: Any,
             command: str | None) -> dict[str, Any]:
    from dataclasses import asdict

    from attnlab.experiments.compare.analysis import (
        answer,
        answer_lines,
        arm_metrics,
        compact,
        differences,
        make_claims,
        metric_interval,
    )
    from attnlab.experiments.compare.layers import layer_profiles
    from attnlab.io import atomic_write_json, provenance
    from attnlab.present import fmt_num

    measured = {arm: {s: r["items"] for s, r in runs.items() if "items" in r}
                for arm, runs in per_arm.items()}
    measured = {arm: runs for arm, runs in measured.items() if runs}
    metrics = {arm: arm_metrics(runs, arm) for arm, runs in measured.items()}
    diffs = differences(measured)
    arms = []
    for arm, runs in per_arm.items():
        entry: dict[str, Any] = {"name": arm, "retrofit": ARMS[arm], "metrics": metrics.get(arm, {}),
                                 "per_layer": layer_profiles(measured.get(arm, {})),
                                 "seeds": sorted(runs)}
        trains = {s: r["train"] for s, r in runs.items() if "train" in r}
        if trains:
            entry["train"] = {str(s): t for s, t in trains.items()}
            entry["diverged"] = {str(s): {"step": t["diverged_at"], "cause": t["cause"]}
                                 for s, t in trains.items() if t["diverged_at"] is not None} or None
            nll0 = [r["nll_at_retrofit"] for r in runs.values() if "nll_at_retrofit" in r]
            if nll0:
                entry["ppl_at_retrofit"] = compact(metric_interval({"nll": nll0[0]}, "ppl"))
        saved = [r.get("saved") for r in runs.values() if r.get("saved")]
        if saved:
            entry["saved"] = saved[0]
        arms.append(entry)
    claims = make_claims(measured, metrics)
    cmd = command or f"attnlab compare --arms {','.join(config.arms)} --steps {config.steps}"
    doc = {
        "study": "compare", "schema_version": 1, "question": QUESTION,
        "answer": answer(diffs, metrics, fmt_num),
        "answer_lines": answer_lines(diffs, metrics, fmt_num),
        "command": cmd, "config": asdict(config),
        "model": {"name": base.name, "source": base.source, "layers": base.n_layers, "heads": base.n_heads,
                  "d_model": base.d_model},
        "data": data_desc, "windows": {"n": int(windows_shape[0]), "tokens": int(windows_shape[1])},
        "control": CONTROL, "arms": arms, "differences": diffs, "claims": claims,
        "timings": {k: round(v, 2) for k, v in {**timings, "compute": sum(parts.seconds.values())}.items()},
        "parts": {"reused": parts.reused, "computed": parts.computed},
        "items": {arm: {str(s): items for s, items in runs.items()} for arm, runs in measured.items()},
        "provenance": provenance(config, config.seeds[0]),
    }
    atomic_write_json(Path(parts.dir).parent / "results.json", doc)
    return doc


__all__ = ["ARMS", "CONTROL", "Config", "PRESETS", "QUESTION", "run"]
