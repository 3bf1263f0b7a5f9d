"""The schedule base class, the storage forms of hyperparameters it shares with transformations
(``CallableSchedule``, ``OneMinus``), and the arithmetic of step counts.

A schedule maps the step counter (the number of updates applied so far, an int32 scalar; the
unit is always *updates*, never epochs) to a float32 scalar. jopt's schedules are pytrees whose
numbers are leaves: a schedule can sit in an optimizer state, be changed without recompiling,
be batched by ``jax.vmap`` (a population of peak learning rates) and be checkpointed. Any plain
callable ``count -> scalar`` (optax's schedules included) is accepted wherever a schedule is;
its numbers are then static.

Counts: an integer count of any integer dtype is computed with in int32 (exact to
``2**31 - 1`` steps; offsets such as ``count - transition_begin`` are taken before converting
to float, so a ramp that starts after 16.7 million steps is still exact); a floating count is
used as it is (fractional steps interpolate).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jopt._config import config_key
from jopt._serialization import serializable
from jopt._validate import as_state_scalar

_I32_MAX = int(np.iinfo(np.int32).max)


def fmt_num(x: Any) -> str:
    """Shortest readable form of a float32-stored number (``0.01``, not ``0.00999999977``)."""
    return f"{x:.7g}" if isinstance(x, float) else repr(x)


def fmt_leaf(v: Any) -> str:
    if isinstance(v, jax.core.Tracer):
        return "<traced>"
    if isinstance(v, (jax.Array, np.ndarray)):
        a = np.asarray(v)
        return fmt_num(a.item()) if a.ndim == 0 else "[" + ", ".join(
            fmt_num(x) for x in a.reshape(-1).tolist()) + "]"
    return repr(v)


def as_count(count: Any) -> jax.Array:
    """The step count as an array: int32 for any integer (or bool) count, unsigned counts
    beyond the int32 range saturating at ``2**31 - 1``; a floating count as it is."""
    if isinstance(count, (int, np.integer)) and not isinstance(count, (bool, np.bool_)):
        # A Python or NumPy integer beyond int32 (x64 off would wrap it): saturate on the host.
        count = np.int64(min(max(int(count), -_I32_MAX - 1), _I32_MAX))
    c = jnp.asarray(count)
    if jnp.issubdtype(c.dtype, jnp.floating):
        return c
    if c.dtype.itemsize >= 4 and c.dtype != jnp.int32:
        # uint32, int64, uint64 (with x64): saturate at the int32 range instead of wrapping.
        lo = 0 if jnp.issubdtype(c.dtype, jnp.unsignedinteger) else -_I32_MAX - 1
        c = jnp.clip(c, jnp.asarray(lo, c.dtype), jnp.asarray(_I32_MAX, c.dtype))
    return c.astype(jnp.int32)


def count_as_float(count: Any, like: Any) -> jax.Array:
    """The step count as a float of ``like``'s dtype (a schedule's value dtype)."""
    return as_count(count).astype(jnp.asarray(like).dtype)


def since(count: Any, start: jax.Array, like: Any) -> jax.Array:
    """``count - start`` as a float of ``like``'s dtype, the difference taken exactly: in int32
    for an integer count (``start`` is an int32 field), in the float dtype otherwise."""
    c = as_count(count)
    dtype = jnp.asarray(like).dtype
    if jnp.issubdtype(c.dtype, jnp.floating):
        return c.astype(dtype) - jnp.asarray(start).astype(dtype)
    return (c - jnp.asarray(start).astype(jnp.int32)).astype(dtype)


def as_step_field(value: Any) -> jax.Array:
    """A step-count field of a schedule (``transition_steps``, ``warmup_steps``, ...) as an
    int32 array: exact for every int32 count, unlike float32 beyond ``2**24``."""
    if isinstance(value, jax.core.Tracer):
        return jnp.asarray(value).astype(jnp.int32)
    return jnp.asarray(np.asarray(value, np.float64).astype(np.int64), jnp.int32)


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
        serializable(cls)

    def __call__(self, count: Any) -> jax.Array:
        raise NotImplementedError

    def value_range(self) -> tuple[float, float] | None:
        """The least and the greatest value the schedule takes over all steps (over every
        member, for a population), or ``None`` when that is not known (a plain callable, or
        numbers that are traced). Transformations check it against the hyperparameter's range
        when the schedule is given, so a learning rate that would turn negative, or a ``b1``
        that would reach 1, is refused when it is set rather than found as NaNs later.
        A value approached without end (exponential decay towards 0) counts as reached:
        float32 reaches it."""
        return None

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={fmt_leaf(getattr(self, f))}" for f in self._leaves + self._static)
        return f"{self._name}({args})"

    def _key(self):
        leaves, treedef = jax.tree_util.tree_flatten(self)
        return (str(treedef), tuple(config_key(x) for x in leaves))

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
        value = jnp.asarray(self.fn(count))
        if jnp.issubdtype(value.dtype, jnp.floating) and value.dtype.itemsize >= 4:
            return value
        return value.astype(jnp.float32)

    def __repr__(self):
        return f"callable_schedule({getattr(self.fn, '__name__', repr(self.fn))})"


def concrete(*values: Any) -> list[np.ndarray] | None:
    """The values as float64 NumPy arrays, or ``None`` if any is traced."""
    if any(isinstance(v, jax.core.Tracer) for v in values):
        return None
    return [np.asarray(v, np.float64) for v in values]


def span(*candidates: Any) -> tuple[float, float] | None:
    """``(min, max)`` over all elements of the candidate values (``None`` if any is traced)."""
    arrays = concrete(*candidates)
    if arrays is None:
        return None
    flat = np.concatenate([a.reshape(-1) for a in arrays])
    return float(flat.min()), float(flat.max())


def evaluate(value: Any, count: Any) -> jax.Array:
    """A scheduled value at ``count``, or the value itself if it is not a schedule."""
    if isinstance(value, Schedule):
        return value(count)
    return value


def make(cls, **fields):
    """An instance of a schedule class from its fields. All floating leaves share one dtype
    (float32, or float64 if any was given as float64 with x64 enabled), so evaluation is clean
    under strict dtype promotion; integer leaves (step counts) stay int32."""
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
    def of(cls, value: Any, dtype: Any = None) -> OneMinus:
        """``OneMinus`` for ``value``: the complement is computed in double precision when
        ``value`` is concrete, else (a traced value) in the value's own precision. With
        ``dtype``, the complement is stored in that dtype (the stored one, when a value is
        replaced), else in float32, or float64 for a float64 value."""
        if isinstance(value, OneMinus):
            return value
        if isinstance(value, jax.core.Tracer):
            v = jnp.asarray(value)
            own = v.dtype if jnp.issubdtype(v.dtype, jnp.floating) and v.dtype.itemsize >= 4 \
                else jnp.float32
            comp = 1.0 - v.astype(own)
            if dtype is not None:
                comp = comp.astype(dtype)
        else:
            wide = np.dtype(getattr(value, "dtype", np.float32)) == np.float64
            arr = 1.0 - np.asarray(value, dtype=np.float64)
            target = np.dtype(dtype) if dtype is not None else np.dtype(
                np.float64 if wide else np.float32)
            # Rounded once from double precision.
            comp = as_state_scalar(arr.astype(target))
        return make(cls, complement=comp)

    def value_range(self):
        got = concrete(self.complement)
        return None if got is None else span(1.0 - got[0])

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
        return (f"one_minus({fmt_num(float(1.0 - a.astype(np.float64)))})"
                if a.ndim == 0 else f"one_minus(complement={a.tolist()})")
