"""The registry of public factories and the configurations the conformance tests build them
with: every factory registers itself where it is defined (``transformation``, ``optimizer``
and ``register`` in ``_declare``), so the conformance suite finds a new transformation by
itself and a test checks that every public factory is registered."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

from jopt._validate import checked_call

__all__ = ["Entry", "REGISTRY", "register"]


@dataclasses.dataclass
class Entry:
    """A public factory and the configurations the conformance tests build it with.

    ``examples`` maps an id suffix to either a dict of keyword arguments for the factory or a
    callable ``jopt -> transformation``. ``descends``: the transformation includes the
    learning rate (an optimizer), so it must descend on its own. ``needs_value``: ``update``
    needs the loss (``value=``).
    """

    name: str
    factory: Callable[..., Any]
    examples: dict[str, Any]
    descends: bool = False
    needs_value: bool = False

    def builders(self, jopt: Any) -> list[tuple[str, Callable[[], Any]]]:
        """``[(id, build)]``: ``build()`` makes the transformation of each example; ``jopt``
        is the package (examples written as callables receive it)."""
        out = []
        for suffix, ex in self.examples.items():
            ident = self.name + (f"_{suffix}" if suffix else "")
            if callable(ex):
                out.append((ident, functools.partial(ex, jopt)))
            else:
                out.append((ident, functools.partial(self.factory, **dict(ex))))
        return out


REGISTRY: dict[str, Entry] = {}


def add(name: str, factory: Callable, examples: Any, descends: bool,
        needs_value: bool) -> None:
    """Records ``factory`` under ``name`` (see :class:`Entry`; ``examples=None``: the factory
    with its defaults)."""
    if examples is None:
        examples = {"": {}}
    REGISTRY[name] = Entry(name, factory, dict(examples), descends, needs_value)


def register(*, examples: Mapping[str, Any], descends: bool = False,
             needs_value: bool = False) -> Callable:
    """Registers a hand-written factory (a wrapper, a combinator) with the configurations the
    conformance tests build it with (see :class:`Entry`)."""

    def wrap(factory):
        checked = checked_call(factory)
        add(factory.__name__, checked, examples, descends, needs_value)
        return checked

    return wrap
