"""Step functions of the count: ``piecewise_constant`` (with optax's spelling
``piecewise_constant_schedule``) and ``join``, which runs schedules one after another. See
:mod:`jopt.schedules._core` for the rules every schedule follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jopt._validate import check_real, checked_call
from jopt.errors import InvalidHyperparameterError
from jopt.schedules._core import (
    CallableSchedule,
    Schedule,
    as_count,
    concrete,
    fmt_leaf,
    make,
    span,
)


def _check_boundaries(name: str, boundaries: Sequence[int], *, strict: bool = True) -> jax.Array:
    if isinstance(boundaries, (str, bytes)) or not hasattr(boundaries, "__iter__"):
        raise InvalidHyperparameterError(name, "boundaries", boundaries, "a sequence of integers")
    bounds = list(boundaries)
    for b in bounds:
        check_real(name, "boundaries", b, lo=0, integer=True)
    if strict and any(b1 >= b2 for b1, b2 in zip(bounds, bounds[1:])):
        raise InvalidHyperparameterError(name, "boundaries", boundaries, "strictly increasing")
    if not strict and any(b1 > b2 for b1, b2 in zip(bounds, bounds[1:])):
        raise InvalidHyperparameterError(name, "boundaries", boundaries,
                                         "non-decreasing (repeated boundaries are allowed)")
    return jnp.asarray(bounds, dtype=jnp.int32).reshape(len(bounds))


def _reached(count: Any, boundaries: jax.Array) -> jax.Array:
    """How many boundaries ``count`` has reached (``count >= b``), in the count's arithmetic."""
    c = as_count(count)
    return jnp.sum((c >= boundaries.astype(c.dtype)).astype(jnp.int32))


class PiecewiseConstant(Schedule):
    """The pytree built by :func:`piecewise_constant`; see there for the formula and the fields."""

    _leaves = ("boundaries", "values")
    _name = "piecewise_constant"

    def __call__(self, count):
        return self.values[_reached(count, self.boundaries)]

    def value_range(self):
        return span(self.values)


@checked_call
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
    return make(PiecewiseConstant, boundaries=b, values=jnp.asarray(values, jnp.float32))


class Join(Schedule):
    """The pytree built by :func:`join`; see there for the formula and the fields."""

    _leaves = ("schedules", "boundaries")
    _name = "join"

    def __call__(self, count):
        count = as_count(count)
        # The last piece whose boundary is <= count is active (with repeated boundaries the
        # pieces between them are empty and never used); it sees count - its boundary.
        idx = _reached(count, self.boundaries)
        starts = jnp.concatenate([jnp.zeros([1], jnp.int32), self.boundaries])
        start = starts[idx].astype(count.dtype)
        outs = jnp.stack([jnp.asarray(s(count - start)).astype(jnp.float32)
                          for s in self.schedules])
        return outs[idx]

    def value_range(self):
        got = concrete(self.boundaries)
        if got is None:
            return None
        # Pieces that repeated boundaries leave empty are never used.
        edges = np.concatenate([[0.0], got[0], [np.inf]])
        ranges = [s.value_range() for s, a, b in zip(self.schedules, edges, edges[1:]) if b > a]
        if any(r is None for r in ranges):
            return None
        return span([r[0] for r in ranges], [r[1] for r in ranges])

    def __repr__(self):
        return f"join(schedules={list(self.schedules)!r}, boundaries={fmt_leaf(self.boundaries)})"


@checked_call
def join(schedules: Sequence[Any], boundaries: Sequence[int]) -> Schedule:
    """Runs ``schedules[i]`` between ``boundaries[i-1]`` and ``boundaries[i]``.

    Each schedule sees the count relative to its own start: after boundary ``b``, the next
    schedule is called with ``t - b``. At step ``t`` the active schedule is the last one whose
    boundary is ``<= t``; a repeated boundary makes an empty piece that is never used (as
    torch's ``SequentialLR`` allows), so pieces can be switched off by moving boundaries.

    Args:
      schedules: pytree schedules or plain callables, ``len(boundaries) + 1`` of them.
      boundaries: non-decreasing update counts, each >= 0.

    Returns:
      A pytree :class:`Schedule`.

    Raises:
      InvalidHyperparameterError: if the lengths disagree or boundaries decrease.
    """
    name = "join"
    b = _check_boundaries(name, boundaries, strict=False)
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
    return make(Join, schedules=tuple(scheds), boundaries=b)


@checked_call
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


join_schedules = join
