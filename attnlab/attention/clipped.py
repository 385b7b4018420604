"""Clipped softmax (Bondarenko et al. 2023, "Quantizable Transformers") as one autograd function.

    p_ij = softmax_j(s_ij),   lin_ij = (zeta - gamma) p_ij + gamma,   w_ij = clip(lin_ij, 0, 1)  [0 where
    key j is masked],   out_i = sum_j w_ij v_j

An elementwise clip of p_ij has no identity on the stock fused kernel, so the function runs blocks of whole
query rows with plain matrix products (a block holds every key its rows see, so each block's softmax is
exact on its own). Its backward is written out rather than left to autograd, which would keep about six
(rows x keys) intermediates per block:

    dV = W^T dO,   dP = (zeta - gamma) (dO V^T) [tau0 < p < tau1],   dS = P (dP - rowsum(dP P)),
    dQ = scale dS K,   dK = scale dS^T Q

with tau0 = -gamma / (zeta - gamma) and tau1 = (1 - gamma) / (zeta - gamma), the p where lin reaches 0 and
1 (the clip's derivative differs from torch.clamp's only exactly on those two values of p, where gradcheck
cannot tell them apart). Masked keys need no mask in the backward: there p = 0, so dS = 0.

Under a top-left causal mask the block of rows [lo, hi) touches keys [0, hi) only, so the key blocks above
the diagonal are skipped (5/8 of the dense work with four blocks). When the (P, W) pairs of every block fit
in `SAVE_BYTES` they are kept for the backward (short contexts: training at 256); beyond that only q, k, v
and the bias are kept and each block's scores and softmax are recomputed in the backward, so memory stays
at one block's working set, O(rows x Lk), at any length.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from attnlab.attention.kernels import Problem, _fold_groups, expand_kv

# One block's score matrix (rows x keys x batch*heads elements) is kept near this many bytes: large enough
# that the matrix products run at full speed, small enough to stay in cache at long lengths.
BLOCK_BYTES = 16 * 2**20
# At most this many bytes of (P, W) blocks are kept for the backward; above, the backward recomputes them.
SAVE_BYTES = 64 * 2**20
# Causal blocks: at least this many (a causal call of L rows then costs (n+1)/(2n) of the dense work).
CAUSAL_BLOCKS = 4
MIN_ROWS = 32


def clipped_attention(p: Problem, gamma: float, zeta: float) -> Tensor:
    """Clipped-softmax attention on a Problem (shapes as in kernels.Problem); differentiable in q, k, v."""
    return _ClippedAttention.apply(p.q, p.k, p.v, p.bias, p.is_causal, p.scale, gamma, zeta)


def row_blocks(lq: int, lk: int, batch_heads: int, itemsize: int, is_causal: bool) -> list[tuple[int, int]]:
    """Row ranges [lo, hi): about BLOCK_BYTES of scores each, and at least CAUSAL_BLOCKS under a causal
    mask (never fewer than MIN_ROWS rows, so the matrix products stay efficient)."""
    rows = max(MIN_ROWS, BLOCK_BYTES // max(1, batch_heads * lk * itemsize))
    if is_causal:
        rows = min(rows, max(MIN_ROWS, -(-lq // CAUSAL_BLOCKS)))
    return [(lo, min(lo + rows, lq)) for lo in range(0, lq, rows)]


@functools.lru_cache(maxsize=64)
def _causal_bias(lo: int, hi: int, keys: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(hi - lo, keys) additive mask of rows [lo, hi) under a top-left causal mask: -inf where key > row."""
    above = torch.ones(hi - lo, keys, dtype=torch.bool, device=device).triu(lo + 1)
    return torch.zeros(hi - lo, keys, dtype=dtype, device=device).masked_fill_(above, -math.inf)


class _Setup:
    """The inputs as 3-D (batch*heads, length, dim) tensors in the accumulation dtype (float32, or float64
    for float64 inputs: a half-precision softmax would put percent-level errors into every p), with q
    pre-multiplied by the scale and k, v given q's head count."""

    def __init__(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, is_causal: bool,
                 scale: float) -> None:
        n, heads, lq, d = q.shape
        self.acc = acc = torch.promote_types(q.dtype, torch.float32)
        self.n, self.heads, self.lq, self.lk = n, heads, lq, k.shape[2]
        self.q = (q.to(acc) * scale).reshape(n * heads, lq, d)
        self.k = expand_kv(k, heads).to(acc).reshape(n * heads, self.lk, d)
        self.v = expand_kv(v, heads).to(acc).reshape(n * heads, self.lk, v.shape[-1])
        self.is_causal = is_causal
        self.bias = None if bias is None else bias.to(acc)
        # Rows that see no key: softmax gives NaN there; they must give zero weights (and gradients).
        self.empty_rows = bias is not None and bool(torch.isneginf(bias).all(-1).any())
        self.blocks = row_blocks(lq, self.lk, n * heads, self.q.element_size(), is_causal)

    def keys(self, lo: int, hi: int) -> int:
        return min(hi, self.lk) if self.is_causal else self.lk

    def probs(self, lo: int, hi: int) -> tuple[Tensor, Tensor | None]:
        """Softmax rows [lo, hi) over the keys they can reach, (NH, rows, keys), and the block's bias
        (broadcastable to (N, H, rows, keys); None when the block is unmasked)."""
        keys = self.keys(lo, hi)
        kt = self.k[:, :keys].transpose(1, 2)
        bias = None
        if self.is_causal and lo + 1 < keys:
            bias = _causal_bias(lo, hi, keys, self.acc, self.q.device)
            s = torch.baddbmm(bias, self.q[:, lo:hi], kt)
        else:
            s = torch.bmm(self.q[:, lo:hi], kt)
        if self.bias is not None:
            bias = self.bias[..., lo:hi, :keys]
            s.view(self.n, self.heads, hi - lo, keys).add_(bias)
        p = torch.softmax(s, dim=-1)
        if self.empty_rows:
            p.nan_to_num_(0.0)
        return p, bias

    def weights(self, p: Tensor, bias: Tensor | None, gamma: float, zeta: float) -> Tensor:
        w = (p * (zeta - gamma)).add_(gamma).clamp_(0.0, 1.0)
        if gamma > 0 and bias is not None:  # gamma <= 0 clips masked keys (p = 0) to 0 by itself
            w.view(self.n, self.heads, *w.shape[1:]).masked_fill_(bias != 0, 0.0)
        return w


class _ClippedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, is_causal, scale, gamma, zeta):  # noqa: ANN001
        x = _Setup(q, k, v, bias, is_causal, scale)
        out = x.q.new_empty(x.q.shape[0], x.lq, v.shape[-1])
        saved: list[Tensor] = []
        keep = any(ctx.needs_input_grad[:3]) and _saved_bytes(x) <= SAVE_BYTES
        for lo, hi in x.blocks:
            p, blk_bias = x.probs(lo, hi)
            w = x.weights(p, blk_bias, gamma, zeta)
            torch.bmm(w, x.v[:, :w.shape[-1]], out=out[:, lo:hi])
            if keep:
                saved += [p, w]
        ctx.save_for_backward(q, k, v, bias, *saved)
        ctx.is_causal, ctx.scale, ctx.gamma, ctx.zeta = is_causal, scale, gamma, zeta
        return out.view(q.shape[0], q.shape[1], x.lq, -1).to(q.dtype)

    @staticmethod
    def backward(ctx, dout):  # noqa: ANN001
        q, k, v, bias, *saved = ctx.saved_tensors
        gamma, zeta, scale = ctx.gamma, ctx.zeta, ctx.scale
        x = _Setup(q, k, v, bias, ctx.is_causal, scale)
        nh = x.q.shape[0]
        do = dout.to(x.acc).reshape(nh, x.lq, -1)
        dz = do * (zeta - gamma)
        tau0, tau1 = -gamma / (zeta - gamma), (1.0 - gamma) / (zeta - gamma)
        dq = torch.empty_like(x.q)
        dk = torch.zeros_like(x.k)
        dv = torch.zeros_like(x.v)
        for i, (lo, hi) in enumerate(x.blocks):
            if saved:
                p, w = saved[2 * i], saved[2 * i + 1]
            else:
                p, blk_bias = x.probs(lo, hi)
                w = x.weights(p, blk_bias, gamma, zeta)
            keys = p.shape[-1]
            dv[:, :keys].baddbmm_(w.transpose(1, 2), do[:, lo:hi])
            del w
            dw = torch.bmm(dz[:, lo:hi], x.v[:, :keys].transpose(1, 2))
            dp = torch.ops.aten.hardtanh_backward(dw, p, tau0, tau1)  # dw where tau0 < p < tau1, else 0
            del dw
            ds = torch._softmax_backward_data(dp, p, -1, x.acc)  # p * (dp - rowsum(dp * p))
            del dp, p
            torch.bmm(ds, x.k[:, :keys], out=dq[:, lo:hi])
            dk[:, :keys].baddbmm_(ds.transpose(1, 2), x.q[:, lo:hi])  # x.q carries the scale
        dq.mul_(scale)
        heads_kv = k.shape[1]
        dq = dq.view(q.shape)
        dk = _fold_groups(dk.view(x.n, x.heads, x.lk, -1), heads_kv)
        dv = _fold_groups(dv.view(x.n, x.heads, x.lk, -1), heads_kv)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None


def _saved_bytes(x: _Setup) -> int:
    """Bytes of the (P, W) pairs of every block."""
    return 2 * x.q.shape[0] * sum((hi - lo) * x.keys(lo, hi) for lo, hi in x.blocks) * x.q.element_size()
