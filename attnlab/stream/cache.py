"""A bounded KV cache for Hugging Face causal LMs, driven by a policy (see `attnlab.stream.policies`).

`RunnerCache` (the cache `StreamRunner` drives; formerly `StreamCache`) is a `transformers.Cache` whose
layers hold two parts per layer:

    sinks   (B, Hkv, ns, D)   stream tokens 0 .. ns-1, rotated at positions 0 .. ns-1
    window  (B, Hkv, nw, D)   stream tokens w0 .. t-1, rotated at positions j - off

and an explicit shared bookkeeping (`StreamState`: t tokens seen, ns, w0, off), never inferred from the
tensors. One model forward is one `Step` over new tokens u = t .. t+q-1, planned before the forward:

* new tokens get RoPE positions u - off', where off' = u_last - P(u_last) puts the last query at its
  cache slot P (so positions never exceed the cache size);
* the stored window is re-rotated by off - off' (rotations compose: R(a) R(b) = R(a + b));
* when several queries of one step need the sinks at different distances (sinks(S, W) once the cache is
  full: sink distance P(u) - s = S + W - 1 - s for every u, while window distances u - j are true), the
  sinks are handed to attention once per distinct shift d(u) = (u - off') - P(u), each copy rotated by
  d, and the mask lets each query see only its own copy. Token by token there is one copy with d = 0,
  which is exactly StreamingLLM;
* the mask is `policy.visible(u, j)` over the stream indices of the keys (attnlab span objects), so each
  query of a multi-token step sees exactly what it would see token by token.

After the step every layer keeps the new sinks and the window keys j >= lo(t + q) (all a future query can
see), so memory is bounded by the policy, not the stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers.cache_utils import Cache, CacheLayerMixin

from attnlab.stream.policies import Policy
from attnlab.stream.rope import Rope


@dataclass
class StreamState:
    """Bookkeeping shared by all layers: explicit counts and offsets."""

    t: int = 0        # tokens seen so far
    ns: int = 0       # sink tokens stored (stream indices 0 .. ns-1)
    w0: int = 0       # first stream index held in the window part (window holds w0 .. t-1)
    off: int = 0      # window key j is rotated at position j - off


@dataclass
class Step:
    """The plan of one forward over q new tokens (identical for every layer)."""

    t: int
    q: int
    off: int
    window_shift: int          # rotate the stored window by this (old off - new off)
    sink_shifts: list[int]     # one sink copy per distinct shift
    new_sinks: int             # how many of the new tokens become sinks
    new_w0: int                # after the step the window holds stream indices new_w0 .. t+q-1
    positions: Tensor          # (q,) RoPE positions of the new tokens
    allowed: Tensor            # (q, n_keys) bool mask over [sink copies | window | new]

    @property
    def n_keys(self) -> int:
        return int(self.allowed.shape[1])


def plan_step(policy: Policy, state: StreamState, q: int, device: torch.device | str = "cpu", *,
              off: int | None = None) -> Step:
    """Plan a forward of q new tokens; the caller must keep a step from crossing `policy.full_from()` when
    it also adds sinks (see `split_steps`). `off` pins the position offset (0: tokens at their stream index,
    as `generate` numbers them, see `attnlab.stream.hf_cache`); by default the last query sits at its slot."""
    t = state.t
    u = torch.arange(t, t + q, dtype=torch.long)
    slots = policy.slot(u)
    off = int(u[-1] - slots[-1]) if off is None else off
    shifts = (u - off) - slots  # d(u): where each query needs the sinks, relative to their stored slot
    new_sinks = max(0, min(policy.sinks, t + q) - t)
    if new_sinks and bool(shifts.any()):
        raise AssertionError("a step that adds sinks must not shift positions; split it (split_steps)")
    ns = state.ns
    if ns:
        uniq, group = torch.unique(shifts, sorted=True, return_inverse=True)
        sink_shifts = [int(x) for x in uniq]
    else:
        sink_shifts, group = [], torch.zeros(q, dtype=torch.long)
    k_sink = torch.arange(ns).repeat(len(sink_shifts))
    k_group = torch.arange(len(sink_shifts)).repeat_interleave(ns)
    k_rest = torch.arange(state.w0, t + q)
    k_stream = torch.cat([k_sink, k_rest])
    allowed = policy.visible(u[:, None], k_stream[None, :])
    if ns:
        allowed[:, : k_sink.numel()] &= group[:, None] == k_group[None, :]
    keep_from = max(policy.sinks, int(policy.lo(torch.tensor(t + q))), state.w0)
    new_w0 = min(t + q, max(keep_from, ns + new_sinks))
    return Step(t=t, q=q, off=off, window_shift=state.off - off, sink_shifts=sink_shifts, new_sinks=new_sinks,
                new_w0=new_w0, positions=(u - off).to(device), allowed=allowed.to(device))


def split_steps(policy: Policy, t: int, q: int, max_step: int | None) -> list[int]:
    """Sizes of the forwards that feed q tokens from stream position t: at most `max_step` each, and never
    crossing the position where sinks are complete and positions start to shift."""
    sizes: list[int] = []
    boundary = policy.full_from()
    while q > 0:
        n = q if max_step is None else min(q, max_step)
        if boundary is not None and t < boundary < t + n:
            n = boundary - t
        sizes.append(n)
        t, q = t + n, q - n
    return sizes


def _tail(x: Tensor, keep: int, slack: int = 64) -> Tensor:
    """The last `keep` keys of x: a view when x holds at most `slack` more (a decode step: no copy of the
    window per layer per token), else a copy, so a long step's buffer is not pinned (memory stays bounded)."""
    tail = x[..., x.shape[-2] - keep:, :]
    return tail if x.shape[-2] <= keep + slack else tail.clone()


class StreamLayer(CacheLayerMixin):
    """One layer's sink and window keys/values; `update` applies the shared `Step`."""

    is_sliding = False
    is_compileable = False

    def __init__(self, owner: RunnerCache) -> None:
        super().__init__()
        self.owner = owner
        self.sink_k: Tensor | None = None
        self.sink_v: Tensor | None = None
        self.win_k: Tensor | None = None
        self.win_v: Tensor | None = None

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        empty = key_states[..., :0, :]
        self.sink_k, self.win_k = empty.clone(), empty.clone()
        empty_v = value_states[..., :0, :]
        self.sink_v, self.win_v = empty_v.clone(), empty_v.clone()
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args: object, **kwargs: object
               ) -> tuple[Tensor, Tensor]:
        step = self.owner.step
        if step is None:
            raise RuntimeError("RunnerCache.update outside a planned step: feed tokens through "
                               "attnlab.stream.StreamRunner, not model(...) directly")
        if key_states.shape[-2] != step.q:
            raise RuntimeError(f"the step was planned for {step.q} tokens but the layer got "
                               f"{key_states.shape[-2]}")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        rope = self.owner.rope
        win_k = self.win_k
        if len(step.sink_shifts) <= 1 and (not step.sink_shifts or step.sink_shifts[0] == 0):
            sink_k, sink_v = self.sink_k, self.sink_v
        else:
            shifts = torch.tensor(step.sink_shifts).repeat_interleave(self.sink_k.shape[-2])
            g = len(step.sink_shifts)
            sink_k = rope.rotate(self.sink_k.repeat(1, 1, g, 1), shifts)
            sink_v = self.sink_v.repeat(1, 1, g, 1)
        n_sink, n_win = sink_k.shape[-2], win_k.shape[-2]
        if step.window_shift and n_win:
            # Rotate the window straight into its place in the key buffer: one pass, no temporaries.
            keys = key_states.new_empty(*key_states.shape[:-2], n_sink + n_win + step.q, key_states.shape[-1])
            keys[..., :n_sink, :] = sink_k
            win_k = rope.rotate(win_k, step.window_shift, out=keys[..., n_sink:n_sink + n_win, :])
            keys[..., n_sink + n_win:, :] = key_states
        else:
            keys = torch.cat([sink_k, win_k, key_states], dim=-2)
        values = torch.cat([sink_v, self.win_v, value_states], dim=-2)
        if keys.shape[-2] != step.n_keys:
            raise RuntimeError(f"cache layout out of sync: {keys.shape[-2]} keys, mask for {step.n_keys}")
        # Commit: new sinks join the sink part; the window keeps what a future query can still see.
        ns_new = step.new_sinks
        if ns_new:
            self.sink_k = torch.cat([self.sink_k, key_states[..., :ns_new, :]], dim=-2)
            self.sink_v = torch.cat([self.sink_v, value_states[..., :ns_new, :]], dim=-2)
        # The window keeps the last `keep` of [window, new tokens past the new sinks]. Without new sinks that
        # is the tail of the key and value buffers themselves.
        tail_k, tail_v = keys, values
        if ns_new:
            win = slice(n_sink, n_sink + n_win)
            tail_k = torch.cat([keys[..., win, :], key_states[..., ns_new:, :]], dim=-2)
            tail_v = torch.cat([values[..., win, :], value_states[..., ns_new:, :]], dim=-2)
        keep = step.t + step.q - step.new_w0
        if keep > n_win + step.q - ns_new:
            raise RuntimeError("cache bookkeeping out of sync: asked to keep more keys than it holds")
        self.win_k, self.win_v = _tail(tail_k, keep), _tail(tail_v, keep)
        return keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        step = self.owner.step
        return (step.n_keys if step is not None else self.get_seq_length() + query_length), 0

    def get_seq_length(self) -> int:
        return self.owner.state.ns + (self.owner.state.t - self.owner.state.w0)

    def get_max_length(self) -> int:
        cap = self.owner.policy.capacity
        return -1 if cap is None else cap

    def nbytes(self) -> int:
        # What the policy keeps. The window may be a view of its last step's key buffer (see _tail), which
        # holds at most the sinks and 64 more token slots besides: bounded, but not counted here.
        parts = (self.sink_k, self.sink_v, self.win_k, self.win_v)
        return sum(p.numel() * p.element_size() for p in parts if p is not None)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for name in ("sink_k", "sink_v", "win_k", "win_v"):
            val = getattr(self, name)
            if val is not None:
                setattr(self, name, val.index_select(0, beam_idx.to(val.device)))


class RunnerCache(Cache):
    """A `transformers.Cache` that keeps what `policy` says, with RoPE keys re-positioned in the cache; each
    step is planned by its driver, `StreamRunner` (for `model.generate`, use `StreamingCache`). Formerly
    `StreamCache`; that name still works, with a DeprecationWarning."""

    layer_class: type[StreamLayer] = StreamLayer

    def __init__(self, policy: Policy, rope: Rope, n_layers: int) -> None:
        if not policy.uses_cache:
            raise ValueError(f"{policy.name} is not a cache policy; run it with attnlab.stream.StreamRunner")
        self.policy = policy
        self.rope = rope
        self.state = StreamState()
        self.step: Step | None = None
        super().__init__(layers=[self.layer_class(self) for _ in range(n_layers)])

    def begin(self, q: int, device: torch.device | str = "cpu") -> Step:
        """Plan the next forward of q tokens (call `commit` after it)."""
        self.step = plan_step(self.policy, self.state, q, device)
        return self.step

    def commit(self) -> None:
        step = self.step
        if step is None:
            raise RuntimeError("commit() without begin()")
        st = self.state
        st.ns += step.new_sinks
        st.t += step.q
        st.w0 = step.new_w0
        st.off = step.off
        self.step = None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.state.ns + (self.state.t - self.state.w0)

    @property
    def seq_length(self) -> int:
        """Tokens held in the cache now (sinks + window), counted, not inferred."""
        return self.get_seq_length()

    @property
    def tokens_seen(self) -> int:
        return self.state.t

    def nbytes(self) -> int:
        """Bytes held by this cache's key/value tensors."""
        return sum(layer.nbytes() for layer in self.layers)


def __getattr__(name: str) -> object:
    # The old name, too close to StreamingCache (the drop-in for model.generate) to tell them apart.
    if name == "StreamCache":
        import warnings

        warnings.warn("attnlab.stream.StreamCache is now RunnerCache (the cache StreamRunner drives); for "
                      "model.generate use StreamingCache", DeprecationWarning, stacklevel=2)
        return RunnerCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
