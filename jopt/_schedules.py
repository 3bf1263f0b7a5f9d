"""Schedules as pytrees.

A schedule maps the step counter (the number of updates applied so far, an int32 scalar; the
unit is always *updates*, never epochs) to a float32 scalar. jopt's schedules are pytrees whose
numbers are leaves: a schedule can sit in an optimizer state, be changed without recompiling,
be batched by ``jax.vmap`` (a population of peak learning rates) and be checkpointed. Any plain
callable ``count -> scalar`` (optax's schedules included) is accepted wherever a schedule is;
its numbers are then static.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jopt._validate import as_state_scalar, check_real
from jopt.errors import InvalidHyperparameterError

__all__ = [
    "Schedule",
    "constant",
    "linear",
    "cosine_decay",
    "warmup_cosine_decay",
    "exponential_decay",
    "piecewise_constant",
    "join",
    "make_schedule",
    "constant_schedule",
    "linear_schedule",
    "cosine_decay_schedule",
    "warmup_cosine_decay_schedule",
    "join_schedules",
    "piecewise_constant_schedule",
]


def _fmt_num(x: Any) -> str:
    """Shortest readable form of a float32-stored number (``0.01``, not ``0.00999999977``)."""
    return f"{x:.7g}" if isinstance(x, float) else repr(x)


def _count_as(count: Any, like: Any = None) -> jax.Array:
    """The step count as a float of the schedule's dtype (float32 unless given wider)."""
    dtype = jnp.asarray(like).dtype if like is not None else jnp.float32
    return jnp.asarray(count).astype(dtype)


def _fmt_leaf(v: Any) -> str:
    if isinstance(v, jax.core.Tracer):
        return "<traced>"
    if isinstance(v, (jax.Array, np.ndarray)):
        a = np.asarray(v)
        return _fmt_num(a.item()) if a.ndim == 0 else "[" + ", ".join(
            _fmt_num(x) for x in a.reshape(-1).tolist()) + "]"
    return repr(v)


class Schedule:
    """Base class of pytree schedules: ``schedule(count) -> float32 scalar``.

    Subclasses list their numeric fields in ``_leaves`` (they become pytree leaves, stored as
    arrays) and their structural fields in ``_static`` (part of the tree structure).
    """

    _leaves: ClassVar[tuple[str, ...]] = ()
    _static: ClassVar[tuple[str, ...]] = ()
    _name: ClassVar[str] = "schedule"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)

        def flatten_with_keys(s):
            children = tuple(
                (jax.tree_util.GetAttrKey(f), getattr(s, f)) for f in cls._leaves
            )
            return children, tuple(getattr(s, f) for f in cls._static)

        def flatten(s):
            return tuple(getattr(s, f) for f in cls._leaves), tuple(
                getattr(s, f) for f in cls._static
            )

        def unflatten(aux, children):
            obj = object.__new__(cls)
            for f, v in zip(cls._leaves, children):
                object.__setattr__(obj, f, v)
            for f, v in zip(cls._static, aux):
                object.__setattr__(obj, f, v)
            return obj

        jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)

    def __call__(self, count: Any) -> jax.Array:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={_fmt_leaf(getattr(self, f))}" for f in self._leaves + self._static)
        return f"{self._name}({args})"

    def _key(self):
        from jopt._base import _config_key

        leaves, treedef = jax.tree_util.tree_flatten(self)
        return (str(treedef), tuple(_config_key(x) for x in leaves))

    def __eq__(self, other):
        if type(self) is not type(other):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self):
        return hash(self._key())


class CallableSchedule(Schedule):
    """Wraps a plain callable ``count -> scalar`` (an optax schedule, say).

    The callable is kept in the tree structure, not in the leaves, so the wrapper has no leaves
    and its numbers are static: changing them means building a new schedule (and recompiling).
    """

    _static = ("fn",)
    _name = "callable_schedule"

    def __init__(self, fn: Callable[[Any], Any]):
        object.__setattr__(self, "fn", fn)

    def __call__(self, count):
        return jnp.asarray(self.fn(count)).astype(jnp.float32)

    def __repr__(self):
        return f"callable_schedule({getattr(self.fn, '__name__', repr(self.fn))})"


def as_schedule_or_scalar(transformation: str, name: str, value: Any, **range_kw):
    """Normalises a hyperparameter that may be scheduled.

    Returns a :class:`Schedule` (pytree schedules as given, plain callables wrapped) or a
    float32 state array after range checks.
    """
    if isinstance(value, Schedule):
        return value
    if callable(value) and not isinstance(value, (jax.Array, np.ndarray)):
        return CallableSchedule(value)
    check_real(transformation, name, value, **range_kw)
    return as_state_scalar(value)


def evaluate(value: Any, count: Any) -> jax.Array:
    """A scheduled value at ``count``, or the value itself if it is not a schedule."""
    if isinstance(value, Schedule):
        return value(count)
    return value


class OneMinus(Schedule):
    """A constant close to 1 (Adam's ``b1``, ``b2``), stored as its complement ``1 - value``.

    float32 cannot hold 0.999 exactly, and ``1 - float32(0.999)`` is 1.3e-5 off 0.001; the
    small complement is what the moment updates and bias corrections use, so jopt stores that
    (rounded once, from the double-precision value) and derives the value from it. Reading the
    hyperparameter (:func:`jopt.get_hyperparams`) gives ``1 - complement``.
    """

    _leaves = ("complement",)
    _name = "one_minus"

    def __call__(self, count):
        del count
        return 1.0 - self.complement

    @classmethod
    def of(cls, value: Any) -> OneMinus:
        """``OneMinus`` for ``value``: the complement is computed in double precision when
        ``value`` is concrete, else (a traced value) in the value's own precision."""
        if isinstance(value, OneMinus):
            return value
        if isinstance(value, jax.core.Tracer):
            v = jnp.asarray(value)
            dtype = v.dtype if jnp.issubdtype(v.dtype, jnp.floating) and v.dtype.itemsize >= 4 \
                else jnp.float32
            comp = 1.0 - v.astype(dtype)
        else:
            wide = np.dtype(getattr(value, "dtype", np.float32)) == np.float64
            arr = 1.0 - np.asarray(value, dtype=np.float64)
            # Rounded once from double precision; kept in float64 if given as float64.
            comp = as_state_scalar(arr.astype(np.float64 if wide else np.float32))
        return _make(cls, complement=comp)

    def __repr__(self):
        c = self.complement
        if isinstance(c, jax.core.Tracer):
            return "one_minus(<traced>)"
        # A tree mapped to something else (dtypes, ShapeDtypeStructs, tuples) shows its leaf.
        try:
            a = np.asarray(c)
        except Exception:  # noqa: BLE001 - any leaf that is not array-like
            a = None
        if a is None or a.dtype.kind not in "biuf":
            return f"one_minus(complement={c!r})"
        return (f"one_minus({_fmt_num(float(1.0 - a.astype(np.float64)))})"
                if a.ndim == 0 else f"one_minus(complement={a.tolist()})")


class Constant(Schedule):
    """The pytree built by :func:`constant`; see there for the formula and the fields."""

    _leaves = ("value",)
    _name = "constant"

    def __call__(self, count):
        del count
        return jnp.asarray(self.value)


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
    return _make(Constant, value=as_state_scalar(value))


def _make(cls, **fields):
    # All floating leaves share one dtype (float32, or float64 if any was given as float64
    # with x64 enabled), so evaluation is clean under strict dtype promotion.
    floats = [v for v in fields.values()
              if isinstance(v, jax.Array) and jnp.issubdtype(v.dtype, jnp.floating)]
    if floats:
        wide = max((np.dtype(v.dtype) for v in floats), key=lambda d: d.itemsize)
        fields = {k: (v.astype(wide) if isinstance(v, jax.Array)
                      and jnp.issubdtype(v.dtype, jnp.floating) else v)
                  for k, v in fields.items()}
    obj = object.__new__(cls)
    for k, v in fields.items():
        object.__setattr__(obj, k, v)
    return obj


class Linear(Schedule):
    """The pytree built by :func:`linear`; see there for the formula and the fields."""

    _leaves = ("init_value", "end_value", "transition_steps", "transition_begin")
    _name = "linear"

    def __call__(self, count):
        t = _count_as(count, self.init_value)
        return _ramp(t - self.transition_begin, self.init_value, self.end_value,
                     self.transition_steps)


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
    return _make(
        Linear,
        init_value=as_state_scalar(init_value),
        end_value=as_state_scalar(end_value),
        transition_steps=as_state_scalar(transition_steps),
        transition_begin=as_state_scalar(transition_begin),
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
        t = _count_as(count, self.init_value)
        return _cosine(t, self.init_value, self.decay_steps, self.alpha, self.exponent)


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
    return _make(
        CosineDecay,
        init_value=as_state_scalar(init_value),
        decay_steps=as_state_scalar(decay_steps),
        alpha=as_state_scalar(alpha),
        exponent=as_state_scalar(exponent),
    )


class WarmupCosineDecay(Schedule):
    """The pytree built by :func:`warmup_cosine_decay`; see there for the formula and the fields."""

    _leaves = ("init_value", "peak_value", "warmup_steps", "decay_steps", "end_value", "exponent")
    _name = "warmup_cosine_decay"

    def __call__(self, count):
        t = _count_as(count, self.init_value)
        warm = _ramp(t, self.init_value, self.peak_value, self.warmup_steps)
        # The cosine part ends at end_value: a floor alpha = end / peak of the peak.
        nonzero = self.peak_value != 0
        alpha = jnp.where(nonzero, self.end_value / jnp.where(nonzero, self.peak_value, 1.0), 0.0)
        steps = self.decay_steps - self.warmup_steps
        decay = _cosine(t - self.warmup_steps, self.peak_value, steps, alpha, self.exponent)
        # A zero peak has no alpha = end / peak: decay from 0 to end_value directly (optax's
        # form would stay at 0 and never reach end_value).
        one = jnp.ones_like(self.peak_value)
        factor = _cosine(t - self.warmup_steps, one, steps, jnp.zeros_like(one), self.exponent)
        decay = jnp.where(nonzero, decay, (self.peak_value - self.end_value) * factor
                          + self.end_value)
        return jnp.where(t < self.warmup_steps, warm, decay)


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
      decay_steps: ``T``, total length including warm-up, > ``warmup_steps``.
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
        if np.any(np.asarray(decay_steps, np.float64) <= np.asarray(warmup_steps, np.float64)):
            raise InvalidHyperparameterError(
                name, "decay_steps", decay_steps,
                f"greater than warmup_steps={warmup_steps!r} (it counts the warm-up too)",
            )
    return _make(
        WarmupCosineDecay,
        init_value=as_state_scalar(init_value),
        peak_value=as_state_scalar(peak_value),
        warmup_steps=as_state_scalar(warmup_steps),
        decay_steps=as_state_scalar(decay_steps),
        end_value=as_state_scalar(end_value),
        exponent=as_state_scalar(exponent),
    )


class ExponentialDecay(Schedule):
    """The pytree built by :func:`exponential_decay`; see there for the formula and the fields."""

    _leaves = ("init_value", "transition_steps", "decay_rate", "transition_begin", "end_value")
    _static = ("staircase", "has_end_value")
    _name = "exponential_decay"

    def __call__(self, count):
        t = _count_as(count, self.init_value)
        x = jnp.maximum(t - self.transition_begin, 0.0)
        p = x / jnp.where(self.transition_steps > 0, self.transition_steps, 1.0)
        if self.staircase:
            # XLA may turn division by a constant into multiplication by its reciprocal
            # (41 * (1/41) = 0.99999994); correct the floor by one in either direction.
            q = jnp.floor(p)
            q = q + ((q + 1.0) * self.transition_steps <= x).astype(q.dtype)
            p = q - (q * self.transition_steps > x).astype(q.dtype)
        v = self.init_value * self.decay_rate**p
        if self.has_end_value:
            v = jnp.where(self.decay_rate < 1.0, jnp.maximum(v, self.end_value),
                          jnp.minimum(v, self.end_value))
        return v

    def __repr__(self):
        def n(x):
            return _fmt_leaf(x)

        end = n(self.end_value) if self.has_end_value else "None"
        return (
            f"exponential_decay(init_value={n(self.init_value)}, "
            f"transition_steps={n(self.transition_steps)}, decay_rate={n(self.decay_rate)}, "
            f"transition_begin={n(self.transition_begin)}, staircase={self.staircase!r}, "
            f"end_value={end})"
        )


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
    return _make(
        ExponentialDecay,
        init_value=as_state_scalar(init_value),
        transition_steps=as_state_scalar(transition_steps),
        decay_rate=as_state_scalar(decay_rate),
        transition_begin=as_state_scalar(transition_begin),
        end_value=as_state_scalar(0.0 if end_value is None else end_value),
        staircase=bool(staircase),
        has_end_value=end_value is not None,
    )


def _check_boundaries(name: str, boundaries: Sequence[int]) -> jax.Array:
    if isinstance(boundaries, (str, bytes)) or not hasattr(boundaries, "__iter__"):
        raise InvalidHyperparameterError(name, "boundaries", boundaries, "a sequence of integers")
    bounds = list(boundaries)
    for b in bounds:
        check_real(name, "boundaries", b, lo=0, integer=True)
    if any(b1 >= b2 for b1, b2 in zip(bounds, bounds[1:])):
        raise InvalidHyperparameterError(name, "boundaries", boundaries, "strictly increasing")
    return jnp.asarray(bounds, dtype=jnp.int32).reshape(len(bounds))


class PiecewiseConstant(Schedule):
    """The pytree built by :func:`piecewise_constant`; see there for the formula and the fields."""

    _leaves = ("boundaries", "values")
    _name = "piecewise_constant"

    def __call__(self, count):
        idx = jnp.sum((jnp.asarray(count) >= self.boundaries).astype(jnp.int32))
        return self.values[idx]


def piecewise_constant(boundaries: Sequence[int], values: Sequence[float]) -> Schedule:
    """A step function: ``values[i]`` for ``boundaries[i-1] <= t < boundaries[i]``.

    .. math::
       v(t) = \\text{values}[\\#\\{i : t \\ge b_i\\}]

    (Equivalent to optax's ``piecewise_constant_schedule(init_value, boundaries_and_scales)``
    with ``values`` the running products of the scales.)

    Args:
      boundaries: strictly increasing update counts, each >= 0.
      values: ``len(boundaries) + 1`` values.

    Returns:
      A pytree :class:`Schedule`.

    Raises:
      InvalidHyperparameterError: if the lengths disagree or boundaries are not increasing.
    """
    name = "piecewise_constant"
    b = _check_boundaries(name, boundaries)
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise InvalidHyperparameterError(name, "values", values, "a sequence of numbers")
    values = list(values)
    if len(values) != b.shape[0] + 1:
        raise InvalidHyperparameterError(
            name, "values", values, f"a sequence of len(boundaries) + 1 = {b.shape[0] + 1} numbers"
        )
    for v in values:
        check_real(name, "values", v)
    return _make(PiecewiseConstant, boundaries=b, values=jnp.asarray(values, jnp.float32))


class Join(Schedule):
    """The pytree built by :func:`join`; see there for the formula and the fields."""

    _leaves = ("schedules", "boundaries")
    _name = "join"

    def __call__(self, count):
        count = jnp.asarray(count)
        idx = jnp.sum((count >= self.boundaries).astype(jnp.int32))
        starts = jnp.concatenate([jnp.zeros([1], jnp.int32), self.boundaries])
        start = starts[idx]
        outs = jnp.stack([jnp.asarray(s(count - start)).astype(jnp.float32)
                          for s in self.schedules])
        return outs[idx]

    def __repr__(self):
        return f"join(schedules={list(self.schedules)!r}, boundaries={_fmt_leaf(self.boundaries)})"


def join(schedules: Sequence[Any], boundaries: Sequence[int]) -> Schedule:
    """Runs ``schedules[i]`` between ``boundaries[i-1]`` and ``boundaries[i]``.

    Each schedule sees the count relative to its own start: after boundary ``b``, the next
    schedule is called with ``t - b``.

    Args:
      schedules: pytree schedules or plain callables, ``len(boundaries) + 1`` of them.
      boundaries: strictly increasing update counts, each >= 0.

    Returns:
      A pytree :class:`Schedule`.

    Raises:
      InvalidHyperparameterError: if the lengths disagree or boundaries are not increasing.
    """
    name = "join"
    b = _check_boundaries(name, boundaries)
    if not hasattr(schedules, "__iter__"):
        raise InvalidHyperparameterError(name, "schedules", schedules, "a sequence of schedules")
    scheds = []
    for s in schedules:
        if isinstance(s, Schedule):
            scheds.append(s)
        elif callable(s):
            scheds.append(CallableSchedule(s))
        else:
            raise InvalidHyperparameterError(name, "schedules", s, "schedules or callables")
    if len(scheds) != b.shape[0] + 1:
        raise InvalidHyperparameterError(
            name, "schedules", schedules, f"len(boundaries) + 1 = {b.shape[0] + 1} schedules"
        )
    return _make(Join, schedules=tuple(scheds), boundaries=b)


def piecewise_constant_schedule(
    init_value: float, boundaries_and_scales: dict[int, float] | None = None
) -> Schedule:
    """optax's spelling of :func:`piecewise_constant`: a start value and multiplicative scales.

    The value starts at ``init_value`` and is multiplied by ``scale`` from each ``boundary`` on:
    ``piecewise_constant_schedule(1.0, {100: 0.1, 200: 0.5})`` is
    ``piecewise_constant([100, 200], [1.0, 0.1, 0.05])``.

    Args:
      init_value: the value before the first boundary.
      boundaries_and_scales: a mapping from update count (int >= 0) to scale factor; default
        none (a constant).

    Returns:
      A :class:`PiecewiseConstant` schedule.

    Raises:
      InvalidHyperparameterError: as :func:`piecewise_constant`, or if the mapping is not one.
    """
    name = "piecewise_constant_schedule"
    check_real(name, "init_value", init_value)
    if boundaries_and_scales is None:
        boundaries_and_scales = {}
    if not isinstance(boundaries_and_scales, dict):
        raise InvalidHyperparameterError(
            name, "boundaries_and_scales", boundaries_and_scales, "a dict {boundary: scale}"
        )
    boundaries = sorted(boundaries_and_scales)
    values = [float(init_value)]
    for b in boundaries:
        check_real(name, "boundaries_and_scales", boundaries_and_scales[b])
        values.append(values[-1] * float(boundaries_and_scales[b]))
    return piecewise_constant(boundaries, values)


# optax's names for the same schedules, so code written for optax reads the same with jopt.
constant_schedule = constant
linear_schedule = linear
cosine_decay_schedule = cosine_decay
warmup_cosine_decay_schedule = warmup_cosine_decay
join_schedules = join

_FACTORIES = {
    "constant": constant,
    "linear": linear,
    "cosine_decay": cosine_decay,
    "warmup_cosine_decay": warmup_cosine_decay,
    "exponential_decay": exponential_decay,
    "piecewise_constant": piecewise_constant,
    "join": join,
}


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
