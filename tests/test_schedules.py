"""Schedules: closed forms, optax equivalence, pytree behaviour, validation, properties.

Every schedule is evaluated under ``jax.jit`` at every step 0..300 (which includes each
configuration's boundaries: warm-up ends, transition begins, decay ends, piecewise and join
boundaries) and at a few very large counts, and compared with

* a closed-form float64 NumPy formula written here from the schedule's definition, and
* the matching optax schedule (float32 both).

Tolerances, elementwise over the steps of one schedule:

    |jopt(t) - want(t)| <= rtol |want(t)| + atol max_t |want(t)|

``atol`` is relative to the schedule's own scale (its largest value over the steps), since a
float32 schedule's error is a few ulps of the numbers it combines, not of its current value
(a cosine near its floor, a linear ramp through zero).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jopt
from jopt.errors import InvalidHyperparameterError

STEPS = np.arange(0, 301)
HUGE = np.array([10**4, 10**6, 2**31 - 1])

# float32 against the float64 formula. Each float32 operation costs half an ulp (6e-8) of its
# operands; the cosine adds ~1 ulp of pi (2.4e-7) to its argument, i.e. ~1e-7 of the scale,
# which a fractional exponent amplifies near the floor (d(c**0.5) = dc / (2 sqrt(c))).
# Exponential decay computes r**p with p = (t - t_b) / T rounded to float32, p |ln r| up to
# ~11 here, so a few 1e-7 relative to the current value. Measured over all cases: at most
# 5.7e-7 x the scale with rtol 0 (cosine, exponent 0.5, near its floor) and 2.7e-6 relative
# for values above 1e-3 of the scale (a cosine near zero); with rtol 2e-6 the absolute part
# needed is at most 5.3e-8 of the scale. So rtol 2e-6 and atol 2e-7 (~4x).
REF_RTOL = 2e-6
REF_ATOL = 2e-7
# float32 against float32 (optax): the same formulas, so most cases agree bit for bit; the
# others differ by operation order: measured at most 9.3e-8 x the scale. rtol 1e-6 (~8 ulps)
# and atol 2e-7 of the scale.
OPTAX_RTOL = 1e-6
OPTAX_ATOL = 2e-7


def _eval(schedule, counts):
    """The schedule at each count, under jit (one scalar call per count via vmap).

    The schedule is closed over, so its numbers are compile-time constants (as when ``init``
    runs inside the jitted step, or for optax-style closures).
    """
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(counts, jnp.int32)), np.float64)


@jax.jit
def _eval_as_argument_jit(schedule, counts):
    return jax.vmap(schedule)(counts)


def _eval_as_argument(schedule, counts):
    """As :func:`_eval`, with the schedule a jit argument (its numbers are runtime data, as
    when it sits in an optimizer state passed to the jitted step)."""
    return np.asarray(_eval_as_argument_jit(schedule, jnp.asarray(counts, jnp.int32)), np.float64)


def _eval_optax(schedule, counts):
    # optax schedules mix Python floats with the int32 count, which the test suite's strict
    # dtype promotion rejects; only the optax side is traced under standard promotion.
    with jax.numpy_dtype_promotion("standard"):
        return np.asarray(
            jax.jit(jax.vmap(schedule))(jnp.asarray(counts, jnp.int32)), np.float64
        )


def assert_schedule_close(got, want, *, rtol, atol, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    assert np.all(np.isfinite(got)), f"{what}: non-finite values {got}"
    scale = np.max(np.abs(want))
    err = np.abs(got - want)
    bound = rtol * np.abs(want) + atol * scale
    bad = np.flatnonzero(err > bound)
    if bad.size:
        i = int(bad[0])
        raise AssertionError(
            f"{what}: first mismatch at index {i}: got {got[i]!r}, want {want[i]!r}, "
            f"|err| {err[i]:.3g} > {bound[i]:.3g} (rtol={rtol}, atol={atol} x {scale:.3g}); "
            f"{bad.size} bad"
        )


# ---------------------------------------------------------------------------------------
# Closed forms (float64), from the definitions. ``t`` is the number of updates applied.


def f_constant(v):
    return lambda t: v


def f_linear(v0, v1, steps, begin=0):
    return lambda t: v0 + (v1 - v0) * min(max((t - begin) / steps, 0.0), 1.0)


def f_cosine(v0, steps, alpha=0.0, exponent=1.0):
    def f(t):
        c = 0.5 * (1.0 + math.cos(math.pi * min(t, steps) / steps))
        return v0 * ((1.0 - alpha) * c**exponent + alpha)

    return f


def f_warmup_cosine(v0, peak, warmup, total, end=0.0, exponent=1.0):
    def f(t):
        if t < warmup:
            return v0 + (peak - v0) * t / warmup
        c = 0.5 * (1.0 + math.cos(math.pi * min(t - warmup, total - warmup) / (total - warmup)))
        return end + (peak - end) * c**exponent

    return f


def f_exponential(v0, steps, rate, begin=0, staircase=False, end=None):
    def f(t):
        p = max(t - begin, 0) / steps
        if staircase:
            p = math.floor(p)
        with np.errstate(over="ignore", under="ignore"):  # huge counts: inf or 0
            v = float(v0 * np.float64(rate) ** p)
        if end is not None:
            v = max(v, end) if rate < 1 else min(v, end)
        return v

    return f


def f_piecewise(boundaries, values):
    return lambda t: values[sum(t >= b for b in boundaries)]


def f_join(fns, boundaries):
    def f(t):
        i = sum(t >= b for b in boundaries)
        start = 0 if i == 0 else boundaries[i - 1]
        return fns[i](t - start)

    return f


# name: (jopt schedule factory, float64 closed form, optax schedule factory or None)
CASES = {
    "constant": (
        lambda: jopt.constant(0.3), f_constant(0.3), lambda: optax.constant_schedule(0.3)),
    "linear_decay": (
        lambda: jopt.linear(1.0, 0.1, 100), f_linear(1.0, 0.1, 100),
        lambda: optax.linear_schedule(1.0, 0.1, 100)),
    "linear_growing_begin": (
        lambda: jopt.linear(-0.5, 2.0, 50, transition_begin=30), f_linear(-0.5, 2.0, 50, 30),
        lambda: optax.linear_schedule(-0.5, 2.0, 50, transition_begin=30)),
    "linear_one_step": (
        lambda: jopt.linear(0.0, 1.0, 1, transition_begin=7), f_linear(0.0, 1.0, 1, 7),
        lambda: optax.linear_schedule(0.0, 1.0, 1, transition_begin=7)),
    "cosine_default": (
        lambda: jopt.cosine_decay(1.0, 100), f_cosine(1.0, 100),
        lambda: optax.cosine_decay_schedule(1.0, 100)),
    "cosine_alpha_exponent": (
        lambda: jopt.cosine_decay(0.1, 200, alpha=0.1, exponent=2.0),
        f_cosine(0.1, 200, 0.1, 2.0),
        lambda: optax.cosine_decay_schedule(0.1, 200, alpha=0.1, exponent=2.0)),
    "cosine_fractional_exponent": (
        lambda: jopt.cosine_decay(2.0, 150, alpha=0.25, exponent=0.5),
        f_cosine(2.0, 150, 0.25, 0.5),
        lambda: optax.cosine_decay_schedule(2.0, 150, alpha=0.25, exponent=0.5)),
    "warmup_cosine": (
        lambda: jopt.warmup_cosine_decay(0.0, 1e-2, 10, 250, end_value=1e-4),
        f_warmup_cosine(0.0, 1e-2, 10, 250, 1e-4),
        lambda: optax.warmup_cosine_decay_schedule(0.0, 1e-2, 10, 250, end_value=1e-4)),
    "warmup_cosine_exponent_from_nonzero": (
        lambda: jopt.warmup_cosine_decay(1e-3, 1e-2, 37, 200, end_value=2e-3, exponent=1.5),
        f_warmup_cosine(1e-3, 1e-2, 37, 200, 2e-3, 1.5),
        lambda: optax.warmup_cosine_decay_schedule(1e-3, 1e-2, 37, 200, end_value=2e-3,
                                                   exponent=1.5)),
    "warmup_cosine_no_warmup": (
        lambda: jopt.warmup_cosine_decay(0.0, 1.0, 0, 120),
        f_warmup_cosine(0.0, 1.0, 0, 120),
        None),  # optax divides by warmup_steps = 0 in its (unused) warm-up branch
    "exponential": (
        lambda: jopt.exponential_decay(1.0, 20, 0.5), f_exponential(1.0, 20, 0.5),
        lambda: optax.exponential_decay(1.0, 20, 0.5)),
    "exponential_begin": (
        lambda: jopt.exponential_decay(0.5, 30, 0.7, transition_begin=50),
        f_exponential(0.5, 30, 0.7, 50),
        lambda: optax.exponential_decay(0.5, 30, 0.7, transition_begin=50)),
    "exponential_staircase_begin": (
        lambda: jopt.exponential_decay(1.0, 25, 0.5, transition_begin=10, staircase=True),
        f_exponential(1.0, 25, 0.5, 10, True),
        lambda: optax.exponential_decay(1.0, 25, 0.5, transition_begin=10, staircase=True)),
    # 41 is one of the transition lengths T for which float32 T * (1 / T) < 1: the jump at
    # t = k T must happen at t = k T, not one step later.
    "exponential_staircase_41": (
        lambda: jopt.exponential_decay(1.0, 41, 0.5, staircase=True),
        f_exponential(1.0, 41, 0.5, staircase=True),
        None),  # optax 0.2.8 itself jumps one step late here under jit (see below)
    "exponential_staircase_begin_194": (
        lambda: jopt.exponential_decay(2.0, 194, 0.4, transition_begin=36, staircase=True),
        f_exponential(2.0, 194, 0.4, 36, True),
        None),
    "exponential_end_value_decaying": (
        lambda: jopt.exponential_decay(1.0, 20, 0.5, end_value=0.05),
        f_exponential(1.0, 20, 0.5, end=0.05),
        lambda: optax.exponential_decay(1.0, 20, 0.5, end_value=0.05)),
    "exponential_end_value_growing": (
        lambda: jopt.exponential_decay(0.1, 40, 1.5, transition_begin=20, end_value=0.8),
        f_exponential(0.1, 40, 1.5, 20, end=0.8),
        lambda: optax.exponential_decay(0.1, 40, 1.5, transition_begin=20, end_value=0.8)),
    "exponential_staircase_end_value": (
        lambda: jopt.exponential_decay(2.0, 30, 0.3, staircase=True, end_value=0.01),
        f_exponential(2.0, 30, 0.3, staircase=True, end=0.01),
        lambda: optax.exponential_decay(2.0, 30, 0.3, staircase=True, end_value=0.01)),
    "piecewise_constant": (
        lambda: jopt.piecewise_constant([50, 100, 200], [1.0, 0.5, 0.25, 0.1]),
        f_piecewise([50, 100, 200], [1.0, 0.5, 0.25, 0.1]),
        # values are the running products of the scales: 1, 1*.5, 1*.5*.5, 1*.5*.5*.4
        lambda: optax.piecewise_constant_schedule(1.0, {50: 0.5, 100: 0.5, 200: 0.4})),
    "piecewise_constant_boundary_at_zero": (
        lambda: jopt.piecewise_constant([0, 1, 299], [3.0, 2.0, 1.0, 0.5]),
        f_piecewise([0, 1, 299], [3.0, 2.0, 1.0, 0.5]),
        lambda: optax.piecewise_constant_schedule(3.0, {0: 2 / 3, 1: 0.5, 299: 0.5})),
    "join_warmup_hold_cosine": (
        lambda: jopt.join(
            [jopt.linear(0.0, 1.0, 20), jopt.constant(1.0), jopt.cosine_decay(1.0, 100, 0.1)],
            [20, 100]),
        f_join([f_linear(0.0, 1.0, 20), f_constant(1.0), f_cosine(1.0, 100, 0.1)], [20, 100]),
        lambda: optax.join_schedules(
            [optax.linear_schedule(0.0, 1.0, 20), optax.constant_schedule(1.0),
             optax.cosine_decay_schedule(1.0, 100, 0.1)], [20, 100])),
    "join_of_exponentials_and_piecewise": (
        lambda: jopt.join(
            [jopt.exponential_decay(1.0, 10, 0.8, staircase=True),
             jopt.piecewise_constant([5, 60], [0.3, 0.2, 0.1])],
            [45]),
        f_join([f_exponential(1.0, 10, 0.8, staircase=True),
                f_piecewise([5, 60], [0.3, 0.2, 0.1])], [45]),
        lambda: optax.join_schedules(
            [optax.exponential_decay(1.0, 10, 0.8, staircase=True),
             optax.piecewise_constant_schedule(0.3, {5: 2 / 3, 60: 0.5})], [45])),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_closed_form(case):
    make, formula, _ = CASES[case]
    sched = make()
    counts = np.concatenate([STEPS, HUGE])
    want = np.array([formula(int(t)) for t in counts])
    got = _eval(sched, counts)
    assert_schedule_close(got, want, rtol=REF_RTOL, atol=REF_ATOL,
                          what=f"{case} (numbers as jit constants)")
    assert_schedule_close(_eval_as_argument(sched, counts), want, rtol=REF_RTOL,
                          atol=REF_ATOL, what=f"{case} (schedule as jit argument)")
    # Eager scalar calls (Python int, NumPy int, JAX int32) give the jitted values.
    for t in (0, 1, 99, 100, 101, 250):
        for c in (t, np.int32(t), jnp.int32(t)):
            v = sched(c)
            assert v.shape == () and v.dtype == jnp.float32, (case, v.shape, v.dtype)
            np.testing.assert_allclose(float(v), got[t], rtol=1e-6, atol=1e-7 * np.abs(want).max())


@pytest.mark.parametrize("case", sorted(c for c in CASES if CASES[c][2] is not None))
def test_matches_optax(case):
    # The two staircase cases with T in {41, 194} are left out: under jit optax 0.2.8 floors
    # x * (1/T) (XLA's rewrite of a division by a constant), which is 0.99999994 at x = T, so
    # its staircase drops one step late there; jopt must follow the closed form instead.
    make, _, make_optax = CASES[case]
    counts = np.concatenate([STEPS, HUGE[:2]])
    got = _eval(make(), counts)
    want = _eval_optax(make_optax(), counts)
    assert_schedule_close(got, want, rtol=OPTAX_RTOL, atol=OPTAX_ATOL, what=f"optax {case}")


def test_endpoints_exact():
    """Values the docs promise exactly at the boundaries (float32 of the given numbers)."""
    f32 = np.float32
    assert jopt.linear(0.1, 0.3, 10)(0) == f32(0.1)
    assert jopt.cosine_decay(0.3, 100, alpha=0.1)(0) == f32(0.3)
    assert jopt.warmup_cosine_decay(0.0, 0.3, 10, 100)(10) == f32(0.3)
    assert jopt.warmup_cosine_decay(0.0, 0.3, 10, 100, end_value=0.0)(100) == 0.0
    assert jopt.cosine_decay(0.3, 100, alpha=0.0)(100) == 0.0
    assert jopt.exponential_decay(0.3, 10, 0.5, transition_begin=20)(20) == f32(0.3)
    assert jopt.exponential_decay(0.3, 10, 0.5, end_value=0.01)(10**6) == f32(0.01)
    assert jopt.exponential_decay(0.3, 10, 2.0, end_value=5.0)(10**6) == f32(5.0)
    assert jopt.piecewise_constant([5], [0.3, 0.7])(4) == f32(0.3)
    assert jopt.piecewise_constant([5], [0.3, 0.7])(5) == f32(0.7)


# ---------------------------------------------------------------------------------------
# Pytree behaviour.


@pytest.mark.parametrize("case", sorted(CASES))
def test_is_pytree_of_arrays(case):
    sched = CASES[case][0]()
    leaves, treedef = jax.tree_util.tree_flatten(sched)
    assert leaves, case
    for leaf in leaves:
        assert isinstance(leaf, jax.Array), (case, type(leaf))
        assert leaf.dtype in (jnp.float32, jnp.int32), (case, leaf.dtype)
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert type(rebuilt) is type(sched)
    np.testing.assert_array_equal(_eval(rebuilt, STEPS), _eval(sched, STEPS))
    # Paths name the fields, for checkpoints and get_hyperparams.
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(sched)[0]]
    assert all(p.startswith(".") for p in paths), paths


def test_jit_takes_schedule_as_argument_without_recompiling():
    traces = []

    @jax.jit
    def f(sched, count):
        traces.append(1)
        return sched(count)

    a = jopt.warmup_cosine_decay(0.0, 1e-2, 10, 100)
    b = jopt.warmup_cosine_decay(0.5, 3e-2, 20, 300, end_value=1e-3, exponent=2.0)
    for t in (0, 5, 10, 50, 150):
        np.testing.assert_allclose(float(f(a, t)), f_warmup_cosine(0.0, 1e-2, 10, 100)(t),
                                   rtol=REF_RTOL, atol=REF_ATOL * 1e-2)
        np.testing.assert_allclose(float(f(b, t)),
                                   f_warmup_cosine(0.5, 3e-2, 20, 300, 1e-3, 2.0)(t),
                                   rtol=REF_RTOL, atol=REF_ATOL * 0.5)
    assert len(traces) == 1


def test_tree_map_changes_numbers():
    """Schedules behave as data: scaling the float leaves scales the schedule."""
    s = jopt.linear(1.0, 0.2, 40)
    doubled = jopt.linear(2.0, 0.4, 40)
    scaled = jax.tree_util.tree_map_with_path(
        lambda p, x: x * 2 if jax.tree_util.keystr(p) in (".init_value", ".end_value") else x, s
    )
    np.testing.assert_array_equal(_eval(scaled, STEPS), _eval(doubled, STEPS))


# Families of same-structure schedules with different numbers, for vmap.
FAMILIES = {
    "linear": [jopt.linear(v, v / 10, 50 + 10 * i, transition_begin=5 * i)
               for i, v in enumerate([1.0, 0.5, 3.0])],
    "cosine": [jopt.cosine_decay(v, 60 + 20 * i, alpha=0.1 * i, exponent=1.0 + i)
               for i, v in enumerate([1.0, 0.5, 3.0])],
    "warmup_cosine": [jopt.warmup_cosine_decay(0.0, p, 5 + i, 100 + 50 * i, end_value=p / 100)
                      for i, p in enumerate([1e-3, 1e-2, 1e-1])],
    "exponential": [jopt.exponential_decay(v, 10 + i, 0.5 + 0.1 * i, transition_begin=3 * i,
                                           end_value=v / 50)
                    for i, v in enumerate([1.0, 0.5, 3.0])],
    "piecewise": [jopt.piecewise_constant([10 + i, 50 + 2 * i], [v, v / 2, v / 4])
                  for i, v in enumerate([1.0, 0.5, 3.0])],
    "join": [jopt.join([jopt.linear(0.0, v, 10 + i), jopt.cosine_decay(v, 100)], [10 + i])
             for i, v in enumerate([1.0, 0.5, 3.0])],
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_vmap_over_stacked_schedules(family):
    members = FAMILIES[family]
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *members)
    counts = jnp.asarray(STEPS, jnp.int32)
    got = jax.jit(jax.vmap(jax.vmap(lambda s, c: s(c), in_axes=(None, 0)), in_axes=(0, None)))(
        stacked, counts
    )
    assert got.shape == (len(members), STEPS.size)
    for i, m in enumerate(members):
        # Same formula in float32, but XLA folds the solo schedule's numbers as constants
        # (pow(c, 1.0) becomes c) while the batched one computes them: so the float32 budget
        # of the closed-form comparison, not bit equality.
        assert_schedule_close(np.asarray(got[i]), _eval(m, STEPS), rtol=REF_RTOL,
                              atol=REF_ATOL, what=f"{family} member {i}")


def test_schedule_built_under_vmap():
    peaks = jnp.asarray([1e-3, 1e-2, 1e-1], jnp.float32)
    batched = jax.vmap(lambda p: jopt.warmup_cosine_decay(0.0, p, 10, 100, end_value=0.0))(peaks)
    for leaf in jax.tree_util.tree_leaves(batched):
        assert leaf.shape in ((), (3,)), leaf.shape
    counts = jnp.asarray(STEPS, jnp.int32)
    got = jax.jit(jax.vmap(lambda s: jax.vmap(s)(counts)))(batched)
    for i, p in enumerate([1e-3, 1e-2, 1e-1]):
        want = [f_warmup_cosine(0.0, float(np.float32(p)), 10, 100)(int(t)) for t in STEPS]
        assert_schedule_close(np.asarray(got[i]), want, rtol=REF_RTOL, atol=REF_ATOL,
                              what=f"vmap-built member {i}")


def test_population_of_learning_rates_in_optimizer():
    """A vmapped state with batched schedules gives each member its own learning rate."""
    peaks = [1e-3, 1e-2, 1e-1]
    members = [jopt.warmup_cosine_decay(0.0, p, 5, 50) for p in peaks]
    params = {"w": jnp.ones((3,), jnp.float32)}
    grads = {"w": jnp.asarray([1.0, -2.0, 0.5], jnp.float32)}

    def run(sched):
        tx = jopt.scale_by_learning_rate(sched)
        state = tx.init(params)

        def body(s, _):
            u, s = tx.update(grads, s, params)
            return s, u["w"]

        return jax.lax.scan(body, state, None, length=60)[1]

    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *members)
    got = np.asarray(jax.jit(jax.vmap(run))(stacked))
    for i, p in enumerate(peaks):
        solo = np.asarray(jax.jit(run)(members[i]))
        assert_schedule_close(got[i].ravel(), solo.ravel(), rtol=REF_RTOL, atol=REF_ATOL,
                              what=f"member {i} against its solo run")
        want = np.array([[-f_warmup_cosine(0.0, p, 5, 50)(t) * g for g in (1.0, -2.0, 0.5)]
                         for t in range(60)])
        assert_schedule_close(got[i].ravel(), want.ravel(), rtol=REF_RTOL, atol=REF_ATOL,
                              what=f"member {i}")


# ---------------------------------------------------------------------------------------
# repr.

REPRS = {
    "constant": (lambda: jopt.constant(0.3), ["constant(", "value=0.3"]),
    "linear": (lambda: jopt.linear(1.0, 0.1, 100, transition_begin=5),
               ["linear(", "init_value=1", "end_value=0.1", "transition_steps=100",
                "transition_begin=5"]),
    "cosine": (lambda: jopt.cosine_decay(0.01, 200, alpha=0.1, exponent=2.0),
               ["cosine_decay(", "init_value=0.01", "decay_steps=200", "alpha=0.1",
                "exponent=2"]),
    "warmup_cosine": (lambda: jopt.warmup_cosine_decay(0.0, 3e-4, 10, 1000, end_value=1e-5),
                      ["warmup_cosine_decay(", "peak_value=0.0003", "warmup_steps=10",
                       "decay_steps=1000", "end_value=1e-05"]),
    "exponential": (lambda: jopt.exponential_decay(1.0, 20, 0.5, transition_begin=3,
                                                   staircase=True, end_value=0.05),
                    ["exponential_decay(", "decay_rate=0.5", "transition_begin=3",
                     "staircase=True", "end_value=0.05"]),
    "exponential_no_end": (lambda: jopt.exponential_decay(1.0, 20, 0.5),
                           ["exponential_decay(", "end_value=None", "staircase=False"]),
    "piecewise": (lambda: jopt.piecewise_constant([10, 20], [1.0, 0.5, 0.1]),
                  ["piecewise_constant(", "10, 20", "1, 0.5, 0.1"]),
    "join": (lambda: jopt.join([jopt.constant(0.1), jopt.linear(0.1, 0.0, 10)], [5]),
             ["join(", "constant(value=0.1)", "linear(", "boundaries=[5]"]),
}


@pytest.mark.parametrize("case", sorted(REPRS))
def test_repr_is_readable(case):
    make, parts = REPRS[case]
    r = repr(make())
    for part in parts:
        assert part in r, (r, part)
    for noise in ("Array(", "dtype", "0.0999999", "0.100000", "0.30000001", "<"):
        assert noise not in r, (r, noise)


def test_repr_of_callable_in_join_names_it():
    def my_schedule(count):
        return jnp.asarray(count).astype(jnp.float32) * 0.0

    r = repr(jopt.join([jopt.constant(1.0), my_schedule], [5]))
    assert "my_schedule" in r, r


# ---------------------------------------------------------------------------------------
# Validation.

nan, inf = float("nan"), float("inf")

BAD = [
    # (factory, argument name expected in the message)
    (lambda: jopt.linear(1.0, 0.0, 0), "transition_steps"),
    (lambda: jopt.linear(1.0, 0.0, -10), "transition_steps"),
    (lambda: jopt.linear(1.0, 0.0, 2.5), "transition_steps"),
    (lambda: jopt.linear(1.0, 0.0, 10, transition_begin=-1), "transition_begin"),
    (lambda: jopt.linear(inf, 0.0, 10), "init_value"),
    (lambda: jopt.linear(1.0, nan, 10), "end_value"),
    (lambda: jopt.exponential_decay(1.0, 0, 0.5), "transition_steps"),
    (lambda: jopt.exponential_decay(1.0, -3, 0.5), "transition_steps"),
    (lambda: jopt.exponential_decay(1.0, 10, 0.0), "decay_rate"),
    (lambda: jopt.exponential_decay(1.0, 10, nan), "decay_rate"),
    (lambda: jopt.exponential_decay(1.0, 10, 0.5, end_value=inf), "end_value"),
    (lambda: jopt.exponential_decay(1.0, 10, 0.5, transition_begin=-5), "transition_begin"),
    (lambda: jopt.exponential_decay(nan, 10, 0.5), "init_value"),
    (lambda: jopt.cosine_decay(1.0, 0), "decay_steps"),
    (lambda: jopt.cosine_decay(1.0, -100), "decay_steps"),
    (lambda: jopt.cosine_decay(1.0, 100, alpha=-0.1), "alpha"),
    (lambda: jopt.cosine_decay(1.0, 100, alpha=1.5), "alpha"),
    (lambda: jopt.cosine_decay(1.0, 100, alpha=nan), "alpha"),
    (lambda: jopt.cosine_decay(1.0, 100, exponent=0.0), "exponent"),
    (lambda: jopt.cosine_decay(inf, 100), "init_value"),
    (lambda: jopt.warmup_cosine_decay(0.0, 1.0, 10, 5), "decay_steps"),
    (lambda: jopt.warmup_cosine_decay(0.0, 1.0, -1, 5), "warmup_steps"),
    (lambda: jopt.warmup_cosine_decay(0.0, nan, 10, 100), "peak_value"),
    (lambda: jopt.warmup_cosine_decay(0.0, 1.0, 10, 100, end_value=inf), "end_value"),
    (lambda: jopt.constant(nan), "value"),
    (lambda: jopt.constant(inf), "value"),
    (lambda: jopt.piecewise_constant([10, 10], [1.0, 2.0, 3.0]), "boundaries"),
    (lambda: jopt.piecewise_constant([20, 10], [1.0, 2.0, 3.0]), "boundaries"),
    (lambda: jopt.piecewise_constant([-1, 10], [1.0, 2.0, 3.0]), "boundaries"),
    (lambda: jopt.piecewise_constant([10, 20], [1.0, 2.0]), "values"),
    (lambda: jopt.piecewise_constant([10, 20], [1.0, 2.0, 3.0, 4.0]), "values"),
    (lambda: jopt.piecewise_constant([10], [1.0, nan]), "values"),
    (lambda: jopt.piecewise_constant([10], [inf, 1.0]), "values"),
    (lambda: jopt.join([jopt.constant(1.0)] * 3, [10, 5]), "boundaries"),
    (lambda: jopt.join([jopt.constant(1.0)] * 2, [10, 20]), "schedules"),
    (lambda: jopt.join([jopt.constant(1.0), 0.5], [10]), "schedules"),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_invalid_arguments_raise(i):
    make, arg = BAD[i]
    with pytest.raises(InvalidHyperparameterError) as info:
        make()
    assert arg in str(info.value), (arg, str(info.value))
    assert info.value.name == arg
    assert isinstance(info.value, ValueError)


def test_make_schedule_builds_by_name():
    a = jopt.make_schedule("warmup_cosine_decay", init_value=0.0, peak_value=1e-2,
                           warmup_steps=10, decay_steps=100, end_value=1e-4)
    b = jopt.warmup_cosine_decay(0.0, 1e-2, 10, 100, end_value=1e-4)
    np.testing.assert_array_equal(_eval(a, STEPS), _eval(b, STEPS))
    c = jopt.make_schedule("piecewise_constant", boundaries=[10], values=[1.0, 0.1])
    assert float(c(10)) == np.float32(0.1)


def test_make_schedule_unknown_name_lists_valid_names():
    with pytest.raises(InvalidHyperparameterError) as info:
        jopt.make_schedule("cosine", init_value=1.0, decay_steps=10)
    msg = str(info.value)
    assert "cosine" in msg
    for name in ("constant", "linear", "cosine_decay", "warmup_cosine_decay",
                 "exponential_decay", "piecewise_constant", "join"):
        assert name in msg, (name, msg)


def test_make_schedule_unknown_argument_lists_valid_arguments():
    with pytest.raises(InvalidHyperparameterError) as info:
        jopt.make_schedule("linear", init_value=1.0, end_value=0.0, transition_steps=10,
                           warmup=3)
    msg = str(info.value)
    assert "warmup" in msg
    for arg in ("init_value", "end_value", "transition_steps", "transition_begin"):
        assert arg in msg, (arg, msg)


def test_make_schedule_bad_value_still_validated():
    with pytest.raises(InvalidHyperparameterError, match="alpha"):
        jopt.make_schedule("cosine_decay", init_value=1.0, decay_steps=10, alpha=2.0)


# ---------------------------------------------------------------------------------------
# Plain callables as learning rates.


def _lr_updates(learning_rate, n=300):
    tx = jopt.scale_by_learning_rate(learning_rate)
    params = {"w": jnp.zeros((4,), jnp.float32)}
    g = {"w": jnp.asarray([1.0, -0.5, 2.0, 3e-3], jnp.float32)}

    @jax.jit
    def run():
        def body(s, _):
            u, s = tx.update(g, s, params)
            return s, u["w"]

        return jax.lax.scan(body, tx.init(params), None, length=n)[1]

    return np.asarray(run(), np.float64)


def test_optax_schedule_as_learning_rate_matches_jopt_schedule():
    jopt_u = _lr_updates(jopt.warmup_cosine_decay(0.0, 1e-2, 10, 250, end_value=1e-4))
    # The optax schedule is traced inside jopt's update: standard promotion for optax.
    with jax.numpy_dtype_promotion("standard"):
        optax_u = _lr_updates(
            optax.warmup_cosine_decay_schedule(0.0, 1e-2, 10, 250, end_value=1e-4))
    assert_schedule_close(jopt_u.ravel(), optax_u.ravel(), rtol=OPTAX_RTOL, atol=OPTAX_ATOL,
                          what="optax schedule as learning rate")
    want = np.array([[-f_warmup_cosine(0.0, 1e-2, 10, 250, 1e-4)(t) * g
                      for g in (1.0, -0.5, 2.0, 3e-3)] for t in range(300)])
    assert_schedule_close(jopt_u.ravel(), want.ravel(), rtol=REF_RTOL, atol=REF_ATOL,
                          what="jopt schedule as learning rate")


def test_plain_python_callable_as_learning_rate():
    def lr(count):
        return 0.1 * jnp.exp(-0.01 * count.astype(jnp.float32))

    got = _lr_updates(lr, n=150)
    want = np.array([[-0.1 * math.exp(-0.01 * t) * g for g in (1.0, -0.5, 2.0, 3e-3)]
                     for t in range(150)])
    assert_schedule_close(got.ravel(), want.ravel(), rtol=REF_RTOL, atol=REF_ATOL,
                          what="python callable")


def test_join_accepts_plain_callables():
    def half(count):
        return jnp.asarray(0.5, jnp.float32) + 0.0 * count.astype(jnp.float32)

    s = jopt.join([jopt.linear(0.0, 1.0, 10), half], [10])
    got = _eval(s, STEPS[:40])
    want = [f_join([f_linear(0.0, 1.0, 10), f_constant(0.5)], [10])(int(t)) for t in STEPS[:40]]
    assert_schedule_close(got, want, rtol=REF_RTOL, atol=REF_ATOL, what="join with callable")


# ---------------------------------------------------------------------------------------
# Properties (hypothesis).

_WCD_EVAL = jax.jit(lambda s, c: jax.vmap(s)(c))
# Values that are float32 normal numbers (or 0): XLA on CPU flushes float32 subnormals to 0.
_value = st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False).filter(
    lambda x: x == 0.0 or abs(x) > 1e-30)
_TINY = 4 * float(np.finfo(np.float32).tiny)  # intermediate results may flush to zero


@settings(max_examples=30, deadline=None)
@given(
    init=_value, peak=_value, end=_value,
    warmup=st.integers(0, 100), extra=st.integers(1, 200),
    exponent=st.floats(0.1, 4.0, allow_nan=False),
)
def test_warmup_cosine_stays_within_its_endpoints(init, peak, end, warmup, extra, exponent):
    decay = warmup + extra
    s = jopt.warmup_cosine_decay(init, peak, warmup, decay, end_value=end, exponent=exponent)
    counts = jnp.arange(0, decay + 30, dtype=jnp.int32)
    v = np.asarray(_WCD_EVAL(s, counts), np.float64)
    ends = np.float32([init, peak, end]).astype(np.float64)
    # float32 storage and a few float32 operations: a few ulps of the largest endpoint.
    tol = 1e-6 * np.abs(ends).max() + _TINY
    assert np.all(np.isfinite(v))
    assert v.min() >= ends.min() - tol and v.max() <= ends.max() + tol, (v.min(), v.max(), ends)
    # Reaches its endpoints where it promises to.
    assert abs(v[0] - ends[0 if warmup > 0 else 1]) <= tol
    assert abs(v[decay] - ends[2]) <= tol and abs(v[-1] - ends[2]) <= tol


@settings(max_examples=30, deadline=None)
@given(
    init=_value, end=_value, steps=st.integers(1, 300), begin=st.integers(0, 100),
)
def test_linear_is_monotone(init, end, steps, begin):
    s = jopt.linear(init, end, steps, transition_begin=begin)
    v = np.asarray(_WCD_EVAL(s, jnp.arange(0, begin + steps + 20, dtype=jnp.int32)))
    d = np.diff(v)
    if end >= init:
        assert np.all(d >= 0), d.min()
    else:
        assert np.all(d <= 0), d.max()
    assert v[0] == np.float32(init)
    tol = 1e-6 * max(abs(init), abs(end)) + _TINY
    assert abs(float(v[-1]) - float(np.float32(end))) <= tol


# ---------------------------------------------------------------------------------------------
# Counts: exact past 2**24 steps, any integer or float dtype; warm-up-only and repeated
# boundaries.


@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
def test_schedules_are_exact_past_2_24_steps(jitted):
    # The count was converted to float32 before transition_begin was subtracted: past 2**24
    # steps linear(0, 1, 10, transition_begin=20_000_001) gave 0.2, 0.4, 0.4, 0.4, 0.6.
    begin = 20_000_001
    sched = jopt.linear(0.0, 1.0, 10, transition_begin=begin)
    ref = optax.linear_schedule(0.0, 1.0, 10, transition_begin=begin)
    call = jax.jit(sched) if jitted else sched
    counts = jnp.arange(begin + 1, begin + 6, dtype=jnp.int32)
    got = [float(call(c)) for c in counts]
    np.testing.assert_allclose(got, [0.1, 0.2, 0.3, 0.4, 0.5], rtol=1e-6)
    with jax.numpy_dtype_promotion("standard"):
        np.testing.assert_allclose(got, [float(ref(c)) for c in counts], rtol=1e-6)
    late = jopt.exponential_decay(1.0, 2, 0.5, transition_begin=30_000_001, staircase=True)
    assert [float(late(30_000_001 + k)) for k in (0, 1, 2, 3, 4)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    warm = jopt.warmup_cosine_decay(0.0, 1.0, 20_000_003, 20_000_013)
    np.testing.assert_allclose(float(warm(20_000_002)), 1 - 1 / 20_000_003, rtol=1e-6)
    assert float(warm(20_000_003)) == 1.0 and float(warm(20_000_013)) == 0.0


@pytest.mark.parametrize("dtype", [jnp.uint32, jnp.int16, jnp.uint8, jnp.float32, jnp.int32],
                         ids=lambda d: jnp.dtype(d).name)
def test_counts_of_any_dtype(dtype):
    # piecewise_constant and join raised a raw TypePromotionError for uint32, int16 or float
    # counts under strict promotion.
    schedules = [
        jopt.piecewise_constant([3, 7], [1.0, 0.5, 0.25]),
        jopt.join([jopt.constant(1.0), jopt.linear(1.0, 0.0, 4)], [5]),
        jopt.linear(0.0, 1.0, 10, transition_begin=2),
        jopt.warmup_cosine_decay(0.0, 1.0, 3, 12),
        jopt.exponential_decay(1.0, 4, 0.5, transition_begin=1, staircase=True),
        jopt.cosine_decay(1.0, 9),
    ]
    for s in schedules:
        for t in (0, 1, 3, 5, 7, 9, 11):
            want = float(s(jnp.int32(t)))
            assert float(s(jnp.asarray(t, dtype))) == want, (s, t)
            assert float(jax.jit(s)(jnp.asarray(t, dtype))) == pytest.approx(want, rel=1e-6)


def test_warmup_only_schedule():
    # warmup_steps == decay_steps (a debugging run with warm-up only) was refused; it is a
    # valid schedule: the ramp, then end_value, never 0/0.
    s = jopt.warmup_cosine_decay(0.0, 1.0, warmup_steps=10, decay_steps=10, end_value=0.25)
    values = [float(s(t)) for t in range(0, 15)]
    assert all(np.isfinite(values))
    np.testing.assert_allclose(values[:10], [t / 10 for t in range(10)], rtol=1e-6)
    assert values[10:] == [0.25] * 5
    assert float(jax.jit(s)(jnp.int32(10))) == 0.25
    zero = jopt.warmup_cosine_decay(0.0, 0.0, 5, 5, end_value=0.1)
    assert float(zero(5)) == pytest.approx(0.1)


def test_join_with_repeated_boundaries():
    # Repeated boundaries make empty pieces (never used), as torch's SequentialLR allows: the
    # last piece whose boundary is <= the step is active and sees the step minus it.
    never = jopt.constant(123.0)
    s = jopt.join([jopt.linear(0.0, 1.0, 5), never, jopt.linear(1.0, 0.0, 10)], [5, 5])
    values = [float(s(t)) for t in range(0, 16)]
    np.testing.assert_allclose(values[:5], [0.0, 0.2, 0.4, 0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(values[5:], [1 - k / 10 for k in range(11)], rtol=1e-6)
    assert 123.0 not in values
    with pytest.raises(InvalidHyperparameterError, match="non-decreasing"):
        jopt.join([never] * 3, [5, 4])
