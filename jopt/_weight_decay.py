"""Decoupled weight decay: ``add_decayed_weights``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jopt import _tree
from jopt._base import GradientTransformation, fresh, safe_increment, zero_count
from jopt._packed import Packed
from jopt._schedules import as_schedule_or_scalar, evaluate
from jopt.errors import InvalidHyperparameterError, TreeMismatchError


class AddDecayedWeightsState(NamedTuple):
    """State of :func:`add_decayed_weights`.

    Attributes:
      count: int32 scalar, number of updates applied (the schedule's argument).
      hyperparams: ``{"weight_decay": float32 scalar or Schedule}``.
    """

    count: jax.Array
    hyperparams: dict[str, Any]


def _resolve_mask(name: str, mask: Any, params: Any) -> Any:
    """The boolean mask tree for ``params`` (``None``: every leaf is decayed).

    For packed parameters (:class:`jopt.Packed`) the mask refers to the original tree; it is
    returned as a :class:`jopt.Packed` of per-buffer masks (a Python bool for a buffer whose
    leaves agree, else a boolean array marking each leaf's elements).
    """
    if mask is None:
        return None
    if isinstance(params, Packed):
        logical = params.unpack()
        per_leaf = jax.tree_util.tree_leaves(_resolve_mask(name, mask, logical))
        return Packed(params.layout.expand(per_leaf, jnp.bool_), params.layout)
    tree = mask(params) if callable(mask) else mask
    _tree.check_match(
        name, params, tree, expected_name="the parameters", got_name="mask", shapes=False
    )
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


def _is_static_bool(leaf: Any) -> bool:
    if isinstance(leaf, (bool, np.bool_)):
        return True
    return (isinstance(leaf, (np.ndarray, jax.Array)) and not isinstance(leaf, jax.core.Tracer)
            and np.ndim(leaf) == 0 and np.asarray(leaf).dtype == np.bool_)


def add_decayed_weights(weight_decay: Any = 0.0, mask: Any = None) -> GradientTransformation:
    """Adds ``weight_decay * params`` to the updates (decoupled weight decay).

    .. math::
       u_t \\leftarrow u_t + \\lambda(t)\\, \\theta_{t-1} \\quad \\text{(where the mask is True)}

    Placed after an adaptive scaler and before :func:`scale_by_learning_rate`, this is the
    decoupled weight decay of AdamW: the decay is scaled by the learning rate but not by the
    adaptive preconditioner.

    Args:
      weight_decay: :math:`\\lambda \\ge 0`: a float, a jopt schedule or a callable
        ``count -> scalar``. Default 0.
      mask: which leaves to decay: ``None`` (all), a tree of Python bools with the
        parameters' structure, or a callable ``params -> tree of bools`` (called at trace
        time). Leaves where the mask is False pass through unchanged.

    Returns:
      A :class:`GradientTransformation` with state :class:`AddDecayedWeightsState`. ``update``
      requires ``params``.

    Raises:
      InvalidHyperparameterError: if ``weight_decay`` is negative or not finite, or ``mask``
        is neither None, a tree nor a callable.
      TreeMismatchError: in ``update``, if ``params`` is missing or the mask, updates and
        params differ in structure; the message names the tree path.

    References:
      Loshchilov & Hutter, `Decoupled Weight Decay Regularization
      <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
    """
    name = "add_decayed_weights"
    wd0 = as_schedule_or_scalar(name, "weight_decay", weight_decay, lo=0)
    if mask is not None and not callable(mask):
        leaves = jax.tree_util.tree_leaves(mask)
        if not all(_is_static_bool(x) for x in leaves):
            raise InvalidHyperparameterError(
                name, "mask", mask, "None, a tree of Python bools or a callable params -> tree"
            )

    def init_fn(params):
        if mask is not None:
            _resolve_mask(name, mask, params)
        return AddDecayedWeightsState(count=zero_count(), hyperparams=fresh({"weight_decay": wd0}))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _tree.check_state_type(name, state, AddDecayedWeightsState)
        if params is None:
            raise TreeMismatchError(
                name, "update needs the parameters", "", "params=<the parameter tree>", "None"
            )
        updates, params = _tree.check_updates(name, updates, None, params)
        wd = jnp.asarray(evaluate(state.hyperparams["weight_decay"], state.count))
        m = _resolve_mask(name, mask, params)

        def one(u, p, decay=True):
            if decay is False:
                return u
            ct = _tree.compute_dtype(u.dtype)
            w = _tree.cast_scalar(wd, ct)
            wp = w * p.astype(ct)
            if decay is not True:
                # A packed buffer holding decayed and plain leaves: add -0.0 (the exact
                # identity, keeping the sign of a zero) on the plain leaves' elements. The
                # update is read once, so XLA fuses its producer instead of storing it.
                wp = jnp.where(decay, wp, jnp.asarray(-0.0, ct))
            return (u.astype(ct) + wp).astype(u.dtype)

        if m is None:
            new = jax.tree_util.tree_map(one, updates, params)
        else:
            new = jax.tree_util.tree_map(one, updates, params, m)
        return new, state._replace(count=safe_increment(state.count))

    config: dict[str, Any] = {"weight_decay": weight_decay}
    if mask is not None:
        config["mask"] = mask
    return GradientTransformation(init_fn, update_fn, name=name, config=config)
