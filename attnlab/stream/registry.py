"""The one registry of streaming policies: `make_policy`, `parse_policy`, `attnlab stream eval --policy` and
`StreamingCache` (through the policy object) read it.

    register_policy("lru", LruPolicy)          # a Policy subclass, or a callable returning a Policy
    make_policy("lru", window=64)              # sizes by keyword: the factory takes those it names
    parse_policy("lru(64)")                    # a spec: the factory's positional sizes, in order

Built-ins register the same way below. A name "module:Attr" (e.g. "mypkg.policies:Lru", a Policy subclass)
is imported on first use and registered under that name, so a CLI run finds a policy defined outside the
package. A bare name takes its sizes from the keyword defaults (the CLI's --sinks, --window, --chunk-size):
each size the factory's signature names, with `memory` falling back to `window`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from attnlab.attention.named_registry import Messages, NameView, Registry
from attnlab.errors import ConfigError
from attnlab.stream.policies import (
    ChunkedPolicy,
    FullPolicy,
    MemoryPolicy,
    Policy,
    RecomputePolicy,
    SinksPolicy,
    WindowPolicy,
)

Factory = Callable[..., Policy]
SIZES = ("sinks", "window", "chunk", "memory", "segment")  # the size keywords a bare name is given


@dataclass(frozen=True)
class _Entry:
    name: str
    factory: Factory
    args: tuple[str, ...]  # positional sizes, in order: what a spec "name(a,b)" gives
    keywords: frozenset[str]  # every size the factory takes by name


def _make_entry(name: str, factory: Factory) -> _Entry:
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):  # no signature to read: a policy without sizes
        params = []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    args = tuple(p.name for p in params if p.kind in positional)
    keywords = frozenset(p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL)
    return _Entry(name, factory, args, keywords)


def _check_factory(name: str, factory: object) -> None:
    if not callable(factory) or isinstance(factory, Policy):
        raise TypeError(f"register_policy({name!r}, ...): the factory must be a Policy subclass or a "
                        f"callable returning a Policy, got {factory!r}")


_registry: Registry[_Entry] = Registry(
    base=Policy, error=ConfigError, make_entry=_make_entry, check_factory=_check_factory,
    name_rule=lambda name: not any(c in name for c in "() ,"),  # a spec's punctuation: "sinks(4,1020)"
    messages=Messages(
        bad_name="register_policy: the name must be a non-empty lowercase string without spaces, commas, "
                 "parentheses or ':' (':' marks 'module:Attr' names), got {name!r}",
        taken="a streaming policy named {name!r} is already registered; pick another name, or pass "
              "overwrite=True to replace it",
        no_module="streaming policy {name!r}: cannot import module {module!r} ({exc}); check the name, or "
                  "put the module on PYTHONPATH",
        not_class="streaming policy {name!r}: {attr!r} is not a Policy subclass in {module!r}; name one, or "
                  "register a factory with attnlab.stream.register_policy(name, factory)",
        unknown="unknown streaming policy {name!r}; valid policies: {names} (register another with "
                "attnlab.stream.register_policy(name, factory), or name it 'module:Attr')",
    ),
)
_entry = _registry.entry


def register_policy(name: str, factory: type[Policy] | Factory, *, overwrite: bool = False) -> None:
    """Register `factory` (a Policy subclass, or a callable returning a Policy) under `name`, so that
    make_policy, parse_policy and `attnlab stream eval --policy` accept it. Its parameters are its sizes:
    positional ones in spec order ("name(a,b)"), any of sinks/window/chunk/memory/segment filled by name
    for a bare name. Registering the same factory again is a no-op."""
    _registry.register(name, factory, overwrite=overwrite)


def unregister_policy(name: str) -> None:
    """Remove a registered name (tests, notebooks that redefine a class)."""
    _registry.unregister(name)


def policy_names() -> list[str]:
    """Every registered name, built-ins first, in registration order."""
    return _registry.names()


def policy_help() -> str:
    """The --policy help line, read from the registry now (a user's registration shows)."""
    return (f"{', '.join(_registry.names())} (attnlab.stream.policy_names()), or 'module:Attr' naming a "
            f"Policy subclass; or a spec with sizes such as sinks(4,1020), window(1024), recompute(1024). "
            f"'sinks' keeps StreamingLLM's first tokens in the cache; gpt-oss's learned sink logit is the "
            f"normalizer 'sinks'")


def size_readers(size: str) -> list[str]:
    """The registered names whose bare form reads `size` (window also sizes a policy that takes memory)."""
    return [e.name for e in _registry.entries()
            if size in e.keywords or (size == "window" and "memory" in e.keywords)]


def _build(entry: _Entry, sizes: dict[str, int], max_context: int | None) -> Policy:
    policy = entry.factory(**sizes)
    if not isinstance(policy, Policy):
        raise TypeError(f"the factory registered as {entry.name!r} returned {type(policy).__name__}, not a "
                        f"Policy")
    cap = policy.capacity
    if max_context and cap is not None and cap > max_context:
        # Name the sizes the user set, where the policy is led by them (sinks(S, W), chunked(C)).
        label = f"the capacity of {policy.name}"
        if entry.args[:2] == ("sinks", "window"):
            label = f"sinks + window = {sizes['sinks']} + {sizes['window']}"
        elif entry.args[:1] == ("chunk",):
            label = f"chunk = {sizes['chunk']}"
        raise ConfigError(f"{label} = {cap} is larger than the model's context ({max_context} tokens); "
                          f"choose a smaller --window/--sinks/--chunk so the cache fits the context")
    return policy


def make_policy(name: str, *, sinks: int = 4, window: int = 1020, chunk: int = 512, memory: int | None = None,
                segment: int | None = None, max_context: int | None = None) -> Policy:
    """A policy by registered name, each size the factory takes from these keywords (memory defaults to
    window). `max_context`, when given, is the model's trained context: a policy whose per-query span
    exceeds it is refused (RoPE would see distances the model never trained on, which is exactly what
    streaming is meant to avoid)."""
    entry = _entry(name)
    given = {"sinks": sinks, "window": window, "chunk": chunk, "memory": window if memory is None else memory,
             "segment": segment}
    sizes = {k: v for k, v in given.items() if k in entry.keywords and v is not None}
    return _build(entry, sizes, max_context)


def parse_policy(spec: str, *, sinks: int = 4, window: int = 1020, chunk: int = 512,
                 max_context: int | None = None) -> Policy:
    """A policy from a name (sizes from the keyword defaults) or a spec with its sizes: "full",
    "window(1020)", "sinks(4,1020)", "chunked(512)", "recompute(1024)", "memory(512,256)",
    "module:Attr(8)"."""
    spec = spec.strip().replace(" ", "")
    if "(" not in spec:
        return make_policy(spec, sinks=sinks, window=window, chunk=chunk, max_context=max_context)
    name, _, rest = spec.partition("(")
    if not rest.endswith(")"):
        raise ConfigError(f"bad policy spec {spec!r}; write e.g. sinks(4,1020) or window(1024)")
    try:
        args = [int(a) for a in rest[:-1].split(",") if a]
    except ValueError:
        raise ConfigError(f"bad policy spec {spec!r}: sizes must be integers, e.g. sinks(4,1020)") from None
    entry = _entry(name if ":" in name else name.lower())
    if len(args) != len(entry.args):
        raise ConfigError(f"{entry.name} takes {len(entry.args)} size(s), got {spec!r}; e.g. sinks(4,1020), "
                          f"window(1024)")
    return _build(entry, dict(zip(entry.args, args, strict=True)), max_context)


# A live view of the registered names (`', '.join(POLICIES)`, `name in POLICIES`).
POLICIES = NameView(_registry, lambda name: name.strip().lower() in _registry.names())


def _memory(memory: int, segment: int | None = None) -> MemoryPolicy:
    """memory(M, segment): a segment defaults to half the memory."""
    return MemoryPolicy(memory, max(1, memory // 2) if segment is None else segment)


# The built-ins, registered as a user's policy is.
for _name, _factory in (("full", FullPolicy), ("window", WindowPolicy), ("sinks", SinksPolicy),
                        ("chunked", ChunkedPolicy), ("recompute", RecomputePolicy), ("memory", _memory)):
    register_policy(_name, _factory)

__all__ = ["POLICIES", "make_policy", "parse_policy", "policy_help", "policy_names", "register_policy",
           "size_readers", "unregister_policy"]
