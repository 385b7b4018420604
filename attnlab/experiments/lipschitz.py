"""Study 7, `lipschitz`: the local Lipschitz constant of attention models as the sequence grows.

Kim, Papamakarios & Mnih 2021 ("The Lipschitz constant of self-attention", ICML) prove that dot-product
self-attention is not globally Lipschitz, while L2 self-attention with tied query/key weights,
softmax(-||x_i W - x_j W||^2 / sqrt(d)), is, with a bound growing like log n. Castin, Ablin & Peyre 2024
("How smooth is attention?", ICML) bound the local constant of dot-product attention on inputs of radius R
by O(sqrt(n)) in the worst case and measure a slower growth, about n^{1/4}, on real text. Zhai et al. 2023
(sigma-reparam) divide each weight by its spectral norm, which bounds every linear map's constant.

We measure Lip_X(f) = ||df/dX||_2 of the whole model f (input embeddings -> last block's output) at
Shakespeare text by JVP/VJP power iteration (`attnlab.diagnose.lipschitz`), for n = the first 8 ... N bytes,
fit Lip(n) ~ c n^b, and compare softmax, softmax1, sigma-reparam and L2 attention models at initialisation
and after short training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnlab.experiments.base import check_fields, claim, evidence, finish, fmt, fmt_stat, seed_stats, start
from attnlab.experiments.common import lm_loss, shakespeare_split, train_loop

MODELS: dict[str, dict[str, Any]] = {
    "softmax": {},
    "softmax1": {"normalizer": "softmax1"},
    "sigma-reparam": {"sigma_reparam": True},
    "L2 attention": {"score": "l2"},
}


@dataclass(frozen=True)
class Config:
    models: tuple[str, ...] = tuple(MODELS)
    seeds: tuple[int, ...] = (0,)
    n_layers: int = 4
    d_model: int = 64
    n_heads: int = 4
    context: int = 128
    lengths: tuple[int, ...] = (8, 16, 32, 64, 128)
    train_steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    n_iter: int = 10
    windows: int = 4  # Shakespeare windows: the items of the claims' intervals with one seed
    max_chars: int | None = None


PRESETS: dict[str, Config] = {
    "smoke": Config(models=("softmax", "L2 attention"), n_layers=1, d_model=16, n_heads=2, context=16,
                    lengths=(4, 8, 16), train_steps=3, batch_size=4, n_iter=2, windows=2, max_chars=200_000),
    "quick": Config(),
    # full is sized for ~40 min on a 2-core CPU: three seeds and twice the quick preset's longest length.
    "full": Config(seeds=(0, 1, 2), context=256, lengths=(8, 16, 32, 64, 128, 256), train_steps=300,
                   n_iter=10, windows=2),
}

SUMMARY = ("Local Lipschitz constant of whole attention models vs sequence length on Shakespeare text, for "
           "softmax, softmax1, sigma-reparam and L2 (tied query/key) attention, at init and trained.")


def validate(config: Config) -> None:
    check_fields(config, choices=("models", MODELS),
                 lengths=lambda ls: len(ls) >= 2 and all(1 < n <= config.context for n in ls),
                 n_iter=lambda n: n >= 1, windows=lambda w: w >= 2)


def _gpt(config: Config, name: str, seed: int) -> Any:
    from attnlab.models.gpt import GPT, GPTConfig

    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=256, n_layers=config.n_layers, d_model=config.d_model,
                         n_heads=config.n_heads, context=config.context, seed=seed, **MODELS[name]))


def measure(model: torch.nn.Module, config: Config, seed: int) -> dict[str, Any]:
    """Lip(n) for each length, mean over windows, and the fitted exponent of the mean curve."""
    from attnlab.diagnose.lipschitz import fit_power_law, lipschitz_vs_length
    from attnlab.experiments.probes import probe_windows, wrap

    _, val = shakespeare_split(max_chars=config.max_chars)
    lm = wrap(model.eval(), "lipschitz")
    curves = [lipschitz_vs_length(lm, ids, list(config.lengths), n_iter=config.n_iter, seed=seed)["value"]
              for ids in probe_windows(val, config.context, config.windows)]
    mean = [sum(c[i] for c in curves) / len(curves) for i in range(len(config.lengths))]
    exponent = fit_power_law(config.lengths, mean)["exponent"]
    return {"n": list(config.lengths), "lip": mean, "exponent": exponent, "lip_windows": curves}


def _part(config: Config, name: str, seed: int, trained: bool, progress: bool) -> dict[str, Any]:
    from attnlab.data import LMBatches

    model = _gpt(config, name, seed)
    out: dict[str, Any] = {}
    if trained:
        train, _ = shakespeare_split(max_chars=config.max_chars)
        batches = LMBatches(train, config.context, config.batch_size, seed=seed)
        log = train_loop(model, batches.batch, lm_loss, steps=config.train_steps, lr=config.lr,
                         warmup=min(50, config.train_steps // 5 + 1), desc=f"{name} seed {seed}",
                         progress=progress)
        out["final_train_loss"] = log["curve"][-1][1] if log["curve"] else None
    out.update(measure(model, config, seed))
    return out


def run(config: Config, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    from attnlab.experiments.common import progress_bar

    out_dir, parts = start(config, out_dir, validate)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {"init": {}, "trained": {}}
    bar = progress_bar(2 * len(config.models) * len(config.seeds), "lipschitz", progress)
    for stage in ("init", "trained"):
        for name in config.models:
            runs[stage][name] = []
            for seed in config.seeds:
                runs[stage][name].append(parts.get(
                    f"{stage}-seed{seed}-{name}",
                    lambda n=name, s=seed, st=stage: _part(config, n, s, st == "trained", progress)))
                bar.update(1)
    bar.close()
    n_len = len(config.lengths)
    results = {stage: {name: {"n": list(config.lengths),
                              "lip": [seed_stats([r["lip"][i] for r in rs]) for i in range(n_len)],
                              "exponent": seed_stats([r["exponent"] for r in rs]),
                              "final_train_loss": seed_stats([r.get("final_train_loss") for r in rs])}
                       for name, rs in by_model.items()}
               for stage, by_model in runs.items()}
    claims = make_claims(config, runs)
    tables = [_table(config, results)]
    figures = _figures(config, results, out_dir)
    timings = parts.timings()
    return finish("lipschitz", config, out_dir, results=results, claims=claims, tables=tables,
                  figures=figures, timings=timings, parts=parts, summary=SUMMARY,
                  command=f"attnlab run lipschitz --out {out_dir}")


def make_claims(config: Config, runs: dict[str, dict[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    claims = []
    trained = runs["trained"]
    def ev(op: str, models: list[str], **params: Any) -> dict[str, Any]:
        """Items: the Shakespeare windows, the same for every model (paired), spread over the text."""
        per_seed = [{f"{m} n={n}": [curve[j] for curve in trained[m][i]["lip_windows"]]
                     for m in models for j, n in enumerate(config.lengths)} for i in range(len(config.seeds))]
        args = [f"{m} n={n}" for m in models for n in config.lengths]
        return evidence(op, args, per_seed, items="windows", block=1, **params)

    if "softmax" in trained:
        exps = ev("power_exponent", ["softmax"], x=list(config.lengths))
        claims.append(claim("dot-product attention is not Lipschitz: the local constant grows with n",
                            "Kim et al. 2021", "unbounded in n", "exponent b of Lip ~ n^b, softmax, trained",
                            exps, threshold=0.0, direction="above"))
        claims.append(claim("on real text it grows slower than the sqrt(n) worst case", "Castin et al. 2024",
                            "about n^0.25 (bound n^0.5)", "exponent b, softmax, trained", exps, threshold=0.5,
                            direction="below"))
    if "softmax" in trained and "L2 attention" in trained:
        claims.append(claim("L2 attention grows slower with n than dot-product attention", "Kim et al. 2021",
                            "L2-MHA Lipschitz, bound ~ log n", "exponent softmax - exponent L2, trained",
                            ev("power_exponent_diff", ["softmax", "L2 attention"], x=list(config.lengths)),
                            threshold=0.0, direction="above"))
    if "softmax" in trained and "sigma-reparam" in trained:
        n = config.lengths[-1]
        per_seed = [{m: [curve[-1] for curve in trained[m][i]["lip_windows"]]
                     for m in ("sigma-reparam", "softmax")} for i in range(len(config.seeds))]
        claims.append(claim("sigma-reparam lowers the Lipschitz constant", "Zhai et al. 2023",
                            "spectral normalisation bounds each linear map",
                            f"Lip sigma-reparam / softmax at n={n}, trained",
                            evidence("ratio", ["sigma-reparam", "softmax"], per_seed, items="windows",
                                     block=1),
                            threshold=1.0, direction="below"))
    return claims


def _table(config: Config, results: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for name in config.models:
        i, t = results["init"][name], results["trained"][name]
        rows.append([name, fmt_stat(i["lip"][0]), fmt_stat(i["lip"][-1]), fmt_stat(i["exponent"]),
                     fmt_stat(t["lip"][0]), fmt_stat(t["lip"][-1]), fmt_stat(t["exponent"]),
                     fmt_stat(t["final_train_loss"])])
    n0, n1 = config.lengths[0], config.lengths[-1]
    return {"title": "Local Lipschitz constant of the whole model",
            "columns": ["model", f"init n={n0}", f"init n={n1}", "init exponent", f"trained n={n0}",
                        f"trained n={n1}", "trained exponent", "train loss"],
            "rows": rows,
            "note": f"{config.n_layers} layers, d={config.d_model}; {config.train_steps} training steps; "
                    f"power "
                    f"iteration {config.n_iter} steps; mean over {config.windows} Shakespeare windows; seeds "
                    f"{list(config.seeds)}; exponent b of a least-squares fit Lip ~ c n^b ({fmt(n0)}..{n1})."}


def _figures(config: Config, results: dict[str, Any], out_dir: Path) -> list[tuple[str, str]]:
    from attnlab.experiments.html import line_plot

    figs = []
    for stage in ("init", "trained"):
        s = {name: (r["n"], [x["mean"] for x in r["lip"]], [x["std"] for x in r["lip"]])
             for name, r in results[stage].items()}
        line_plot(out_dir / f"lipschitz_{stage}.png", s, xlabel="sequence length n", ylabel="local Lipschitz",
                  title=f"Lipschitz vs length ({stage})", logx=True, logy=True)
        figs.append((f"lipschitz_{stage}.png",
                     f"Local Lipschitz constant vs n, log-log axes ({stage}); the slope is the exponent b."))
    return figs
