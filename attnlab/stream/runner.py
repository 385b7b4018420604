"""Feed an unbounded token stream through a model under a cache policy, with memory bounded by the policy.

`StreamRunner(model, policy).feed(ids)` returns next-token logits for every new token, exactly as if the
tokens had been fed one at a time (StreamingLLM's evaluation protocol), whatever the number fed at once:

* Hugging Face causal LMs with RoPE (Llama, Mistral, Qwen2, SmolLM2, ...): a `RunnerCache` is passed as the
  cache, with explicit `position_ids` and a 4-D attention mask for each step (see `attnlab.stream.cache`).
  Attention implementations: "attnlab", "sdpa", "eager".
* attnlab's GPT: its `KVCache` stores keys before RoPE together with their positions, so a policy is
  applied by evicting entries and renumbering positions to compact cache slots before each token; the
  `memory` policy (Transformer-XL) feeds whole segments against the previous segments' cached keys.
* A policy that drives the model (`recompute(W)`, `memory`) feeds it itself (`policy.drive`); the runner
  asks the policy what it needs (`uses_cache`, `drives_model`, `check_model`), never its class.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.stream.cache import RunnerCache, split_steps
from attnlab.stream.policies import Policy
from attnlab.stream.recompute import window_logits
from attnlab.stream.rope import Rope, rope_of

_HF_IMPLEMENTATIONS = ("attnlab", "sdpa", "eager")


def _unwrap(model: Any) -> tuple[nn.Module, str, int | None]:
    """(torch module, kind "hf"|"attnlab", max context) from a LoadedModel or a bare module."""
    if hasattr(model, "model") and hasattr(model, "kind"):
        return model.model, model.kind, (model.max_context or None)
    if isinstance(model, nn.Module):
        if hasattr(model, "config") and hasattr(model.config, "_attn_implementation"):
            return model, "hf", getattr(model.config, "max_position_embeddings", None)
        if hasattr(model, "blocks") and hasattr(model, "forward_embeds"):
            return model, "attnlab", getattr(model.config, "context", None)
    raise TypeError(f"expected an attnlab LoadedModel, a Hugging Face causal LM or attnlab's GPT, got "
                    f"{type(model).__name__}")


def max_context(model: Any) -> int | None:
    return _unwrap(model)[2]


def hf_stream_setup(module: nn.Module) -> tuple[Rope, str, int]:
    """(RoPE frequencies, name of the forward's cache argument, layer count) of a HF causal LM, or a
    ConfigError naming why its keys cannot be streamed."""
    cfg = module.config
    impl = getattr(cfg, "_attn_implementation", None)
    if impl not in _HF_IMPLEMENTATIONS:
        raise ConfigError(f"attention implementation {impl!r} is not supported for streaming (it needs a "
                          f"4-D mask); load the model with attn_implementation in "
                          f"{', '.join(_HF_IMPLEMENTATIONS)}")
    params = inspect.signature(module.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    if cache_arg not in params or "position_ids" not in params:
        raise ConfigError(f"{type(module).__name__} takes no cache/position_ids arguments, so its "
                          f"attention layout is not supported for streaming; use a RoPE causal LM")
    rope = rope_of(module)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    if 2 * rope.inv_freq.numel() != head_dim:
        raise ConfigError(f"{type(module).__name__} rotates {2 * rope.inv_freq.numel()} of "
                          f"{head_dim} head channels (partial RoPE); streaming supports full-head RoPE")
    return rope, cache_arg, int(cfg.num_hidden_layers)


class StreamRunner:
    """Stateful: each `feed` continues the stream. `max_step` caps tokens per forward (None: no cap)."""

    def __init__(self, model: Any, policy: Policy, *, max_step: int | None = 256) -> None:
        self.module, self.kind, self.context = _unwrap(model)
        self.policy = policy
        if max_step is not None and max_step < 1:
            raise ConfigError(f"max_step must be >= 1 or None, got {max_step}")
        self.max_step = max_step
        self.module.eval()
        policy.check_model(self.kind)
        if self.kind == "hf":
            self._check_hf()
        self.reset()

    # -- setup ------------------------------------------------------------------------------------------
    def _check_hf(self) -> None:
        self.rope, self._cache_arg, self.n_layers = hf_stream_setup(self.module)

    def reset(self) -> None:
        """Start a new stream (empties the cache)."""
        self.t = 0
        self.cache: Any = None
        self._history: Tensor | None = None  # recompute: the last W tokens
        self._stream_idx: Tensor | None = None  # GPT: stream index of each cached key
        if self.policy.drives_model:
            self.cache = self.policy.start(self)
        elif self.kind == "hf":
            self.cache = RunnerCache(self.policy, self.rope, self.n_layers)
        else:
            from attnlab.models.gpt_parts import KVCache

            self.cache = KVCache.empty(len(self.module.blocks))

    # -- state --------------------------------------------------------------------------------------------
    @property
    def tokens_seen(self) -> int:
        return self.t

    def cache_bytes(self) -> int:
        """Bytes of keys/values (or recompute's token window) this runner holds now."""
        if self.cache is None:
            return 0 if self._history is None else self._history.numel() * self._history.element_size()
        if isinstance(self.cache, RunnerCache):
            return self.cache.nbytes()
        tensors = (*self.cache.keys, *self.cache.values)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def cache_length(self) -> int:
        """Tokens held in the cache now (counted, not inferred from the tensors)."""
        if isinstance(self.cache, RunnerCache):
            return self.cache.seq_length
        if self.cache is not None:
            return len(self.cache)
        return 0 if self._history is None else int(self._history.shape[1])

    # -- feeding ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def feed(self, ids: Tensor, *, last_only: bool = False) -> Tensor:
        """Feed new token ids (B, q); returns logits (B, q, V), or (B, 1, V) for the last with last_only."""
        if not isinstance(ids, Tensor) or ids.dtype != torch.long or ids.dim() != 2 or ids.shape[1] == 0:
            raise ValueError(f"ids must be a LongTensor of shape (batch, tokens>=1), got "
                             f"{getattr(ids, 'dtype', type(ids))} {tuple(getattr(ids, 'shape', ()))}")
        outs = list(self._feed(ids, last_only))
        if last_only:
            return outs[-1][:, -1:]
        return torch.cat(outs, dim=1)

    def _feed(self, ids: Tensor, last_only: bool) -> Iterator[Tensor]:
        if self.policy.drives_model:
            yield from self.policy.drive(self, ids)
        elif self.kind == "hf":
            pos = 0
            sizes = split_steps(self.policy, self.t, ids.shape[1], self.max_step)
            for i, n in enumerate(sizes):
                keep_all = not last_only or i == len(sizes) - 1
                yield self._hf_step(ids[:, pos:pos + n], keep_all)
                pos += n
        else:
            yield from self._feed_gpt(ids)

    def _hf_step(self, ids: Tensor, keep_all: bool) -> Tensor:
        B, q = ids.shape
        device = ids.device
        step = self.cache.begin(q, device)
        mask = _hf_mask(self.module, step.allowed, B)
        kwargs = {self._cache_arg: self.cache, "position_ids": step.positions[None].expand(B, q),
                  "attention_mask": mask, "use_cache": True}
        if not keep_all:
            kwargs["logits_to_keep"] = 1
        try:
            out = self.module(input_ids=ids, **kwargs)
        except BaseException:
            self.cache.step = None
            raise
        self.cache.commit()
        self.t += q
        return out.logits

    def window_logits(self, ids: Tensor) -> Tensor:
        """Last-position logits (B, 1, V) of a fresh forward over ids (B, L) at positions 0..L-1: the work
        recompute(W) does for every token."""
        return window_logits(self.module, ids)

    def _feed_gpt(self, ids: Tensor) -> Iterator[Tensor]:
        """attnlab GPT, cache policies: one token per forward (the full policy may take whole steps), after
        evicting what the next query cannot see and renumbering positions to compact slots."""
        if self.policy.capacity is None:  # keeps every key: whole steps, nothing to evict
            for n in split_steps(self.policy, self.t, ids.shape[1], self.max_step):
                chunk, ids = ids[:, :n], ids[:, n:]
                self.t += n
                yield self.module(chunk, cache=self.cache)[0]
            return
        cache = self.cache
        for i in range(ids.shape[1]):
            u = torch.tensor(self.t)
            if self._stream_idx is not None and self._stream_idx.numel():
                keep = self.policy.visible(u, self._stream_idx)
                idx = keep.nonzero().flatten()
                for layer in range(len(cache.keys)):
                    cache.keys[layer] = cache.keys[layer].index_select(2, idx.to(cache.keys[layer].device))
                    cache.values[layer] = cache.values[layer].index_select(
                        2, idx.to(cache.values[layer].device))
                self._stream_idx = self._stream_idx[idx]
                cache.positions = torch.arange(idx.numel(), device=ids.device)
            n_kept = 0 if self._stream_idx is None else self._stream_idx.numel()
            logits = self.module(ids[:, i:i + 1], cache=cache,
                                 positions=torch.tensor([n_kept], device=ids.device))[0]
            self._stream_idx = u[None] if self._stream_idx is None else torch.cat([self._stream_idx, u[None]])
            self.t += 1
            yield logits


def _hf_mask(model: nn.Module, allowed: Tensor, batch: int) -> Tensor:
    """The step's (q, n_keys) visibility as the 4-D mask this model's attention implementation expects."""
    impl = model.config._attn_implementation
    mask = allowed[None, None].expand(batch, 1, *allowed.shape)
    if impl == "eager":
        dtype = next(model.parameters()).dtype
        zero = torch.zeros((), dtype=dtype, device=allowed.device)
        return torch.where(mask, zero, torch.finfo(dtype).min)
    return mask
