"""Scaling rules: ``identity``, ``scale``, ``scale_by_learning_rate``, ``trace``,
``scale_by_adam`` and its 8-bit variant ``scale_by_adam_8bit``.

Each is a declaration (:mod:`jopt._declare`): the rule for one array, in the compute dtype of
the incoming update (float32 for bfloat16/float16 updates), reading hyperparameters already
cast for it; results are cast back to the incoming update's dtype by the helper.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jopt._base import EmptyState, GradientTransformation
from jopt._checks import check_state_type, check_updates
from jopt._codecs import Blockwise8bit
from jopt._declare import Rule, Slot, transformation
from jopt._hyper import Hyper
from jopt._registry import register
from jopt._tree import abs_sq, safe_increment, unwrap_variables

UNIT_OPEN = "[0, 1)"


@register(examples={"": {}})
def identity() -> GradientTransformation:
    """The transformation that returns updates unchanged and keeps an empty state.

    Returns:
      A :class:`GradientTransformation` whose state is ``EmptyState()``.
    """

    def init_fn(params):
        del params
        return EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        check_state_type("identity", state, EmptyState)
        check_updates("identity", unwrap_variables(updates), None, unwrap_variables(params))
        return updates, state

    return GradientTransformation._configured(init_fn, update_fn, name="identity", config={},
                                              key=("identity",), kind="elementwise")


@transformation(kind="elementwise", hyperparams={"step_size": Hyper()},
                examples={"": {"step_size": 0.5}})
def scale(step_size: Any) -> GradientTransformation:
    """Multiplies updates by a factor.

    .. math::
       u \\leftarrow s(t)\\, u

    Args:
      step_size: ``s``, a finite real number or a schedule of the step (stored in the state,
        so it can be changed with :func:`jopt.set_hyperparams` without recompiling).

    Returns:
      A :class:`GradientTransformation` with state :class:`ScaleState`; updates keep their
      tree, shapes and dtypes.

    Raises:
      InvalidHyperparameterError: if ``step_size`` is not a finite real number or schedule.
    """
    del step_size
    return lambda g, *, step_size: g * step_size


def _lr_rule(g, *, factor):
    return g * factor


@transformation(kind="elementwise", hyperparams={"learning_rate": Hyper(">= 0")},
                examples={"": {"learning_rate": 0.1},
                          "schedule": lambda jopt: jopt.scale_by_learning_rate(
                              jopt.cosine_decay(0.1, 100))},
                descends=True)
def scale_by_learning_rate(learning_rate: Any, *, flip_sign: bool = True
                           ) -> GradientTransformation:
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
    del learning_rate
    sign = -1.0 if flip_sign else 1.0
    return Rule(_lr_rule, prep=lambda *, learning_rate: {"factor": learning_rate * sign})


def _trace_rule(g, trace, *, decay, nesterov):
    new = g + decay * trace
    return (g + decay * new if nesterov else new), new


@transformation(kind="elementwise", hyperparams={"decay": Hyper("[0, 1]")},
                slots=[Slot("trace", option="accumulator_dtype", doc="the momentum buffer")],
                examples={"": {"decay": 0.9}, "nesterov": {"decay": 0.9, "nesterov": True}})
def trace(decay: Any, nesterov: bool = False, accumulator_dtype: Any = None
          ) -> GradientTransformation:
    """Momentum (heavy ball) or Nesterov momentum.

    .. math::
       b_t = g_t + \\mu\\, b_{t-1}, \\qquad
       u_t = \\begin{cases} g_t + \\mu\\, b_t & \\text{nesterov} \\\\ b_t & \\text{otherwise}
       \\end{cases}

    This is the form used by PyTorch's ``SGD`` (dampening 0) and optax's ``trace``; combined
    with a learning rate it gives Polyak's heavy ball and Sutskever et al.'s Nesterov variant.

    Args:
      decay: :math:`\\mu`, the momentum coefficient, in [0, 1] (or a schedule).
      nesterov: use Nesterov momentum. Default False.
      accumulator_dtype: storage of the buffer: a dtype (default: the parameter dtype
        promoted to at least float32), ``"8bit"`` or a codec (``jopt.Blockwise8bit``,
        ``jopt.StochasticRounding``).

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
    del decay, accumulator_dtype
    return functools.partial(_trace_rule, nesterov=bool(nesterov))


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


def _adam_prep(*, one_minus_b1, one_minus_b2, count):
    t = safe_increment(count)
    return {"bc1": _one_minus_power(one_minus_b1, t), "bc2": _one_minus_power(one_minus_b2, t),
            "bc1_next": _one_minus_power(one_minus_b1, safe_increment(t))}


def _adam_rule(g, mu, nu, *, b1, one_minus_b1, b2, one_minus_b2, bc1, bc2, bc1_next, eps,
               eps_root, nesterov):
    # Written (1 - b) g + b m, the operand order optax uses: XLA may fuse one of the two
    # products into a fused multiply-add, and which one changes the last bit.
    m = one_minus_b1 * g + b1 * mu
    v = one_minus_b2 * abs_sq(g) + b2 * nu
    # Divisions by the bias corrections (not multiplications by their reciprocals): the same
    # float32 operations as optax, so trajectories agree bit for bit.
    if nesterov:
        m_hat = b1 * m / bc1_next + one_minus_b1 * g / bc1
    else:
        m_hat = m / bc1
    v_hat = v / bc2
    # With eps = 0 (allowed) a zero second moment means a zero first moment: adding the
    # smallest normal number instead keeps the documented 0 rather than 0/0. The floor is
    # taken on the scalar, so the per-element work is optax's; for any eps >= 1.2e-38 the
    # result is unchanged.
    eps = jnp.maximum(eps, jnp.finfo(v.dtype).tiny)
    return m_hat / (jnp.sqrt(v_hat + eps_root) + eps).astype(g.dtype), m, v


# Scalars Adam's rule uses with the real second moment (real even for complex parameters).
_ADAM_REAL = ("b2", "one_minus_b2", "bc2", "eps", "eps_root")


ADAM_HYPERPARAMS = {"b1": Hyper(UNIT_OPEN, complement=True),
                    "b2": Hyper(UNIT_OPEN, complement=True),
                    "eps": Hyper(">= 0"), "eps_root": Hyper(">= 0")}
_MU = Slot("mu", option="mu_dtype", doc="first moment")
_NU = Slot("nu", option="nu_dtype", fallback="mu_dtype", real=True, nonnegative=True,
           doc="second moment of |g|")


@transformation(kind="elementwise", hyperparams=ADAM_HYPERPARAMS, slots=[_MU, _NU],
                examples={"": {}, "nesterov": {"nesterov": True, "eps_root": 1e-12},
                          "8bit_mu": {"mu_dtype": Blockwise8bit(min_size=0)}})
def scale_by_adam(
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
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
      mu_dtype: storage of ``mu``: a dtype (default: the parameter dtype promoted to
        float32), ``"8bit"``, or a codec (``jopt.Blockwise8bit``, ``jopt.StochasticRounding``).
      nesterov: use the Nesterov (NAdam) first moment. Default False.
      nu_dtype: storage of ``nu``; default as ``mu_dtype`` (real).

    Any of ``b1``, ``b2``, ``eps``, ``eps_root`` may also be a schedule of the step.

    Returns:
      A :class:`GradientTransformation` with state :class:`ScaleByAdamState`. Updates keep the
      incoming dtype; arithmetic is done in at least float32. A zero gradient gives a zero
      update in every dtype (``0 / (0 + eps)``, with ``eps`` applied in float32).

    Raises:
      InvalidHyperparameterError: for ``b1``/``b2`` outside [0, 1), negative ``eps`` or
        ``eps_root``, or an invalid ``mu_dtype``/``nu_dtype``.
      TreeMismatchError: in ``update``, if the updates or params do not match the tree
        ``init`` saw; the message names the tree path.

    References:
      Kingma & Ba, `Adam: A Method for Stochastic Optimization
      <https://arxiv.org/abs/1412.6980>`_, ICLR 2015.
      Dozat, `Incorporating Nesterov Momentum into Adam
      <https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ>`_, ICLR workshop 2016.
    """
    del b1, b2, eps, eps_root, mu_dtype, nu_dtype
    return Rule(functools.partial(_adam_rule, nesterov=bool(nesterov)), prep=_adam_prep,
                real=_ADAM_REAL)


@transformation(kind="elementwise", hyperparams=ADAM_HYPERPARAMS,
                slots=[dataclasses.replace(_MU, option=None),
                       dataclasses.replace(_NU, option=None, fallback=None)],
                state="ScaleByAdam8bitState",
                examples={"": {"min_8bit_size": 0}})
def scale_by_adam_8bit(
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    *,
    block_size: int = 2048,
    min_8bit_size: int = 4096,
) -> GradientTransformation:
    """Adam's scaling with both moments stored in 8 bits, block-wise (8-bit Adam).

    The rule of :func:`jopt.scale_by_adam` with both moments in the
    :class:`jopt.Blockwise8bit` codec (``scale_by_adam(mu_dtype=jopt.Blockwise8bit(...),
    nu_dtype=...)`` computes the same numbers; this variant keeps its own state type). Each
    step dequantizes ``m`` and ``v`` to float32, does one Adam step and requantizes:

    .. math::
       m_{t-1} = Q_s^{-1}(\\bar m_{t-1}), \\qquad v_{t-1} = Q_u^{-1}(\\bar v_{t-1})

       m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\qquad
       v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2

       u_t = \\frac{m_t / (1 - \\beta_1^t)}{\\sqrt{v_t / (1 - \\beta_2^t) + \\epsilon_{root}}
       + \\epsilon}, \\qquad \\bar m_t = Q_s(m_t), \\quad \\bar v_t = Q_u(v_t)

    where :math:`Q_s` and :math:`Q_u` quantize each block of ``block_size`` elements to the
    nearest value of the signed or unsigned dynamic map (:func:`jopt.dynamic_map`) times the
    block's largest magnitude. The update uses the new moments *before* requantization, as
    in the paper. The learning rate is not applied here (use :func:`adam_8bit`).

    Leaves with fewer than ``min_8bit_size`` elements (biases, norms, scalars) keep plain
    moments and behave exactly like :func:`jopt.scale_by_adam` (complex ones included). A
    quantized leaf is computed in its compute dtype (float32 for bfloat16/float16/float32
    and integer parameters, float64 for float64) and its moments are quantized from float32.

    State bytes per quantized leaf of ``n`` elements: ``2 n`` bytes of codes (padded to
    whole blocks) plus ``8`` bytes per block of scales, about 2.004 bytes per parameter at
    the default ``block_size``, against ``8 n`` for float32 Adam: a quarter of the memory.
    The update keeps the incoming dtype. The step is elementwise except for one maximum per
    block, so it needs no float32 copy of the moments: on XLA:CPU it runs as a loop over
    chunks of blocks (temporaries measured at about half a parameter copy, mostly copies XLA
    makes of the codes it rewrites), elsewhere as one expression for XLA to fuse.

    Accuracy: a stored moment is off by at most half a gap of the map times its block's
    ``absmax`` (0.7 % of ``absmax`` for ``m``, 0.35 % for ``v`` near the block's largest
    values; for smaller values the relative error grows about twofold per decade, see
    :func:`jopt.dynamic_map`). The update ``u_t`` itself is exact float32 Adam given the
    dequantized previous moments.

    Packed parameters (:func:`jopt.pack`, :func:`jopt.flatten`): blocks never span two
    tensors, so the state stays per leaf (the tree view's), the rule runs on the tree view and
    its updates are packed back, which costs one more float32 temporary the size of the
    updates; results equal the tree's bit for bit.

    Non-finite gradients: a NaN or infinity makes the whole block's stored moment NaN (see
    :func:`jopt.quantize_blockwise`), so the non-finite value is not hidden; use
    gradient clipping or skipping upstream as with any optimizer. Only non-finite inputs
    (gradient or stored moment) do that: a moment that overflows from finite inputs (``g**2``
    above the float32 range for ``|g|`` beyond about ``1.8e19``) is stored saturated at the
    largest float32 and read back as infinity, as float32 Adam holds it: that element's
    update is then 0, as in :func:`jopt.scale_by_adam`, from then on, and the rest of its
    block keeps finite updates (its small second moments read back as 0, so their updates
    are ``m / eps``-sized: clip gradients where such outliers are possible).

    Speed: memory is the point, not speed. On CPU a step costs several float32 Adam steps,
    for the decoding and requantization arithmetic: ``benchmarks/run.py`` on a 2-core CPU
    (jitted, donated, medians of interleaved rounds against optax's float32 Adam) measured
    8.2x on one ``2**24``-element leaf and 11.8x on a GPT-2-small tree. Accelerators are not
    measured here.

    Sharding: ``init`` does not choose a sharding for the codes and scales. Under a mesh with
    sharded parameters, a jitted step can return them sharded like the gradients (for
    example ``P('x')`` over blocks), so the second step compiles once more for the new input
    sharding; later steps reuse that program. To avoid the extra compilation, place the
    state with the sharding the first step returns (or jit with ``in_shardings``/
    ``out_shardings``).

    Args:
      b1: :math:`\\beta_1` in [0, 1). Default 0.9.
      b2: :math:`\\beta_2` in [0, 1). Default 0.999.
      eps: :math:`\\epsilon >= 0`, added to the root. Default 1e-8.
      eps_root: :math:`\\epsilon_{root} >= 0`, added inside the root. Default 0.
      block_size: elements per quantization block, a Python int >= 1 (a power of two suits
        accelerators but is not required; smaller blocks track local scales better and
        cost ``8 / block_size`` more bytes per element). Default 2048, the paper's.
      min_8bit_size: leaves with fewer elements keep float moments, a Python int >= 0
        (0 quantizes every leaf). Default 4096.

    Returns:
      A :class:`GradientTransformation` with state :class:`ScaleByAdam8bitState`. ``update``
      follows the layout the state holds (which leaves are quantized, their block size).

    Raises:
      InvalidHyperparameterError: for ``b1``/``b2`` outside [0, 1), negative ``eps`` or
        ``eps_root``, or a ``block_size``/``min_8bit_size`` that is not an integer in range.
      TreeMismatchError: in ``init``, for a complex parameter with at least
        ``min_8bit_size`` elements (8-bit moments are real); in ``update``, if the updates or
        params do not match the tree ``init`` saw.

    Examples:
      >>> import jax.numpy as jnp, jopt
      >>> tx = jopt.scale_by_adam_8bit(block_size=256, min_8bit_size=1000)
      >>> state = tx.init({"w": jnp.zeros((40, 50)), "b": jnp.zeros(50)})
      >>> state.mu["w"].codes.shape, state.mu["w"].codes.dtype.name, state.mu["b"].dtype.name
      ((8, 256), 'uint8', 'float32')
      >>> u, state = tx.update({"w": jnp.ones((40, 50)), "b": jnp.ones(50)}, state)
      >>> round(float(u["w"][0, 0]), 4), float(jopt.dequantize_blockwise(state.mu["w"])[0, 0])
      (1.0, 0.10000000149011612)

    References:
      Dettmers, Lewis, Shleifer & Zettlemoyer, `8-bit Optimizers via Block-wise Quantization
      <https://arxiv.org/abs/2110.02861>`_, ICLR 2022.
      Kingma & Ba, `Adam: A Method for Stochastic Optimization
      <https://arxiv.org/abs/1412.6980>`_, ICLR 2015.
    """
    del b1, b2, eps, eps_root
    codec = Blockwise8bit(block_size, min_8bit_size).validated("scale_by_adam_8bit", "8bit")
    return Rule(functools.partial(_adam_rule, nesterov=False), prep=_adam_prep,
                storage={"mu": codec, "nu": codec}, real=_ADAM_REAL)


ScaleState = scale.State
ScaleByLearningRateState = scale_by_learning_rate.State
TraceState = trace.State
ScaleByAdamState = scale_by_adam.State
ScaleByAdam8bitState = scale_by_adam_8bit.State
