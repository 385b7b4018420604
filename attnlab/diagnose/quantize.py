"""int8 fake quantization of weights and activations, and the loss it costs.

Bondarenko, Nagel & Blankevoort 2023 ("Quantizable transformers", NeurIPS) show that the outliers of
attention heads that "do nothing" wreck 8-bit quantization: one per-tensor scale must cover a value
thousands of times larger than the rest, so the rest round to a few levels (OPT-125m W8A8: +5.3 ppl).

Fake quantization rounds to the int8 grid and maps back to float (the arithmetic stays float), which
measures the rounding error alone:

    q(x) = s * clamp(round(x / s), -127, 127),   s = max|x| / 127      (symmetric, per tensor)

- weights: every nn.Linear's weight, once (its Parameter is swapped for a quantized copy while the
  context is open, so a weight tied to the embedding table keeps the table in full precision);
- activations: the input of every nn.Linear, by a forward pre-hook, with s from that input's own max|x|
  (dynamic range; Bondarenko et al. calibrate static ranges on data and use asymmetric grids, which
  changes the numbers but not the effect of outliers).
Embedding lookups, norms and the attention softmax stay in full precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.diagnose.sensitivity import _check_ids

QMAX = 127


GRANULARITIES = ("tensor", "token")


def fake_quantize(x: Tensor, bits: int = 8, granularity: str = "tensor") -> Tensor:
    """Symmetric fake quantization to `bits` bits (levels -(2^(b-1) - 1) ... 2^(b-1) - 1).

    granularity "tensor": one scale max|x| / qmax for the whole tensor; "token": one scale per row of the
    last dimension (per token, for activations (..., T, d)), so an outlier token only coarsens its own row.
    """
    if not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an int in 2..16, got {bits!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown quantization granularity {granularity!r}; use one of "
                         f"{', '.join(GRANULARITIES)}")
    qmax = 2 ** (bits - 1) - 1
    if granularity == "token":
        scale = x.detach().abs().amax(dim=-1, keepdim=True) / qmax
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero
        return torch.clamp(torch.round(x / safe), -qmax, qmax) * safe
    scale = x.detach().abs().max() / qmax
    if scale == 0:
        return x.clone()
    return torch.clamp(torch.round(x / scale), -qmax, qmax) * scale


@contextmanager
def fake_quant(model: nn.Module, weights: bool = True, activations: bool = True,
               bits: int = 8, granularity: str = "tensor") -> Iterator[int]:
    """Quantize every nn.Linear of `model` (weights per tensor and/or inputs at `granularity`, see
    `fake_quantize`) while open; yields how many Linears.

    Restores the original Parameters and removes the hooks on exit, even after an error.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown quantization granularity {granularity!r}; use one of "
                         f"{', '.join(GRANULARITIES)}")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers to quantize")
    saved: list[tuple[nn.Linear, nn.Parameter]] = []
    handles = []
    try:
        if weights:
            with torch.no_grad():
                for lin in linears:
                    saved.append((lin, lin.weight))
                    lin._parameters["weight"] = nn.Parameter(fake_quantize(lin.weight, bits),
                                                             requires_grad=lin.weight.requires_grad)
        if activations:
            def pre(_m: nn.Module, args: tuple) -> tuple:
                return (fake_quantize(args[0], bits, granularity),) + tuple(args[1:])

            handles = [lin.register_forward_pre_hook(pre) for lin in linears]
        yield len(linears)
    finally:
        for h in handles:
            h.remove()
        for lin, w in saved:
            lin._parameters["weight"] = w


@contextmanager
def static_fake_quant(model: nn.Module, calibrate: Callable[[], None], bits: int = 8) -> Iterator[int]:
    """W8A8 with *static* activation ranges, as Bondarenko et al. 2023 quantize: `calibrate()` runs the
    model on calibration data (e.g. training text) while every nn.Linear records the max |input| it sees;
    inside the block each input is quantized with that fixed scale (values beyond it clip), and weights
    per tensor. Yields how many Linears. An outlier seen in calibration coarsens every later input."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers to quantize")
    qmax = 2 ** (bits - 1) - 1
    ranges = {id(lin): torch.zeros(()) for lin in linears}

    def record(m: nn.Module, args: tuple) -> None:
        ranges[id(m)] = torch.maximum(ranges[id(m)], args[0].detach().abs().max().float().cpu())

    handles = [lin.register_forward_pre_hook(record) for lin in linears]
    try:
        with torch.no_grad():
            calibrate()
    finally:
        for h in handles:
            h.remove()
    empty = [i for i, lin in enumerate(linears) if float(ranges[id(lin)]) == 0.0]
    if len(empty) == len(linears):
        raise ValueError("static_fake_quant: calibration saw no input (or only zeros); give it data")

    def pre(m: nn.Module, args: tuple) -> tuple:
        scale = float(ranges[id(m)]) / qmax
        if scale == 0.0:
            return args
        x = args[0]
        return (torch.clamp(torch.round(x / scale), -qmax, qmax) * scale,) + tuple(args[1:])

    with fake_quant(model, weights=True, activations=False, bits=bits) as n:
        handles = [lin.register_forward_pre_hook(pre) for lin in linears]
        try:
            yield n
        finally:
            for h in handles:
                h.remove()


def next_token_loss(logits: Tensor, ids: Tensor) -> float:
    """Mean cross-entropy (nats) of predicting ids[:, 1:] from logits[:, :-1]."""
    if ids.shape[1] < 2:
        raise ValueError("the loss needs at least 2 tokens (one prediction)")
    pred = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    return float(F.cross_entropy(pred, ids[:, 1:].reshape(-1).to(pred.device)))


def perplexity(loss: float) -> float:
    """exp(loss), inf instead of an overflow error."""
    return math.exp(loss) if loss < 700 else math.inf


@torch.no_grad()
def quantization_cost(lm: Any, ids: Tensor, modes: tuple[str, ...] = ("w8a8", "w8", "a8"),
                      base_loss: float | None = None) -> dict[str, object]:
    """Loss (nats) and perplexity of the model on ids (1, T), in full precision and under each mode
    ("w8a8": weights and activations, "w8": weights only, "a8": activations only), with the increase.

    `base_loss` skips the full-precision pass when the caller already has it.
    """
    ids = _check_ids(ids)
    known = {"w8a8": (True, True), "w8": (True, False), "a8": (False, True)}
    for mode in modes:
        if mode not in known:
            raise ValueError(f"unknown quantization mode {mode!r}; use any of {', '.join(known)}")
    base = next_token_loss(lm.logits(ids), ids) if base_loss is None else float(base_loss)
    out: dict[str, object] = {"scheme": "int8 symmetric per-tensor, dynamic activation range",
                              "fp32": {"loss": base, "ppl": perplexity(base)}}
    for mode in modes:
        w, a = known[mode]
        with fake_quant(lm.model, weights=w, activations=a):
            loss = next_token_loss(lm.logits(ids), ids)
        out[mode] = {"loss": loss, "ppl": perplexity(loss), "delta_loss": loss - base,
                     "delta_ppl": perplexity(loss) - perplexity(base)}
    return out
