"""Regularization: decoupled weight decay, ``add_decayed_weights``."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from jopt._base import GradientTransformation
from jopt._declare import transformation
from jopt._hyper import Hyper


def _decay_rule(g, *, param, weight_decay, mask=True):
    wp = weight_decay * param
    if mask is not True:
        # A packed buffer holding decayed and plain leaves: add -0.0 (the exact identity,
        # keeping the sign of a zero) on the plain leaves' elements. The update is read once,
        # so XLA fuses its producer instead of storing it.
        wp = jnp.where(mask, wp, jnp.asarray(-0.0, wp.dtype))
    return g + wp


@transformation(kind="elementwise", hyperparams={"weight_decay": Hyper(">= 0")}, params=True,
                mask="mask",
                examples={"": {"weight_decay": 1e-2},
                          "mask": lambda jopt: jopt.add_decayed_weights(
                              jopt.linear(1e-2, 0.0, 50), mask=jopt._tree.matrices_mask)})
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
        time). Leaves where the mask is False pass through unchanged. On packed parameters
        the mask still names the original tree's leaves.

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
    del weight_decay, mask
    return _decay_rule


AddDecayedWeightsState = add_decayed_weights.State
