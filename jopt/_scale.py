"""Scaling transformations: ``scale``, ``scale_by_learning_rate``, ``scale_by_adam``, ``trace``.

Each rule is written for one array and lifted to trees with ``jax.tree_util.tree_map``.
Arithmetic runs in :func:`jopt._tree.compute_dtype` of the incoming update (float32 for
bfloat16/float16 updates), hyperparameters are float32 state arrays cast at the point of use,
and results are cast back to the incoming update's dtype.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jopt import _tree
from jopt._base import GradientTransformation, fresh, safe_increment, zero_count
from jopt._schedules import OneMinus, as_schedule_or_scalar, evaluate
from jopt._validate import as_state_scalar, check_dtype_option, check_real
from jopt.errors import InvalidHyperparameterError


class ScaleState(NamedTuple):
    """State of :func:`scale`.

    Attributes:
      hyperparams: ``{"step_size": float32 scalar}``.
    """

    hyperparams: dict[str, jax.Array]


def scale(step_size: float) -> GradientTransformation:
    """Multiplies updates by a constant factor.

    .. math::
       u \\leftarrow s\\, u

    Args:
      step_size: ``s``, a finite real number (stored as a float32 state array, so it can be
        changed with :func:`jopt.set_hyperparams` without recompiling).

    Returns:
      A :class:`GradientTransformation`; updates keep their tree, shapes and dtypes.

    Raises:
      InvalidHyperparameterError: if ``step_size`` is not a finite real number.
    """
    name = "scale"
    check_real(name, "step_size", step_size)
    s0 = as_state_scalar(step_size)

    def init_fn(params):
        del params
        return ScaleState(hyperparams=fresh({"step_size": s0}))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _tree.check_state_type(name, state, ScaleState)
        updates, params = _tree.check_updates(name, updates, None, params)
        s = state.hyperparams["step_size"]
        updates = jax.tree_util.tree_map(lambda u: _scaled(u, s), updates)
        return updates, state

    return GradientTransformation(init_fn, update_fn, name=name, config={"step_size": step_size})


def _scaled(u: jax.Array, factor: jax.Array) -> jax.Array:
    ct = _tree.compute_dtype(u.dtype)
    return (u.astype(ct) * _tree.cast_scalar(factor, ct)).astype(u.dtype)


class ScaleByLearningRateState(NamedTuple):
    """State of :func:`scale_by_learning_rate`.

    Attributes:
      count: int32 scalar, number of updates applied (the schedule's argument).
      hyperparams: ``{"learning_rate": float32 scalar or Schedule}``.
    """

    count: jax.Array
    hyperparams: dict[str, Any]


def scale_by_learning_rate(learning_rate: Any, *, flip_sign: bool = True) -> GradientTransformation:
    """Multiplies updates by ``-learning_rate`` (a constant or a schedule of the step).

    .. math::
       u_t \\leftarrow -\\eta(t)\\, u_t

    where ``t`` counts the updates applied before this one (0 on the first call).

    Args:
      learning_rate: ``eta``: a float >= 0, a jopt schedule (pytree), or any callable
        ``count -> scalar`` such as an optax schedule.
      flip_sign: multiply by ``-eta`` (descent, the default) rather than ``+eta``.

    Returns:
      A :class:`GradientTransformation` whose state is :class:`ScaleByLearningRateState`.

    Raises:
      InvalidHyperparameterError: if ``learning_rate`` is negative or not finite.
    """
    name = "scale_by_learning_rate"
    lr0 = as_schedule_or_scalar(name, "learning_rate", learning_rate, lo=0)
    if not isinstance(flip_sign, (bool, np.bool_)):
        raise InvalidHyperparameterError(name, "flip_sign", flip_sign, "a bool")
    sign = -1.0 if flip_sign else 1.0

    def init_fn(params):
        del params
        return ScaleByLearningRateState(count=zero_count(),
                                        hyperparams=fresh({"learning_rate": lr0}))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _tree.check_state_type(name, state, ScaleByLearningRateState)
        updates, params = _tree.check_updates(name, updates, None, params)
        lr = evaluate(state.hyperparams["learning_rate"], state.count)
        factor = jnp.asarray(lr) * sign
        updates = jax.tree_util.tree_map(lambda u: _scaled(u, factor), updates)
        return updates, state._replace(count=safe_increment(state.count))

    config = {"learning_rate": learning_rate}
    if not flip_sign:
        config["flip_sign"] = False
    return GradientTransformation(init_fn, update_fn, name=name, config=config)


def _one_minus_power(c: jax.Array, t: jax.Array) -> jax.Array:
    """The bias correction ``1 - b**t`` for ``b = 1 - c``, in the complement's precision.

    Written as ``1 - b**t`` (not the cancellation-free ``-expm1(t * log1p(-c))``) on purpose:
    it is the float32 value optax computes, so per-step trajectories of jopt and optax agree
    to about 1e-7 instead of drifting apart in long runs, and its error against the exact
    float64 value (at most ~3e-6 relative, at small ``t``) is below float32 training noise.
    """
    b = 1.0 - c
    # b ** t with an int32 exponent (lax.pow(float, int)), as optax evaluates it.
    return 1.0 - _int_pow(b, t.astype(jnp.int32))


@jax.custom_jvp
def _int_pow(b: jax.Array, n: jax.Array) -> jax.Array:
    """``b ** n`` for an int32 ``n >= 1``, with a derivative in ``b`` that is clean under strict
    dtype promotion (JAX's own rule for ``lax.pow`` mixes the int exponent with floats)."""
    return jax.lax.pow(b, n)


@_int_pow.defjvp
def _int_pow_jvp(primals, tangents):
    b, n = primals
    db, _ = tangents
    # n >= 1 here (the counter is incremented before use), so b ** (n - 1) is finite at b = 0.
    return jax.lax.pow(b, n), n.astype(b.dtype) * jax.lax.pow(b, n - 1) * db


def _complement(value: Any) -> jax.Array:
    """``1 - b`` for a hyperparameter stored as :class:`OneMinus` (or, if replaced by a plain
    number or schedule, computed from it)."""
    if isinstance(value, OneMinus):
        return jnp.asarray(value.complement)
    return 1.0 - jnp.asarray(evaluate(value, 0))


class ScaleByAdamState(NamedTuple):
    """State of :func:`scale_by_adam`.

    Attributes:
      count: int32 scalar, number of updates applied (saturates at ``2**31 - 1``).
      mu: first moment, same tree and shapes as the parameters, dtype ``mu_dtype`` (default:
        the parameter's dtype promoted to at least float32).
      nu: second moment of ``|g|``, same tree and shapes as the parameters, real dtype
        ``nu_dtype`` (default: the real part of the parameter's dtype promoted to at least
        float32).
      hyperparams: ``{"b1", "b2", "eps", "eps_root"}``; ``eps`` and ``eps_root`` are float32
        scalars, ``b1`` and ``b2`` are :class:`jopt.schedules.OneMinus` pytrees holding the
        float32 complement ``1 - b`` (rounded once from the double-precision value, so
        ``1 - b2`` is 0.001 to float32 precision, not ``1 - float32(0.999)``).
    """

    count: jax.Array
    mu: Any
    nu: Any
    hyperparams: dict[str, jax.Array]


def _moment_dtype(param_dtype, option, real=False):
    dtype = np.dtype(option) if option is not None else _tree.compute_dtype(param_dtype)
    if real:
        dtype = _tree.real_dtype(dtype)
    elif jnp.issubdtype(param_dtype, jnp.complexfloating) and not jnp.issubdtype(
        dtype, jnp.complexfloating
    ):
        # A complex parameter's first moment is complex: the narrowest complex type that
        # holds the requested real precision.
        dtype = np.dtype(np.complex128 if dtype == np.float64 else np.complex64)
    return dtype


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """Rescales updates by Adam's bias-corrected moment estimates.

    With ``g`` the incoming update and ``t`` the 1-based step:

    .. math::
       m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\qquad
       v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) |g_t|^2

       \\hat m_t = m_t / (1 - \\beta_1^t), \\qquad \\hat v_t = v_t / (1 - \\beta_2^t), \\qquad
       u_t = \\hat m_t / (\\sqrt{\\hat v_t + \\epsilon_{root}} + \\epsilon)

    With ``nesterov=True`` the first moment is replaced by Dozat's Nesterov estimate
    :math:`\\hat m_t = \\beta_1 m_t / (1 - \\beta_1^{t+1}) + (1 - \\beta_1) g_t / (1 - \\beta_1^t)`
    (NAdam). The learning rate is *not* applied here (chain with
    :func:`scale_by_learning_rate`, or use :func:`adam`).

    Numerics: ``b1`` and ``b2`` are stored as their complements ``1 - b`` (rounded once from
    the double value), which the moment updates use; the bias correction is ``1 - b**t`` in
    float32, the value optax computes, so jopt's and optax's per-step trajectories agree to
    float32 rounding. Against exact arithmetic the first update is off by at most ~7e-6
    relative (``float32(0.999) != 0.999``), decaying with ``t``.

    Args:
      b1: :math:`\\beta_1`, decay of the first moment, in [0, 1). Default 0.9.
      b2: :math:`\\beta_2`, decay of the second moment, in [0, 1). Default 0.999.
      eps: :math:`\\epsilon`, added to the root of the second moment, >= 0. Default 1e-8.
      eps_root: :math:`\\epsilon_{root}`, added inside the root, >= 0 (use > 0 when
        differentiating through the update). Default 0.
      nesterov: use the Nesterov (NAdam) first moment. Default False.
      mu_dtype: storage dtype of ``mu``; default the parameter dtype promoted to float32.
      nu_dtype: storage dtype of ``nu``; default as ``mu_dtype`` (real).

    Returns:
      A :class:`GradientTransformation` with state :class:`ScaleByAdamState`. Updates keep the
      incoming dtype; arithmetic is done in at least float32. A zero gradient gives a zero
      update in every dtype (``0 / (0 + eps)``, with ``eps`` applied in float32).

    Raises:
      InvalidHyperparameterError: for ``b1``/``b2`` outside [0, 1), negative ``eps`` or
        ``eps_root``, or a non-floating ``mu_dtype``/``nu_dtype``.
      TreeMismatchError: in ``update``, if the updates or params do not match the tree
        ``init`` saw; the message names the tree path.

    References:
      Kingma & Ba, `Adam: A Method for Stochastic Optimization
      <https://arxiv.org/abs/1412.6980>`_, ICLR 2015.
      Dozat, `Incorporating Nesterov Momentum into Adam
      <https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ>`_, ICLR workshop 2016.
    """
    name = "scale_by_adam"
    check_real(name, "b1", b1, lo=0, hi=1, hi_open=True)
    check_real(name, "b2", b2, lo=0, hi=1, hi_open=True)
    check_real(name, "eps", eps, lo=0)
    check_real(name, "eps_root", eps_root, lo=0)
    if not isinstance(nesterov, (bool, np.bool_)):
        raise InvalidHyperparameterError(name, "nesterov", nesterov, "a bool")
    mu_dt = check_dtype_option(name, "mu_dtype", mu_dtype)
    nu_dt = check_dtype_option(name, "nu_dtype", nu_dtype)
    # b1 and b2 are kept as their complements (see OneMinus): 1 - b is what the moment
    # updates and the bias corrections need, and float32 holds 0.001 far better than 0.999.
    hp0 = {"b1": OneMinus.of(b1), "b2": OneMinus.of(b2), "eps": as_state_scalar(eps),
           "eps_root": as_state_scalar(eps_root)}

    def init_fn(params):
        mu = jax.tree_util.tree_map(
            lambda p: jnp.zeros_like(p, dtype=_moment_dtype(_tree.dtype_of(p), mu_dt)), params
        )
        nu = jax.tree_util.tree_map(
            lambda p: jnp.zeros_like(
                p, dtype=_moment_dtype(_tree.dtype_of(p), nu_dt or mu_dt, real=True)),
            params,
        )
        return ScaleByAdamState(count=zero_count(), mu=mu, nu=nu, hyperparams=fresh(hp0))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _tree.check_state_type(name, state, ScaleByAdamState)
        updates, params = _tree.check_updates(name, updates, state.mu, params)
        hp = state.hyperparams
        count = safe_increment(state.count)
        c1, c2 = _complement(hp["b1"]), _complement(hp["b2"])
        b1_, b2_ = 1.0 - c1, 1.0 - c2
        bc1 = _one_minus_power(c1, count)
        bc2 = _one_minus_power(c2, count)
        bc1_next = _one_minus_power(c1, safe_increment(count))

        def one(g, m, v):
            ct = _tree.compute_dtype(g.dtype)
            rt = _tree.real_dtype(ct)
            def cc(x):
                return _tree.cast_scalar(x, ct)

            def cr(x):
                return _tree.cast_scalar(x, rt)

            g_ = g.astype(ct)
            # Written (1 - b) g + b m, the operand order optax uses: XLA may fuse one of the
            # two products into a fused multiply-add, and which one changes the last bit.
            m_new = cc(c1) * g_ + cc(b1_) * m.astype(ct)
            v_new = cr(c2) * _tree.abs_sq(g_) + cr(b2_) * v.astype(rt)
            # Divisions by the bias corrections (not multiplications by their reciprocals):
            # the same float32 operations as optax, so trajectories agree bit for bit.
            if nesterov:
                m_hat = cc(b1_) * m_new / cc(bc1_next) + cc(c1) * g_ / cc(bc1)
            else:
                m_hat = m_new / cc(bc1)
            v_hat = v_new / cr(bc2)
            # With eps = 0 (allowed) a zero second moment means a zero first moment: adding
            # the smallest normal number instead keeps the documented 0 rather than 0/0. The
            # floor is taken on the scalar, so the per-element work is optax's; for any
            # eps >= 1.2e-38 the result is unchanged.
            eps = jnp.maximum(cr(hp["eps"]), jnp.finfo(rt).tiny)
            denom = jnp.sqrt(v_hat + cr(hp["eps_root"])) + eps
            u = m_hat / denom.astype(ct)
            return u.astype(g.dtype), m_new.astype(m.dtype), v_new.astype(v.dtype)

        out = jax.tree_util.tree_map(one, updates, state.mu, state.nu)
        treedef = jax.tree_util.tree_structure(updates)
        flat = treedef.flatten_up_to(out)
        new_updates = treedef.unflatten([o[0] for o in flat])
        mu = treedef.unflatten([o[1] for o in flat])
        nu = treedef.unflatten([o[2] for o in flat])
        return new_updates, ScaleByAdamState(count=count, mu=mu, nu=nu, hyperparams=hp)

    config = {"b1": b1, "b2": b2, "eps": eps, "eps_root": eps_root}
    if nesterov:
        config["nesterov"] = True
    if mu_dtype is not None:
        config["mu_dtype"] = mu_dt
    if nu_dtype is not None:
        config["nu_dtype"] = nu_dt
    return GradientTransformation(init_fn, update_fn, name=name, config=config)


class TraceState(NamedTuple):
    """State of :func:`trace`.

    Attributes:
      trace: the momentum buffer, same tree and shapes as the parameters, dtype
        ``accumulator_dtype`` (default: parameter dtype promoted to at least float32).
      hyperparams: ``{"decay": float32 scalar}``.
    """

    trace: Any
    hyperparams: dict[str, jax.Array]


def trace(
    decay: float, nesterov: bool = False, accumulator_dtype: Any = None
) -> GradientTransformation:
    """Momentum (heavy ball) or Nesterov momentum.

    .. math::
       b_t = g_t + \\mu\\, b_{t-1}, \\qquad
       u_t = \\begin{cases} g_t + \\mu\\, b_t & \\text{nesterov} \\\\ b_t & \\text{otherwise}
       \\end{cases}

    This is the form used by PyTorch's ``SGD`` (dampening 0) and optax's ``trace``; combined
    with a learning rate it gives Polyak's heavy ball and Sutskever et al.'s Nesterov variant.

    Args:
      decay: :math:`\\mu`, the momentum coefficient, in [0, 1]. Stored as a float32 array.
      nesterov: use Nesterov momentum. Default False.
      accumulator_dtype: storage dtype of the buffer; default the parameter dtype promoted to
        at least float32.

    Returns:
      A :class:`GradientTransformation` with state :class:`TraceState`.

    Raises:
      InvalidHyperparameterError: if ``decay`` is outside [0, 1].
      TreeMismatchError: in ``update``, if the updates do not match the tree ``init`` saw.

    References:
      Polyak, "Some methods of speeding up the convergence of iteration methods", 1964.
      Sutskever et al., `On the importance of initialization and momentum in deep learning
      <https://proceedings.mlr.press/v28/sutskever13.html>`_, ICML 2013.
    """
    name = "trace"
    check_real(name, "decay", decay, lo=0, hi=1)
    if not isinstance(nesterov, (bool, np.bool_)):
        raise InvalidHyperparameterError(name, "nesterov", nesterov, "a bool")
    acc_dt = check_dtype_option(name, "accumulator_dtype", accumulator_dtype)
    d0 = as_state_scalar(decay)

    def init_fn(params):
        tr = jax.tree_util.tree_map(
            lambda p: jnp.zeros_like(p, dtype=_moment_dtype(_tree.dtype_of(p), acc_dt)), params
        )
        return TraceState(trace=tr, hyperparams=fresh({"decay": d0}))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _tree.check_state_type(name, state, TraceState)
        updates, params = _tree.check_updates(name, updates, state.trace, params)
        d = state.hyperparams["decay"]

        def one(g, b):
            ct = _tree.compute_dtype(g.dtype)
            dd = _tree.cast_scalar(d, ct)
            g_ = g.astype(ct)
            b_new = g_ + dd * b.astype(ct)
            u = g_ + dd * b_new if nesterov else b_new
            return u.astype(g.dtype), b_new.astype(b.dtype)

        out = jax.tree_util.tree_map(one, updates, state.trace)
        treedef = jax.tree_util.tree_structure(updates)
        flat = treedef.flatten_up_to(out)
        new_updates = treedef.unflatten([o[0] for o in flat])
        tr = treedef.unflatten([o[1] for o in flat])
        return new_updates, TraceState(trace=tr, hyperparams=state.hyperparams)

    config = {"decay": decay}
    if nesterov:
        config["nesterov"] = True
    if accumulator_dtype is not None:
        config["accumulator_dtype"] = acc_dt
    return GradientTransformation(init_fn, update_fn, name=name, config=config)
