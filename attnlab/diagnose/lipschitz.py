"""Local Lipschitz constants: the spectral norm of the Jacobian of a block, or of the whole model, at
the actual input.

Kim, Papamakarios & Mnih 2021, "The Lipschitz constant of self-attention" (ICML), prove that dot-product
self-attention is not globally Lipschitz; Castin, Ablin & Peyre 2024, "How smooth is attention?" (ICML),
show its local constant on real inputs grows with sequence length n (about n^{1/2} in the worst case,
slower on real text). For f: R^{T x d} -> R^{T x d'} at input X, with J = df/dX flattened to
(T d') x (T d),

    Lip_X(f) = ||J||_2 = sigma_max(J) = max_{||v|| = 1} ||J v||.

Power iteration on J^T J needs only Jacobian-vector products: v <- J^T J v / ||J^T J v||, with
sigma ~= ||J v|| (increasing, converges to sigma_max from below at rate (sigma_2 / sigma_1)^2 per step,
and when sigma_2 ~ sigma_1 the estimate is close to both anyway). J v comes from double backward:
g(w) = J^T w is linear in w, so d<g(w), v>/dw = J v; the graph of y = f(X) and of g is built once and
every iteration is one backward of g (J v) and one of y (J^T (J v)). `spectral_norm_exact` is the
reference twin (the full Jacobian and its largest singular value; tiny inputs only).

For a model: f = the blocks from the input embeddings to the last block's output (residual stream before
the final norm); for block i: f_i(X) = block_i(X), X the residual stream entering it (skip connection
included, so f_i = I + branches); for block i's attention sublayer alone (`attention_lipschitz`):
Z -> attn_i(Z) at s Z, Z the input it receives (after the pre-norm), the input scale s of Kim et al.'s
theorem (dot-product: unbounded in s; tied L2: bounded). The growth with length is summarised by a
least-squares fit Lip(n) ~ c n^b on log-log axes, b the exponent. `power_iteration` returns every step's
estimate, so one long run also says whether a shorter one had converged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from attnlab.diagnose._forward import block_output, frozen, twice_differentiable
from attnlab.diagnose.sensitivity import _check_ids


def spectral_norm(f: Callable[[Tensor], Tensor], x: Tensor, n_iter: int = 20, seed: int = 0) -> float:
    """sigma_max(df/dx) at x by n_iter steps of power iteration on J^T J (double backward).

    f must be twice differentiable (run attnlab models inside `twice_differentiable()`).
    """
    return power_iteration(f, x, n_iter, seed)[-1]


def power_iteration(f: Callable[[Tensor], Tensor], x: Tensor, n_iter: int = 20, seed: int = 0) -> list[float]:
    """The estimate of sigma_max(df/dx) at x after each of n_iter power-iteration steps (entry k - 1: the
    estimate after k steps, what `spectral_norm(..., n_iter=k, seed)` returns), so one run of 50 steps also
    gives the 10-step estimate and shows whether it had converged."""
    if not isinstance(n_iter, int) or isinstance(n_iter, bool) or n_iter < 1:
        raise ValueError(f"n_iter must be a positive int, got {n_iter!r}")
    x = x.detach().requires_grad_(True)
    y = f(x)
    w = torch.zeros_like(y, requires_grad=True)
    (g,) = torch.autograd.grad(y, x, w, create_graph=True)  # J^T w, linear in w
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
    v = v / v.norm()
    trace: list[float] = []
    for _ in range(n_iter):
        (jv,) = torch.autograd.grad(g, w, v, retain_graph=True)  # J v
        trace.append(float(jv.double().norm()))
        (jtjv,) = torch.autograd.grad(y, x, jv, retain_graph=True)  # J^T J v
        norm = jtjv.norm()
        if norm == 0:
            return trace + [0.0] * (n_iter - len(trace))
        v = jtjv / norm
    return trace


def spectral_norm_exact(f: Callable[[Tensor], Tensor], x: Tensor) -> float:
    """sigma_max of the full Jacobian of f at x (reference twin; builds a (numel y) x (numel x) matrix)."""
    x = x.detach()
    jac = torch.autograd.functional.jacobian(f, x, vectorize=True)
    y_numel = jac.numel() // x.numel()
    return float(torch.linalg.matrix_norm(jac.reshape(y_numel, x.numel()).double(), ord=2))


def model_lipschitz(lm: Any, ids: Tensor, n_iter: int = 8, seed: int = 0, scale: float = 1.0,
                    trace: bool = False) -> Any:
    """Lip of embeddings -> last block's output, at `scale` times the embeddings of ids (1, T); with `trace`
    the list of per-step estimates (`power_iteration`) instead of the last one."""
    ids = _check_ids(ids)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    last = lm.n_layers - 1
    with frozen(lm.model), twice_differentiable():
        steps = power_iteration(lambda e: block_output(lm, e, stop=last), scale * lm.embed(ids).detach(),
                                n_iter, seed)
    return steps if trace else steps[-1]


def block_lipschitz(lm: Any, ids: Tensor, layers: Iterable[int] | None = None, n_iter: int = 8,
                    seed: int = 0, progress: Callable[[], None] | None = None) -> list[float]:
    """Lip of each block (all by default) at the residual stream it receives for ids (1, T)."""
    ids = _check_ids(ids)
    layers = list(range(lm.n_layers)) if layers is None else [int(i) for i in layers]
    out = []
    with frozen(lm.model), twice_differentiable():
        embeds = lm.embed(ids).detach()
        with torch.no_grad():
            inputs = lm.forward_embeds(embeds, output_hidden=True)[1]
        for i in layers:
            if not 0 <= i < lm.n_layers:
                raise ValueError(f"layer {i} out of range: this model has layers 0..{lm.n_layers - 1}")
            out.append(spectral_norm(lambda x, i=i: block_output(lm, embeds, stop=i, start=i, x=x),
                                     inputs[i], n_iter, seed))
            if progress is not None:
                progress()
    return out


def attention_lipschitz(lm: Any, ids: Tensor, scales: Sequence[float] = (1.0,),
                        layers: Iterable[int] | None = None, n_iter: int = 8, seed: int = 0,
                        trace: bool = False) -> list[list[Any]]:
    """Lip of each layer's attention sublayer alone, Z -> attn_i(Z), at Z = s Z_i for each scale s, Z_i the
    input it receives for ids (1, T) (after the block's pre-norm, so s is the input scale Kim et al. 2021
    vary; the residual skip and the norm are not part of the map). Returns [layer][scale] estimates, or with
    `trace` each entry the list of per-step estimates (`power_iteration`)."""
    from attnlab.diagnose._forward import _replace_first_tensor
    from attnlab.errors import AttnlabError
    from attnlab.models.adapter import hook_input, hook_output

    ids = _check_ids(ids)
    layers = list(range(lm.n_layers)) if layers is None else [int(i) for i in layers]
    bad = [i for i in layers if not 0 <= i < lm.n_layers]
    if bad or not layers:
        raise ValueError(f"layers {bad or '(none)'} out of range: this model has layers 0..{lm.n_layers - 1}")
    scales = [float(s) for s in scales]
    if not scales or any(not math.isfinite(s) or s <= 0 for s in scales):
        raise ValueError(f"scales must be positive finite numbers, got {scales}")
    modules = {i: lm.attn(i) for i in layers}
    missing = [i for i, m in modules.items() if m is None]
    if missing:
        raise AttnlabError(f"blocks {missing} have no attention submodule (self_attn/attn/attention); "
                           f"attention_lipschitz cannot isolate it in this architecture")
    seen: dict[int, tuple[tuple, dict]] = {}
    out: list[list[Any]] = []
    with frozen(lm.model), twice_differentiable():
        handles = [m.register_forward_pre_hook(
            lambda _m, args, kwargs, i=i: seen.__setitem__(i, (args, kwargs)), with_kwargs=True)
            for i, m in modules.items()]
        try:
            with torch.no_grad():
                block_output(lm, lm.embed(ids).detach(), stop=max(layers))
        finally:
            for h in handles:
                h.remove()
        for i in layers:
            args, kwargs = seen[i]
            # A KV cache passed along would grow on every call; the sublayer is a function of Z alone.
            kwargs = {k: (None if "past_key_value" in k else v) for k, v in kwargs.items()}
            z = hook_input(args, kwargs).detach()

            def f(x: Tensor, m: Any = modules[i], a: tuple = args, kw: dict = kwargs) -> Tensor:
                a2, kw2 = _replace_first_tensor(a, kw, x)
                return hook_output(m(*a2, **kw2))

            row = [power_iteration(f, s * z, n_iter, seed) for s in scales]
            out.append(row if trace else [t[-1] for t in row])
    return out


def fit_power_law(n: Sequence[float], values: Sequence[float]) -> dict[str, float]:
    """Least squares log v = log c + b log n: {"exponent": b, "coefficient": c}; needs 2 distinct n."""
    if len(n) != len(values) or len(n) < 2:
        raise ValueError(f"fit_power_law needs two equal-length sequences of >= 2 points, got {len(n)} "
                         f"and {len(values)}")
    if any(a <= 0 for a in n) or any(v <= 0 for v in values):
        raise ValueError("fit_power_law needs positive lengths and values (it fits on log-log axes)")
    lx = torch.tensor([math.log(a) for a in n], dtype=torch.float64)
    ly = torch.tensor([math.log(v) for v in values], dtype=torch.float64)
    var = ((lx - lx.mean()) ** 2).sum()
    if var == 0:
        raise ValueError("fit_power_law needs at least two distinct lengths")
    b = ((lx - lx.mean()) * (ly - ly.mean())).sum() / var
    return {"exponent": float(b), "coefficient": float(torch.exp(ly.mean() - b * lx.mean()))}


def lipschitz_vs_length(lm: Any, ids: Tensor, lengths: Sequence[int], n_iter: int = 8, seed: int = 0,
                        progress: Callable[[], None] | None = None) -> dict[str, object]:
    """Model Lipschitz constant on the first n tokens of ids for each n, and the fitted exponent.

    Returns {"n": [...], "value": [...], "exponent": b or None (fewer than 2 lengths), "coefficient"}.
    """
    ids = _check_ids(ids)
    lengths = [int(n) for n in lengths]
    if not lengths:
        raise ValueError("lipschitz_vs_length needs at least one length")
    bad = [n for n in lengths if not 1 <= n <= ids.shape[1]]
    if bad:
        raise ValueError(f"lengths {bad} are outside 1..{ids.shape[1]} (the tokens given); pass shorter "
                         f"lengths or more text")
    values = []
    for n in lengths:
        values.append(model_lipschitz(lm, ids[:, :n], n_iter, seed))
        if progress is not None:
            progress()
    fit = fit_power_law(lengths, values) if len(set(lengths)) >= 2 else {"exponent": None,
                                                                        "coefficient": None}
    return {"n": lengths, "value": values, **fit}
