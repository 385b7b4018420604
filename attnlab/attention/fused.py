"""The fused backend: every normalizer on the stock kernel, every span without the seq x seq matrix.

Dense spans (full, causal, a mask) make one kernel call. Plain windows of the softmax-kernel normalizers
(CPU, float32/64) go to band.py's compiled kernel when it is available. Other local spans (window,
sink-window, chunked) cut the queries into blocks of `bq` consecutive positions; block b gets only the
keys it can see: the span's sink prefix, then `extent` consecutive keys from `span.first_key(first query
of b)`. All blocks go to one batched kernel call with a small (bq x keys) mask per block. Cost and memory
are O(Lq x (bq + window)).

Interior blocks are cheap: when the span declares its pattern periodic in blocks (`span.periodic(bq)`:
window, sink-window, and chunked with one chunk per block) and the first keys step by exactly `bq`, the
interior blocks (every key real and past the sink prefix) share one (bq x keys) mask, and their key
blocks are overlapping strided views of K and V (`unfold`), not copies. The few edge blocks at either end
are run as a separate group with gathered keys and a mask each. Normalizers act row by row, so running
groups of blocks separately is exact.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.attention import band
from attnlab.attention.base import Normalizer
from attnlab.attention.kernels import BlockedKV, Problem
from attnlab.attention.nonfinite import all_finite, poison, select_finite
from attnlab.attention.reference import as_4d
from attnlab.attention.spans import CAUSAL, Causal, Full, MaskSpan, Span, Window


def _additive(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """0 where allowed, -inf where not, in one pass."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.full((), float("-inf"), dtype=dtype, device=allowed.device))


def _bias(allowed: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Additive bias (0 / -inf) from a bool mask, and which rows see any key. Rows that see nothing are
    given key 0 so the kernel stays finite; the caller zeroes their output."""
    return _unblock_empty_rows(_additive(allowed, dtype), allowed.any(-1, keepdim=True))


def _unblock_empty_rows(bias: Tensor, row_valid: Tensor) -> tuple[Tensor, Tensor]:
    if not bool(row_valid.all()):
        bias = bias.clone()  # may be an expanded view (a broadcast mask)
        bias[..., :1].masked_fill_(~row_valid, 0.0)
    return bias, row_valid


def fused_attention(q: Tensor, k: Tensor, v: Tensor, normalizer: Normalizer, span: Span,
                    scale: float) -> Tensor:
    """Shapes as in `attnlab.attention`; k and v may have fewer heads than q."""
    # One reduction decides; finite inputs take the plain path. V is left out where the span hides no key:
    # the kernel then carries a non-finite value entry into every output it reaches (as inf or NaN), while
    # a key at +-inf could still give a plausible row, so K is checked, except when decoding one query:
    # there reading the whole cache again would add ~10% to the call (nonfinite.py).
    if _hides_keys(span, q.shape[2], k.shape[2]):
        finite = all_finite(q, k, v)
    else:
        finite = all_finite(q) if q.shape[2] == 1 else all_finite(q, k)
    if finite:
        return _fused(q, k, v, normalizer, span, scale)
    # The CPU kernel turns a query row holding NaN into a finite row (nonfinite.py): run on finite Q and
    # mark those rows afterwards.
    q_sel, bad_q = select_finite(q)
    bad_rows = bad_q.any(-1, keepdim=True)  # (B, H, Lq, 1)
    if all_finite(k, v):
        return poison(_fused(q_sel, k, v, normalizer, span, scale), bad_rows, bad_rows)
    # The kernels add their masks and multiply zero weights into V: hidden non-finite entries would leak
    # (nonfinite.py). Run on finite K and V, then mark the outputs that could see a non-finite entry.
    (k_sel, bad_k), (v_sel, bad_v) = select_finite(k), select_finite(v)
    out = _fused(q_sel, k_sel, v_sel, normalizer, span, scale)
    with torch.no_grad():
        # Which outputs see a marked key or value: with every score 0, each visible key weighs 1/n > 0.
        marks = torch.cat([bad_k.any(-1, keepdim=True), bad_v], dim=-1).to(q.dtype)  # (B, Hk, Lk, 1 + Dv)
        reach = _fused(q.new_zeros(*q.shape[:-1], 1), k.new_zeros(*k.shape[:-1], 1), marks, _VISIBLE, span,
                       1.0) > 0
    return poison(out, reach[..., :1] | bad_rows, reach[..., 1:])


class _Visible(Normalizer):
    """Plain softmax on the stock kernel, for the reach pass above (never a band: q and v sizes differ)."""

    name = "visible"

    def attend(self, p: Problem) -> Tensor:
        return F.scaled_dot_product_attention(p.q, p.k, p.v, attn_mask=p.bias, is_causal=p.is_causal,
                                              scale=p.scale, enable_gqa=p.k.shape[1] != p.q.shape[1])


_VISIBLE = _Visible()


def _hides_keys(span: Span, q_len: int, kv_len: int) -> bool:
    """False only where every query surely sees every key (cheap to tell: no mask is read)."""
    if isinstance(span, Full):
        return False
    if q_len == 1 and (isinstance(span, Causal) or (span.local and span.reduces_to_causal(kv_len))):
        return False  # one query at the last position (decoding): causal hides nothing from it
    return True


def _fused(q: Tensor, k: Tensor, v: Tensor, normalizer: Normalizer, span: Span, scale: float) -> Tensor:
    q_len, kv_len = q.shape[2], k.shape[2]
    if span.local and span.reduces_to_causal(kv_len):
        span = CAUSAL  # the window reaches every key: one unblocked causal call is exact and faster
    if span.local:
        if _band_serves(q, k, v, normalizer, span):
            # Keys seen by query i: min(p + 1, window), p = kv_len - q_len + i (only scalable softmax asks).
            p = Problem(q, k, v, scale, None, False, lambda: torch.arange(
                kv_len - q_len + 1, kv_len + 1, device=q.device, dtype=q.dtype).clamp_max(span.size).view(
                1, 1, q_len, 1), band=span.size)
            return normalizer.attend(p)
        return _blocked(q, k, v, normalizer, span, scale)
    row_valid = None
    if isinstance(span, Full):
        p = Problem(q, k, v, scale, None, False, torch.tensor(float(kv_len), device=q.device))
    elif isinstance(span, Causal) and q_len == kv_len:
        p = Problem(q, k, v, scale, None, True, lambda: torch.arange(
            1, q_len + 1, device=q.device, dtype=q.dtype).view(1, 1, q_len, 1))
    elif isinstance(span, (Causal, MaskSpan)):
        allowed = as_4d(span.mask(q_len, kv_len, q.device))
        bias, row_valid = _bias(allowed, q.dtype)
        p = Problem(q, k, v, scale, bias, False, lambda: allowed.sum(-1, keepdim=True).clamp_min(1))
    else:
        raise TypeError(f"span {span!r} is neither dense (full, causal, mask) nor local")
    out = normalizer.attend(p)
    return out if row_valid is None or bool(row_valid.all()) else out * row_valid


def _band_serves(q: Tensor, k: Tensor, v: Tensor, normalizer: Normalizer, span: Span) -> bool:
    """Plain windows on CPU float32/64 run on band.py's compiled kernel, for the normalizers whose fast path
    is the softmax kernel with a sink or rescaled queries (they declare `supports_band`)."""
    return type(span) is Window and normalizer.supports_band and band.serves(q, k, v)


def _blocked(q: Tensor, k: Tensor, v: Tensor, normalizer: Normalizer, span: Span, scale: float) -> Tensor:
    batch, heads, q_len, _ = q.shape
    backward = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    plan = _plan(span, q_len, k.shape[2], q.device, q.dtype, backward)
    nb, bq, lead = plan.nb, plan.bq, plan.lead
    qp = F.pad(q, (0, 0, lead, nb * bq - lead - q_len)) if nb * bq != q_len else q
    qp = qp.view(batch, heads, nb, bq, -1)
    groups = []
    # split, not slicing: its backward is one cat, where each slice's backward zero-fills a full-size buffer.
    for group, part in zip(plan.groups, qp.split([g.n for g in plan.groups], dim=2), strict=True):
        qb = part.transpose(1, 2).reshape(batch * group.n, heads, bq, -1)
        groups.append(plan.run(group, normalizer, qb, k, v, scale))
    out = torch.cat(groups, dim=2) if len(groups) > 1 else groups[0]  # (B, H, nb, bq, Dv)
    return out.reshape(batch, heads, nb * bq, -1)[:, :, lead:lead + q_len]


@dataclass
class _Group:
    """Blocks [lo, hi), their additive bias ((n|1), bq, keys) and row validity ((n|1), bq, 1). `shared`:
    one pattern for every block, keys taken as strided views."""

    lo: int
    hi: int
    shared: bool
    bias: Tensor
    row_valid: Tensor
    all_valid: bool

    @property
    def n(self) -> int:
        return self.hi - self.lo


@functools.lru_cache(maxsize=32)
def _plan(span: Span, q_len: int, kv_len: int, device: torch.device, dtype: torch.dtype,
          backward: bool = True) -> BlockPlan:
    """Plans depend only on the span, the lengths and whether a backward follows; training repeats them,
    so they are cached."""
    return BlockPlan(span, q_len, kv_len, device, dtype, backward)


class BlockPlan:
    """Which keys each block of queries sees, grouped into ranges of blocks that run together.

    Shapes: q_pos (nb, bq) query positions (the first `lead` and any past the end are padding); first
    (nb,) first window key; win (nb, extent) window key positions; k_pos, k_ok (nb, n_sink + extent) all
    key positions and whether each is a real key.
    """

    def __init__(self, span: Span, q_len: int, kv_len: int, device: torch.device, dtype: torch.dtype,
                 backward: bool = True) -> None:
        self.span = span
        self.bq = bq = span.block_size(q_len, backward)
        start = span.block_start(kv_len - q_len, bq)  # position of the first block's first query
        self.lead = kv_len - q_len - start
        self.nb = nb = -(-(self.lead + q_len) // bq)
        self.q_pos = torch.arange(start, start + nb * bq, device=device).view(nb, bq)
        self.first = span.first_key(self.q_pos[:, 0])  # may be negative: padding, masked below
        self.extent = int((self.q_pos[:, -1] - self.first).max()) + 1
        self.n_sink = n_sink = min(span.sinks, kv_len)
        self.win = self.first[:, None] + torch.arange(self.extent, device=device)
        win_ok = (self.win >= n_sink) & (self.win < kv_len)  # sink keys come from the prefix, never twice
        self.k_pos = torch.cat([torch.arange(n_sink, device=device).expand(nb, n_sink), self.win], 1)
        self.k_ok = torch.cat([torch.ones(nb, n_sink, dtype=torch.bool, device=device), win_ok], 1)
        self.groups = [self._group(lo, hi, shared, dtype) for lo, hi, shared in self._ranges()]

    def _ranges(self) -> list[tuple[int, int, bool]]:
        """Interior blocks of a periodic span whose first keys step by exactly bq share one mask and take
        their keys as strided views; the edge blocks before and after run as their own groups."""
        interior = self.k_ok.all(-1)
        if not (self.span.periodic(self.bq) and bool(interior.any())):
            return [(0, self.nb, False)]
        idx = interior.nonzero().flatten()
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        steps = self.first[lo + 1:hi] - self.first[lo:hi - 1]
        if not (bool(interior[lo:hi].all()) and bool((steps == self.bq).all())):
            return [(0, self.nb, False)]
        return [g for g in ((0, lo, False), (lo, hi, True), (hi, self.nb, False)) if g[1] > g[0]]

    def _group(self, lo: int, hi: int, shared: bool, dtype: torch.dtype) -> _Group:
        q_pos, k_pos = self.q_pos[lo:hi], self.k_pos[lo:hi]
        if shared:
            allowed = self.span.allows(q_pos[:1, :, None], k_pos[:1, None, :])
        else:
            allowed = self.span.allows(q_pos[:, :, None], k_pos[:, None, :]) & self.k_ok[lo:hi, None, :]
        bias, row_valid = _bias(allowed, dtype)
        return _Group(lo, hi, shared, bias, row_valid, bool(row_valid.all()))

    def _keys(self, x: Tensor, g: _Group) -> Tensor:
        """(B, Hk, Lk, D) -> (B*n, Hk, n_sink + extent, D): each block's keys."""
        b, h, _, d = x.shape
        if g.shared:  # overlapping strided views of one slice: no copy
            start = int(self.first[g.lo])
            seg = x[:, :, start:start + (g.n - 1) * self.bq + self.extent]
            blocks = seg.unfold(2, self.extent, self.bq).permute(0, 2, 1, 4, 3)  # (B, n, Hk, extent, D)
        else:
            idx = self.win[g.lo:g.hi].clamp(0, x.shape[2] - 1).reshape(-1)
            blocks = x.index_select(2, idx).view(b, h, g.n, self.extent, d).transpose(1, 2)
        if self.n_sink:
            blocks = torch.cat([x[:, None, :, :self.n_sink].expand(b, g.n, h, self.n_sink, d), blocks], dim=3)
        return blocks.reshape(b * g.n, h, blocks.shape[3], d)

    def run(self, g: _Group, normalizer: Normalizer, qb: Tensor, k: Tensor, v: Tensor,
            scale: float) -> Tensor:
        """Attention for one group; qb (B*n, H, bq, D) -> (B, H, n, bq, Dv)."""
        batch = qb.shape[0] // g.n

        def per_batch(x: Tensor) -> Tensor:  # (n|1, ...) -> (B*n|1, 1, ...)
            if g.shared:
                return x.unsqueeze(0)
            return x.unsqueeze(0).expand(batch, *x.shape).reshape(batch * g.n, 1, *x.shape[1:])

        bias = per_batch(g.bias)
        blocks = None
        if g.shared and not self.n_sink:
            blocks = BlockedKV(k, v, int(self.first[g.lo]), g.n, self.bq, self.extent, bias)
        p = Problem(qb, self._keys(k, g), self._keys(v, g), scale, bias, False,
                    lambda: (bias == 0).sum(-1, keepdim=True).to(qb.dtype), blocks)
        out = normalizer.attend(p)
        if not g.all_valid:
            out = out * per_batch(g.row_valid)
        return out.view(batch, g.n, *out.shape[1:]).transpose(1, 2)
