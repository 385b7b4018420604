"""TransformerLens hook points on a `LoadedModel`: the names TL users type, for capture and for patching.

`LoadedModel.run_with_cache(ids, names_filter=...)` and `run_with_hooks(ids, fwd_hooks=[(name, fn)])` both
go through `install(lm, fns)`, which puts a function list on each named point for one forward. A function
is called as `fn(tensor, hook)` (TransformerLens's signature; `hook.name` is the point's name,
`hook.layer()` its block) and may return a tensor of the same shape, which the forward then uses instead
(activation patching), or None to leave it. Points, per block i (B batch, T tokens, d d_model, H query
heads, Hkv key/value heads, D head dim):

    blocks.{i}.hook_resid_pre      (B, T, d)        residual stream entering block i
    blocks.{i}.attn.hook_q         (B, T, H, D)     queries, before rotary embeddings (as TL)
    blocks.{i}.attn.hook_k/hook_v  (B, T, Hkv, D)   keys, values (grouped-query heads not repeated)
    blocks.{i}.attn.hook_rot_q/k   (B, T, H|Hkv, D) queries / keys after rotary embeddings (RoPE models)
    blocks.{i}.attn.hook_attn_scores (B, H, T, T)   scale * q.k before the normalizer, -inf where hidden
                                                    (read-only)
    blocks.{i}.attn.hook_pattern   (B, H, T, T)     attention weights (alias: blocks.{i}.attn.pattern)
    blocks.{i}.attn.hook_z         (B, T, H, D)     weighted values per head, before W_O (and any gate)
    blocks.{i}.hook_attn_out       (B, T, d)        the attention module's output
    blocks.{i}.hook_resid_mid      (B, T, d)        resid_pre + attn_out (pre-norm blocks with one
                                                    residual add per sublayer)
    blocks.{i}.hook_mlp_out        (B, T, d)        the MLP's output
    blocks.{i}.hook_resid_post     (B, T, d)        residual stream leaving block i (before the final norm)
    ln_final.hook_normalized       (B, T, d)        output of the final norm

q/k/v come from the q_proj/k_proj/v_proj outputs where the attention has them (Llama, Mistral, Qwen2,
attnlab's GPT); models with a fused projection (GPT-2's c_attn) get them where attention starts, which is
the same tensor when there are no rotary embeddings. pattern, z, scores and the rotated q/k come from
`attnlab.models.hooks.attend`, so they need attention that goes through attnlab (any model `load_model`
returns). Patching the pattern recomputes the output as pattern @ v. resid_mid has no module of its own in
HF blocks, so it is read as resid_pre + attn_out and patched by adding the change to attn_out: exact for
the blocks it is offered on.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.models.hooks import tap_attention

if TYPE_CHECKING:
    from attnlab.models.adapter import LoadedModel


# Today's names, kept as aliases of TransformerLens's.
ALIASES = {"attn.pattern": "attn.hook_pattern", "attn.scores": "attn.hook_attn_scores"}
# Where each attention-door kind is read: name suffix -> attend's kind.
_DOOR = {"attn.hook_pattern": "pattern", "attn.hook_z": "z", "attn.hook_attn_scores": "scores",
         "attn.hook_rot_q": "q", "attn.hook_rot_k": "k"}
# Asked for by name or callable only: they cost an extra T x T matrix, or repeat q/k.
_NOT_BY_DEFAULT = ("attn.hook_attn_scores", "attn.hook_rot_q", "attn.hook_rot_k")
_LAYER = re.compile(r"^blocks\.(\d+)\.(.+)$")
_POST_ATTN_NORMS = ("pre_feedforward_layernorm", "post_feedforward_layernorm")  # Gemma-style blocks


@dataclass(frozen=True)
class HookPoint:
    """What a hook function receives as its second argument (TransformerLens's `hook`)."""

    name: str

    def layer(self) -> int:
        m = _LAYER.match(self.name)
        if m is None:
            raise ValueError(f"{self.name} is not inside a block")
        return int(m.group(1))


HookFn = Callable[[Tensor, HookPoint], Tensor | None]
NamesFilter = str | Iterable[str] | Callable[[str], bool] | None


class ActivationCache(dict):
    """A dict of activations under TransformerLens names; today's names (`blocks.{i}.attn.pattern`) are
    read as aliases."""

    def __getitem__(self, name: str) -> Tensor:
        return super().__getitem__(canonical(name))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(canonical(name))

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(canonical(name), default)


def canonical(name: str) -> str:
    """TransformerLens's name for `name` (an alias or already canonical)."""
    m = _LAYER.match(name)
    if m and m.group(2) in ALIASES:
        return f"blocks.{m.group(1)}.{ALIASES[m.group(2)]}"
    return name


# -- which points a model has -----------------------------------------------------------------------------
def _projections(lm: LoadedModel, i: int) -> dict[str, nn.Module]:
    attn = lm.attn(i)
    out = {}
    for kind in ("q", "k", "v"):
        mod = getattr(attn, f"{kind}_proj", None)
        if isinstance(mod, nn.Module):
            out[kind] = mod
    return out


def _mid_rule(lm: LoadedModel, i: int) -> tuple[float, float] | None:
    """(skip, alpha) with resid_mid = skip * resid_pre + alpha * attn_out, or None where the block has no
    such point (post-norm, parallel attention and MLP, a norm on the attention output)."""
    block = lm.blocks()[i]
    if lm.kind == "attnlab":
        if not getattr(block, "pre", False) or lm.mlp(i) is None:
            return None
        return (1.0 if block.skip else 0.0), float(block.alpha)
    cfg = getattr(lm.model, "config", None)
    if getattr(cfg, "use_parallel_residual", False) or getattr(cfg, "parallel_attn", False):
        return None
    if any(hasattr(block, n) for n in _POST_ATTN_NORMS) or lm.mlp(i) is None:
        return None
    return 1.0, 1.0


def hook_names(lm: LoadedModel) -> list[str]:
    """Every hook point of `lm`, in forward order."""
    names = []
    for i in range(lm.n_layers):
        proj = _projections(lm, i)
        p = f"blocks.{i}."
        names.append(p + "hook_resid_pre")
        for kind in ("q", "k", "v"):
            if kind in proj or not lm.rope_positions_supported():
                names.append(p + f"attn.hook_{kind}")
        if lm.rope_positions_supported():
            names += [p + "attn.hook_rot_q", p + "attn.hook_rot_k"]
        names += [p + "attn.hook_attn_scores", p + "attn.hook_pattern", p + "attn.hook_z",
                  p + "hook_attn_out"]
        if _mid_rule(lm, i) is not None:
            names.append(p + "hook_resid_mid")
        if lm.mlp(i) is not None:
            names.append(p + "hook_mlp_out")
        names.append(p + "hook_resid_post")
    if lm._final_norm is not None:
        names.append("ln_final.hook_normalized")
    return names


def needs_attention_door(name: str) -> bool:
    """True for points read inside attnlab's attention (absent when a model's attention bypasses it)."""
    m = _LAYER.match(name)
    return bool(m) and (m.group(2) in _DOOR or m.group(2) in ("attn.hook_q", "attn.hook_k", "attn.hook_v"))


def select(lm: LoadedModel, names_filter: NamesFilter, *, attention: bool = True,
           layers: Iterable[int] | None = None) -> list[str]:
    """The hook points `names_filter` names: None (every point but hook_attn_scores and hook_rot_q/k), a
    name, a list of names, or a callable name -> bool. A name that does not exist raises with the close
    matches."""
    available = hook_names(lm)
    if names_filter is None:
        chosen = [n for n in available if not n.endswith(_NOT_BY_DEFAULT)]
    elif callable(names_filter):
        chosen = [n for n in available if names_filter(n)]
    else:
        wanted = [names_filter] if isinstance(names_filter, str) else list(names_filter)
        chosen = [check_name(lm, n, available) for n in wanted]
    if not attention:
        chosen = [n for n in chosen if not n.startswith("blocks.") or not _needs_weights(lm, n)]
    if layers is not None:
        keep = {f"blocks.{lm._check_layer(i)}." for i in layers}
        chosen = [n for n in chosen if not n.startswith("blocks.") or n[:n.index(".", 7) + 1] in keep]
    return list(dict.fromkeys(chosen))


def _needs_weights(lm: LoadedModel, name: str) -> bool:
    # attention=False keeps attention on the fast kernel: drop what only the attention door can read.
    suffix = name.split(".", 2)[2]
    if suffix in ("attn.hook_q", "attn.hook_k", "attn.hook_v"):
        return suffix[-1] not in _projections(lm, int(name.split(".")[1]))
    return suffix in _DOOR


def check_name(lm: LoadedModel, name: str, available: list[str] | None = None) -> str:
    """The canonical form of `name`, or one line naming it and the close matches."""
    available = hook_names(lm) if available is None else available
    if not isinstance(name, str):
        raise ConfigError(f"a hook name must be a str, got {type(name).__name__}")
    canon = canonical(name)
    if canon in available:
        return canon
    close = difflib.get_close_matches(canon, available, n=4, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}" if close else \
        "names look like blocks.0.attn.hook_pattern (see attnlab.models.hookpoints.hook_names(lm))"
    raise ConfigError(f"{lm.name} has no hook point {name!r}; {hint}")


# -- installing functions on the points --------------------------------------------------------------------
def _apply(fns: dict[str, list[HookFn]], name: str, t: Tensor) -> Tensor:
    """Run name's functions in order; each may return a replacement of the same shape."""
    for fn in fns.get(name, ()):
        out = fn(t, HookPoint(name))
        if out is None:
            continue
        if not isinstance(out, Tensor) or out.shape != t.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ConfigError(f"the hook function on {name} returned {got}, expected a tensor of shape "
                              f"{tuple(t.shape)} (or None to leave the activation as it is)")
        if name.endswith("attn.hook_attn_scores"):
            raise ConfigError(f"{name} is read-only (the scores are recomputed for you, not used by the "
                              f"forward); patch blocks.{HookPoint(name).layer()}.attn.hook_pattern instead")
        t = out
    return t


def _heads(t: Tensor, n: int) -> Tensor:
    return t.view(*t.shape[:-1], n, t.shape[-1] // n)  # (B, T, n*D) -> (B, T, n, D)


@contextmanager
def install(lm: LoadedModel, fns: dict[str, list[HookFn]]) -> Iterator[None]:
    """Put `fns` (canonical name -> functions) on lm's hook points for every forward inside the block."""
    if not fns:
        yield
        return
    handles: list[Any] = []
    stash: dict[int, Tensor] = {}  # block i's input, for resid_mid
    door: dict[int, set[str]] = {}
    door_names: dict[tuple[int, str], str] = {}
    blocks = lm.blocks()
    from attnlab.models.adapter import hook_input, hook_output

    def replace_output(out: Any, new: Tensor) -> Any:
        if isinstance(out, tuple):
            return (new, *out[1:])
        if isinstance(out, list):
            return [new, *out[1:]]
        return new

    def on_output(name: str) -> Callable[..., Any]:
        """A forward hook that runs name's functions on a module's output (its first element)."""
        def hook(_m: nn.Module, _a: tuple, out: Any) -> Any:
            a = hook_output(out)
            new = _apply(fns, name, a)
            return None if new is a else replace_output(out, new)

        return hook

    for i, block in enumerate(blocks):
        p = f"blocks.{i}."
        want = {n[len(p):] for n in fns if n.startswith(p)}
        if not want:
            continue
        mid = _mid_rule(lm, i) if "hook_resid_mid" in want else None
        if "hook_resid_pre" in want or mid is not None:
            def pre(_m: nn.Module, args: tuple, kwargs: dict, name: str = p + "hook_resid_pre",
                    i: int = i) -> tuple | None:
                x = hook_input(args, kwargs)
                new = _apply(fns, name, x)
                stash[i] = new
                if new is x:
                    return None
                if args and args[0] is x:
                    return (new, *args[1:]), kwargs
                kwargs = dict(kwargs)
                for key in ("hidden_states", "x", "hidden"):
                    if kwargs.get(key) is x:
                        kwargs[key] = new
                return args, kwargs

            handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        proj = _projections(lm, i)
        for kind in ("q", "k", "v"):
            if f"attn.hook_{kind}" not in want:
                continue
            if kind in proj:
                n_heads = lm.n_heads if kind == "q" else lm.n_kv_heads

                def on_proj(_m: nn.Module, _a: tuple, out: Tensor, name: str = p + f"attn.hook_{kind}",
                            n: int = n_heads) -> Tensor:
                    new = _apply(fns, name, _heads(out, n))  # (B, T, n, D)
                    return new.reshape(out.shape)

                handles.append(proj[kind].register_forward_hook(on_proj))
            else:  # no projection of its own (GPT-2's c_attn): where attention starts, same without RoPE
                door.setdefault(i, set()).add(kind)
                door_names[(i, kind)] = p + f"attn.hook_{kind}"
        for suffix, kind in _DOOR.items():
            if suffix in want:
                door.setdefault(i, set()).add(kind)
                door_names[(i, kind)] = p + suffix
        if "hook_attn_out" in want or mid is not None:
            def on_attn(_m: nn.Module, _a: tuple, out: Any, i: int = i, p: str = p,
                        mid: tuple[float, float] | None = mid) -> Any:
                a = hook_output(out)  # (B, T, d)
                new = _apply(fns, p + "hook_attn_out", a)
                if mid is not None:
                    skip, alpha = mid
                    before = skip * stash[i] + alpha * new  # (B, T, d)
                    after = _apply(fns, p + "hook_resid_mid", before)
                    if after is not before:
                        new = new + (after - before) / alpha
                return None if new is a else replace_output(out, new)

            handles.append(lm.attn(i).register_forward_hook(on_attn))
        if "hook_mlp_out" in want:
            handles.append(lm.mlp(i).register_forward_hook(on_output(p + "hook_mlp_out")))
        if "hook_resid_post" in want:
            handles.append(block.register_forward_hook(on_output(p + "hook_resid_post")))
    if "ln_final.hook_normalized" in fns and lm._final_norm is not None:
        def on_norm(_m: nn.Module, _a: tuple, out: Tensor) -> Tensor:
            return _apply(fns, "ln_final.hook_normalized", out)

        handles.append(lm._final_norm.register_forward_hook(on_norm))

    frozen = {i: frozenset(kinds) for i, kinds in door.items()}

    def tap(layer: int, kind: str, t: Tensor) -> Tensor:
        name = door_names[(layer, kind)]
        if kind in ("q", "k", "v", "z"):  # attend's (B, heads, T, D) -> TL's (B, T, heads, D)
            return _apply(fns, name, t.transpose(1, 2)).transpose(1, 2)
        return _apply(fns, name, t)

    try:
        with ExitStack() as stack:
            if frozen:
                stack.enter_context(tap_attention(tap, lambda layer: frozen.get(layer, frozenset())))
            yield
    finally:
        for h in handles:
            h.remove()


def as_hook_dict(lm: LoadedModel, fwd_hooks: Iterable[tuple[NamesFilter, HookFn]]) -> dict[str, list[HookFn]]:
    """TransformerLens's fwd_hooks list [(name or name filter, fn), ...] as name -> functions, in order."""
    fns: dict[str, list[HookFn]] = {}
    available = hook_names(lm)
    for entry in fwd_hooks:
        if not (isinstance(entry, tuple) and len(entry) == 2 and callable(entry[1])):
            raise ConfigError(f"fwd_hooks entries are (name, fn) pairs, got {entry!r}")
        name, fn = entry
        names = [n for n in available if name(n)] if callable(name) else [check_name(lm, name, available)]
        for n in names:
            fns.setdefault(n, []).append(fn)
    return fns


def capture_fns(names: Iterable[str], store: dict[str, Tensor],
                detach: bool = True) -> dict[str, list[HookFn]]:
    """Functions that keep each named activation in `store` (detached unless detach=False)."""
    def keep(t: Tensor, hook: HookPoint) -> None:
        store[hook.name] = t.detach() if detach else t

    return {n: [keep] for n in names}


def merge(*dicts: dict[str, list[HookFn]]) -> dict[str, list[HookFn]]:
    out: dict[str, list[HookFn]] = {}
    for d in dicts:
        for name, fns in d.items():
            out.setdefault(name, []).extend(fns)
    return out


__all__ = ["ALIASES", "ActivationCache", "HookPoint", "as_hook_dict", "canonical", "capture_fns",
           "check_name", "hook_names", "install", "merge", "select"]
