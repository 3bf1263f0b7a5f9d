"""Masks: which leaves a transformation touches (``add_decayed_weights(mask=...)``), resolved
per leaf of the original tree, also on packed buffers."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jopt._checks import check_match
from jopt._layout import Packed
from jopt.errors import InvalidHyperparameterError, TreeMismatchError

__all__ = ["resolve_mask", "check_mask_option"]


def _is_static_bool(leaf: Any) -> bool:
    if isinstance(leaf, (bool, np.bool_)):
        return True
    return (isinstance(leaf, (np.ndarray, jax.Array)) and not isinstance(leaf, jax.core.Tracer)
            and np.ndim(leaf) == 0 and np.asarray(leaf).dtype == np.bool_)


def resolve_mask(name: str, mask: Any, params: Any) -> Any:
    """The boolean mask tree for ``params`` (``None``: every leaf is selected).

    For packed parameters (:class:`jopt.Packed`) the mask refers to the original tree; it is
    returned as a :class:`jopt.Packed` of per-buffer masks (a Python bool for a buffer whose
    leaves agree, else a boolean array marking each leaf's elements).
    """
    if mask is None:
        return None
    if isinstance(params, Packed):
        per_leaf = jax.tree_util.tree_leaves(resolve_mask(name, mask, params.unpack()))
        return Packed(params.layout.expand(per_leaf, jnp.bool_), params.layout)
    tree = mask(params) if callable(mask) else mask
    check_match(name, params, tree, expected_name="the parameters", got_name="mask",
                shapes=False)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    out = []
    for path, leaf in leaves:
        if not _is_static_bool(leaf):
            raise TreeMismatchError(
                name, "mask leaves must be booleans known at trace time",
                jax.tree_util.keystr(path), "True or False (Python, NumPy or a concrete 0-d array)",
                repr(leaf),
            )
        out.append(bool(leaf))
    return treedef.unflatten(out)


def check_mask_option(name: str, arg: str, mask: Any) -> None:
    if mask is not None and not callable(mask):
        leaves = jax.tree_util.tree_leaves(mask)
        if not all(_is_static_bool(x) for x in leaves):
            raise InvalidHyperparameterError(
                name, arg, mask, "None, a tree of Python bools or a callable params -> tree")
