"""`StreamingCache`: attnlab's streaming policies as a drop-in cache for Hugging Face `model.generate`.

    cache = StreamingCache(model, make_policy("sinks", sinks=4, window=60))
    out = model.generate(input_ids, cache=cache, max_new_tokens=1000, do_sample=False)

The `attention_sinks` package offered this on transformers 4.3x by patching each architecture's attention
forward. Here nothing is patched: the cache alone does it, for the RoPE causal LMs `StreamRunner` supports,
and the greedy tokens are StreamRunner's. How it fits what `generate` does (transformers 5.x):

* Positions. `generate` numbers tokens by their stream index u (from its attention mask, +1 per step), and
  the model rotates the query and the new keys at u. StreamingLLM puts the query at its cache slot P(u) and
  sink s at slot s. RoPE scores see only distances, so the cache keeps each window key j at its own position
  j (distance u - j, the true one, as in StreamRunner) and hands attention the sinks rotated by
  d(u) = u - P(u), which puts them at distance P(u) - s. The window is never re-rotated; the S sink keys
  are, once per step (`plan_step(..., off=0)`).
* Length. `get_seq_length()` counts the tokens seen, as HF's own sliding-window layers do: `generate` uses
  it to find the new tokens of a continued conversation, and the model to number tokens when it is given no
  position_ids. `seq_length` is what the cache holds.
* Mask. The model builds a causal mask from `get_query_offset()` (the keys held) and `get_mask_sizes()`
  (keys laid out as [sinks | window | new]). Causal over that layout is exactly the policy's visibility when
  the step's queries see nested sets of keys: every decode step, and a prompt that fits in the cache. A
  longer prompt is refused with a pointer to `prefill`, which feeds it in exact steps with the policy's own
  4-D mask (each query its own window and its own copy of the sinks, as StreamRunner does).
* Bookkeeping. A step is planned once (when the mask is built, or at the first layer), shared by all
  layers, and committed after the last layer's update; counts are integers, never read off the tensors.

Not handled: padding (a batch of prompts of different lengths), beam-search rollbacks (`crop`), and RoPE
types whose frequencies change with the position (`dynamic`: generate's positions leave the trained
context). HF computes the query's RoPE angle u*w in float32, so its rounding grows with the stream
(about u * 6e-8 rad); StreamRunner, whose positions stay below the cache size, does not have that.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attnlab.errors import AttnlabError, ConfigError
from attnlab.stream.cache import RunnerCache, Step, StreamLayer, plan_step, split_steps
from attnlab.stream.policies import Policy
from attnlab.stream.runner import _hf_mask, _unwrap, hf_stream_setup


class _GenerateLayer(StreamLayer):
    """A StreamLayer whose step is planned by the cache itself (generate plans nothing)."""

    def update(self, key_states: Tensor, value_states: Tensor, *args: object, **kwargs: Any
               ) -> tuple[Tensor, Tensor]:
        owner: StreamingCache = self.owner  # type: ignore[assignment]
        step = owner._plan(key_states.shape[-2])
        if owner._layers_done == 0:  # checked before any layer changes, so a refusal leaves the cache whole
            owner._check_positions(kwargs.get("kwargs"), step)
        keys, values = super().update(key_states, value_states)
        owner._layer_done()
        return keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner._plan(query_length).n_keys, 0  # type: ignore[attr-defined]

    def get_seq_length(self) -> int:
        return self.owner.state.t


class StreamingCache(RunnerCache):
    """A `transformers.Cache` for `model.generate(..., cache=StreamingCache(model, policy))`: memory bounded
    by `policy` (sinks, window, chunked; full grows), greedy tokens equal to StreamRunner's. `policy` is a
    Policy or a spec the registry parses ("sinks(4,60)", "mine(64)", "mypkg.policies:Mine(64)")."""

    layer_class = _GenerateLayer

    def __init__(self, model: Any, policy: Policy | str) -> None:
        module, kind, context = _unwrap(model)
        if kind != "hf":
            raise ConfigError("StreamingCache is a transformers Cache for Hugging Face causal LMs; stream "
                              "attnlab's GPT with attnlab.stream.StreamRunner")
        if isinstance(policy, str):
            from attnlab.stream.registry import parse_policy

            policy = parse_policy(policy, max_context=context)
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be an attnlab.stream Policy (make_policy(...)) or a policy spec, "
                            f"got {type(policy).__name__}")
        policy.check_model(kind)
        if not policy.uses_cache:
            raise ConfigError(f"{policy.name} keeps no KV cache (it drives the model itself), so there is "
                              f"nothing to hand to generate; use sinks/window/chunked, or run {policy.name} "
                              f"with attnlab.stream.StreamRunner")
        rope, self._cache_arg, n_layers = hf_stream_setup(module)
        if rope.rope_type == "dynamic":
            raise ConfigError("RoPE type 'dynamic' changes its frequencies once generate's positions pass "
                              "the trained context, so cached keys cannot be re-positioned; stream this "
                              "model with attnlab.stream.StreamRunner, whose positions stay inside the cache")
        cap = policy.capacity
        if context and cap is not None and cap > context:
            raise ConfigError(f"{policy.name} keeps {cap} keys per query, more than the model's context "
                              f"({context} tokens); choose a smaller window/sinks/chunk")
        self.module = module
        self._layers_done = 0
        super().__init__(policy, rope, n_layers)

    # -- what generate and the mask builder read ----------------------------------------------------------
    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens seen (not held): how generate finds the new tokens and the model numbers them."""
        return self.state.t

    def get_query_offset(self, layer_idx: int = 0) -> int:
        """Keys held before the step: the first query sits right after them in the causal layout."""
        return self.seq_length

    @property
    def seq_length(self) -> int:
        """Tokens held in the cache now (sinks + window), counted, not inferred."""
        st = self.state
        return st.ns + (st.t - st.w0)

    # -- planning -------------------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return next(self.module.parameters()).device

    def _plan(self, q: int) -> Step:
        step = self.step
        if step is not None and step.t == self.state.t and step.q == q:
            return step
        if self._layers_done:
            raise AttnlabError("this StreamingCache was left half-updated by an interrupted forward; "
                               "start a new StreamingCache")
        t, boundary = self.state.t, self.policy.full_from()
        if q == 0:
            # generate feeds the model only the tokens past get_seq_length(); a new prompt passed alone is
            # shorter than the stream, leaving nothing, and the model would fail on an empty reshape.
            raise ConfigError(
                f"generate's input holds no new token for this cache, which has already seen {t} tokens: "
                f"pass generate the whole stream so far, then the new prompt (ids = torch.cat([out, new], "
                f"1); cache.prefill(ids[:, cache.get_seq_length():-1]); "
                f"model.generate(ids, cache=cache, ...))")
        # A step that completes the sinks and goes on past them needs per-query sink copies: never causal.
        causal = boundary is None or not t < boundary < t + q
        if causal:
            step = plan_step(self.policy, self.state, q, self._device(), off=0)
            n = step.n_keys
            stair = torch.ones(q, n, dtype=torch.bool, device=step.allowed.device).tril(diagonal=n - q)
            causal = torch.equal(step.allowed, stair)
        if not causal:
            raise ConfigError(
                f"a forward of {q} tokens from stream position {t} runs past what {self.policy.name} keeps "
                f"(its queries see different keys), which the causal mask generate builds cannot express; "
                f"feed the prompt with cache.prefill(input_ids[:, cache.get_seq_length():-1]) first, then "
                f"call model.generate(input_ids, cache=cache, ...) with input_ids the whole stream so far "
                f"(earlier prompts and replies, then the new prompt)")
        self.step = step
        return step

    def _check_positions(self, layer_kwargs: object, step: Step) -> None:
        pos = layer_kwargs.get("position_ids") if isinstance(layer_kwargs, dict) else None
        if pos is None:
            return  # this architecture does not hand its positions to the cache
        if pos.shape[-1] != step.q or not bool((pos == step.positions.to(pos.device)).all()):
            raise ConfigError(
                f"the model numbered these {step.q} tokens from position {int(pos.min())}, but they are "
                f"tokens {step.t}..{step.t + step.q - 1} of this cache's stream: pass generate the whole "
                f"stream so far (earlier prompts and replies, then the new prompt) and no padding")

    def _layer_done(self) -> None:
        self._layers_done += 1
        if self._layers_done == len(self.layers):
            self._layers_done = 0
            self.commit()

    # -- long prompts ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, input_ids: Tensor, *, max_step: int | None = 256) -> None:
        """Feed tokens (B, T) into the cache in exact steps of at most `max_step` tokens, each with the
        policy's own 4-D mask: for a prompt longer than the cache, prefill all but its last token, then call
        `model.generate(input_ids, cache=cache, ...)` with the whole prompt. T = 0 does nothing, so
        `cache.prefill(ids[:, cache.get_seq_length():-1])` suits a continued stream of any length."""
        ids = input_ids
        if not isinstance(ids, Tensor) or ids.dtype != torch.long or ids.dim() != 2:
            raise ConfigError(f"prefill takes a LongTensor of shape (batch, tokens), got "
                              f"{getattr(ids, 'dtype', type(ids))} {tuple(getattr(ids, 'shape', ()))}")
        if max_step is not None and max_step < 1:
            raise ConfigError(f"max_step must be >= 1 or None, got {max_step}")
        if self._layers_done:
            raise AttnlabError("this StreamingCache was left half-updated by an interrupted forward; "
                               "start a new StreamingCache")
        ids = ids.to(self._device())
        B, pos = ids.shape[0], 0
        for n in split_steps(self.policy, self.state.t, ids.shape[1], max_step):
            step = plan_step(self.policy, self.state, n, ids.device, off=0)
            self.step = step
            kwargs = {self._cache_arg: self, "position_ids": step.positions[None].expand(B, n),
                      "attention_mask": _hf_mask(self.module, step.allowed, B), "use_cache": True,
                      "logits_to_keep": 1}
            self.module(input_ids=ids[:, pos:pos + n], **kwargs)
            if self.step is not None:
                raise RuntimeError(f"the model updated {self._layers_done} of {len(self.layers)} layers")
            pos += n
