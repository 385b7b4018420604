"""Hugging Face integration: every attention call of a HF model goes through `attnlab.models.hooks.attend`.

Transformers >= 5 looks attention up by name in two registries, and both need an "attnlab" entry:

1. `transformers.AttentionInterface` maps `config._attn_implementation` to the function each attention
   layer calls: `fn(module, query, key, value, attention_mask, scaling=..., dropout=..., **kw)` with
   query (B, H, Lq, D), key/value (B, Hkv, Lk, D) (grouped-query heads are *not* repeated) and must return
   `(out (B, Lq, H, D), weights or None)`. Ours calls `attend(module.layer_idx, q, k, v, span=..., scale=...)`
   so `record_attention` and `attention_override` work on any model whose attention uses the interface.
2. `transformers.masking_utils.AttentionMaskInterface` maps the same name to the function that builds the
   mask (`create_causal_mask` and `create_sliding_window_causal_mask` look it up). Without an entry the
   lookup falls back to no mask at all, and causal masking silently disappears: the model would read the
   future. Ours returns either `None`, when plain bottom-right-aligned causal attention is exactly the mask
   (no padding, no window in reach, keys = cached past + queries), or the boolean mask HF's `sdpa_mask`
   builds (True = may attend), which then becomes attnlab's span. We never let HF skip the mask under its
   own rule, because SDPA's `is_causal` is top-left aligned and HF relies on that for static caches,
   while attnlab's "causal" is bottom-right aligned (query i sits at key position Lk - Lq + i).

Sliding-window models (Mistral, Qwen2 with `use_sliding_window`) get their window through the mask, since
HF composes the window into `mask_function`; the `sliding_window` keyword each layer passes is then
redundant and ignored. Learned sinks (`s_aux`, gpt-oss) map to `attnlab.Sinks`. Soft-capping (Gemma 2),
attention dropout in training and additive attention biases (ALiBi) have no attnlab equivalent and raise.
A layer retrofitted by `attnlab.retrofit` carries its own normalizer, span and gate in its `attnlab` child,
which the attention function reads on every call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from attnlab.attention import Sinks
from attnlab.errors import AttnlabError, ConfigError
from attnlab.models.hooks import attend

IMPLEMENTATION = "attnlab"
RETROFIT_ATTR = "attnlab"  # the child `attnlab.retrofit` adds to each attention module (retrofit.py)

_registered = False


def attnlab_attention_forward(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """The `AttentionInterface` function: HF tensors in, attnlab attention, HF layout out (B, Lq, H, D)."""
    if kwargs.get("softcap") is not None:
        raise ConfigError("attention soft-capping (Gemma 2's attn_logit_softcapping) has no attnlab "
                          "equivalent; load this model with attn_implementation='eager' instead")
    if dropout and module.training:
        raise ConfigError(f"attnlab attention has no dropout (got attention dropout {dropout}); call "
                          f"model.eval(), or set the config's attention dropout to 0 before training")
    layer = getattr(module, "layer_idx", None)
    if layer is None:
        raise AttnlabError(f"{type(module).__name__} has no layer_idx, so attnlab cannot name its layer; "
                           f"this architecture is not supported with attn_implementation='attnlab'")
    span: str | Tensor
    if attention_mask is None:
        is_causal = kwargs.get("is_causal")
        if is_causal is None:
            is_causal = getattr(module, "is_causal", True)
        span = "causal" if is_causal else "full"
    else:
        span = _as_bool_mask(attention_mask)
    normalizer: Any = "softmax"
    sinks = kwargs.get("s_aux")
    if sinks is not None:
        normalizer = Sinks(sinks)
    state = getattr(module, RETROFIT_ATTR, None)  # set by attnlab.retrofit: this layer's own choice
    if state is not None:
        normalizer = state.normalizer()
        span = state.restrict(span, kwargs.get("position_ids"))
    out = attend(int(layer), query, key, value, normalizer=normalizer, span=span, scale=scaling)
    if state is not None:
        out = state.apply_gate(out)
    return out.transpose(1, 2).contiguous(), None


def _as_bool_mask(mask: Tensor) -> Tensor:
    """HF masks are bool (True = attend) or additive float (0 = attend, a large negative = masked)."""
    if mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point():
        raise TypeError(f"attention mask must be bool or an additive float mask, got dtype {mask.dtype}")
    allowed = mask > torch.finfo(mask.dtype).min / 2
    if bool((mask[allowed] != 0).any()):
        raise ConfigError("this model adds a positional bias to the attention scores (e.g. ALiBi), which "
                          "attnlab's spans cannot express; load it with attn_implementation='eager' instead")
    return allowed


def attnlab_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int | Tensor = 0,
    kv_offset: int = 0,
    mask_function: Callable | None = None,
    attention_mask: Tensor | None = None,
    local_size: int | None = None,
    allow_is_causal_skip: bool = True,
    **kwargs: Any,
) -> Tensor | None:
    """The `AttentionMaskInterface` function: None when bottom-right causal is exact, else a bool mask
    (batch, 1, q_length, kv_length), True = may attend (built by HF's own `sdpa_mask`)."""
    from transformers.masking_utils import causal_mask_function, prepare_padding_mask, sdpa_mask

    if mask_function is None:
        mask_function = causal_mask_function
    kwargs.pop("dtype", None)  # only eager's float masks need it
    if allow_is_causal_skip and _bottom_right_causal_is_exact(
        attention_mask, q_length, kv_length, q_offset, kv_offset, local_size, prepare_padding_mask
    ):
        return None
    return sdpa_mask(
        batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset, kv_offset=kv_offset,
        mask_function=mask_function, attention_mask=attention_mask, local_size=local_size,
        allow_is_causal_skip=False, **kwargs,
    )


def _bottom_right_causal_is_exact(attention_mask: Tensor | None, q_length: int, kv_length: int,
                                  q_offset: int | Tensor, kv_offset: int, local_size: int | None,
                                  prepare_padding_mask: Callable) -> bool:
    # HF only allows the skip when mask_function is plain causal or a sliding window (`local_size`);
    # custom and/or functions and packed sequences turn allow_is_causal_skip off before we are called.
    if isinstance(q_offset, Tensor) or isinstance(kv_offset, Tensor):
        return False  # static caches: reading the offset would break graphs, and the keys hold empty slots
    if q_offset - kv_offset != kv_length - q_length:
        return False  # keys are not exactly "past + current", e.g. a static cache with unfilled slots
    if local_size is not None and kv_length >= local_size:
        return False  # the window is in reach: some key is too old to be seen
    padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
    return padding is None or bool(padding.all())


def register() -> str:
    """Register "attnlab" with HF's attention and mask interfaces (idempotent); returns the name to pass as
    `attn_implementation`."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(IMPLEMENTATION, attnlab_attention_forward)
        AttentionMaskInterface.register(IMPLEMENTATION, attnlab_mask)
        _registered = True
    return IMPLEMENTATION


def check_supported(model: torch.nn.Module) -> None:
    """Raise a clear error when a HF model's attention does not go through the attention interface."""
    compatible = getattr(type(model), "is_backend_compatible", None)
    if compatible is None or not compatible():
        arch = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise AttnlabError(
            f"architecture {arch!r} does not route its attention through Hugging Face's AttentionInterface, "
            f"so attnlab cannot capture or swap it; supported: {', '.join(SUPPORTED_ARCHITECTURES)} "
            f"(and other causal LMs whose class sets _supports_attention_backend)")


def check_causal(model: torch.nn.Module) -> None:
    """Raise when the model's self-attention is bidirectional (BERT-style models have a *ForCausalLM head
    too, but their attention sees the future unless configured as a decoder)."""
    flags = [m.is_causal for m in model.modules()
             if getattr(m, "layer_idx", None) is not None and isinstance(getattr(m, "is_causal", None), bool)]
    if flags and not any(flags):
        arch = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise AttnlabError(f"{arch!r} is not a causal language model (its attention is bidirectional); "
                           f"supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)} and other "
                           f"decoder-only causal LMs")


def use_attnlab_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Switch an already loaded HF model to attnlab's attention (in place) and return it."""
    check_supported(model)
    check_causal(model)
    name = register()
    model.set_attn_implementation(name)
    return model


SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "gpt2", "gpt_neox")
