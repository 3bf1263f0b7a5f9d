"""Clipping: ``clip`` (elementwise) and ``clip_by_global_norm``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jopt import _tree
from jopt._base import GradientTransformation, fresh
from jopt._validate import as_state_scalar, check_real


class ClipState(NamedTuple):
    """State of :func:`clip`.

    Attributes:
      hyperparams: ``{"max_delta": float32 scalar}``.
    """

    hyperparams: dict[str, jax.Array]


def clip(max_delta: float) -> GradientTransformation:
    """Clips every element of the updates to ``[-max_delta, max_delta]``.

    .. math::
       u \\leftarrow \\min(\\max(u, -\\delta), \\delta)

    For complex updates the magnitude is clipped and the phase kept:
    :math:`u \\leftarrow u \\min(1, \\delta / |u|)` (0 stays 0).

    Args:
      max_delta: :math:`\\delta \\ge 0`, stored as a float32 state array.

    Returns:
      A :class:`GradientTransformation` with state :class:`ClipState`.

    Raises:
      InvalidHyperparameterError: if ``max_delta`` is negative or not finite.
    """
    name = "clip"
    check_real(name, "max_delta", max_delta, lo=0)
    m0 = as_state_scalar(max_delta)

    def init_fn(params):
        del params
        return ClipState(hyperparams=fresh({"max_delta": m0}))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _tree.check_state_type(name, state, ClipState)
        updates, params = _tree.check_updates(name, updates, None, params)
        m = state.hyperparams["max_delta"]

        def one(u):
            ct = _tree.compute_dtype(u.dtype)
            mm = _tree.cast_scalar(m, _tree.real_dtype(ct))
            u_ = u.astype(ct)
            if jnp.iscomplexobj(u_):
                mag = jnp.abs(u_)
                factor = jnp.where(mag > mm, mm / jnp.where(mag > mm, mag, 1), 1)
                return (u_ * factor.astype(ct)).astype(u.dtype)
            return jnp.clip(u_, -mm, mm).astype(u.dtype)

        return jax.tree_util.tree_map(one, updates), state

    return GradientTransformation(init_fn, update_fn, name=name, config={"max_delta": max_delta})


@jax.custom_jvp
def _safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(x)`` whose derivative at 0 is 0 instead of infinity.

    Differentiating through the update at zero gradients must stay finite. A custom JVP keeps
    the forward computation a plain ``sqrt``: a ``where``-guarded square root made XLA copy
    the sum over every leaf into each leaf's kernel, and compile time grew with the square of
    the number of leaves (3.8 s instead of 0.3 s at 200 leaves).
    """
    return jnp.sqrt(x)


@_safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = jnp.sqrt(x)
    positive = x > 0
    return y, jnp.where(positive, 0.5 / jnp.where(positive, y, 1.0), 0.0) * dx


class ClipByGlobalNormState(NamedTuple):
    """State of :func:`clip_by_global_norm`.

    Attributes:
      hyperparams: ``{"max_norm": float32 scalar}``.
    """

    hyperparams: dict[str, jax.Array]


def clip_by_global_norm(max_norm: float, axis_name: Any = None) -> GradientTransformation:
    """Rescales the whole update tree so that its global L2 norm is at most ``max_norm``.

    .. math::
       \\|g\\| = \\sqrt{\\textstyle\\sum_{\\text{leaves}} \\sum_i |g_i|^2}, \\qquad
       u \\leftarrow u \\cdot \\begin{cases} c / \\|g\\| & \\|g\\| > c \\\\ 1 & \\text{otherwise}
       \\end{cases}

    The factor is a scalar computed once (in float32, or float64 for float64 updates), so no
    full-size temporary is made; a zero norm gives a factor of 1 and ``max_norm = 0`` of a zero
    tree gives zeros, never ``0/0``. Complex leaves contribute :math:`|g|^2`. A NaN or inf
    anywhere makes the norm non-finite and every output element NaN (optax makes only some
    elements NaN), so a bad
    gradient is never passed on partly clipped. The squared norm is summed in float32 (float64
    for float64 updates), so finite updates whose squared norm overflows it (a norm above about
    1.8e19) count as non-finite too; and a ``max_norm / norm`` below float32's range (say
    ``max_norm=1e-30`` against a norm of 1e18) clips to zeros where optax's per-element
    ``u / norm * max_norm`` keeps the tiniest values.

    Args:
      max_norm: :math:`c \\ge 0`, stored as a float32 state array.
      axis_name: a mapped axis name (``pmap``/``shard_map``) over which the leaves are split;
        the squared norm is summed over it with ``lax.psum`` so every device applies the same
        factor. Default ``None`` (the leaves are whole).

    Returns:
      A :class:`GradientTransformation` with state :class:`ClipByGlobalNormState`.

    Raises:
      InvalidHyperparameterError: if ``max_norm`` is negative or not finite.

    References:
      Pascanu, Mikolov & Bengio, `On the difficulty of training recurrent neural networks
      <https://arxiv.org/abs/1211.5063>`_, ICML 2013.
    """
    name = "clip_by_global_norm"
    check_real(name, "max_norm", max_norm, lo=0)
    m0 = as_state_scalar(max_norm)

    def init_fn(params):
        del params
        return ClipByGlobalNormState(hyperparams=fresh({"max_norm": m0}))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _tree.check_state_type(name, state, ClipByGlobalNormState)
        updates, params = _tree.check_updates(name, updates, None, params)
        norm = _safe_sqrt(_tree.global_norm_sq(updates, axis_name))
        m = state.hyperparams["max_norm"].astype(norm.dtype)
        over = norm > m
        # One scalar factor, max_norm / norm where clipping and exactly 1 elsewhere, so every
        # leaf is a single multiply that XLA fuses into its consumers: no full-size select and
        # no temporary (a per-element divide is not duplicated into the several consumers of
        # the clipped update, so ``u / norm * max`` would be materialized once per step). This
        # differs from optax's ``u / norm * max`` by at most one float32 rounding. A non-finite
        # norm (a NaN or inf anywhere in the tree) makes every element NaN, so a bad gradient
        # is visible everywhere instead of passing on partly clipped.
        finite = jnp.isfinite(norm)
        factor = jnp.where(over, m / jnp.where(over, norm, 1.0), 1.0)
        factor = jnp.where(finite, factor, jnp.nan)

        def one(u):
            ct = _tree.compute_dtype(u.dtype)
            return (u.astype(ct) * _tree.cast_scalar(factor, ct)).astype(u.dtype)

        return jax.tree_util.tree_map(one, updates), state

    config: dict[str, Any] = {"max_norm": max_norm}
    if axis_name is not None:
        config["axis_name"] = axis_name
    return GradientTransformation(init_fn, update_fn, name=name, config=config)
