"""One registry of named factories, the shape every "pick it by name" table in attnlab has: normalizers
(attention/registry.py) and streaming policies (stream/registry.py) each build one.

A registry keeps entries by name in registration order (built-ins first), refuses another factory under a
taken name unless asked to overwrite, and resolves "module:Attr" names by importing a subclass of its base
class on first use. What differs between registries is passed in: the entry built from a factory, the
factory check, the extra name rule, the error class, and every message (str.format templates, so each
registry keeps its own words).

Template fields: {name} the name asked for, {names} the registered names joined by ", ", {factory} the
factory already registered under a taken name, {module}, {attr} and {exc} for a 'module:Attr' import,
{kind} the type name of a non-string looked up.
Imports nothing else of attnlab (the attention package's rule).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar


class _HasFactory(Protocol):
    @property
    def factory(self) -> Any: ...


E = TypeVar("E", bound=_HasFactory)


@dataclass(frozen=True)
class Messages:
    """The words of one registry (str.format templates, fields in the module docstring)."""

    bad_name: str  # register(name) with a name the registry refuses
    taken: str  # another factory under a registered name, without overwrite
    no_module: str  # 'module:Attr' whose module does not import
    not_class: str  # ... whose attribute is not a subclass of the base class
    unknown: str  # a name neither registered nor 'module:Attr'
    no_attr: str | None = None  # ... whose module lacks the attribute (None: the not_class message)
    not_a_name: str | None = None  # a lookup with a non-string: a TypeError (None: the unknown message)


class Registry(Generic[E]):
    """Entries of type E by name. `make_entry(name, factory)` builds one (reading the factory's signature);
    `check_factory(name, factory)` raises TypeError for something that cannot be one; `name_rule(name)` is
    False for a name the registry refuses on top of the common rule (a non-empty lowercase string without
    ':', which marks 'module:Attr' names); `base` is the class a 'module:Attr' name must name."""

    def __init__(self, *, base: type, error: type[Exception], messages: Messages,
                 make_entry: Callable[[str, Any], E], check_factory: Callable[[str, object], None],
                 name_rule: Callable[[str], bool]) -> None:
        self._entries: dict[str, E] = {}
        self._base, self._error, self._messages = base, error, messages
        self._make_entry, self._check_factory, self._name_rule = make_entry, check_factory, name_rule

    def _say(self, template: str, **fields: Any) -> str:
        return template.format(names=", ".join(self._entries), **fields)

    def register(self, name: str, factory: Any, *, overwrite: bool = False) -> None:
        """Add `factory` under `name`; the same factory again is a no-op, another one needs overwrite."""
        if not (isinstance(name, str) and name and name == name.lower() and ":" not in name
                and self._name_rule(name)):
            raise ValueError(self._say(self._messages.bad_name, name=name))
        self._add(name, factory, overwrite)

    def _add(self, name: str, factory: Any, overwrite: bool) -> None:
        self._check_factory(name, factory)
        taken = self._entries.get(name)
        if taken is not None and not overwrite and taken.factory is not factory:
            raise ValueError(self._say(self._messages.taken, name=name, factory=taken.factory))
        self._entries[name] = self._make_entry(name, factory)

    def unregister(self, name: str) -> None:
        """Remove a registered name (an unknown one is the lookup's error)."""
        self.entry(name)
        del self._entries[name]

    def names(self) -> list[str]:
        """Every registered name, in registration order."""
        return list(self._entries)

    def entries(self) -> list[E]:
        return list(self._entries.values())

    def entry(self, name: object) -> E:
        """The entry of a registered name (as given, or stripped and lowercased), or of a 'module:Attr' name,
        imported and registered now; else the registry's error naming the valid names."""
        if not isinstance(name, str):
            if self._messages.not_a_name is not None:
                raise TypeError(self._say(self._messages.not_a_name, name=name, kind=type(name).__name__))
        else:
            found = self._entries.get(name) or self._entries.get(name.strip().lower())
            if found is not None:
                return found
            if ":" in name:
                return self._import(name.strip())
        raise self._error(self._say(self._messages.unknown, name=name))

    def _import(self, name: str) -> E:
        module_name, _, attr = name.partition(":")
        fields = {"name": name, "module": module_name, "attr": attr}
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise self._error(self._say(self._messages.no_module, exc=exc, **fields)) from None
        factory = getattr(module, attr, None)
        if factory is None and self._messages.no_attr is not None:
            raise self._error(self._say(self._messages.no_attr, **fields))
        # Only classes: a saved config names this, and calling any other callable it names is not safe.
        if not (isinstance(factory, type) and issubclass(factory, self._base)):
            raise self._error(self._say(self._messages.not_class, **fields))
        self._add(name, factory, overwrite=False)
        return self._entries[name]


class NameView:
    """A live view of a registry's names for code that wants a container (argparse `choices`, `', '.join`,
    `name in VIEW`): iterating lists the registry now; `contains` decides `in`."""

    def __init__(self, registry: Registry[Any], contains: Callable[[str], bool]) -> None:
        self._registry, self._contains = registry, contains

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._contains(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry.names())

    def __len__(self) -> int:
        return len(self._registry.names())

    def __repr__(self) -> str:
        return repr(tuple(self._registry.names()))


__all__ = ["Messages", "NameView", "Registry"]
