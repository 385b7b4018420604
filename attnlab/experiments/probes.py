"""The diagnostics of `attnlab report`, run on an in-memory model and reduced to what a study compares.

`probe_lm(gpt, val_tokens, config)` wraps attnlab's GPT as a `LoadedModel` and, on `probe_windows` held-out
windows of `config.context` bytes spread evenly over the validation text, computes with `attnlab.diagnose`:

- the activation summary: `attnlab.diagnose.summary.summarize` on one capture of all the windows as a
  batch, the same function (and so the same definition of every key) as the report's summary; the keys
  and formulas are the table "Summary keys" in docs/diagnostics.md (per layer: resid_norm, kurtosis,
  max_abs_layer, first_token_layer, sink_rate_layer, null_sink_mass_layer, entropy_layer, uniformity,
  effective_rank, ...; scalars: kurtosis_max, max_abs, sink_rate, first_token_attn, null_sink_mass,
  norm_growth_per_layer, ...);
- model level: int8 W8A8 fake-quantization loss gap (mean over `quant_windows` windows), the sensitivity
  profile ||d h_last / d e_i|| (Barbero et al. 2024) and the local Lipschitz constant vs length
  (Castin et al. 2024) with its fitted exponent.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn


def probe_windows(tokens: Tensor, length: int, count: int) -> list[Tensor]:
    """`count` windows (1, length) of a token stream, starts spread evenly (deterministic)."""
    n = tokens.numel()
    if n < length + 1:
        raise ValueError(f"probe_windows: {n} tokens cannot hold a window of {length}; use more text")
    count = max(1, count)
    starts = torch.linspace(0, n - length - 1, count).long().tolist()
    return [tokens[s:s + length].unsqueeze(0) for s in starts]


def wrap(model: nn.Module, name: str) -> Any:
    from attnlab.data import ByteTokenizer
    from attnlab.models.loading import from_gpt

    return from_gpt(model, ByteTokenizer(), name=name, source="attnlab.experiments")


def pretrained_or_tiny(name: str) -> Any:
    """The model `name` by `attnlab.models.load_model`: a pretrained one, or with "tiny-gpt" the untrained
    2-layer byte GPT (seed 0, 1024 positions) that smoke presets probe so that tests need no model file."""
    from attnlab.models import load_model

    return load_model(name)


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else float("nan")


# What `summarize` reads: blocks.{l}.hook_resid_post and blocks.{l}.attn.pattern (the alias of
# attn.hook_pattern; the filter sees canonical names). Capturing only these keeps q/k/v/z, the MLP and the
# other per-block points out of memory.
PROBE_POINTS = ("hook_resid_post", "attn.hook_pattern")


def _probe_points(name: str) -> bool:
    return name.endswith(PROBE_POINTS)


@torch.no_grad()
def layer_probe(lm: Any, windows: list[Tensor]) -> dict[str, Any]:
    """The activation summary of the windows, captured together as one batch (see module docstring)."""
    from attnlab.diagnose.summary import summarize

    lengths = {w.shape[-1] for w in windows}
    if len(lengths) != 1:
        raise ValueError(f"layer_probe needs windows of one length to batch them, "
                         f"got lengths {sorted(lengths)}")
    _, cache = lm.run_with_cache(torch.cat([w.reshape(1, -1) for w in windows]), names_filter=_probe_points)
    return summarize(cache, lm.n_layers)


def quant_gap(lm: Any, windows: list[Tensor]) -> float:
    """Mean over windows of the loss increase under int8 W8A8 fake quantization (nats/token)."""
    from attnlab.diagnose.quantize import quantization_cost

    with torch.no_grad():
        return _mean([quantization_cost(lm, ids, modes=("w8a8",))["w8a8"]["delta_loss"] for ids in windows])


def sensitivity(lm: Any, windows: list[Tensor], n_probes: int = 4) -> dict[str, Any]:
    """Mean sensitivity profile over windows, normalised by its sum (so models of any scale compare)."""
    from attnlab.diagnose.sensitivity import sensitivity_profile

    profiles = []
    for k, ids in enumerate(windows):
        s = sensitivity_profile(lm, ids, n_probes=n_probes, seed=k)
        profiles.append(s / s.sum())
    mean = torch.stack(profiles).mean(0)
    return {"x": list(range(mean.numel())), "y": mean.tolist(),
            "first_over_last": float(mean[0] / mean[-1]) if mean[-1] > 0 else float("inf")}


def lipschitz(lm: Any, ids: Tensor, lengths: tuple[int, ...], n_iter: int) -> dict[str, Any]:
    from attnlab.diagnose.lipschitz import lipschitz_vs_length

    res = lipschitz_vs_length(lm, ids, list(lengths), n_iter=n_iter)
    return {"x": res["n"], "y": res["value"], "exponent": res["exponent"]}


def probe_lm(model: nn.Module, val_tokens: Tensor, config: Any, *, progress: bool = True,
             name: str = "model") -> dict[str, Any]:
    """All diagnostics of one trained model (config supplies context, probe_windows, quant_windows,
    sensitivity_len, lipschitz_lengths, lipschitz_iters)."""
    from attnlab.experiments.common import progress_bar

    lm = wrap(model, name)
    model.eval()
    bar = progress_bar(4, f"probe {name}", progress)
    windows = probe_windows(val_tokens, config.context, config.probe_windows)
    out = layer_probe(lm, windows)
    bar.update(1)
    out["quant_gap"] = quant_gap(lm, probe_windows(val_tokens, config.context, config.quant_windows))
    bar.update(1)
    sens = sensitivity(lm, [w[:, :config.sensitivity_len] for w in windows[:2]])
    out["sensitivity"] = {"x": sens["x"], "y": sens["y"]}
    out["sensitivity_first_over_last"] = sens["first_over_last"]
    bar.update(1)
    lip = lipschitz(lm, windows[0], config.lipschitz_lengths, config.lipschitz_iters)
    out["lipschitz"] = {"x": lip["x"], "y": lip["y"]}
    out["lipschitz_max_len"] = lip["y"][-1]
    out["lipschitz_exponent"] = lip["exponent"]
    bar.update(1)
    bar.close()
    return out
