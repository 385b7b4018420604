"""Clipped softmax (Bondarenko et al. 2023) as one autograd function over blocks of query rows.

w_ij = clip((zeta - gamma) p_ij + gamma, 0, 1) with p the softmax row, and w_ij = 0 for keys a query may not
see. An elementwise clip of p_ij has no identity on the stock kernel, so the rows run in blocks; what the
function adds over eager code is memory: autograd would keep every block's (rows x keys) intermediates
for the backward (6.6 GB at seq 8192), while this keeps only q, k, v and one log-sum-exp per row and
recomputes each block in the backward:

    p = exp(s - lse),  lin = (zeta - gamma) p + gamma,  w = clip(lin, 0, 1) [allowed]
    dV = w^T dO,  dp = (zeta - gamma) (dO V^T) [0 <= lin <= 1, allowed],  ds = p (dp - rowsum(dp p)),
    dQ = scale ds K,  dK = scale ds^T Q

(the clip's derivative taken as 1 on the closed interval, as torch.clamp's autograd does, so gradients
equal the reference backend's). Under a top-left causal mask a block of rows [lo, hi) only touches keys
[0, hi), about half the work.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnlab.attention.kernels import Problem, _fold_groups, expand_kv

BLOCK_BYTES = 16 * 2**20


def clipped_attention(p: Problem, gamma: float, zeta: float) -> Tensor:
    """Clipped-softmax attention on a Problem (shapes as in kernels.Problem)."""
    n, heads, lq, _ = p.q.shape
    if lq <= _rows(n, heads, p.k.shape[2], max(4, p.q.element_size())):
        # One block holds every row: autograd's saved intermediates are no larger than the recomputing
        # function's working set, and not recomputing is faster (training at context 256: 0.60x softmax's
        # tokens/s against 0.52x).
        return _eager(p, gamma, zeta)
    return _ClippedAttention.apply(p.q, p.k, p.v, p.bias, p.is_causal, p.scale, gamma, zeta)


def _eager(p: Problem, gamma: float, zeta: float) -> Tensor:
    k, v = p.kv()
    allowed = p.allowed()
    s = (p.q @ k.transpose(-1, -2) * p.scale).masked_fill(~allowed, -math.inf)
    w = ((zeta - gamma) * torch.softmax(s, dim=-1) + gamma).clamp(0.0, 1.0)
    return torch.where(allowed, w, torch.zeros((), dtype=w.dtype, device=w.device)) @ v


def _rows(n: int, heads: int, keys: int, itemsize: int) -> int:
    return max(16, BLOCK_BYTES // max(1, n * heads * keys * itemsize))


def _block(q: Tensor, k: Tensor, bias: Tensor | None, is_causal: bool, scale: float, lo: int, hi: int
           ) -> tuple[Tensor, Tensor | None, int]:
    """Scores of query rows [lo, hi) (masked with -inf), the allowed mask (None: all allowed) and how many
    keys they span."""
    keys = min(hi, k.shape[2]) if is_causal else k.shape[2]
    s = torch.matmul(q[:, :, lo:hi], k[:, :, :keys].transpose(-1, -2)).mul_(scale)
    allowed = None
    if bias is not None:
        allowed = bias[..., lo:hi, :keys] == 0
        s.add_(bias[..., lo:hi, :keys])
    if is_causal:
        causal = torch.ones(hi - lo, keys, dtype=torch.bool, device=q.device).tril(lo)
        s.masked_fill_(~causal, -math.inf)
        allowed = causal if allowed is None else allowed & causal
    return s, allowed, keys


def _in_acc(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, heads: int
            ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """q, k and v (k, v with q's head count) and the bias in float32, or float64 for float64 inputs: a
    half-precision log-sum-exp would put percent-level errors into every p."""
    acc = torch.promote_types(q.dtype, torch.float32)
    kx, vx = expand_kv(k, heads).to(acc), expand_kv(v, heads).to(acc)
    return q.to(acc), kx, vx, None if bias is None else bias.to(acc)


class _ClippedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, is_causal, scale, gamma, zeta):  # noqa: ANN001
        n, heads, lq, _ = q.shape
        qa, kx, vx, ba = _in_acc(q, k, v, bias, heads)
        out = qa.new_empty(n, heads, lq, v.shape[-1])
        lse = qa.new_empty(n, heads, lq)
        rows = _rows(n, heads, k.shape[2], qa.element_size())
        for lo in range(0, lq, rows):
            hi = min(lo + rows, lq)
            s, allowed, keys = _block(qa, kx, ba, is_causal, scale, lo, hi)
            m = torch.logsumexp(s, dim=-1, keepdim=True)
            m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # a row that sees nothing: p = 0
            w = s.sub_(m).exp_().mul_(zeta - gamma).add_(gamma).clamp_(0.0, 1.0)
            if allowed is not None:
                w.masked_fill_(~allowed, 0.0)
            out[:, :, lo:hi] = w @ vx[:, :, :keys]
            lse[:, :, lo:hi] = m.squeeze(-1)
        ctx.save_for_backward(q, k, v, lse, bias)
        ctx.is_causal, ctx.scale, ctx.gamma, ctx.zeta = is_causal, scale, gamma, zeta
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):  # noqa: ANN001
        q, k, v, lse, bias = ctx.saved_tensors
        scale, gamma, zeta = ctx.scale, ctx.gamma, ctx.zeta
        n, heads, lq, _ = q.shape
        qa, kx, vx, ba = _in_acc(q, k, v, bias, heads)
        dout = dout.to(qa.dtype)
        dq = torch.empty_like(qa)
        dkx = torch.zeros(n, heads, *k.shape[2:], dtype=qa.dtype, device=k.device)
        dvx = torch.zeros(n, heads, *v.shape[2:], dtype=qa.dtype, device=v.device)
        rows = _rows(n, heads, k.shape[2], qa.element_size())
        for lo in range(0, lq, rows):
            hi = min(lo + rows, lq)
            s, allowed, keys = _block(qa, kx, ba, ctx.is_causal, scale, lo, hi)
            p = s.sub_(lse[:, :, lo:hi, None]).exp_()
            lin = p * (zeta - gamma) + gamma
            keep = (lin >= 0) & (lin <= 1)
            w = lin.clamp_(0.0, 1.0)
            if allowed is not None:
                w.masked_fill_(~allowed, 0.0)
                keep &= allowed
            g = dout[:, :, lo:hi]
            dvx[:, :, :keys] += w.transpose(-1, -2) @ g
            dp = (g @ vx[:, :, :keys].transpose(-1, -2)).mul_(keep).mul_(zeta - gamma)
            ds = dp.sub_((dp * p).sum(-1, keepdim=True)).mul_(p)
            dq[:, :, lo:hi] = ds @ kx[:, :, :keys]
            dkx[:, :, :keys] += ds.transpose(-1, -2) @ qa[:, :, lo:hi]
        dq.mul_(scale)
        dk = _fold_groups(dkx.mul_(scale), k.shape[1])
        dv = _fold_groups(dvx, v.shape[1])
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None
