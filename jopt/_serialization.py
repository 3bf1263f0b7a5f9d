"""Checkpoints with flax's serialization: jopt's own pytree node types made known to it.

``flax.serialization.to_bytes`` / ``to_state_dict`` handle dicts, lists, named tuples and
the types registered with them; any other node (a schedule, a ``OneMinus`` complement, a
quantized 8-bit buffer, a packed buffer) would reach msgpack as an object it cannot write.
Every jopt node type is registered here with a state dict of its children keyed by their
pytree keys (``{"complement": ...}``); restoring takes the structure (static fields) from
the target, as flax does for every type.

flax is optional and heavy to import, so nothing is imported here: the types are registered
when ``flax.serialization`` is imported, whether before jopt or after it (an import hook
watches for it and removes itself once it has run).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from typing import Any

import jax

_TYPES: list[type] = []
_DONE: set[type] = set()
_LOCK = threading.Lock()
_FLAX = "flax.serialization"


def _key_text(key: Any) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _children(node: Any) -> tuple[list[str], list[Any], Any]:
    """The node's direct children with their keys, and its one-level tree structure."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(
        node, is_leaf=lambda x: x is not node)
    return [_key_text(path[0]) for path, _ in pairs], [c for _, c in pairs], treedef


def _register_with(module: Any) -> None:
    with _LOCK:
        pending = [t for t in _TYPES if t not in _DONE]
        _DONE.update(pending)
    for ty in pending:
        def to_state(node, _m=module):
            keys, kids, _ = _children(node)
            return {k: _m.to_state_dict(c) for k, c in zip(keys, kids)}

        def from_state(target, state, _m=module, _ty=ty):
            keys, kids, treedef = _children(target)
            if not isinstance(state, dict) or set(state) != set(keys):
                raise ValueError(
                    f"jopt: the restored {_ty.__name__} has the fields "
                    f"{sorted(state) if isinstance(state, dict) else type(state).__name__}; "
                    f"the target has {keys}")
            restored = [_m.from_state_dict(c, state[k], name=k) for k, c in zip(keys, kids)]
            return jax.tree_util.tree_unflatten(treedef, restored)

        module.register_serialization_state(ty, to_state, from_state, override=True)


def serializable(cls: type) -> type:
    """Registers the pytree node type ``cls`` with flax's serialization, now if flax is
    loaded, else when it is. Returns ``cls`` (usable as a class decorator)."""
    with _LOCK:
        _TYPES.append(cls)
    module = sys.modules.get(_FLAX)
    if module is not None and hasattr(module, "register_serialization_state"):
        _register_with(module)
    else:
        _install_hook()
    return cls


class _Loader(importlib.abc.Loader):
    """Runs flax's own loader, then registers jopt's types."""

    def __init__(self, inner: Any):
        self._inner = inner

    def __getattr__(self, name):  # get_source, is_package, ... for tracebacks and tools
        return getattr(self._inner, name)

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        _register_with(module)


class _Hook(importlib.abc.MetaPathFinder):
    """Watches for the import of ``flax.serialization``."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _FLAX:
            return None
        _remove_hook()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(spec.loader)
        return spec


def _install_hook() -> None:
    if not any(isinstance(f, _Hook) for f in sys.meta_path):
        sys.meta_path.insert(0, _Hook())


def _remove_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Hook)]
