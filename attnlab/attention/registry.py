"""The one registry of normalizers: every place that takes a normalizer by name reads it.

    register_normalizer("mine", Mine)            # a Normalizer subclass, or a callable returning one
    attnlab.attention(q, k, v, normalizer="mine")
    GPTConfig(normalizer="mine")                 # the GPT learns what Mine.learned_parameters(heads) gives

Built-ins (normalizers.py) and the variants in `attnlab/attention/variants/` register themselves the same
way on import. A name of the form "module:Attr" (e.g. "mypkg.norms:Mine", a Normalizer subclass) is
imported on first use and registered under that name, so a process that never ran the user's registration
(a CLI run, a torchrun worker, a saved config loaded later) still finds it.

Learned parameters: `learned_parameters(name, heads)` gives the initial tensors of one layer, keyed by the
factory's keyword arguments; a model wraps them in `nn.Parameter`s and calls
`create_normalizer(name, **params)` on each forward.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from attnlab.attention.base import Normalizer
from attnlab.attention.named_registry import Messages, NameView, Registry

Factory = Callable[..., Normalizer]


@dataclass(frozen=True)
class _Entry:
    name: str
    factory: Factory
    keywords: frozenset[str]  # keyword arguments the factory takes
    required: tuple[str, ...]  # ... and those without a default
    open_keywords: bool  # takes **kwargs: every keyword is passed on


def _signature(factory: Factory) -> tuple[frozenset[str], tuple[str, ...], bool]:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): pass everything, require nothing
        return frozenset(), (), True
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = [p for p in params if p.kind in kinds]
    return (frozenset(p.name for p in named),
            tuple(p.name for p in named if p.default is inspect.Parameter.empty),
            any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params))


def _check_factory(name: str, factory: object) -> None:
    if not (isinstance(factory, type) and issubclass(factory, Normalizer)) and (
            isinstance(factory, (type, Normalizer)) or not callable(factory)):
        hint = "; pass its class (or lambda: obj)" if isinstance(factory, Normalizer) else ""
        raise TypeError(f"register_normalizer({name!r}, ...): the factory must be a Normalizer subclass or a "
                        f"callable returning a Normalizer, got {factory!r}{hint}")


_registry: Registry[_Entry] = Registry(
    base=Normalizer, error=ValueError,
    make_entry=lambda name, factory: _Entry(name, factory, *_signature(factory)),
    check_factory=_check_factory,
    name_rule=lambda name: not any(c.isspace() for c in name),
    messages=Messages(
        bad_name="register_normalizer: the name must be a non-empty lowercase string without spaces or ':' "
                 "(':' marks 'module:Attr' import names), got {name!r}",
        taken="a normalizer named {name!r} is already registered ({factory!r}); pick another name, or pass "
              "overwrite=True to replace it",
        no_module="normalizer {name!r}: cannot import module {module!r} ({exc}); name an importable module "
                  "as 'module:Attr'",
        no_attr="normalizer {name!r}: module {module!r} has no attribute {attr!r}",
        not_class="normalizer {name!r}: {attr!r} is not a Normalizer subclass; name one, or register a "
                  "factory in-process with attnlab.register_normalizer(name, factory)",
        unknown="unknown normalizer {name!r}; valid normalizers: {names} (register another with "
                "attnlab.register_normalizer(name, factory), or name it 'module:Attr')",
        not_a_name="a normalizer name must be a string, got {kind}; valid normalizers: {names}",
    ),
)
_entry = _registry.entry


def register_normalizer(name: str, factory: type[Normalizer] | Factory, *, overwrite: bool = False) -> None:
    """Register `factory` (a Normalizer subclass, or a callable returning a Normalizer) under `name`, so
    that attention, GPTConfig, `attnlab train --normalizer`, the explorer and attention_override accept the
    name. Its keyword arguments are the normalizer's settings and learned parameters. Registering the same
    factory again is a no-op; another factory under a taken name needs overwrite=True."""
    _registry.register(name, factory, overwrite=overwrite)


def unregister_normalizer(name: str) -> None:
    """Remove a registered name (tests, notebooks that redefine a class)."""
    _registry.unregister(name)


def normalizer_names() -> list[str]:
    """Every registered name, built-ins first, in registration order."""
    return _registry.names()


def normalizer_help() -> str:
    """One line for a CLI's --normalizer help, read from the registry now (a user's registration shows)."""
    # "sinks" names three things in attnlab; the help says which one this flag means.
    return (f"attention normalizer: {', '.join(_registry.names())} (the registry: "
            f"attnlab.normalizer_names()), or 'module:Attr' naming a Normalizer subclass; docs/attention.md "
            f"cites each. 'sinks' here is gpt-oss's learned sink logit per head; StreamingLLM's sink tokens "
            f"are the span sinkwindow(S,W) and the stream policy 'sinks'")


def is_normalizer(name: object) -> bool:
    """True when `name` is registered or importable as 'module:Attr' (which registers it)."""
    try:
        _entry(name)
    except (TypeError, ValueError):
        return False
    return True


def normalizer_keywords(name: str) -> frozenset[str]:
    """The keyword arguments the factory registered under `name` takes (settings and learned parameters)."""
    return _entry(name).keywords


def learned_parameters(name: str, heads: int, **hints: Any) -> dict[str, Tensor]:
    """Initial values of one layer's learned tensors for normalizer `name` with `heads` query heads, keyed
    by the keyword `create_normalizer` takes them under ({} when it learns nothing). `hints` (e.g.
    `context=` the training length) reach a `learned_parameters` that names them and are dropped otherwise.
    A factory that is not a class may carry its own `learned_parameters` attribute."""
    factory = _entry(name).factory
    make = getattr(factory, "learned_parameters", None)
    if make is None:
        return {}
    keywords, _, open_keywords = _signature(make)
    params = make(heads, **{k: v for k, v in hints.items() if open_keywords or k in keywords})
    if not isinstance(params, dict) or not all(isinstance(k, str) and isinstance(v, Tensor)
                                               for k, v in params.items()):
        raise TypeError(f"normalizer {name!r}: learned_parameters({heads}) must return a dict of str -> "
                        f"Tensor, got {params!r}"[:300])
    return params


def create_normalizer(name: str, **params: Any) -> Normalizer:
    """Build the normalizer registered under `name` from its keyword arguments: learned tensors (possibly
    nn.Parameters, gradients flow) and settings. A missing learned parameter or an unknown keyword is a
    ValueError that names it."""
    entry = _entry(name)
    unknown = sorted(set(params) - entry.keywords) if not entry.open_keywords else []
    if unknown:
        takes = ", ".join(sorted(entry.keywords)) or "nothing"
        raise ValueError(f"the {entry.name!r} normalizer takes no {', '.join(unknown)}; it takes: {takes}")
    missing = [k for k in entry.required if k not in params]
    if missing:
        hint = ""
        if isinstance(entry.factory, type):
            hint = f"pass {entry.factory.__name__}({', '.join(missing)}) with one value per head, or "
        raise ValueError(f"the {entry.name!r} normalizer needs its {', '.join(missing)}: {hint}"
                         f"create_normalizer({entry.name!r}, {missing[0]}=...) with the initial values "
                         f"learned_parameters({entry.name!r}, heads) gives")
    normalizer = entry.factory(**params)
    if not isinstance(normalizer, Normalizer):
        raise TypeError(f"the factory registered as {entry.name!r} returned {type(normalizer).__name__}, "
                        f"not a Normalizer")
    return normalizer


def resolve_normalizer(normalizer: object) -> Normalizer:
    """A Normalizer from a registered name (built with its defaults) or a Normalizer object (as is)."""
    if isinstance(normalizer, Normalizer):
        return normalizer
    if isinstance(normalizer, str):
        return create_normalizer(normalizer)
    raise TypeError(f"normalizer must be a name or a Normalizer object, got {type(normalizer).__name__}; "
                    f"valid normalizers: {', '.join(_registry.names())}")


# A live view for code that wants a container (argparse `choices`, `name in NORMALIZER_NAMES`). `in` is
# true for a registered name and for any 'module:Attr' name, which is imported where it is used (GPTConfig,
# create_normalizer), so that a failed import is reported with its cause rather than as an unknown name.
NORMALIZER_NAMES = NameView(_registry, lambda name: ":" in name or is_normalizer(name))

__all__ = ["NORMALIZER_NAMES", "create_normalizer", "is_normalizer", "learned_parameters",
           "normalizer_help", "normalizer_keywords", "normalizer_names", "register_normalizer",
           "resolve_normalizer", "unregister_normalizer"]
