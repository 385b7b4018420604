"""`attnlab compare`: does adding one to the softmax denominator help, and with what? Answered in two parts.

Part 1, from scratch (the decisive half): identical small GPTs trained on Bigram-Backcopy (Guo et al. 2024),
a task on which softmax attention provably grows a first-token sink, differing only in attention (softmax,
softmax1, learned sinks, gated, softmax1+gated, softpick, clipped); 5 seeds; verdicts on primary endpoints
named before the run (scratch_claims.py). Part 2, the retrofit: SmolLM2-135M (its Q4_1 GGUF, dequantized)
retrofitted with each variant and fine-tuned alike, measured right after the swap (step 0) and after
training, so what the swap does is told apart from what training does (analysis.py).

Outputs in OUT: results.json (schema in docs/experiments.md, "compare": part 1 under "scratch"),
compare.html, one folder per fine-tuned arm (seed 0) that `attnlab.load_model(OUT/ARM)` accepts, and the
resumable parts (OUT/parts for the retrofit, OUT/scratch/parts for part 1). Every metric key is the
catalogue's (`attnlab.present.catalogue`); parts and results files written under older keys are read
through `schema` (a rerun reuses them).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from attnlab.experiments.compare.config import ARMS, CONTROL, PRESETS, STEP0, Config, check_config

QUESTION = "Does adding one to the softmax denominator help, and with what?"


def run(config: Config, out_dir: str | Path, progress: bool = True,
        command: str | None = None) -> dict[str, Any]:
    """Run the parts `config.part` asks for (resuming finished parts) and write results.json and
    compare.html; a finished part's numbers are never recomputed by a rerun with the same settings."""
    from attnlab.io import check_out_dir

    check_config(config)
    return run_checked(config, check_out_dir(out_dir), progress, command)


def run_checked(config: Config, out: Path, progress: bool = True,
                command: str | None = None) -> dict[str, Any]:
    """`run` on a config `check_config` passed and an out folder `check_out_dir` proved writable (the CLI
    checks both at its edge, before its own notes), without checking them again."""
    from attnlab.experiments.compare.schema import SCHEMA_VERSION, read_part

    t0 = time.perf_counter()
    doc: dict[str, Any] = {"study": "compare", "schema_version": SCHEMA_VERSION, "question": QUESTION,
                           "preset": config.preset, "smoke": config.preset == "smoke", "part": config.part}
    timings: dict[str, float] = {}
    compute = 0.0  # seconds every part took when it was computed (a resumed run's own time is only the rest)
    computed: list[str] = []
    reused: list[str] = []
    if config.part in ("both", "scratch"):
        from attnlab.experiments.compare.scratch import run_scratch
        from attnlab.experiments.compare.scratch_report import assemble_scratch

        results, sparts = run_scratch(config.scratch, out, progress)
        results = {arm: {seed: read_part(r) for seed, r in runs.items()} for arm, runs in results.items()}
        doc["scratch"] = assemble_scratch(config.scratch, results, smoke=doc["smoke"])
        timings["scratch"] = time.perf_counter() - t0
        # part 1's parts ran in worker processes: their own clocks are in the results
        compute += sum(r.get("seconds", 0.0) for runs in results.values() for r in runs.values())
        computed += [f"scratch/{k}" for k in sparts.computed]
        reused += [f"scratch/{k}" for k in sparts.reused]
    if config.part in ("both", "retrofit"):
        t1 = time.perf_counter()
        doc["retrofit"], rparts = run_retrofit(config, out, progress)
        timings["retrofit"] = time.perf_counter() - t1
        compute += sum(rparts.seconds.values())
        computed += rparts.computed
        reused += rparts.reused
    claims = [*doc.get("scratch", {}).get("claims", []), *doc.get("retrofit", {}).get("claims", [])]
    for part in ("scratch", "retrofit"):
        if part in doc:
            doc[part].pop("claims", None)
    from attnlab.experiments.verdicts import VERDICT_RULE
    from attnlab.io import atomic_write_json, provenance

    cmd = command or f"attnlab compare --preset {config.preset} --part {config.part}"
    doc.update({"command": cmd, "config": asdict(config), "claims": claims, "verdict_rule": VERDICT_RULE,
                "timings": {k: round(v, 2) for k, v in {**timings, "total": time.perf_counter() - t0,
                                                         "compute": compute}.items()},
                "parts": {"reused": reused, "computed": computed},
                "provenance": provenance(config, config.seeds[0])})
    atomic_write_json(out / "results.json", doc, strict=True)
    from attnlab.experiments.compare.page import write_page

    write_page(doc, out)
    return doc


def run_retrofit(config: Config, out: Path, progress: bool) -> tuple[dict[str, Any], Any]:
    """Part 2: the step-0 measurements, then every (arm, seed) fine-tuned and measured."""
    from attnlab.experiments.base import Parts
    from attnlab.experiments.compare.data import check_train_tokens, eval_windows, token_streams
    from attnlab.experiments.compare.run import _say, load_base, run_arm, run_step0
    from attnlab.experiments.compare.schema import read_part

    t0 = time.perf_counter()
    base = load_base(config)
    train_tokens, held, data_desc = token_streams(base.tokenizer, config.train_text, config.text)
    windows = eval_windows(held, config.eval_windows, config.eval_context)
    calibration = eval_windows(train_tokens, config.calibration_windows, config.eval_context,
                               source="the calibration (training) text")
    if any(ARMS[a] is not None for a in config.arms):
        check_train_tokens(train_tokens, config.context)
    retrofit_keys = {k: v for k, v in asdict(config).items() if k not in ("scratch", "part", "preset")}
    parts = Parts(out, retrofit_keys)
    step0: dict[str, Any] = {}
    for group in dict.fromkeys(["pretrained", *(STEP0[a] for a in config.arms if a in STEP0)]):
        step0[group] = read_part(parts.get(f"step0-{group}", lambda g=group: run_step0(
            base, g, windows, calibration, progress)))["items"]
    per_arm: dict[str, dict[int, dict[str, Any]]] = {}
    for arm in config.arms:
        if ARMS[arm] is None:
            continue  # the pretrained row is step0["pretrained"]
        for seed in config.seeds:
            _say(progress, f"part 2 (retrofit): arm {arm}, seed {seed}")
            per_arm.setdefault(arm, {})[seed] = read_part(parts.get(
                f"{arm}-seed{seed}", lambda arm=arm, seed=seed: run_arm(base, arm, seed, config, train_tokens,
                                                                        windows, calibration, out, progress)))
    from attnlab.experiments.compare.retrofit_report import assemble_retrofit

    doc = assemble_retrofit(config, per_arm, step0, windows.shape, data_desc, base)
    doc["seconds"] = time.perf_counter() - t0
    return doc, parts


__all__ = ["ARMS", "CONTROL", "Config", "PRESETS", "QUESTION", "run", "run_checked"]
