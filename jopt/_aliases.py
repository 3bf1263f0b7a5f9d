"""Named optimizers: short chains of building blocks.

Each optimizer here is :func:`jopt.chain` of blocks from the scaling, weight-decay and
learning-rate modules; nothing is implemented twice. The returned transformation's ``repr``
is the optimizer's call (``adamw(learning_rate=0.001, ...)``), its state is the chain's tuple
of link states, and :func:`jopt.get_hyperparams` finds every hyperparameter by name.
"""

from __future__ import annotations

from typing import Any

from jopt._base import GradientTransformation
from jopt._chain import chain
from jopt._codecs import Blockwise8bit
from jopt._codecs import resolve as resolve_storage
from jopt._declare import optimizer
from jopt._scale import scale_by_adam, scale_by_adam_8bit, scale_by_learning_rate, trace
from jopt._weight_decay import add_decayed_weights
from jopt.errors import InvalidHyperparameterError


@optimizer(examples={"": {"learning_rate": 0.05},
                     "momentum": {"learning_rate": 0.05, "momentum": 0.9},
                     "nesterov": {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True}},
           renames={"momentum": "decay"})
def sgd(
    learning_rate: Any,
    momentum: float | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
) -> GradientTransformation:
    """Stochastic gradient descent, with optional (Nesterov) momentum.

    .. math::
       b_t = g_t + \\mu b_{t-1}, \\qquad
       \\theta_t = \\theta_{t-1} - \\eta(t) \\cdot
       \\begin{cases} g_t + \\mu b_t & \\text{nesterov} \\\\ b_t & \\text{momentum} \\\\
       g_t & \\text{no momentum}\\end{cases}

    Equal to ``torch.optim.SGD(lr, momentum, nesterov=...)`` with dampening 0, and to
    ``chain(trace(momentum, nesterov), scale_by_learning_rate(learning_rate))``.

    Args:
      learning_rate: :math:`\\eta`: a float >= 0, a jopt schedule or a callable of the step.
      momentum: :math:`\\mu` in [0, 1], or ``None`` (plain SGD, no state). Default None.
      nesterov: Nesterov momentum (needs ``momentum``). Default False.
      accumulator_dtype: storage dtype of the momentum buffer (default: parameter dtype
        promoted to at least float32).

    Returns:
      A :class:`GradientTransformation`; its state is a tuple of link states.

    Raises:
      InvalidHyperparameterError: for a negative learning rate, momentum outside [0, 1], or
        ``nesterov=True`` without momentum.

    Examples:
      >>> import jax.numpy as jnp, jopt
      >>> tx = jopt.sgd(0.1, momentum=0.9)
      >>> state = tx.init({"w": jnp.zeros(2)})
      >>> updates, state = tx.update({"w": jnp.ones(2)}, state)
      >>> updates["w"].tolist()
      [-0.10000000149011612, -0.10000000149011612]

    References:
      Robbins & Monro, "A Stochastic Approximation Method", 1951. Sutskever et al., `On the
      importance of initialization and momentum in deep learning
      <https://proceedings.mlr.press/v28/sutskever13.html>`_, ICML 2013.
    """
    if nesterov and momentum is None:
        raise InvalidHyperparameterError("sgd", "momentum", momentum, "set when nesterov=True")
    # Checked also without momentum, where no buffer uses it.
    resolve_storage("sgd", "accumulator_dtype", accumulator_dtype)
    links = []
    if momentum is not None:
        links.append(trace(momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype))
    links.append(scale_by_learning_rate(learning_rate))
    return chain(*links)


@optimizer(examples={"": {"learning_rate": 0.05},
                     "nesterov": {"learning_rate": 0.05, "nesterov": True}})
def adam(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """Adam: ``chain(scale_by_adam(...), scale_by_learning_rate(learning_rate))``.

    .. math::
       \\theta_t = \\theta_{t-1} - \\eta(t)\\, \\hat m_t / (\\sqrt{\\hat v_t + \\epsilon_{root}}
       + \\epsilon)

    with the bias-corrected moments of :func:`scale_by_adam` (see there for every symbol).

    Args:
      learning_rate: :math:`\\eta`: a float >= 0, a jopt schedule or a callable of the step.
      b1, b2, eps, eps_root, mu_dtype, nesterov, nu_dtype: as in :func:`scale_by_adam`
        (defaults 0.9, 0.999, 1e-8, 0.0, None, False, None). The positional order is optax's.

    Returns:
      A :class:`GradientTransformation`; state ``(ScaleByAdamState, ScaleByLearningRateState)``.

    Raises:
      InvalidHyperparameterError: for out-of-range hyperparameters.

    Examples:
      >>> import jopt
      >>> tx = jopt.adam(jopt.cosine_decay(1e-3, decay_steps=1000))
      >>> tx
      adam(learning_rate=cosine_decay(init_value=0.001, decay_steps=1000, alpha=0, exponent=1),
           b1=0.9, b2=0.999, eps=1e-08, eps_root=0.0)

    References:
      Kingma & Ba, `Adam: A Method for Stochastic Optimization
      <https://arxiv.org/abs/1412.6980>`_, ICLR 2015.
    """
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype),
        scale_by_learning_rate(learning_rate),
    )


@optimizer(examples={"": {"learning_rate": 0.05, "weight_decay": 1e-3},
                     "schedule": lambda jopt: jopt.adamw(
                         jopt.warmup_cosine_decay(0.0, 0.05, 10, 200), weight_decay=1e-3),
                     "mask": lambda jopt: jopt.adamw(0.05, weight_decay=1e-2,
                                                     mask=jopt._tree.matrices_mask)})
def adamw(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: Any = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """AdamW: Adam with decoupled weight decay.

    ``chain(scale_by_adam(...), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``:

    .. math::
       \\theta_t = \\theta_{t-1} - \\eta(t)\\big(\\hat m_t / (\\sqrt{\\hat v_t +
       \\epsilon_{root}} + \\epsilon) + \\lambda\\, \\theta_{t-1}\\big)

    The decay is multiplied by the learning rate (as in ``torch.optim.AdamW`` and optax's
    ``adamw``), so a schedule on ``learning_rate`` also schedules the decay, which is the
    paper's :math:`\\eta_t` multiplier.

    Args:
      learning_rate: :math:`\\eta`: a float >= 0, a jopt schedule or a callable of the step.
      b1, b2, eps, eps_root, mu_dtype, nesterov, nu_dtype: as in :func:`scale_by_adam`. The
        positional order (``mu_dtype`` before ``weight_decay``) is optax's.
      weight_decay: :math:`\\lambda \\ge 0` (float, schedule or callable). Default 1e-4.
      mask: which parameters to decay (tree of bools or callable ``params -> tree``), as in
        :func:`add_decayed_weights`. Default None (all).

    Returns:
      A :class:`GradientTransformation`; state ``(ScaleByAdamState, AddDecayedWeightsState,
      ScaleByLearningRateState)``.

    Raises:
      InvalidHyperparameterError: for out-of-range hyperparameters.

    Examples:
      >>> import jax, jax.numpy as jnp, jopt
      >>> tx = jopt.adamw(learning_rate=0.1, weight_decay=0.01)
      >>> params = {"x": jnp.asarray([1.0, -2.0])}
      >>> state = tx.init(params)
      >>> loss = lambda p: jnp.sum(p["x"] ** 2)
      >>> for _ in range(100):
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
      ...     params = jopt.apply_updates(params, updates)
      >>> bool(loss(params) < 1e-2)
      True

    References:
      Loshchilov & Hutter, `Decoupled Weight Decay Regularization
      <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
    """
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


@optimizer(examples={"": {"learning_rate": 0.05, "min_8bit_size": 0, "block_size": 4}})
def adam_8bit(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    block_size: int = 2048,
    min_8bit_size: int = 4096,
) -> GradientTransformation:
    """8-bit Adam: ``chain(scale_by_adam_8bit(...), scale_by_learning_rate(learning_rate))``.

    :func:`jopt.adam` with moments stored block-wise in 8 bits (about a quarter of the
    state memory); see :func:`scale_by_adam_8bit` for the rule, the layout, the accuracy,
    saturation (second moments are saturated at the largest float32), and the costs: memory
    is the point; on CPU a step takes about 8-12x the time of float32 Adam's (measured on a
    2-core CPU), and with sharded parameters the second jitted step may compile once more.

    Args:
      learning_rate: :math:`\\eta`: a float >= 0, a jopt schedule or a callable of the step.
      b1, b2, eps, eps_root, block_size, min_8bit_size: as in :func:`scale_by_adam_8bit`
        (defaults 0.9, 0.999, 1e-8, 0.0, 2048, 4096).

    Returns:
      A :class:`GradientTransformation`; state
      ``(ScaleByAdam8bitState, ScaleByLearningRateState)``.

    Raises:
      InvalidHyperparameterError: for out-of-range hyperparameters.

    Examples:
      >>> import jax, jax.numpy as jnp, jopt
      >>> tx = jopt.adam_8bit(0.1, min_8bit_size=0)
      >>> params = {"x": jnp.asarray([1.0, -2.0, 3.0])}
      >>> state = tx.init(params)
      >>> loss = lambda p: jnp.sum(p["x"] ** 2)
      >>> @jax.jit
      ... def step(params, state):
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
      ...     return jopt.apply_updates(params, updates), state
      >>> for _ in range(200):
      ...     params, state = step(params, state)
      >>> bool(loss(params) < 1e-2)
      True

    References:
      Dettmers, Lewis, Shleifer & Zettlemoyer, `8-bit Optimizers via Block-wise Quantization
      <https://arxiv.org/abs/2110.02861>`_, ICLR 2022.
    """
    Blockwise8bit(block_size, min_8bit_size).validated("adam_8bit", "8bit")
    return chain(
        scale_by_adam_8bit(b1, b2, eps, eps_root, block_size=block_size,
                           min_8bit_size=min_8bit_size),
        scale_by_learning_rate(learning_rate),
    )


@optimizer(examples={"": {"learning_rate": 0.05, "weight_decay": 1e-2, "min_8bit_size": 0}})
def adamw_8bit(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: Any = 1e-4,
    mask: Any = None,
    *,
    block_size: int = 2048,
    min_8bit_size: int = 4096,
) -> GradientTransformation:
    """8-bit AdamW: Adam with 8-bit moments and decoupled weight decay.

    ``chain(scale_by_adam_8bit(...), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``, the chain of :func:`jopt.adamw` with
    :func:`scale_by_adam_8bit` as its first link:

    .. math::
       \\theta_t = \\theta_{t-1} - \\eta(t)\\big(u_t + \\lambda\\, \\theta_{t-1}\\big)

    with :math:`u_t` the update of :func:`scale_by_adam_8bit`.

    Args:
      learning_rate: :math:`\\eta`: a float >= 0, a jopt schedule or a callable of the step.
      b1, b2, eps, eps_root, block_size, min_8bit_size: as in :func:`scale_by_adam_8bit`.
      weight_decay: :math:`\\lambda \\ge 0` (float, schedule or callable). Default 1e-4.
      mask: which parameters to decay, as in :func:`jopt.add_decayed_weights`. Default None.

    Returns:
      A :class:`GradientTransformation`; state ``(ScaleByAdam8bitState,
      AddDecayedWeightsState, ScaleByLearningRateState)``.

    Raises:
      InvalidHyperparameterError: for out-of-range hyperparameters.

    Examples:
      >>> import jopt
      >>> jopt.adamw_8bit(1e-3, weight_decay=0.01, block_size=256)
      adamw_8bit(learning_rate=0.001, b1=0.9, b2=0.999, eps=1e-08, eps_root=0.0,
                 weight_decay=0.01, block_size=256)

    References:
      Dettmers, Lewis, Shleifer & Zettlemoyer, `8-bit Optimizers via Block-wise Quantization
      <https://arxiv.org/abs/2110.02861>`_, ICLR 2022. Loshchilov & Hutter, `Decoupled
      Weight Decay Regularization <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
    """
    Blockwise8bit(block_size, min_8bit_size).validated("adamw_8bit", "8bit")
    return chain(
        scale_by_adam_8bit(b1, b2, eps, eps_root, block_size=block_size,
                           min_8bit_size=min_8bit_size),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
