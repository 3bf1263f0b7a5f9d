"""Clipping: ``clip`` (elementwise) and ``clip_by_global_norm`` (whole tree)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jopt import _tree
from jopt._base import GradientTransformation
from jopt._declare import Rule, transformation
from jopt._hyper import Hyper


def _clip_rule(g, *, max_delta):
    m = max_delta  # in the real dtype (Rule.real): compared with magnitudes
    if jnp.iscomplexobj(g):
        mag = jnp.abs(g)
        factor = jnp.where(mag > m, m / jnp.where(mag > m, mag, 1), 1)
        return g * factor.astype(g.dtype)
    return jnp.clip(g, -m, m)


@transformation(kind="elementwise", hyperparams={"max_delta": Hyper(">= 0")},
                examples={"": {"max_delta": 0.5}})
def clip(max_delta: Any) -> GradientTransformation:
    """Clips every element of the updates to ``[-max_delta, max_delta]``.

    .. math::
       u \\leftarrow \\min(\\max(u, -\\delta), \\delta)

    For complex updates the magnitude is clipped and the phase kept:
    :math:`u \\leftarrow u \\min(1, \\delta / |u|)` (0 stays 0).

    Args:
      max_delta: :math:`\\delta \\ge 0` (or a schedule of the step), stored in the state.

    Returns:
      A :class:`GradientTransformation` with state :class:`ClipState`.

    Raises:
      InvalidHyperparameterError: if ``max_delta`` is negative or not finite.
    """
    del max_delta
    return Rule(_clip_rule, real=("max_delta",))


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


def _global_norm_factor(updates, max_norm, axis_name):
    norm = _safe_sqrt(_tree.global_norm_sq(updates, axis_name))
    m = max_norm.astype(norm.dtype)
    over = norm > m
    # One scalar factor, max_norm / norm where clipping and exactly 1 elsewhere, so every
    # leaf is a single multiply that XLA fuses into its consumers: no full-size select and
    # no temporary (a per-element divide is not duplicated into the several consumers of
    # the clipped update, so ``u / norm * max`` would be materialized once per step). This
    # differs from optax's ``u / norm * max`` by at most one float32 rounding. A non-finite
    # norm (a NaN or inf anywhere in the tree) makes every element NaN, so a bad gradient
    # is visible everywhere instead of passing on partly clipped.
    factor = jnp.where(over, m / jnp.where(over, norm, 1.0), 1.0)
    return {"factor": jnp.where(jnp.isfinite(norm), factor, jnp.nan)}


@transformation(kind="whole_tree", hyperparams={"max_norm": Hyper(">= 0")},
                examples={"": {"max_norm": 1.0}})
def clip_by_global_norm(max_norm: Any, axis_name: Any = None) -> GradientTransformation:
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
    ``u / norm * max_norm`` keeps the tiniest values. On packed parameters the norm is summed
    over the flat buffers (the same sum, in another order).

    Args:
      max_norm: :math:`c \\ge 0` (or a schedule of the step), stored in the state.
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
    del max_norm
    return Rule(lambda g, *, factor: g * factor,
                prep=lambda *, updates, max_norm: _global_norm_factor(updates, max_norm,
                                                                      axis_name))


ClipState = clip.State
ClipByGlobalNormState = clip_by_global_norm.State
