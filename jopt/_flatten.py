"""``flatten``: a transformation's state in flat buffers for per-leaf parameters."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from jopt import _tree
from jopt._base import GradientTransformation, is_gradient_transformation
from jopt._chain import check_packed_ok
from jopt._checks import check_state_type
from jopt._config import config_key
from jopt._declare import with_plain_arrays
from jopt._layout import Layout, Packed
from jopt._registry import register
from jopt.errors import InvalidHyperparameterError


class FlattenState(NamedTuple):
    """State of :func:`flatten`.

    Attributes:
      inner: the wrapped transformation's state, built for the packed parameters: its
        per-parameter buffers are flat, one per dtype, except for the leaves larger than
        ``max_leaf_size`` (and sharded ones), which keep their own (see :class:`Packed`).
    """

    inner: Any


@register(examples={
    "adam": lambda jopt: jopt.flatten(jopt.adam(0.05)),
    "sgd_momentum": lambda jopt: jopt.flatten(jopt.sgd(0.05, momentum=0.9)),
    "clip_adamw": lambda jopt: jopt.flatten(jopt.chain(
        jopt.clip_by_global_norm(1.0), jopt.adamw(0.05, weight_decay=1e-3)), max_leaf_size=2)},
    descends=True)
def flatten(inner: GradientTransformation, *,
            max_leaf_size: int | None = 65_536) -> GradientTransformation:
    """Keeps ``inner``'s state in flat buffers: per-leaf parameters outside, flat state inside.

    ``init`` runs ``inner.init`` on the packed parameters (:func:`pack`), so the per-parameter
    state (moments, momentum) of all the leaves of at most ``max_leaf_size`` elements is one
    1-D buffer per dtype instead of one buffer per leaf; larger leaves (and sharded ones) keep
    buffers of their own, in their own shapes. ``update`` packs the updates (and parameters)
    the same way (one concatenation per dtype), runs ``inner`` on the :class:`Packed` values
    and unpacks its updates to the original tree (slices XLA fuses into ``apply_updates``).
    A jitted step then returns a few state buffers instead of one or two per leaf and runs a
    few kernels for the arithmetic, which is what costs time with thousands of small leaves.

    Results equal ``inner``'s on the tree to float32 rounding (about one ulp: XLA may contract
    multiply-adds differently in a differently shaped kernel; global norms sum in another
    order); per-leaf options (a weight-decay mask) keep their per-leaf
    meaning. Costs: the packed gradients (and, for weight decay, parameters) and the packed
    updates are temporaries the size of the gradients, and every leaf's slice is its own
    kernel, so compile time still grows with the number of distinct leaves. Packing the
    parameters themselves (:func:`pack`) avoids both.

    Unlike optax's ``flatten``, leaves are never promoted to a common dtype (each dtype has its
    own buffer) and masks keep working. The updates need only the parameters' structure and
    shapes: like ``inner`` on the tree, they may come in another dtype (float32 gradients for
    bfloat16 parameters), as long as the updates of the leaves that share a buffer share a
    dtype. Call ``init`` outside ``jit`` when a leaf is sharded
    over several devices: traced parameters carry no sharding, so the leaf would be
    concatenated with the others instead of keeping a buffer of its own.

    Every link runs by its kind: an elementwise rule on the flat buffers, a per-leaf rule
    (a trust ratio, 8-bit moments) on each original leaf with a per-leaf state.

    Args:
      inner: any jopt transformation (or chain). A transformation from another library must
        declare its kind first (:func:`jopt.declare_kind`).
      max_leaf_size: leaves with more elements keep buffers of their own (their state is not
        flattened): for a large tensor the per-buffer cost is negligible, and concatenating
        it every step would cost a copy (on a GPT-2-sized tree, flattening every leaf makes
        the step several times slower). ``None`` flattens every leaf. Default 65536.

    Returns:
      A :class:`GradientTransformation` with state :class:`FlattenState`. ``update`` takes the
      per-leaf updates (and parameters) and returns per-leaf updates; given :class:`Packed`
      updates it runs ``inner`` on them directly.

    Raises:
      InvalidHyperparameterError: if ``inner`` is not a transformation (an object with
        ``init`` and ``update``), or ``max_leaf_size`` is not None or an integer >= 0.
      LayoutError: if ``inner`` is a transformation of unknown kind (not built by jopt and
        not declared with :func:`jopt.declare_kind`).
      TreeMismatchError: in ``update``, if the updates (structure, shape) or parameters
        (structure, shape, dtype) do not match the tree ``init`` saw, or if the updates of
        leaves that share a buffer have different dtypes; the message names the tree path.
    """
    name = "flatten"
    if not is_gradient_transformation(inner):
        raise InvalidHyperparameterError(
            name, "inner", inner, "an object with init and update (a jopt or optax transformation)")
    if max_leaf_size is not None and (
            isinstance(max_leaf_size, (bool, np.bool_))
            or not isinstance(max_leaf_size, (int, np.integer)) or max_leaf_size < 0):
        raise InvalidHyperparameterError(name, "max_leaf_size", max_leaf_size,
                                         "None or a Python integer >= 0")
    check_packed_ok(name, "inner", inner)

    def init_fn(params):
        params = _tree.unwrap_variables(params)
        if not isinstance(params, Packed):
            params = Layout.of(params, max_leaf_size=max_leaf_size).pack(params)
        return FlattenState(inner=inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        check_state_type(name, state, FlattenState)
        return with_plain_arrays(plain_update, updates, state, params, extra_args)

    def plain_update(updates, state, params=None, **extra_args):
        if isinstance(updates, Packed):
            u, s = inner.update(updates, state.inner, params, **extra_args)
            return u, FlattenState(inner=s)
        # The state's layout is the parameters' at init. A state without packed buffers (sgd)
        # gives none: the layout is then the parameters' (or, without them, the updates').
        layout = _layout_of_state(state.inner)
        if layout is None:
            layout = Layout.of(updates if params is None else params, max_leaf_size=max_leaf_size)
        g = layout.pack(updates, what="updates", transformation=name, dtypes=False)
        p = None if params is None else layout.pack(params, what="params", transformation=name)
        u, s = inner.update(g, state.inner, p, **extra_args)
        return layout.unpack(u.buffers), FlattenState(inner=s)

    config: dict[str, Any] = {"inner": inner}
    if max_leaf_size != 65_536:
        config["max_leaf_size"] = max_leaf_size
    return GradientTransformation._configured(
        init_fn, update_fn, name=name, config=config,
        key=("flatten", config_key(inner), max_leaf_size), kind="combinator", links=(inner,))


def _layout_of_state(state: Any) -> Layout | None:
    """The layout of the first :class:`Packed` value inside ``state`` (None if it has none)."""
    found = []

    def visit(x):
        if isinstance(x, Packed) and not found:
            found.append(x.layout)
        return x

    jax.tree_util.tree_map(visit, state, is_leaf=lambda x: isinstance(x, Packed))
    return found[0] if found else None


