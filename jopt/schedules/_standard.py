"""The standard schedules (``constant``, ``linear``, ``cosine_decay``, ``warmup_cosine_decay``,
``exponential_decay``), ``make_schedule`` (which also builds those of
:mod:`jopt.schedules._piecewise`) and optax's spellings of them. See
:mod:`jopt.schedules._core` for the rules every schedule follows.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jopt._validate import as_state_scalar, check_real, checked_call
from jopt.errors import InvalidHyperparameterError
from jopt.schedules._core import (
    Schedule,
    as_step_field,
    concrete,
    count_as_float,
    fmt_leaf,
    make,
    since,
    span,
)
from jopt.schedules._piecewise import join, piecewise_constant


class Constant(Schedule):
    """The pytree built by :func:`constant`; see there for the formula and the fields."""

    _leaves = ("value",)
    _name = "constant"

    def __call__(self, count):
        del count
        return jnp.asarray(self.value)

    def value_range(self):
        return span(self.value)


@checked_call
def constant(value: float) -> Schedule:
    """A schedule that returns ``value`` at every step.

    Args:
      value: the value (float, stored as float32).

    Returns:
      A pytree :class:`Schedule`; ``schedule(count) == value``.

    Raises:
      InvalidHyperparameterError: if ``value`` is not a finite real number.
    """
    check_real("constant", "value", value)
    return make(Constant, value=as_state_scalar(value))


class Linear(Schedule):
    """The pytree built by :func:`linear`; see there for the formula and the fields."""

    _leaves = ("init_value", "end_value", "transition_steps", "transition_begin")
    _name = "linear"

    def __call__(self, count):
        t = since(count, self.transition_begin, self.init_value)
        return _ramp(t, self.init_value, self.end_value,
                     self.transition_steps.astype(t.dtype))

    def value_range(self):
        return span(self.init_value, self.end_value)


def _ramp(t, start, end, steps):
    """Linear from ``start`` (t <= 0) to ``end`` (t >= steps), as ``(start - end)(1 - t/T) + end``.

    This arrangement of the arithmetic is the one optax uses: evaluated eagerly the float32
    values agree bit for bit; under ``jit`` optax's numbers are compile-time constants that XLA
    folds, so the two may differ in the last bits (about 1e-6 relative at most).
    """
    # Values are only checked when concrete; a traced zero length must not give 0/0.
    positive = steps > 0
    safe = jnp.where(positive, steps, 1.0)
    c = jnp.clip(t, 0.0, safe)
    frac = jnp.where(positive, 1.0 - c / safe, (t < 0).astype(t.dtype))
    # Before the ramp the value is exactly ``start`` ((start - end) + end may differ from
    # start in the last bit); inside it the arithmetic is optax's.
    return jnp.where(c <= 0, start, (start - end) * frac + end)


@checked_call
def linear(
    init_value: float, end_value: float, transition_steps: int, transition_begin: int = 0
) -> Schedule:
    """Linear interpolation from ``init_value`` to ``end_value``.

    .. math::
       v(t) = v_0 + (v_1 - v_0)\\,\\mathrm{clip}\\big((t - t_b) / T, 0, 1\\big)

    Args:
      init_value: value up to step ``transition_begin``.
      end_value: value from step ``transition_begin + transition_steps`` on.
      transition_steps: length of the ramp in updates; must be > 0.
      transition_begin: first update of the ramp; must be >= 0. Default 0.

    Returns:
      A pytree :class:`Schedule`.

    Raises:
      InvalidHyperparameterError: for non-finite values or out-of-range step counts.

    References:
      Linear warm-up: Goyal et al., `Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour
      <https://arxiv.org/abs/1706.02677>`_, 2017.
    """
    check_real("linear", "init_value", init_value)
    check_real("linear", "end_value", end_value)
    check_real("linear", "transition_steps", transition_steps, lo=0, lo_open=True, integer=True)
    check_real("linear", "transition_begin", transition_begin, lo=0, integer=True)
    return make(
        Linear,
        init_value=as_state_scalar(init_value),
        end_value=as_state_scalar(end_value),
        transition_steps=as_step_field(transition_steps),
        transition_begin=as_step_field(transition_begin),
    )


def _cosine(t, init_value, steps, alpha, exponent):
    """``init * ((1 - alpha) * [(1 + cos(pi min(t, T) / T)) / 2] ** p + alpha)``, arranged as
    optax arranges it (see :func:`_ramp` on how closely the float32 values agree)."""
    positive = steps > 0
    safe = jnp.where(positive, steps, 1.0)
    c = jnp.where(positive, jnp.clip(t, 0.0, safe), safe)
    factor = 0.5 * (1.0 + jnp.cos(jnp.asarray(math.pi, t.dtype) * c / safe))
    return init_value * ((1.0 - alpha) * factor**exponent + alpha)


class CosineDecay(Schedule):
    """The pytree built by :func:`cosine_decay`; see there for the formula and the fields."""

    _leaves = ("init_value", "decay_steps", "alpha", "exponent")
    _name = "cosine_decay"

    def __call__(self, count):
        t = count_as_float(count, self.init_value)
        return _cosine(t, self.init_value, self.decay_steps.astype(t.dtype), self.alpha,
                       self.exponent)

    def value_range(self):
        got = concrete(self.init_value, self.alpha)
        return None if got is None else span(got[0], got[0] * got[1])


@checked_call
def cosine_decay(
    init_value: float, decay_steps: int, alpha: float = 0.0, exponent: float = 1.0
) -> Schedule:
    """Cosine decay from ``init_value`` to ``alpha * init_value`` over ``decay_steps`` updates.

    .. math::
       v(t) = v_0 \\Big((1 - \\alpha)\\big[\\tfrac12(1 + \\cos(\\pi \\min(t, T)/T))\\big]^{p}
       + \\alpha\\Big)

    From SGDR (Loshchilov & Hutter, 2017, https://arxiv.org/abs/1608.03983), without restarts.

    Args:
      init_value: value at step 0.
      decay_steps: ``T``, the number of updates over which to decay; must be > 0.
      alpha: floor as a fraction of ``init_value``, in [0, 1]. Default 0.
      exponent: ``p``, power applied to the cosine factor; must be > 0. Default 1.

    Returns:
      A pytree :class:`Schedule`; constant at ``alpha * init_value`` after ``decay_steps``.

    Raises:
      InvalidHyperparameterError: for out-of-range arguments.
    """
    check_real("cosine_decay", "init_value", init_value)
    check_real("cosine_decay", "decay_steps", decay_steps, lo=0, lo_open=True, integer=True)
    check_real("cosine_decay", "alpha", alpha, lo=0, hi=1)
    check_real("cosine_decay", "exponent", exponent, lo=0, lo_open=True)
    return make(
        CosineDecay,
        init_value=as_state_scalar(init_value),
        decay_steps=as_step_field(decay_steps),
        alpha=as_state_scalar(alpha),
        exponent=as_state_scalar(exponent),
    )


class WarmupCosineDecay(Schedule):
    """The pytree built by :func:`warmup_cosine_decay`; see there for the formula and the fields."""

    _leaves = ("init_value", "peak_value", "warmup_steps", "decay_steps", "end_value", "exponent")
    _name = "warmup_cosine_decay"

    def __call__(self, count):
        t = count_as_float(count, self.init_value)
        dtype = t.dtype
        warmup = self.warmup_steps.astype(dtype)
        warm = _ramp(t, self.init_value, self.peak_value, warmup)
        # The cosine part ends at end_value: a floor alpha = end / peak of the peak.
        nonzero = self.peak_value != 0
        alpha = jnp.where(nonzero, self.end_value / jnp.where(nonzero, self.peak_value, 1.0), 0.0)
        # decay_steps == warmup_steps (a warm-up-only run) leaves no steps to decay over:
        # _cosine then gives its end value, end_value, from the end of the warm-up on.
        steps = (self.decay_steps - self.warmup_steps).astype(dtype)
        after = since(count, self.warmup_steps, self.init_value)
        decay = _cosine(after, self.peak_value, steps, alpha, self.exponent)
        # A zero peak has no alpha = end / peak: decay from 0 to end_value directly (optax's
        # form would stay at 0 and never reach end_value).
        one = jnp.ones_like(self.peak_value)
        factor = _cosine(after, one, steps, jnp.zeros_like(one), self.exponent)
        decay = jnp.where(nonzero, decay, (self.peak_value - self.end_value) * factor
                          + self.end_value)
        return jnp.where(after < 0, warm, decay)

    def value_range(self):
        got = concrete(self.init_value, self.peak_value, self.end_value, self.warmup_steps)
        if got is None:
            return None
        init, peak, end, warmup = got
        # Without warm-up the schedule starts at the peak: init_value is never taken.
        return span(np.where(warmup > 0, init, peak), peak, end)


@checked_call
def warmup_cosine_decay(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
    exponent: float = 1.0,
) -> Schedule:
    """Linear warm-up to ``peak_value``, then cosine decay to ``end_value``.

    .. math::
       v(t) = \\begin{cases}
         v_0 + (v_p - v_0)\\, t / W & t < W \\\\
         v_e + (v_p - v_e)\\big[\\tfrac12(1 + \\cos(\\pi \\min(t - W, T - W)/(T - W)))\\big]^{p}
         & t \\ge W
       \\end{cases}

    ``decay_steps`` (``T``) counts the whole schedule, warm-up included, as in optax's
    ``warmup_cosine_decay_schedule``: the value reaches ``end_value`` at update ``T``.
    Warm-up from Goyal et al. 2017 (https://arxiv.org/abs/1706.02677); cosine from Loshchilov &
    Hutter 2017 (https://arxiv.org/abs/1608.03983).

    Examples:
      >>> import jopt
      >>> s = jopt.warmup_cosine_decay(0.0, 1.0, warmup_steps=10, decay_steps=110)
      >>> [round(float(s(t)), 4) for t in (0, 5, 10, 60, 110, 500)]
      [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]

    Args:
      init_value: value at step 0.
      peak_value: value at the end of warm-up.
      warmup_steps: ``W``, number of warm-up updates, >= 0.
      decay_steps: ``T``, total length including warm-up, >= ``warmup_steps``. Equal to it:
        a warm-up-only schedule (a debugging run), ``end_value`` from step ``W`` on.
      end_value: final value. Default 0.
      exponent: power of the cosine factor, > 0. Default 1.

    Returns:
      A pytree :class:`Schedule`.

    Raises:
      InvalidHyperparameterError: for out-of-range arguments.
    """
    name = "warmup_cosine_decay"
    check_real(name, "init_value", init_value)
    check_real(name, "peak_value", peak_value)
    check_real(name, "end_value", end_value)
    check_real(name, "warmup_steps", warmup_steps, lo=0, integer=True)
    check_real(name, "decay_steps", decay_steps, lo=0, lo_open=True, integer=True)
    check_real(name, "exponent", exponent, lo=0, lo_open=True)
    if not any(isinstance(v, jax.core.Tracer) for v in (decay_steps, warmup_steps)):
        if np.any(np.asarray(decay_steps, np.float64) < np.asarray(warmup_steps, np.float64)):
            raise InvalidHyperparameterError(
                name, "decay_steps", decay_steps,
                f"at least warmup_steps={warmup_steps!r} (it counts the warm-up too)",
            )
    return make(
        WarmupCosineDecay,
        init_value=as_state_scalar(init_value),
        peak_value=as_state_scalar(peak_value),
        warmup_steps=as_step_field(warmup_steps),
        decay_steps=as_step_field(decay_steps),
        end_value=as_state_scalar(end_value),
        exponent=as_state_scalar(exponent),
    )


class ExponentialDecay(Schedule):
    """The pytree built by :func:`exponential_decay`; see there for the formula and the fields."""

    _leaves = ("init_value", "transition_steps", "decay_rate", "transition_begin", "end_value")
    _static = ("staircase", "has_end_value")
    _name = "exponential_decay"

    def __call__(self, count):
        x = jnp.maximum(since(count, self.transition_begin, self.init_value), 0.0)
        steps = self.transition_steps.astype(x.dtype)
        p = x / jnp.where(steps > 0, steps, 1.0)
        if self.staircase:
            # XLA may turn division by a constant into multiplication by its reciprocal
            # (41 * (1/41) = 0.99999994); correct the floor by one in either direction.
            q = jnp.floor(p)
            q = q + ((q + 1.0) * steps <= x).astype(q.dtype)
            p = q - (q * steps > x).astype(q.dtype)
        v = self.init_value * self.decay_rate**p
        if self.has_end_value:
            v = jnp.where(self.decay_rate < 1.0, jnp.maximum(v, self.end_value),
                          jnp.minimum(v, self.end_value))
        return v

    def value_range(self):
        got = concrete(self.init_value, self.decay_rate, self.end_value)
        if got is None:
            return None
        init, rate, end = np.broadcast_arrays(*got)
        # init * rate**p for p from 0 on: towards 0 (rate < 1) or towards +-inf (rate > 1).
        with np.errstate(invalid="ignore"):
            limit = np.where(rate < 1, 0.0, np.where(rate > 1, init * np.inf, init))
        limit = np.where(init == 0, 0.0, limit)
        lo, hi = np.minimum(init, limit), np.maximum(init, limit)
        if self.has_end_value:  # a floor when decaying, a ceiling when growing
            lo = np.where(rate < 1, np.maximum(lo, end), np.minimum(lo, end))
            hi = np.where(rate < 1, np.maximum(hi, end), np.minimum(hi, end))
        return span(lo, hi)

    def __repr__(self):
        def n(x):
            return fmt_leaf(x)

        end = n(self.end_value) if self.has_end_value else "None"
        return (
            f"exponential_decay(init_value={n(self.init_value)}, "
            f"transition_steps={n(self.transition_steps)}, decay_rate={n(self.decay_rate)}, "
            f"transition_begin={n(self.transition_begin)}, staircase={self.staircase!r}, "
            f"end_value={end})"
        )


@checked_call
def exponential_decay(
    init_value: float,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> Schedule:
    """Exponential decay: ``init * decay_rate ** ((t - transition_begin) / transition_steps)``.

    .. math::
       v(t) = v_0\\, r^{\\,\\max(t - t_b, 0)/T}
       \\quad(\\text{exponent floored when } \\texttt{staircase})

    then bounded by ``end_value`` (a floor when ``decay_rate < 1``, a ceiling when > 1).

    Args:
      init_value: value up to step ``transition_begin``.
      transition_steps: ``T``, updates per factor of ``decay_rate``; > 0.
      decay_rate: ``r``, > 0.
      transition_begin: ``t_b``, first update of the decay; >= 0. Default 0.
      staircase: decay in discrete jumps every ``transition_steps`` updates. Default False.
      end_value: optional bound on the value. Default None (no bound).

    Returns:
      A pytree :class:`Schedule`.

    Raises:
      InvalidHyperparameterError: for out-of-range arguments.
    """
    name = "exponential_decay"
    check_real(name, "init_value", init_value)
    check_real(name, "transition_steps", transition_steps, lo=0, lo_open=True, integer=True)
    check_real(name, "decay_rate", decay_rate, lo=0, lo_open=True)
    check_real(name, "transition_begin", transition_begin, lo=0, integer=True)
    if end_value is not None:
        check_real(name, "end_value", end_value)
    if not isinstance(staircase, (bool, np.bool_)):
        raise InvalidHyperparameterError(name, "staircase", staircase, "a bool")
    return make(
        ExponentialDecay,
        init_value=as_state_scalar(init_value),
        transition_steps=as_step_field(transition_steps),
        decay_rate=as_state_scalar(decay_rate),
        transition_begin=as_step_field(transition_begin),
        end_value=as_state_scalar(0.0 if end_value is None else end_value),
        staircase=bool(staircase),
        has_end_value=end_value is not None,
    )


# optax's names for the same schedules, so code written for optax reads the same with jopt.
constant_schedule = constant
linear_schedule = linear
cosine_decay_schedule = cosine_decay
warmup_cosine_decay_schedule = warmup_cosine_decay

_FACTORIES = {
    "constant": constant,
    "linear": linear,
    "cosine_decay": cosine_decay,
    "warmup_cosine_decay": warmup_cosine_decay,
    "exponential_decay": exponential_decay,
    "piecewise_constant": piecewise_constant,
    "join": join,
}


@checked_call
def make_schedule(name: str, **kwargs: Any) -> Schedule:
    """Builds a schedule by name, for configuration files and command lines.

    Args:
      name: one of ``constant``, ``linear``, ``cosine_decay``, ``warmup_cosine_decay``,
        ``exponential_decay``, ``piecewise_constant``, ``join``.
      **kwargs: the schedule's arguments.

    Returns:
      The schedule.

    Raises:
      InvalidHyperparameterError: for an unknown name (the message lists the valid ones) or
        an unknown argument (the message lists the schedule's arguments).
    """
    import inspect

    if not isinstance(name, str) or name not in _FACTORIES:
        raise InvalidHyperparameterError(
            "make_schedule", "name", name, f"one of {', '.join(sorted(_FACTORIES))}"
        )
    factory = _FACTORIES[name]
    params = inspect.signature(factory).parameters
    for key in kwargs:
        if key not in params:
            raise InvalidHyperparameterError(
                name, "argument name", key, f"one of {', '.join(params)}"
            )
    missing = [k for k, p in params.items()
               if p.default is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise InvalidHyperparameterError(
            name, "arguments", sorted(kwargs), f"given with {', '.join(missing)} (required)"
        )
    return factory(**kwargs)
