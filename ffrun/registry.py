"""One registry per kind of component (node types, losses, goodness functions, readouts, protocols,
datasets): the schema check, the graph builder, the divergence check, FLOP counting and docs/config.md
all read a component from its registry by name, so a component is registered once, beside its class.

A plugin (``plugins: [my_module]`` in the config, or an installed package's ``ffrun.plugins`` entry
point) registers its own components the same way; a name already taken, or a component that lacks a
piece its kind requires, is refused with one line (:class:`~ffrun.errors.RegistryError`).

    LOSSES = Registry("loss", contract=check_loss)

    @LOSSES.register("contrastive")
    class Contrastive(FFLoss): ...
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ffrun.errors import RegistryError

T = TypeVar("T")


def where(obj: object) -> str:
    """``module.QualName`` of a class or function, to name who registered a clashing name; of the
    function it wraps (``__wrapped__``) for a component that wraps one (a node type: its builder)."""
    obj = getattr(obj, "__wrapped__", obj)
    module = getattr(obj, "__module__", None) or "?"
    return f"{module}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


class Registry(Generic[T]):
    """Components of one kind by name. ``contract(name, obj)`` raises RegistryError (or returns a
    reason string) when ``obj`` lacks a piece its kind requires; it runs at registration, so a broken
    plugin is refused before any config is checked."""

    def __init__(self, kind: str, contract: Callable[[str, T], str | None] | None = None):
        self.kind = kind
        self._contract = contract
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Class or function decorator: ``@REG.register("name")``; without a name, the object's
        ``name`` attribute is used."""
        def decorate(obj: T) -> T:
            self.add(name if name is not None else getattr(obj, "name", None), obj)
            return obj
        return decorate

    def add(self, name: str | None, obj: T) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise RegistryError(f"{self.kind} {where(obj)}: its name must be an identifier, got {name!r}")
        if name in self._items and self._items[name] is not obj:
            raise RegistryError(f"{self.kind} '{name}' from {where(obj)} clashes with {where(self._items[name])}, "
                                f"which is registered under that name; pick another name")
        if self._contract is not None:
            reason = self._contract(name, obj)
            if reason:
                raise RegistryError(f"{self.kind} '{name}' from {where(obj)}: {reason}")
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(f"unknown {self.kind} '{name}'; known: {', '.join(sorted(self._items))}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._items))

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def in_order(self) -> tuple[str, ...]:
        """The names in the order they were registered (built-ins first, as their module lists them):
        for messages that list a kind's members in a reading order ("a dense or conv2d node")."""
        return tuple(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"


def signature_keys(obj: Callable) -> dict[str, inspect.Parameter]:
    """The keyword parameters of ``obj`` (a class's ``__init__``), for contracts that read a
    component's config keys from its signature."""
    return {k: p for k, p in inspect.signature(obj).parameters.items()
            if k != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def subclass_problem(name: str, obj: object, base: type, required: dict[str, str]) -> str | None:
    """The contract of a component registered as a class: a subclass of ``base`` whose class
    attribute ``name`` is the registered name and which defines each method of ``required``
    (method -> its signature, for the message) itself; None when it holds."""
    if not (isinstance(obj, type) and issubclass(obj, base)):
        return f"must be a subclass of ffrun.api.{base.__name__}"
    if getattr(obj, "name", None) != name:
        return f"its class attribute name is {getattr(obj, 'name', None)!r}, not {name!r}"
    for method, signature in required.items():
        if getattr(obj, method) is getattr(base, method):
            return f"must define {signature}"
    return None
