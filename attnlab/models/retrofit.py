"""`attnlab.retrofit(model, normalizer, gated=, span=)`: a pretrained Hugging Face causal LM, same class, with
attnlab attention chosen per layer and the variant's parameters as real submodules.

Every attention module (the modules with a `layer_idx`, e.g. `model.layers.{i}.self_attn`) gets one child,
`attnlab` (a `RetrofitState`), that holds the layer's choice:

    <attn>.attnlab.learned.<keyword>  the normalizer's learned tensors, one per keyword of its factory
                                      (`sinks`: `learned.logits`, shape (heads,), one logit per query head)
    <attn>.attnlab.gate.weight        (heads, hidden)  } gated=True only: out_h *= 2*sigmoid(x.w_h + b_h),
    <attn>.attnlab.gate.bias          (heads,)         } x the attention module's input (see gate.py)

The model runs `attn_implementation="attnlab"`, whose attention function (`attnlab.models.hf`) reads this
child on every call: it builds the normalizer from the learned tensors (so gradients reach them), intersects
the model's own mask with the retrofit span, and applies the gate. `record_attention` and
`attention_override` work on top, as on any attnlab model. The choice is recorded in
`model.config.attnlab_retrofit`, and the config is saved under the model_type `attnlab_retrofit_<base>`
(`attnlab.models.hf_native`), so after `model.save_pretrained(d)` both `attnlab.load_model(d)` and plain
`AutoModelForCausalLM.from_pretrained(d)` rebuild it (or the latter fails naming attnlab; never a plain
model).

Starting from the pretrained function: softmax is the identity retrofit (same kernel as HF's sdpa); the gate
is exactly 1 at init; a sink starts at `SINK_INIT` (see there), close to but never exactly softmax.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.attention import Causal, Chunked, MaskSpan, Normalizer, SinkWindow, Span, Window, resolve_span
from attnlab.attention.registry import (
    create_normalizer,
    is_normalizer,
    learned_parameters,
    normalizer_keywords,
    normalizer_names,
)
from attnlab.errors import AttnlabError, ConfigError
from attnlab.models import hf_native
from attnlab.models.gate import HeadGate
from attnlab.models.hf import RETROFIT_ATTR, check_causal, check_supported, use_attnlab_attention
from attnlab.models.hf_native import RECORD_KEY, record_arguments

# RECORD_KEY "attnlab_retrofit" is the config.json key (not "attnlab", which marks attnlab's own GPT folders)
RECORD_VERSION = 1

SINK_INIT = -12.0
"""Default initial sink logit. A sink at s scales each query's output by sigmoid(lse - s), lse the row's
log-sum-exp of scores: it moves a fraction exp(s - lse) / (1 + exp(s - lse)) of the attention mass onto the
null key, and s = -inf is softmax exactly. The gradient reaching s is that fraction times the output error,
so a sink far down is nearly softmax but learns slowly. Some pretrained heads have rows with quite negative
lse, so the change is larger than exp(s) suggests. Measured on SmolLM2-135M (32 tokens of Hamlet, float32,
loss 3.5484 nats with softmax):

    s      max |logit change|   loss change (nats)   mean |d loss / d s|
    -8     2.2                  +0.021               1.9e-4
    -10    0.24                 +0.0014              5.9e-6
    -12    0.031                +0.00018             7.3e-7
    -15    0.0015               +0.000007            3.6e-8  (Adam's eps is 1e-8)

-12 keeps the loss within 2e-4 nats while the gradient stays well above Adam's eps; give the sink logits
their own, larger learning rate (they must travel ~10 units to matter). Pass `sink_init=` for another start
(0 starts as softmax1)."""

_SPAN_TYPES = (Causal, Window, SinkWindow, Chunked)  # causal spans that round-trip through their name


class RetrofitState(nn.Module):
    """One attention layer's attnlab choice: normalizer (by registered name), its settings and learned
    tensors, an optional retrofit span, and an optional per-head gate. Lives at `<attention>.attnlab`."""

    def __init__(self, normalizer: str, options: dict[str, Any], learned: dict[str, Tensor],
                 span: Span | None, gate: HeadGate | None) -> None:
        super().__init__()
        self.normalizer_name = normalizer
        self.options = dict(options)
        self.learned = nn.ParameterDict({k: nn.Parameter(v) for k, v in learned.items()})
        self.span = span
        self.gate = gate
        self._gate_input: Tensor | None = None  # this call's hidden_states, set by the pre-hook, read once

    def normalizer(self) -> Normalizer:
        """The layer's normalizer, built from the live parameters (so gradients reach them)."""
        return create_normalizer(self.normalizer_name, **self.options, **dict(self.learned))

    def restrict(self, model_span: str | Tensor, position_ids: Tensor | None = None) -> str | Span | Tensor:
        """The model's own span ("causal", or a bool mask (B, 1, Lq, Lk), True = may attend) intersected
        with the retrofit span. `position_ids` (B, Lq), when the model passes them, put the span in token
        positions rather than cache slots, so left padding does not shift sinks or chunk boundaries."""
        if self.span is None:
            return model_span
        if isinstance(model_span, str):
            # No mask means keys = cached past + current queries (bottom-right aligned), which is exactly
            # the alignment attnlab's spans use; every recordable retrofit span lies inside causal.
            return self.span
        mask = model_span
        k_slot = torch.arange(mask.shape[-1], device=mask.device)
        # A query's own slot is the last key it may see (a causal LM query always sees itself), right under
        # padding and static caches, where bottom-right alignment is wrong. Rows that see nothing stay empty.
        q_slot = torch.where(mask, k_slot, -1).amax(-1, keepdim=True)  # (B, 1, Lq, 1)
        q_pos, k_pos = q_slot, k_slot
        if isinstance(position_ids, Tensor) and position_ids.dim() == 2 \
                and position_ids.shape[-1] == mask.shape[-2]:
            q_pos = position_ids.to(mask.device)[:, None, :, None]
            k_pos = k_slot - (q_slot - q_pos)  # real tokens are contiguous: slot = position + a shift
        return MaskSpan(mask & self.span.allows(q_pos, k_pos))

    def apply_gate(self, out: Tensor) -> Tensor:
        """Scale each head of `out` (B, H, Lq, D) by its gate, from the input the pre-hook stored."""
        if self.gate is None:
            return out
        x, self._gate_input = self._gate_input, None
        if x is None or x.shape[:-1] != (out.shape[0], out.shape[2]):
            got = "nothing" if x is None else f"shape {tuple(x.shape)}"
            raise AttnlabError(f"the gated attention of this layer needs its input hidden_states (B, "
                               f"{out.shape[2]}, hidden) and got {got}; call the attention module itself "
                               f"(its forward pre-hook feeds the gate), not the attention function directly")
        return out * self.gate(x).to(out.dtype)

    def extra_repr(self) -> str:
        opts = f", options={self.options}" if self.options else ""
        return f"normalizer={self.normalizer_name!r}{opts}, span={span_name(self.span)!r}"


# Hooks are plain module-level functions that look the state up on the module they are called with, so a
# deep copy of the model (whose hook dicts are copied by reference) feeds its own state, not the original's.
def _store_gate_input(module: nn.Module, args: tuple, kwargs: dict) -> None:
    x = kwargs.get("hidden_states", args[0] if args else None)
    getattr(module, RETROFIT_ATTR)._gate_input = x


def _clear_gate_input(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    getattr(module, RETROFIT_ATTR)._gate_input = None  # also after an exception: no tensor outlives the call


# -- the public API ---------------------------------------------------------------------------------------
def retrofit(model: nn.Module, normalizer: str = "softmax", *, gated: bool = False,
             span: str | Span | None = None, sink_init: float | Tensor | None = None,
             options: dict[str, Any] | None = None) -> nn.Module:
    """Give a Hugging Face causal LM attnlab attention in every layer (in place) and return it.

    Args:
        normalizer: a registered normalizer name (`attnlab.normalizer_names()`): "softmax", "softmax1",
            "sinks" (one learned logit per layer and query head, gpt-oss style), "clipped", ...
        gated: add a per-head output gate 2*sigmoid(x W^T + b) (attnlab.models.gate), W = 0 and b = 0 at init:
            the gate is exactly 1, so the logits equal the ungated model's bit for bit at init.
        span: an attnlab span applied in every layer ("window(128)", attnlab.SinkWindow(4, 508),
            "chunked(64)", ...), intersected with the model's own mask (padding, a model's sliding window).
        sink_init: initial sink logit(s) (a float or a (heads,) tensor) for a normalizer that learns
            `logits`; default `SINK_INIT` (-12) for "sinks".
        options: the normalizer's settings (non-learned keywords), e.g. {"gamma": -0.1} for "clipped";
            JSON values only, as they are recorded in the config.

    The learned tensors are `<attn>.attnlab.learned.<keyword>` and `<attn>.attnlab.gate.{weight,bias}`,
    created in the attention module's dtype and device and trainable (even when the model is frozen). The
    choice is recorded in `model.config.attnlab_retrofit` ({"normalizer", "options", "gated", "span",
    "version"}), which `attnlab.load_model` reads back. Keep `attn_implementation="attnlab"`: switching the
    model to eager or sdpa bypasses the retrofit.
    """
    _check_hf_model(model)
    if _states(model):
        raise ConfigError(f"this model is already retrofitted ({retrofit_record(model)}); retrofit a fresh "
                          f"copy of the pretrained model instead (retrofitting again would drop the learned "
                          f"parameters)")
    name = _check_normalizer(normalizer)
    opts = _check_options(name, options)
    sp = _check_span(span)
    if not isinstance(gated, bool):
        raise ConfigError(f"gated must be True or False, got {gated!r}")
    layers = attention_modules(model)
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads, hidden = int(cfg.num_attention_heads), int(cfg.hidden_size)
    init = initial_learned(name, heads, sink_init)
    try:
        create_normalizer(name, **opts, **init).check_heads(heads)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"retrofit: cannot build normalizer {name!r} with options {opts}: {exc}") from None
    for attn in layers:
        if isinstance(getattr(attn, "sinks", None), nn.Parameter):
            raise ConfigError(f"{type(attn).__name__} already learns attention sinks of its own (gpt-oss); "
                              f"retrofit models whose attention is plain softmax")
    # Before anything changes: an architecture without a retrofit type is refused with the model untouched.
    # save_pretrained then writes a model_type that transformers loads as this retrofit (hf_native).
    hf_native.mark_native(model)
    use_attnlab_attention(model)
    for attn in layers:
        ref = next(attn.parameters())
        learned = {k: v.detach().to(device=ref.device, dtype=ref.dtype).clone() for k, v in init.items()}
        gate = HeadGate(hidden, heads, device=ref.device, dtype=ref.dtype) if gated else None
        attn.add_module(RETROFIT_ATTR, RetrofitState(name, opts, learned, sp, gate))
        if gated:
            attn.register_forward_pre_hook(_store_gate_input, with_kwargs=True)
            attn.register_forward_hook(_clear_gate_input, with_kwargs=True, always_call=True)
    model.config.attnlab_retrofit = {"normalizer": name, "options": opts, "gated": gated,
                                     "span": span_name(sp), "version": RECORD_VERSION}
    return model


def retrofit_record(model: nn.Module) -> dict[str, Any] | None:
    """The retrofit recorded in the model's config (None when there is none)."""
    return getattr(getattr(model, "config", None), RECORD_KEY, None)


def retrofit_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters retrofit added (sink logits, gate weights and biases), by their names in
    `model.named_parameters()`, e.g. to give them their own optimizer group or to train only them."""
    return {n: p for n, p in model.named_parameters() if f".{RETROFIT_ATTR}." in f".{n}"}


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The model's attention modules (those HF gives a `layer_idx`), in layer order."""
    indexed = [m for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int)
               and not isinstance(m, RetrofitState)]
    # Some decoder layers carry a layer_idx too; the attention module is the innermost one that does.
    found = [m for m in indexed if not any(c is not m and c in indexed for c in m.modules())]
    if not found:
        raise AttnlabError(f"found no attention modules (modules with a layer_idx) in "
                           f"{type(model).__name__}; retrofit supports Hugging Face causal LMs such as "
                           f"llama, mistral, qwen2, gpt2, gpt_neox")
    return sorted(found, key=lambda m: m.layer_idx)


def span_name(span: Span | None) -> str | None:
    return None if span is None else span.name


# -- loading a saved retrofit -----------------------------------------------------------------------------
def load_retrofitted(path: Path, config: dict[str, Any], *, dtype: torch.dtype) -> tuple[nn.Module, dict]:
    """Load the HF folder `path` saved after `retrofit` (config dict `config`) through its native class
    (`attnlab.models.hf_native`), whose init applies the recorded retrofit, so transformers loads the learned
    tensors with the rest and reports any that are missing or unexpected. Returns (model, loading info).
    Folders saved by an older attnlab (base model_type + record) load the same way, with a warning."""
    from transformers import AutoConfig

    from attnlab.advice import advise

    record_arguments(f"{path}/config.json", config.get(RECORD_KEY))
    model_type = str(config.get("model_type"))
    base = hf_native.base_model_type(model_type) or model_type
    config_cls, model_cls = hf_native.native_classes(base)
    if hf_native.is_legacy(config):
        advise(f"{path} was saved by an older attnlab (model_type {model_type!r} plus an '{RECORD_KEY}' "
               f"record), which plain transformers loads as the un-retrofitted model; convert it once with "
               f"attnlab.models.hf_native.upgrade_folder({str(path)!r}) (rewrites config.json) or re-save it")
    hf_config = AutoConfig.from_pretrained(str(path))
    hf_config.__class__ = config_cls  # a legacy folder's config is the base class; same fields
    model, info = model_cls.from_pretrained(str(path), config=hf_config, dtype=dtype,
                                            output_loading_info=True, ignore_mismatched_sizes=True)
    model.__class__ = model_cls.__mro__[1]  # the base class, as `retrofit` leaves it (only __init__ differs)
    return model, info


# -- checks -----------------------------------------------------------------------------------------------
def _check_hf_model(model: object) -> None:
    if hasattr(model, "model") and hasattr(model, "run_with_cache") and not isinstance(model, nn.Module):
        raise ConfigError("retrofit takes the Hugging Face model itself: pass loaded.model, not the "
                          "LoadedModel (its .model is retrofitted in place)")
    if not isinstance(model, nn.Module) or not hasattr(model, "set_attn_implementation"):
        hint = " (attnlab's GPT picks its normalizer in GPTConfig(normalizer=...))" \
            if type(model).__name__ == "GPT" else ""
        raise ConfigError(f"retrofit takes a Hugging Face causal LM (a transformers PreTrainedModel), got "
                          f"{type(model).__name__}{hint}")
    check_supported(model)
    check_causal(model)


def _states(model: nn.Module) -> list[RetrofitState]:
    return [m for m in model.modules() if isinstance(m, RetrofitState)]


def _check_normalizer(normalizer: object) -> str:
    if isinstance(normalizer, Normalizer):
        raise ConfigError(f"retrofit takes a registered normalizer name, not the object {normalizer!r}, so "
                          f"it can be recorded and reloaded; pass its settings in options=, e.g. "
                          f"retrofit(model, 'clipped', options={{'gamma': -0.1}})")
    if not isinstance(normalizer, str) or not is_normalizer(normalizer):
        raise ConfigError(f"unknown normalizer {normalizer!r}; registered normalizers: "
                          f"{', '.join(normalizer_names())} (add one with attnlab.register_normalizer before "
                          f"retrofitting or loading, or name it 'module:Attr' so any process can import it)")
    # 'module:Attr' names keep their case (they are import paths) and are recorded as such.
    return normalizer.strip() if ":" in normalizer else normalizer.strip().lower()


def _check_options(name: str, options: dict[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ConfigError(f"options must be a dict of the normalizer's settings, got "
                          f"{type(options).__name__}")
    learned = set(learned_parameters(name, 1))
    clash = sorted(set(options) & learned)
    if clash:
        raise ConfigError(f"{clash[0]!r} is a learned parameter of {name!r}, not a setting; set its initial "
                          f"value with sink_init= (sink logits) or assign it after retrofit")
    unknown = sorted(set(options) - normalizer_keywords(name))
    if unknown:
        raise ConfigError(f"the {name!r} normalizer has no setting {unknown[0]!r}; it takes: "
                          f"{', '.join(sorted(normalizer_keywords(name) - learned)) or 'none'}")
    try:
        json.dumps(options)
    except (TypeError, ValueError):
        raise ConfigError(f"options must be JSON values (numbers, strings, lists) so the config can record "
                          f"them, got {options!r}"[:300]) from None
    return dict(options)


def _check_span(span: str | Span | None) -> Span | None:
    if span is None:
        return None
    try:
        sp = resolve_span(span)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"retrofit span: {exc}") from None
    if not isinstance(sp, _SPAN_TYPES):
        raise ConfigError(f"retrofit span must be causal, window(W), sinkwindow(S,W) or chunked(C) (a causal "
                          f"span the config can record by name), got {sp.name!r}")
    return sp


def initial_learned(name: str, heads: int, sink_init: float | Tensor | None) -> dict[str, Tensor]:
    """The learned tensors `retrofit` starts a layer with (sink logits at SINK_INIT or `sink_init`)."""
    init = learned_parameters(name, heads)
    if sink_init is None:
        if name == "sinks" and "logits" in init:
            init["logits"] = torch.full_like(init["logits"], SINK_INIT)
        return init
    if "logits" not in init:
        raise ConfigError(f"sink_init is for a normalizer with learned sink logits (e.g. 'sinks'); "
                          f"{name!r} learns {', '.join(init) or 'nothing'}")
    value = torch.as_tensor(sink_init, dtype=init["logits"].dtype)
    if not bool(torch.isfinite(value).all()):
        raise ConfigError(f"sink_init must be finite, got {sink_init!r}; a sink at -inf is plain softmax "
                          f"(normalizer='softmax')")
    if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != heads):
        raise ConfigError(f"sink_init must be a float or one value per query head ({heads}), got shape "
                          f"{tuple(value.shape)}")
    init["logits"] = value.expand(heads).clone()
    return init


__all__ = ["RECORD_KEY", "SINK_INIT", "HeadGate", "RetrofitState", "attention_modules", "load_retrofitted",
           "retrofit", "retrofit_parameters", "retrofit_record"]
