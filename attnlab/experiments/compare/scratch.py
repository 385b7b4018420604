"""Part 1 of `attnlab compare`: train every (arm, seed) from scratch on Bigram-Backcopy and measure it.

Each (arm, seed) is one resumable part (`experiments.base.Parts` under OUT/scratch/parts): build the arm's
GPT, copy every weight it shares with the control's freshly built model of that seed (so arms differ in
attention only), train through the one trainer (`attnlab.train.fit`) on the seed's batches, record the
sink's training curve, then measure on the held-out sequences (scratch_measure). `workers` processes run
parts side by side, one torch thread each; a part that finishes is written at once, so a killed run loses
at most the parts in flight. An arm whose loss or weights go non-finite is recorded with its step and
cause; the other arms go on.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from attnlab.experiments.compare.scratch_config import (
    ROW_DEFICIT,
    SCRATCH_ARMS,
    SCRATCH_CONTROL,
    ScratchConfig,
)

EVAL_SEED = 10**6  # the held-out sequences: one draw, the same for every arm and seed
PROBE_SEQUENCES = 32  # sequences of the training-curve probe (the first held-out ones)


def task(c: ScratchConfig, n: int, seed: int) -> Any:
    from attnlab.data.backcopy import bigram_backcopy

    return bigram_backcopy(n, c.length, seed, vocab=c.vocab, n_triggers=c.n_triggers, alpha=c.alpha,
                           chain_seed=c.chain_seed)


def build(c: ScratchConfig, arm: str, seed: int) -> torch.nn.Module:
    """The arm's GPT with the control's initial weights wherever the two share a weight."""
    from attnlab.models.gpt import GPT
    from attnlab.models.gpt_config import GPTConfig

    def config(a: str) -> GPTConfig:
        spec = SCRATCH_ARMS[a]
        return GPTConfig(vocab_size=c.vocab + 1, n_layers=c.n_layers, d_model=c.d_model, n_heads=c.n_heads,
                         context=c.length, normalizer=spec["normalizer"], gated_attention=spec["gated"],
                         seed=seed)

    model = GPT(config(arm))
    if arm != SCRATCH_CONTROL:
        shared = GPT(config(SCRATCH_CONTROL)).state_dict()
        own = model.state_dict()
        model.load_state_dict({**own, **{k: v for k, v in shared.items() if k in own}})
    return model


def _loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)[0]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)


def train_one(c: ScratchConfig, arm: str, seed: int) -> dict[str, Any]:
    """Train and measure one (arm, seed); a JSON-ready dict."""
    from attnlab.experiments.compare.scratch_measure import measure_arm, sink_probe
    from attnlab.train.fit import fit

    started = time.perf_counter()
    data = task(c, c.steps * c.batch_size, seed)  # the seed's batches, in order, the same for every arm
    held = task(c, c.eval_sequences, EVAL_SEED)
    probe = held.subset(slice(0, min(PROBE_SEQUENCES, len(held))))
    model = build(c, arm, seed)
    B = c.batch_size

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return data.inputs[step * B:(step + 1) * B], data.targets[step * B:(step + 1) * B]

    curve = [[0, sink_probe(model, probe)]]

    def on_step(step: int, record: dict[str, Any]) -> None:
        if step % c.curve_every == 0 or step == c.steps:
            curve.append([step, sink_probe(model, probe)])

    run = fit(model, _loss, batch, steps=c.steps, lr=c.lr, warmup=c.warmup, device=c.device, autocast=None,
              seed=seed, on_nonfinite="stop", log_every=max(1, c.steps // 20), progress=False,
              on_step=on_step, catch_signals=False)
    model = run["model"].to("cpu")
    out: dict[str, Any] = {"arm": arm, "seed": seed, "loss_curve": run["curve"], "sink_curve": curve,
                           "diverged_at": run["diverged_at"], "cause": run["nonfinite_cause"],
                           "train_seconds": run["seconds"]}
    if run["diverged_at"] is None:
        out["items"] = measure_arm(model, held, ROW_DEFICIT.get(arm))
    out["seconds"] = time.perf_counter() - started
    return out


def _worker(args: tuple[ScratchConfig, str, int]) -> dict[str, Any]:
    torch.set_num_threads(1)  # two processes on two cores: threads would only fight
    return train_one(*args)


def run_scratch(c: ScratchConfig, out: Path, progress: bool = True) -> tuple[dict[str, dict[int, Any]], Any]:
    """Every (arm, seed) part, computed or reused: ({arm: {seed: result}}, the Parts record)."""
    from attnlab.experiments.base import Parts
    from attnlab.experiments.compare.run import _say
    from attnlab.experiments.stats import finite_mean

    parts = Parts(out / "scratch", c)
    keys = [(arm, seed) for seed in c.seeds for arm in c.arms]
    results: dict[str, dict[int, Any]] = {}
    todo = []
    for arm, seed in keys:
        if parts.has(f"{arm}-seed{seed}"):
            results.setdefault(arm, {})[seed] = parts.get(f"{arm}-seed{seed}", dict)
        else:
            todo.append((arm, seed))
    done = len(keys) - len(todo)
    _say(progress, f"part 1 (from scratch): {len(keys)} runs ({len(c.arms)} arms x {len(c.seeds)} seeds), "
                   f"{done} already done, {min(c.workers, max(1, len(todo)))} at a time")
    started = time.perf_counter()

    def keep(arm: str, seed: int, res: dict[str, Any]) -> None:
        nonlocal done
        parts.get(f"{arm}-seed{seed}", lambda: res)
        results.setdefault(arm, {})[seed] = res
        done += 1
        note = (f"diverged at step {res['diverged_at']} ({res['cause']})" if res["diverged_at"] is not None
                else f"sink {finite_mean(res['items']['first_token_dormant']):.3f}")
        eta = (time.perf_counter() - started) / max(1, done - (len(keys) - len(todo))) * (len(keys) - done)
        _say(progress, f"part 1: {arm} seed {seed} done ({done}/{len(keys)}, {note}, {res['seconds']:.0f} s; "
                       f"about {eta / 60:.1f} min left)")

    if c.workers > 1 and len(todo) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=min(c.workers, len(todo)),
                                 mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_worker, (c, arm, seed)): (arm, seed) for arm, seed in todo}
            for f in as_completed(futures):
                keep(*futures[f], f.result())
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for arm, seed in todo:
                keep(arm, seed, train_one(c, arm, seed))
        finally:
            torch.set_num_threads(threads)
    return results, parts


__all__ = ["build", "run_scratch", "task", "train_one"]
