"""Configuration values: hashable keys for equality and readable text for ``repr``.

Used by transformations, schedules and early stopping so that two objects built with equal
arguments compare and hash equal (by the values they store) and print like the call that
built them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def config_key(value: Any) -> Any:
    """A hashable, comparable stand-in for a configuration value.

    Numbers compare by value (``1`` and ``1.0`` agree); 0-d numeric arrays as their number;
    other arrays by shape, dtype and bytes; sequences, mappings and pytrees (schedules, masks)
    element by element; objects that define ``_jopt_key()`` (transformations) by that key;
    callables and other unhashable values by identity.
    """
    if isinstance(value, jax.core.Tracer):
        return ("id", id(value))
    own = getattr(type(value), "_jopt_key", None)
    if own is not None and not isinstance(value, type):
        return ("obj", type(value).__name__, own(value))
    if isinstance(value, (bool, np.bool_)):
        return ("bool", bool(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        return ("num", float(value))
    if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0 and (
        jnp.issubdtype(value.dtype, jnp.integer) or jnp.issubdtype(value.dtype, jnp.floating)
    ):
        return ("num", float(np.asarray(value)))
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return (type(value).__name__, tuple(config_key(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, config_key(v)) for k, v in value.items())))
    if isinstance(value, (np.ndarray, jax.Array)):
        arr = np.asarray(value)
        return ("array", arr.shape, str(arr.dtype), arr.tobytes())
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return ("dtype", str(np.dtype(value)))
    leaves, treedef = jax.tree_util.tree_flatten(value)
    if treedef.num_nodes > 1 or (leaves and leaves[0] is not value):
        # A pytree (a schedule, a mask tree): compare its structure and its numbers.
        return ("tree", str(treedef), tuple(config_key(leaf) for leaf in leaves))
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return value


def format_value(value: Any) -> str:
    """``repr`` of a configuration value as a call would spell it (``0.001``, ``'bfloat16'``,
    a function's name)."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, jax.core.Tracer):
        return "<traced>"
    if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0:
        return repr(np.asarray(value).item())
    if isinstance(value, (np.dtype, type)) and value is not None:
        try:
            return f"'{np.dtype(value).name}'"
        except TypeError:
            pass
    if callable(value) and getattr(type(value), "_jopt_key", None) is None and hasattr(
            value, "__name__"):
        return value.__name__
    return repr(value)
