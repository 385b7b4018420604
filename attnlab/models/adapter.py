"""`LoadedModel`: one small interface over a Hugging Face causal LM or attnlab's own GPT.

Diagnostics, streaming and the explorer only talk to this class, so they never branch on architecture.
Activations are captured under TransformerLens names (Nanda & Bloom, TransformerLens, 2022): the hook
points, their shapes and how each is read are in `attnlab.models.hookpoints` (`run_with_cache`,
`run_with_hooks` and `hooks` go through it). `capture()` is the older context manager the report, the
studies' probes and the explorer use around any forward:

    name                          shape          what
    blocks.{i}.hook_resid_pre     (B, T, d)      residual stream entering block i (embeddings for i = 0)
    blocks.{i}.hook_resid_post    (B, T, d)      residual stream leaving block i (before the final norm)
    blocks.{i}.attn.pattern       (B, H, T, T)   attention weights of block i (query rows, key columns)
    ln_final.hook_normalized      (B, T, d)      output of the final norm (when the model has one)

Legend: B batch, T tokens, d d_model, H query heads, V vocabulary. Residual-stream tensors are taken
with forward hooks on the blocks themselves (the HF decoder-layer list, e.g. `model.model.layers`, or the
GPT's `blocks`), never on a particular attention class, so they are the same for every architecture and
for models whose attention `attnlab.retrofit` replaced: the input of block 0 already includes learned
position embeddings (GPT-2), and the last block's output is taken *before* the final norm (HF's own
`hidden_states[-1]` is after it for most models). Attention weights come from `attnlab.models.hooks.attend`,
the door every attnlab attention call goes through, computed by the eager reference backend. They are the
normalizer's own weights: rows of softmax1 and learned sinks sum to less than 1, the rest being the weight
of the virtual (null) key. `encode([...])` gives a right-padded `TokenBatch` (attnlab.models.batch) whose
mask every forward honours.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.errors import AttnlabError, DataError
from attnlab.models.batch import TokenBatch, pad_batch, split
from attnlab.models.hookpoints import (
    ActivationCache,
    HookFn,
    NamesFilter,
    as_hook_dict,
    capture_fns,
    install,
    select,
)
from attnlab.models.hooks import key_padding, record_attention

# Where the stack of blocks and the final norm live in common HF causal LMs (base model attribute names).
_BLOCK_LISTS = ("layers", "h", "blocks", "decoder_layers")
_FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_norm", "ln_final")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")


class LoadedModel:
    """A causal LM plus its tokenizer, with architecture-independent access to blocks and activations."""

    def __init__(self, model: nn.Module, tokenizer: Any, *, name: str, source: str, kind: str,
                 n_layers: int, n_heads: int, n_kv_heads: int, head_dim: int, d_model: int, vocab_size: int,
                 max_context: int, blocks: list[nn.Module], final_norm: nn.Module | None,
                 rope: bool) -> None:
        if kind not in ("hf", "attnlab"):
            raise ValueError(f"kind must be 'hf' or 'attnlab', got {kind!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        self.kind = kind
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.d_model = d_model
        self.vocab_size = vocab_size
        self.max_context = max_context
        self._blocks = blocks
        self._final_norm = final_norm
        self._rope = rope
        self.load_seconds: float | None = None  # set by load_model

    def __repr__(self) -> str:
        return (f"LoadedModel(name={self.name!r}, kind={self.kind!r}, layers={self.n_layers}, "
                f"heads={self.n_heads}/{self.n_kv_heads} kv, head_dim={self.head_dim}, d={self.d_model}, "
                f"vocab={self.vocab_size}, context={self.max_context})")

    # -- devices and dtypes ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- text -----------------------------------------------------------------------------------------
    def encode(self, text: str | Sequence[str]) -> torch.LongTensor | TokenBatch:
        """Token ids (1, T) on the model's device; no special tokens are added. A list of texts gives a
        `TokenBatch`: ids (B, T) right-padded, with its attention_mask, which every forward honours."""
        if self.tokenizer is None:
            raise DataError(f"{self.name} was loaded without a tokenizer; pass token ids, or put the "
                            f"tokenizer files (tokenizer.json) next to the model")
        if isinstance(text, (list, tuple)):
            # The pad id only fills positions the mask hides; the tokenizer's own pad, else its EOS, else 0.
            pad = getattr(getattr(self.tokenizer, "hf", None), "pad_token_id", None)
            pad = pad if pad is not None else getattr(self.tokenizer, "eos_id", None)
            return pad_batch(text, self.tokenizer.encode, int(pad or 0), self.device)
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str or a list of str, got {type(text).__name__}")
        if not text:
            raise DataError("cannot encode empty text: pass at least one character")
        ids = self.tokenizer.encode(text)
        if len(ids) == 0:
            raise DataError(f"the text {text[:40]!r} encodes to no tokens; pass different text")
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    def decode(self, ids: Tensor | Iterable[int]) -> str:
        """Text of a (T,) or (1, T) id sequence."""
        if isinstance(ids, Tensor):
            if ids.dim() == 2:
                if ids.shape[0] != 1:
                    raise ValueError(f"decode() takes one sequence, got a batch of {ids.shape[0]}; "
                                     f"decode each row separately")
                ids = ids[0]
            ids = ids.tolist()
        return self.tokenizer.decode([int(i) for i in ids])

    # -- forward passes -------------------------------------------------------------------------------
    def _check_ids(self, ids: Tensor) -> Tensor:
        if not isinstance(ids, Tensor) or ids.dtype != torch.long:
            raise TypeError("ids must be a torch.LongTensor of shape (batch, tokens); use LoadedModel.encode")
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if ids.dim() != 2 or ids.shape[1] == 0:
            raise ValueError(f"ids must have shape (batch, tokens) with tokens >= 1, got {tuple(ids.shape)}")
        return ids.to(self.device)

    def _ids_and_mask(self, ids: Any, attention_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        ids, mask = split(ids, attention_mask)
        ids = self._check_ids(ids)
        if mask is None:
            return ids, None
        mask = torch.as_tensor(mask, device=self.device).reshape(ids.shape)  # (B, T), 1 = real token
        return ids, (None if bool(mask.bool().all()) else mask.long())

    def logits(self, ids: Tensor | TokenBatch, attention_mask: Tensor | None = None) -> Tensor:
        """Next-token logits (B, T, V) of ids (B, T) or a `TokenBatch` (its mask honoured; pad positions'
        logits are meaningless). Gradients are not disabled: wrap in torch.no_grad() if unneeded."""
        ids, mask = self._ids_and_mask(ids, attention_mask)
        if self.kind == "hf":
            return self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        with key_padding(mask):
            return _gpt_logits(self.model(ids))

    def embed(self, ids: Tensor) -> Tensor:
        """Input embeddings (B, T, d) of the token ids, differentiable; feed them to forward_embeds."""
        ids = self._check_ids(ids)
        if self.kind == "hf":
            return self.model.get_input_embeddings()(ids)
        return self.model.embed(ids)

    def forward_embeds(self, embeds: Tensor,
                       output_hidden: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Logits (B, T, V) from input embeddings; with output_hidden also the residual stream: a list of
        n_layers + 1 tensors (B, T, d), hidden[0] the input of block 0, hidden[i + 1] the output of block i
        (before the final norm). Differentiable throughout."""
        if embeds.dim() != 3 or embeds.shape[-1] != self.d_model:
            raise ValueError(f"embeds must have shape (batch, tokens, {self.d_model}), "
                             f"got {tuple(embeds.shape)}")
        if not output_hidden:
            return self._forward_embeds(embeds)
        with self.capture(attention=False, detach=False) as store:
            logits = self._forward_embeds(embeds)
        hidden = [store["blocks.0.hook_resid_pre"]] + [store[f"blocks.{i}.hook_resid_post"]
                                                         for i in range(self.n_layers)]
        return logits, hidden

    def _forward_embeds(self, embeds: Tensor) -> Tensor:
        if self.kind == "hf":
            return self.model(inputs_embeds=embeds, use_cache=False).logits
        return _gpt_logits(self.model.forward_embeds(embeds))

    def run_with_cache(self, ids: Tensor | TokenBatch, *, names_filter: NamesFilter = None,
                       attention: bool = True, layers: Iterable[int] | None = None,
                       attention_mask: Tensor | None = None) -> tuple[Tensor, ActivationCache]:
        """Logits (B, T, V) and a cache of detached activations under TransformerLens names
        (attnlab.models.hookpoints: `blocks.3.attn.hook_pattern`, `hook_q`, `hook_resid_mid`, ...; today's
        `blocks.3.attn.pattern` reads as an alias). `names_filter`: a name, a list of names or a callable
        name -> bool (None: every point but the scores and rotated q/k); `attention=False` leaves out what
        needs the attention weights; `layers` keeps those blocks only."""
        ids, mask = self._ids_and_mask(ids, attention_mask)
        names = select(self, names_filter, attention=attention, layers=layers)
        store = ActivationCache()
        with install(self, capture_fns(names, store)):
            logits = self.logits(ids, attention_mask=mask)
        self._check_recorded(names, store)
        return logits, store

    def run_with_hooks(self, ids: Tensor | TokenBatch, fwd_hooks: Iterable[tuple[NamesFilter, HookFn]] = (),
                       *, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, T, V) of one forward with `fwd_hooks`, TransformerLens's [(name, fn), ...]: fn(tensor,
        hook) sees the activation and may return a same-shape replacement (activation patching); a name may
        also be a callable name -> bool. The hooks are removed afterwards."""
        with self.hooks(fwd_hooks):
            return self.logits(ids, attention_mask=attention_mask)

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[NamesFilter, HookFn]]) -> Iterator[None]:
        """`fwd_hooks` on every forward inside the block (TransformerLens's `model.hooks(...)`)."""
        with install(self, as_hook_dict(self, fwd_hooks)):
            yield

    def _check_recorded(self, names: list[str], store: dict[str, Tensor]) -> None:
        missing = [n for n in names if n not in store]
        if not missing:
            return
        layers = sorted({int(n.split(".")[1]) for n in missing if n.endswith("attn.hook_pattern")})
        if layers:
            raise AttnlabError(f"no attention weights were recorded for layer(s) {layers}: their "
                               f"attention does not go through attnlab.models.hooks.attend; route it "
                               f"there (as attn_implementation='attnlab' and attnlab.retrofit do) or "
                               f"pass attention=False")
        raise AttnlabError(f"{len(missing)} hook point(s) saw no activation ({', '.join(missing[:3])}): the "
                           f"forward did not reach them; pass names_filter without them")

    @contextmanager
    def capture(self, *, attention: bool = True, layers: Iterable[int] | None = None,
                detach: bool = True) -> Iterator[dict[str, Tensor]]:
        """Record the activations of every forward run inside the block into the yielded dict (names and
        shapes in the module docstring; a second forward overwrites the first's entries).

        Hooks are registered on entry, so a hook registered earlier (an ablation, steering) has already
        acted on what they see. `attention` also records `blocks.{i}.attn.pattern`, which routes attention
        through the eager reference backend; `detach=False` keeps the residual tensors in the autograd graph.
        """
        wanted = None if layers is None else frozenset(self._check_layer(i) for i in layers)
        with self._capture_resid(detach=detach, layers=wanted) as store:
            if not attention:
                yield store
                return
            with record_attention(layers=wanted) as patterns:
                try:
                    yield store
                finally:
                    store.update(patterns)

    @contextmanager
    def _capture_resid(self, detach: bool,
                       layers: frozenset[int] | None = None) -> Iterator[dict[str, Tensor]]:
        store: dict[str, Tensor] = {}
        handles = []

        def keep(name: str, t: Tensor) -> None:
            store[name] = t.detach() if detach else t

        for i, block in enumerate(self._blocks):
            if layers is not None and i not in layers:
                continue

            def pre(_m: nn.Module, args: tuple, kwargs: dict, i: int = i) -> None:
                keep(f"blocks.{i}.hook_resid_pre", hook_input(args, kwargs))

            def post(_m: nn.Module, _args: tuple, out: Any, i: int = i) -> None:
                keep(f"blocks.{i}.hook_resid_post", hook_output(out))

            handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(block.register_forward_hook(post))
        if self._final_norm is not None:
            def norm_hook(_m: nn.Module, _args: tuple, out: Tensor) -> None:
                keep("ln_final.hook_normalized", out)

            handles.append(self._final_norm.register_forward_hook(norm_hook))
        try:
            yield store
        finally:
            for h in handles:
                h.remove()

    # -- structure ------------------------------------------------------------------------------------
    def blocks(self) -> list[nn.Module]:
        """The transformer blocks, in order (n_layers of them)."""
        return list(self._blocks)

    def _check_layer(self, i: int) -> int:
        if not 0 <= int(i) < self.n_layers:
            raise ValueError(f"layer {i} out of range: this model has layers 0..{self.n_layers - 1}")
        return int(i)

    def mlp(self, i: int) -> nn.Module | None:
        """Block i's MLP submodule (None when the block has none), e.g. to zero it in an ablation."""
        block = self._blocks[self._check_layer(i)]
        for attr in _MLP_NAMES:
            if hasattr(block, attr):
                return getattr(block, attr)
        return None

    def attn(self, i: int) -> nn.Module | None:
        """Block i's attention submodule."""
        block = self._blocks[self._check_layer(i)]
        for attr in ("self_attn", "attn", "attention"):
            if hasattr(block, attr):
                return getattr(block, attr)
        return None

    def rope_positions_supported(self) -> bool:
        """True when positions enter through rotary embeddings, so a cache may re-assign them
        (StreamingLLM's re-positioning); False for learned absolute positions (GPT-2)."""
        return self._rope

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Save the model and its tokenizer into `directory`, so `attnlab.load_model(directory)` gives back
        both (a HF model through its own `save_pretrained`, a retrofit included; attnlab's GPT through
        `GPT.save`). Returns the folder."""
        from attnlab.models.saving import save_loaded

        return save_loaded(self, directory)


# -- helpers ----------------------------------------------------------------------------------------------
def hook_input(args: tuple, kwargs: dict) -> Tensor:
    """The residual stream (B, T, d) a block receives, from its forward pre-hook's (args, kwargs): the first
    positional tensor, else the keyword `hidden_states` / `x` / `hidden`."""
    if args and isinstance(args[0], Tensor):
        return args[0]
    for key in ("hidden_states", "x", "hidden"):
        if isinstance(kwargs.get(key), Tensor):
            return kwargs[key]
    raise AttnlabError("could not find the residual-stream input of a block (neither its first argument nor "
                       "hidden_states/x); this architecture is not supported")


def hook_output(out: Any) -> Tensor:
    """The residual stream (B, T, d) a block returns (from a HF decoder layer's tuple, its first entry)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def _gpt_logits(out: Any) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _find_attr(obj: Any, names: Iterable[str]) -> Any:
    for n in names:
        val = getattr(obj, n, None)
        if val is not None:
            return val
    return None


def _hf_blocks(model: nn.Module, n_layers: int) -> tuple[list[nn.Module], nn.Module | None]:
    base = getattr(model, "base_model", model)
    for name in _BLOCK_LISTS:
        mods = getattr(base, name, None)
        if isinstance(mods, nn.ModuleList) and len(mods) == n_layers:
            return list(mods), _find_attr(base, _FINAL_NORMS)
    for mods in base.modules():  # fall back to the first module list with one entry per layer
        if isinstance(mods, nn.ModuleList) and len(mods) == n_layers:
            return list(mods), _find_attr(base, _FINAL_NORMS)
    raise AttnlabError(f"cannot find the {n_layers} transformer blocks of {type(model).__name__}; "
                       f"this architecture is not supported")


def _hf_uses_rope(model: nn.Module) -> bool:
    base = getattr(model, "base_model", model)
    if _find_attr(base, ("rotary_emb", "rotary_embedding")) is not None:
        return "position_ids" in inspect.signature(model.forward).parameters
    return False


def from_hf(model: nn.Module, tokenizer: Any, name: str, source: str) -> LoadedModel:
    """Wrap a Hugging Face *ForCausalLM. It is switched to attn_implementation="attnlab" (in place) so
    attention capture and overrides work. `tokenizer` may be a HF tokenizer or attnlab's interface."""
    from attnlab.models.hf import use_attnlab_attention

    use_attnlab_attention(model)
    cfg = model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n_layers = int(text_cfg.num_hidden_layers)
    n_heads = int(text_cfg.num_attention_heads)
    n_kv = int(getattr(text_cfg, "num_key_value_heads", None) or n_heads)
    d_model = int(text_cfg.hidden_size)
    head_dim = int(getattr(text_cfg, "head_dim", None) or d_model // n_heads)
    vocab = int(model.get_output_embeddings().weight.shape[0]) if model.get_output_embeddings() is not None \
        else int(text_cfg.vocab_size)
    max_ctx = int(getattr(text_cfg, "max_position_embeddings", None) or 0)
    blocks, final_norm = _hf_blocks(model, n_layers)
    return LoadedModel(model, _wrap_tokenizer(tokenizer, name), name=name, source=str(source), kind="hf",
                       n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim,
                       d_model=d_model, vocab_size=vocab, max_context=max_ctx, blocks=blocks,
                       final_norm=final_norm, rope=_hf_uses_rope(model))


def from_gpt(gpt: nn.Module, tokenizer: Any, name: str, source: str) -> LoadedModel:
    """Wrap attnlab's GPT (attnlab.models.gpt.GPT); `tokenizer` is attnlab's interface or a name for
    attnlab.data.tokenizers.load_tokenizer ("byte", "smollm2", a folder)."""
    cfg = gpt.config
    n_layers = len(gpt.blocks)
    n_heads = int(_find_attr(cfg, ("n_heads", "heads", "n_head", "num_heads")))
    n_kv = int(_find_attr(cfg, ("n_kv_heads", "kv_heads", "n_kv_head", "num_kv_heads")) or n_heads)
    d_model = int(_find_attr(cfg, ("d_model", "n_embd", "dim", "hidden_size")))
    head_dim = int(_find_attr(cfg, ("head_dim",)) or d_model // n_heads)
    vocab = int(_find_attr(cfg, ("vocab_size", "vocab")))
    max_ctx = int(_find_attr(cfg, ("context", "block_size", "max_context", "context_length")) or 0)
    final_norm = _find_attr(gpt, ("norm_f", "ln_f", "final_norm", "norm"))
    if not isinstance(final_norm, nn.Module):
        final_norm = None
    if isinstance(tokenizer, str):
        from attnlab.data.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    positional = str(_find_attr(cfg, ("pos", "positional", "position", "pos_emb")) or "rope").lower()
    return LoadedModel(gpt, tokenizer, name=name, source=str(source), kind="attnlab", n_layers=n_layers,
                       n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim, d_model=d_model, vocab_size=vocab,
                       max_context=max_ctx, blocks=list(gpt.blocks), final_norm=final_norm,
                       rope=positional == "rope")


def _wrap_tokenizer(tokenizer: Any, name: str) -> Any:
    """attnlab's tokenizer interface (encode -> list[int] without special tokens, decode, vocab_size, name,
    eos_id) around a HF tokenizer; objects that already have it pass through."""
    if tokenizer is None:
        return None
    if hasattr(tokenizer, "eos_id") and hasattr(tokenizer, "name"):
        return tokenizer
    from attnlab.data.tokenizers import HFTokenizer

    return HFTokenizer(tokenizer, name=name)
