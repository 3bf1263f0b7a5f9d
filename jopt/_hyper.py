"""Hyperparameter declarations: the range, integer/real, complement storage and schedulability
of each numeric hyperparameter, declared next to the factory that owns it.

A :class:`Hyper` validates a value when a transformation is built and when
:func:`jopt.set_hyperparams` replaces it, and converts it to what the state stores: a float32
array (or wider if given wider), an int32 array for counts, a :class:`OneMinus` complement
for values close to 1, or a schedule pytree. A state type carries the declarations of the
hyperparameters it holds (``State._jopt_hyperparams``), so ``set_hyperparams`` validates
a new value against the transformation that owns it; there is no global table.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jopt._validate import as_state_scalar, check_real, describe_range, in_range
from jopt.errors import InvalidHyperparameterError
from jopt.schedules._core import CallableSchedule, OneMinus, Schedule

_RANGE = re.compile(r"^\s*([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])\s*$")
_BOUND = re.compile(r"^\s*(>=|>|<=|<)\s*(\S+)\s*$")


def _number(text: str) -> float:
    return {"inf": math.inf, "-inf": -math.inf}.get(text, None) or float(text)


@dataclasses.dataclass(frozen=True)
class Hyper:
    """Declaration of one numeric hyperparameter.

    Attributes:
      range: the allowed values: ``"real"`` (any finite number), an interval such as
        ``"[0, 1)"`` or ``"(0, 1]"``, or a bound such as ``">= 0"`` or ``"> 0"``.
      integer: the value must be an integer (stored as int32).
      complement: stored as its complement ``1 - value`` (:class:`OneMinus`), for values
        close to 1 such as Adam's betas: float32 holds ``1 - 0.999`` far better than
        ``0.999``. Rules then read both ``name`` and ``one_minus_<name>``.
      schedulable: may be a schedule (a jopt schedule pytree or any callable of the step).
        True for every hyperparameter of a transformation.
      off_at_infinity: ``+-inf`` is accepted and means "none" (a baseline or a threshold).
      optional: ``None`` is accepted (the factory decides what it means).
    """

    range: str = "real"
    integer: bool = False
    complement: bool = False
    schedulable: bool = True
    off_at_infinity: bool = False
    optional: bool = False

    def bounds(self) -> dict[str, Any]:
        """The range as keyword arguments of :func:`jopt._validate.check_real`."""
        text = self.range.strip()
        if text == "real":
            return {"integer": self.integer}
        m = _RANGE.match(text)
        if m:
            lo, hi = _number(m.group(2)), _number(m.group(3))
            return {"lo": lo, "hi": hi, "lo_open": m.group(1) == "(",
                    "hi_open": m.group(4) == ")", "integer": self.integer}
        m = _BOUND.match(text)
        if m:
            op, x = m.group(1), _number(m.group(2))
            if op in (">=", ">"):
                return {"lo": x, "lo_open": op == ">", "integer": self.integer}
            return {"hi": x, "hi_open": op == "<", "integer": self.integer}
        raise ValueError(f"invalid range {self.range!r}")

    def check(self, owner: str, name: str, value: Any) -> None:
        """Raises :class:`InvalidHyperparameterError` unless ``value`` may be stored."""
        if value is None and self.optional:
            return
        if isinstance(value, Schedule) or (callable(value) and not isinstance(
                value, (jax.Array, np.ndarray))):
            if isinstance(value, OneMinus):
                return
            if not self.schedulable:
                raise InvalidHyperparameterError(
                    owner, name, value, "a number (this hyperparameter cannot follow a schedule)")
            self._check_schedule(owner, name, value)
            return
        if self.off_at_infinity and _is_infinite(value):
            return
        check_real(owner, name, value, **self.bounds())

    def _check_schedule(self, owner: str, name: str, value: Any) -> None:
        """A schedule whose values are known (:meth:`Schedule.value_range`) must stay in range."""
        span = value.value_range() if isinstance(value, Schedule) else None
        if span is None:
            return
        bounds = self.bounds()
        if self.off_at_infinity:
            span = tuple(x for x in span if not _is_infinite(x)) or (0.0, 0.0)
        if not all(math.isfinite(x) and in_range(x, **bounds) for x in span):
            lo, hi = min(span), max(span)
            raise InvalidHyperparameterError(
                owner, name, value,
                f"a schedule whose values stay {describe_range(**bounds)} (this one takes "
                f"values from {lo:g} to {hi:g})")

    def store(self, owner: str, name: str, value: Any, like: Any = None) -> Any:
        """Checks ``value`` and converts it to what the state holds. With ``like`` (the value
        stored before), a number keeps the stored dtype and shape, so a jitted step sees the
        same input types and does not recompile."""
        self.check(owner, name, value)
        if value is None:
            return None
        if isinstance(value, Schedule):
            return value
        if callable(value) and not isinstance(value, (jax.Array, np.ndarray)):
            return CallableSchedule(value)
        if self.complement:
            ref = like.complement if isinstance(like, OneMinus) else None
            out = OneMinus.of(value, None if ref is None else ref.dtype)
            if ref is not None:
                out = jax.tree_util.tree_map(lambda c: jnp.broadcast_to(c, jnp.shape(ref)), out)
            return out
        if not isinstance(value, jax.core.Tracer):
            if like is None and np.ndim(value) != 0:
                raise InvalidHyperparameterError(
                    owner, name, value,
                    "a scalar or a schedule (for a population, build the transformation or "
                    "set the value inside jax.vmap)")
            arr = np.asarray(value)
            if arr.dtype.kind in "biu" and not self.integer:
                # An integer beyond int32 must not wrap on its way to a float state (2**31 is
                # a valid, if odd, learning rate): through float64 on the host.
                value = np.asarray(value, np.float64).astype(np.float32)
            elif arr.dtype.kind == "O":  # a Python int too large for NumPy's integers
                value = np.float32(float(value))
        if like is not None and not isinstance(like, Schedule):
            dtype = getattr(like, "dtype", np.float32)
            return jnp.broadcast_to(jnp.asarray(value).astype(dtype), jnp.shape(like))
        if self.integer:
            return jnp.asarray(value).astype(jnp.int32)
        return as_state_scalar(value)


def _is_infinite(value: Any) -> bool:
    if isinstance(value, jax.core.Tracer) or isinstance(value, (bool, np.bool_)):
        return False
    try:
        return bool(np.ndim(value) == 0 and np.isinf(float(np.asarray(value))))
    except (TypeError, ValueError):
        return False


def current(decls: Mapping[str, Hyper], stored: Mapping[str, Any], count: Any,
            complements: bool = False) -> dict[str, Any]:
    """The values a step uses: schedules evaluated at ``count``, complements expanded.

    With ``complements``, a ``complement`` hyperparameter ``b`` also gives
    ``one_minus_b``: the stored complement itself (exact) for a :class:`OneMinus`, else
    ``1 - b`` computed from the value.
    """
    out: dict[str, Any] = {}
    for name, value in stored.items():
        decl = decls.get(name)
        if isinstance(value, OneMinus):
            comp = jnp.asarray(value.complement)
            out[name] = 1.0 - comp
            if complements:
                out[f"one_minus_{name}"] = comp
            continue
        v = value(count) if isinstance(value, Schedule) else value
        if v is not None:
            v = jnp.asarray(v)
            if decl is not None and decl.integer and not jnp.issubdtype(v.dtype, jnp.integer):
                v = jnp.floor(v).astype(jnp.int32)
        out[name] = v
        if complements and decl is not None and decl.complement:
            out[f"one_minus_{name}"] = None if v is None else 1.0 - v
    return out


def value_now(value: Any, count: Any) -> jax.Array:
    """One stored hyperparameter's current value (as :func:`jopt.get_hyperparams` reports
    it); a batched (population) counter evaluates each member's schedule at its own count."""
    if isinstance(value, Schedule) and not isinstance(value, OneMinus):
        if count is None:
            count = jnp.zeros([], jnp.int32)
        fn = _call
        for _ in range(jnp.ndim(count)):
            fn = jax.vmap(fn)
        return jnp.asarray(fn(value, count))
    if isinstance(value, OneMinus):
        return jnp.asarray(value(0))
    return jnp.asarray(value)


def _call(schedule: Schedule, count: Any) -> jax.Array:
    return schedule(count)
