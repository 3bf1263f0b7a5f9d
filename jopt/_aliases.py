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
from jopt._scale import scale_by_adam, scale_by_learning_rate, trace
from jopt._validate import check_dtype_option
from jopt._weight_decay import add_decayed_weights
from jopt.errors import InvalidHyperparameterError


def _named(tx: GradientTransformation, name: str, config: dict[str, Any]) -> GradientTransformation:
    return GradientTransformation(tx.init, tx.update, name=name, config=config)


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
    links = []
    if momentum is not None:
        links.append(trace(momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype))
    links.append(scale_by_learning_rate(learning_rate))
    config: dict[str, Any] = {"learning_rate": learning_rate, "momentum": momentum}
    if nesterov:
        config["nesterov"] = True
    if accumulator_dtype is not None:
        config["accumulator_dtype"] = check_dtype_option("sgd", "accumulator_dtype",
                                                         accumulator_dtype)
    return _named(chain(*links), "sgd", config)


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
    name = "adam"
    tx = chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype),
        scale_by_learning_rate(learning_rate),
    )
    config: dict[str, Any] = {"learning_rate": learning_rate, "b1": b1, "b2": b2, "eps": eps,
                              "eps_root": eps_root}
    if nesterov:
        config["nesterov"] = True
    if mu_dtype is not None:
        config["mu_dtype"] = check_dtype_option(name, "mu_dtype", mu_dtype)
    if nu_dtype is not None:
        config["nu_dtype"] = check_dtype_option(name, "nu_dtype", nu_dtype)
    return _named(tx, "adam", config)


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
    name = "adamw"
    tx = chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
    config: dict[str, Any] = {"learning_rate": learning_rate, "b1": b1, "b2": b2, "eps": eps,
                              "eps_root": eps_root, "weight_decay": weight_decay}
    if mask is not None:
        config["mask"] = mask
    if nesterov:
        config["nesterov"] = True
    if mu_dtype is not None:
        config["mu_dtype"] = check_dtype_option(name, "mu_dtype", mu_dtype)
    if nu_dtype is not None:
        config["nu_dtype"] = check_dtype_option(name, "nu_dtype", nu_dtype)
    return _named(tx, "adamw", config)
