"""The generic registry both the normalizers and the streaming policies are built on
(attnlab/attention/named_registry.py): its own contract, on a registry of plain classes, so that a third
registry built on it gets the same rules (test_registry.py and test_stream_registry.py test the two real
ones, messages included)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from attnlab.attention.named_registry import Messages, NameView, Registry


class Base:
    pass


class One(Base):
    pass


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Any


class Lookup(LookupError):
    pass


def _check(name: str, factory: object) -> None:
    if not callable(factory):
        raise TypeError(f"{name}: not callable")


MESSAGES = Messages(bad_name="bad {name!r}", taken="taken {name!r} by {factory.__name__}",
                    no_module="no module {module!r} for {name!r} ({exc})", not_class="{attr!r} not a class",
                    unknown="unknown {name!r}; known: {names}")


def _registry(messages: Messages = MESSAGES) -> Registry[Entry]:
    return Registry(base=Base, error=Lookup, messages=messages, make_entry=Entry, check_factory=_check,
                    name_rule=lambda name: "-" not in name)


def test_register_look_up_and_remove() -> None:
    reg = _registry()
    reg.register("one", One)
    reg.register("one", One)  # the same factory again: a no-op
    reg.register("two", Base)
    assert reg.names() == ["one", "two"] and [e.factory for e in reg.entries()] == [One, Base]
    assert reg.entry(" ONE ").name == "one"  # stripped and lowercased
    with pytest.raises(ValueError, match="^taken 'one' by One$"):
        reg.register("one", Base)
    reg.register("one", Base, overwrite=True)
    assert reg.entry("one").factory is Base
    reg.unregister("two")
    with pytest.raises(Lookup, match=r"^unknown 'two'; known: one$"):
        reg.unregister("two")


@pytest.mark.parametrize("name", ["", "Upper", "a:b", "a-b", 3, None])
def test_names_the_registry_refuses(name: object) -> None:
    with pytest.raises(ValueError, match=r"^bad "):
        _registry().register(name, One)  # type: ignore[arg-type]


def test_the_factory_check_runs_before_the_name_is_taken() -> None:
    reg = _registry()
    with pytest.raises(TypeError, match="x: not callable"):
        reg.register("x", 3)
    assert reg.names() == []


def test_module_attr_names_import_subclasses_only() -> None:
    reg = _registry()
    assert reg.entry(f"{__name__}:One").factory is One
    assert reg.names() == [f"{__name__}:One"]
    with pytest.raises(Lookup, match=r"^no module 'no_such_mod_zz' for 'no_such_mod_zz:X' \(No module"):
        reg.entry("no_such_mod_zz:X")
    with pytest.raises(Lookup, match=r"^'dumps' not a class$"):
        reg.entry("json:dumps")  # a callable, but not a class of the base: never called from a name
    with pytest.raises(Lookup, match=r"^'nope' not a class$"):
        reg.entry("json:nope")  # no no_attr message: the not_class one


def test_optional_messages() -> None:
    reg = _registry(Messages(**{**MESSAGES.__dict__, "no_attr": "{module!r} lacks {attr!r}",
                                "not_a_name": "a name is a string, got {kind}; known: {names}"}))
    reg.register("one", One)
    with pytest.raises(Lookup, match=r"^'json' lacks 'nope'$"):
        reg.entry("json:nope")
    with pytest.raises(TypeError, match=r"^a name is a string, got int; known: one$"):
        reg.entry(3)
    with pytest.raises(Lookup, match=r"^unknown 3; known: $"):  # without not_a_name: the unknown message
        _registry().entry(3)


def test_the_name_view_is_live() -> None:
    reg = _registry()
    view = NameView(reg, lambda name: name in reg.names())
    assert list(view) == [] and len(view) == 0
    reg.register("one", One)
    assert list(view) == ["one"] and len(view) == 1 and repr(view) == "('one',)"
    assert "one" in view and "two" not in view and 1 not in view
