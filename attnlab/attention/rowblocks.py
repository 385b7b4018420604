"""Row-wise normalizers on dense blocks of whole query rows, with a written-out backward.

For a normalizer with no identity on the stock fused kernel (clipped softmax), or one that is cheaper in
plain matrix products at short lengths (adaptive temperature on the CPU), the rows run in blocks: block
[lo, hi) computes its scores against every key those rows can reach, S = scale Q K^T (+ mask), hands them
to a `RowRule` that returns the weights W, and adds W V to the output. Because a block holds whole rows, a
rule may normalise each row on its own. The backward is written out, not left to autograd (which would
keep several (rows x keys) intermediates per block):

    dV = W^T dO,   dW = dO V^T,   dS = rule.grad_scores(dW),   dQ = scale dS K,   dK = scale dS^T Q

Under a top-left causal mask, rows [lo, hi) reach keys [0, hi) only, so the key blocks above the diagonal
are skipped (with four blocks, 5/8 of the dense work). When what the rule keeps for its backward fits in
`SAVE_BYTES` it is kept (short contexts, as in training at 256); beyond that only q, k, v and the mask are
kept and the backward recomputes each block's scores, so memory stays at one block's working set,
O(rows x Lk), at any length.

Masked keys carry the most negative finite score instead of -inf, so that a rule may form p_ij * s_ij
(an entropy) without 0 * inf; their exp is still exactly 0. With finite keys that score is added (a finite
score plus the most negative value is as hidden as a selected one, and CPU `add_` is ~8x faster than
`masked_fill_` here); when a key is not finite it is selected (`masked_fill_`), since NaN or inf would
survive an addition. Rows that see no key give zeros and zero gradients: their output and their incoming
gradient rows are zeroed (small (rows x dim) tensors).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from attnlab.attention.kernels import Problem, _fold_groups, expand_kv
from attnlab.attention.nonfinite import all_finite

# One block's score matrix (batch*heads x rows x keys elements) is kept near this many bytes: large enough
# for the matrix products to run at full speed, small enough to stay in cache at long lengths.
BLOCK_BYTES = 16 * 2**20
# At most this many bytes of what rules keep for the backward; above, the backward recomputes each block.
SAVE_BYTES = 64 * 2**20
# Causal calls use at least this many blocks: (n + 1) / (2n) of the dense work, measured fastest at
# context 256 (training) against 2 and 8.
CAUSAL_BLOCKS = 4
MIN_ROWS = 32


class RowRule:
    """How one normalizer turns a block of scores into weights, and gradients of weights into gradients of
    scores. Shapes: s, w, dw (NH, rows, keys); `masked` bool, broadcastable to (NH, rows, keys), True where
    a key is hidden (given only when `needs_mask`; masked scores are the most negative finite value)."""

    needs_mask = False
    saved_per_block = 1  # how many (NH, rows, keys) tensors `weights` keeps for the backward (for the budget)
    dw_scale = 1.0  # a constant factor of dS/dW, folded into dO (a small tensor) before dO V^T

    def weights(self, s: Tensor, masked: Tensor | None) -> tuple[Tensor, list[Tensor]]:
        """Weights from finite masked scores (s may be overwritten), and what the backward needs."""
        raise NotImplementedError

    def saved_weights(self, saved: list[Tensor], masked: Tensor | None) -> Tensor:
        """W again, from what `weights` kept."""
        raise NotImplementedError

    def grad_scores(self, dw: Tensor, saved: list[Tensor]) -> Tensor:
        """dS from dW (already times `dw_scale`); dw may be overwritten."""
        raise NotImplementedError


def rowblock_attention(p: Problem, rule: RowRule) -> Tensor:
    """Attention on a Problem (shapes as in kernels.Problem) with `rule`'s weights; differentiable in q, k,
    v."""
    return _RowBlocks.apply(p.q, p.k, p.v, p.bias, p.is_causal, p.scale, rule)


def fits_saved(p: Problem, rule: RowRule) -> bool:
    """Whether a training call on `p` keeps its blocks for the backward (no recomputation)."""
    n, heads, lq, _ = p.q.shape
    itemsize = torch.promote_types(p.q.dtype, torch.float32).itemsize
    blocks = row_blocks(lq, p.k.shape[2], n * heads, itemsize, p.is_causal)
    return _saved_bytes(blocks, p.k.shape[2], p.is_causal, n * heads, itemsize, rule) <= SAVE_BYTES


def row_blocks(lq: int, lk: int, batch_heads: int, itemsize: int, is_causal: bool) -> list[tuple[int, int]]:
    """Row ranges [lo, hi): about BLOCK_BYTES of scores each, and at least CAUSAL_BLOCKS under a causal
    mask (never fewer than MIN_ROWS rows, so the matrix products stay efficient)."""
    rows = max(MIN_ROWS, BLOCK_BYTES // max(1, batch_heads * lk * itemsize))
    if is_causal:
        rows = min(rows, max(MIN_ROWS, -(-lq // CAUSAL_BLOCKS)))
    return [(lo, min(lo + rows, lq)) for lo in range(0, lq, rows)]


def _keys(hi: int, lk: int, is_causal: bool) -> int:
    return min(hi, lk) if is_causal else lk


def _saved_bytes(blocks: list[tuple[int, int]], lk: int, is_causal: bool, batch_heads: int, itemsize: int,
                 rule: RowRule) -> int:
    cells = sum((hi - lo) * _keys(hi, lk, is_causal) for lo, hi in blocks)
    return rule.saved_per_block * batch_heads * cells * itemsize


@functools.lru_cache(maxsize=16)
def _causal_triangle(rows: int, cols: int, device: torch.device) -> Tensor:
    """(rows, cols) bool mask of a causal block's diagonal part (keys lo .. of rows lo ..): True where
    key > row (hidden). Keyed by the block's size only, so a handful of entries serve every block at any
    length."""
    return torch.ones(rows, cols, dtype=torch.bool, device=device).triu(1)


@functools.lru_cache(maxsize=16)
def _causal_bias(rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """`_causal_triangle` as an additive mask: the most negative finite value where hidden, else 0."""
    hidden = _causal_triangle(rows, cols, device)
    return torch.zeros(rows, cols, dtype=dtype, device=device).masked_fill_(hidden, torch.finfo(dtype).min)


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
        # Where a key is hidden, (N|1, 1, Lq, Lk) bool, from the additive bias (0 visible, -inf hidden).
        self.hidden = None if bias is None else bias != 0
        # Non-finite keys must be selected away, not added to (one sum over k: see the module docstring).
        self.select = not all_finite(k)
        # Rows that see no key, (N|1, 1, Lq, 1) float 0/1; None when every row sees one (the common case).
        self.valid = None
        if self.hidden is not None:
            valid = ~self.hidden.all(-1, keepdim=True)
            self.valid = None if bool(valid.all()) else valid.to(acc)
        self.blocks = row_blocks(lq, self.lk, n * heads, self.q.element_size(), is_causal)

    def keys(self, hi: int) -> int:
        return _keys(hi, self.lk, self.is_causal)

    def scores(self, lo: int, hi: int) -> Tensor:
        """Masked scores of rows [lo, hi) against the keys they can reach, (NH, rows, keys)."""
        keys = self.keys(hi)
        s = torch.bmm(self.q[:, lo:hi], self.k[:, :keys].transpose(1, 2))
        lowest = torch.finfo(self.acc).min
        if self.is_causal and lo + 1 < keys:  # keys before lo are all visible: mask the diagonal part only
            if self.select:
                s[:, :, lo:].masked_fill_(_causal_triangle(hi - lo, keys - lo, self.q.device), lowest)
            else:
                s[:, :, lo:].add_(_causal_bias(hi - lo, keys - lo, self.acc, self.q.device))
        if self.bias is not None:
            s4 = s.view(self.n, self.heads, hi - lo, keys)
            if self.select:
                s4.masked_fill_(self.hidden[..., lo:hi, :keys], lowest)
            else:
                s4.add_(self.bias[..., lo:hi, :keys]).clamp_min_(lowest)
        return s

    def masked(self, lo: int, hi: int, rule: RowRule) -> Tensor | None:
        """Where rows [lo, hi) may not see a key, bool broadcastable to (NH, rows, keys), if the rule asks."""
        if not rule.needs_mask:
            return None
        keys = self.keys(hi)
        masked = None
        if self.is_causal and lo + 1 < keys:
            masked = torch.zeros(hi - lo, keys, dtype=torch.bool, device=self.q.device)
            masked[:, lo:] = _causal_triangle(hi - lo, keys - lo, self.q.device)
        if self.hidden is not None:
            hidden = self.hidden[..., lo:hi, :keys].expand(self.n, self.heads, hi - lo, keys)
            hidden = hidden.reshape(-1, hi - lo, keys)
            masked = hidden if masked is None else masked | hidden
        return masked

    def zero_empty_rows(self, x: Tensor) -> Tensor:
        """x (NH, Lq, dim) with the rows that see no key zeroed."""
        if self.valid is None:
            return x
        return (x.view(self.n, self.heads, self.lq, -1) * self.valid).view(x.shape)


class _RowBlocks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, is_causal, scale, rule):  # noqa: ANN001
        x = _Setup(q, k, v, bias, is_causal, scale)
        nh = x.q.shape[0]
        out = x.q.new_empty(nh, x.lq, v.shape[-1])
        keep = any(ctx.needs_input_grad[:3]) and _saved_bytes(
            x.blocks, x.lk, is_causal, nh, x.q.element_size(), rule) <= SAVE_BYTES
        saved: list[Tensor] = []
        for lo, hi in x.blocks:
            w, extra = rule.weights(x.scores(lo, hi), x.masked(lo, hi, rule))
            torch.bmm(w, x.v[:, :w.shape[-1]], out=out[:, lo:hi])
            if keep:
                saved += extra
                ctx.per_block = len(extra)
        ctx.save_for_backward(q, k, v, bias, *saved)
        ctx.is_causal, ctx.scale, ctx.rule = is_causal, scale, rule
        out = x.zero_empty_rows(out)
        return out.view(q.shape[0], q.shape[1], x.lq, -1).to(q.dtype)

    @staticmethod
    def backward(ctx, dout):  # noqa: ANN001
        q, k, v, bias, *saved = ctx.saved_tensors
        rule: RowRule = ctx.rule
        x = _Setup(q, k, v, bias, ctx.is_causal, ctx.scale)
        nh = x.q.shape[0]
        do = x.zero_empty_rows(dout.to(x.acc).reshape(nh, x.lq, -1))
        dz = do * rule.dw_scale if rule.dw_scale != 1.0 else do
        dq = torch.empty_like(x.q)
        dk = torch.zeros_like(x.k)
        dv = torch.zeros_like(x.v)
        for i, (lo, hi) in enumerate(x.blocks):
            if saved:
                extra = saved[ctx.per_block * i:ctx.per_block * (i + 1)]
                w = rule.saved_weights(extra, x.masked(lo, hi, rule))
            else:
                w, extra = rule.weights(x.scores(lo, hi), x.masked(lo, hi, rule))
            keys = w.shape[-1]
            dv[:, :keys].baddbmm_(w.transpose(1, 2), do[:, lo:hi])
            del w
            ds = rule.grad_scores(torch.bmm(dz[:, lo:hi], x.v[:, :keys].transpose(1, 2)), extra)
            del extra
            torch.bmm(ds, x.k[:, :keys], out=dq[:, lo:hi])
            dk[:, :keys].baddbmm_(ds.transpose(1, 2), x.q[:, lo:hi])  # x.q carries the scale
        dq.mul_(ctx.scale)
        heads_kv = k.shape[1]
        dk = _fold_groups(dk.view(x.n, x.heads, x.lk, -1), heads_kv)
        dv = _fold_groups(dv.view(x.n, x.heads, x.lk, -1), heads_kv)
        return dq.view(q.shape).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None
