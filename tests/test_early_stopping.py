"""Early stopping: scripted metric sequences with the exact stop step, derived by hand in each
test, run eagerly, under jit, under vmap (per-member options) and inside lax loops."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tree_equal

import jopt
from jopt import Status

NAN = float("nan")
INF = float("inf")


def run(es, metrics, mode="eager"):
    """Feeds the metrics one by one; returns (statuses, final state)."""
    state = es.init()
    update = jax.jit(es.update) if mode == "jit" else es.update
    statuses = []
    for m in metrics:
        state = update(state, jnp.float32(m))
        statuses.append(int(state.status))
    return statuses, state


def first_stop(statuses):
    """0-based index of the call on which the run stopped, or None."""
    for i, s in enumerate(statuses):
        if s >= Status.STOPPED_PATIENCE:
            return i
    return None


CASES = [
    # id, kwargs, metrics, expected stop index (derived in the comment), expected reason
    (
        # min, patience 2: 1.0 (improve, best), 0.9 (improve), 0.95 (wait 1), 0.91 (wait 2 -> stop).
        "patience_min", dict(mode="min", patience=2), [1.0, 0.9, 0.95, 0.91, 0.5], 3,
        "patience exhausted",
    ),
    (
        # patience 0 (Keras default): stop on the first non-improving call (index 2).
        "patience_zero", dict(patience=0), [3.0, 2.0, 2.0, 1.0], 2, "patience exhausted",
    ),
    (
        # patience 1 behaves like 0: wait reaches 1 on the first non-improving call.
        "patience_one", dict(patience=1), [3.0, 2.0, 2.5, 1.0], 2, "patience exhausted",
    ),
    (
        # Improvements reset the wait: index 0 best, waits (indices 1..6) 1, 2, 0 (4.0 improves),
        # 1, 2, 3 -> stop at index 6 with patience 3.
        "reset_wait", dict(patience=3), [5.0, 6.0, 6.0, 4.0, 4.5, 4.5, 4.1, 4.2], 6,
        "patience exhausted",
    ),
    (
        # max mode: 0.5, 0.6 improve; 0.6 equal is not an improvement (strict); 0.55 wait 2 stop.
        "mode_max", dict(mode="max", patience=2), [0.5, 0.6, 0.6, 0.55, 0.9], 3,
        "patience exhausted",
    ),
    (
        # abs min_delta 0.1: 1.0 best; 0.95 not < 0.9 (wait 1); 0.89 < 0.9 improves; 0.8 not <
        # 0.79 (wait 1); 0.7 < 0.79 improves; 0.65 (wait 1) 0.61 (wait 2 -> stop, patience 2).
        "min_delta_abs", dict(min_delta=0.1, patience=2), [1.0, 0.95, 0.89, 0.8, 0.7, 0.65, 0.61],
        6, "patience exhausted",
    ),
    (
        # rel min_delta 0.1 with NEGATIVE metrics (mode min): best -10, margin 1 -> need < -11.
        # -10.5 no (wait 1), -11.5 yes (best -11.5, margin 1.15 -> need < -12.65), -12.6 no
        # (wait 1), -12.7 yes, then -12.8, -12.9 no (need < -13.97): waits 1, 2 -> stop index 6.
        "min_delta_rel_negative", dict(min_delta=0.1, min_delta_mode="rel", patience=2),
        [-10.0, -10.5, -11.5, -12.6, -12.7, -12.8, -12.9], 6, "patience exhausted",
    ),
    (
        # rel in max mode with negative metrics: best -10, need > -10 + 1 = -9.
        # -9.5 no (wait 1), -8.9 yes (best -8.9, need > -8.01), -8.5 no (1), -8.2 no (2) stop.
        "min_delta_rel_max_negative",
        dict(mode="max", min_delta=0.1, min_delta_mode="rel", patience=2),
        [-10.0, -9.5, -8.9, -8.5, -8.2], 4, "patience exhausted",
    ),
    (
        # NaN as the very first metric: never an improvement, stops at once.
        "nan_first", dict(patience=5), [NAN, 1.0], 0, "non-finite metric",
    ),
    (
        # +inf later stops at once regardless of patience.
        "inf_later", dict(patience=5), [1.0, 0.9, INF, 0.1], 2, "non-finite metric",
    ),
    (
        # -inf in mode min would "improve" forever: it is non-finite, so it stops.
        "neg_inf_min", dict(patience=5), [1.0, -INF], 1, "non-finite metric",
    ),
    (
        # Never stops: strictly improving.
        "never", dict(patience=1), [5.0, 4.0, 3.0, 2.0], None, "running",
    ),
]


@pytest.mark.parametrize("mode", ["eager", "jit"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_scripted_sequences(case, mode):
    _, kwargs, metrics, stop_at, reason = case
    es = jopt.early_stopping(**kwargs)
    statuses, state = run(es, metrics, mode)
    assert first_stop(statuses) == stop_at
    assert jopt.stop_reason(state).startswith(reason)
    assert jopt.should_stop(state) == (stop_at is not None)
    if stop_at is not None:
        # Frozen after the stop: later metrics change nothing; step counts calls up to the stop.
        assert all(s == statuses[stop_at] for s in statuses[stop_at:])
        assert int(state.step) == stop_at + 1


def test_best_value_and_step_recorded():
    es = jopt.early_stopping(patience=3)
    _, state = run(es, [3.0, 2.0, 2.5, 1.5, 1.7, 1.6, 1.55, 9.0])
    assert float(state.best_value) == 1.5 and int(state.best_step) == 3
    assert int(state.step) == 7  # stopped on index 6 (third non-improving call after index 3)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_lax_scan_matches_eager(case):
    _, kwargs, metrics, stop_at, _ = case
    es = jopt.early_stopping(**kwargs)

    def body(state, m):
        state = es.update(state, m)
        return state, state.status

    _, statuses = jax.lax.scan(body, es.init(), jnp.asarray(metrics, jnp.float32))
    assert first_stop([int(s) for s in statuses]) == stop_at


def test_vmap_population_with_per_member_options():
    # Four members, the same metric stream, different patience and min_delta as data.
    metrics = jnp.asarray([1.0, 0.95, 0.94, 0.93, 0.92, 0.91, 0.9, 0.89], jnp.float32)
    es = jopt.early_stopping(patience=1)
    patience = jnp.asarray([0, 2, 3, 2], jnp.int32)
    min_delta = jnp.asarray([0.0, 0.0, 0.02, 0.02], jnp.float32)

    def init(p, d):
        return jopt.set_hyperparams(es.init(), patience=p, min_delta=d)

    states = jax.vmap(init)(patience, min_delta)
    step = jax.jit(jax.vmap(es.update, in_axes=(0, None)))
    history = []
    for m in metrics:
        states = step(states, m)
        history.append(np.asarray(states.status))
    history = np.stack(history)
    stops = [first_stop(list(history[:, i])) for i in range(4)]
    # Members 0, 1: min_delta 0 -> every call improves -> never stop.
    # Members 2, 3: min_delta 0.02 -> best 1.0; 0.95 improves (< 0.98), best 0.95 needs < 0.93:
    # 0.94 no (wait 1), 0.93 no (0.93 < 0.93 false, wait 2), 0.92 yes (best 0.92, need < 0.90)
    # 0.91 no (1), 0.9 no (2), 0.89 yes. patience 3 -> never reaches 3; patience 2 -> stops at
    # index 3 (second non-improving call).
    assert stops == [None, None, None, 3]
    assert jopt.stop_reason(states)[3] == "patience exhausted"
    assert list(jopt.should_stop(states)) == [False, False, False, True]


def test_while_loop_training_stops_where_python_loop_does():
    # Gradient descent on a quadratic with a validation metric that starts rising (noise floor),
    # the whole loop inside lax.while_loop; compare with the Python loop.
    es = jopt.early_stopping(patience=3, min_delta=1e-4)
    tx = jopt.sgd(0.1)
    target = jnp.asarray([1.0, -2.0, 0.5], jnp.float32)

    def val(p, k):
        # Validation loss: distance to target plus a drift that grows with the step, so it has
        # a minimum and then plateaus/increases.
        return jnp.sum((p - target) ** 2) + 0.01 * k.astype(jnp.float32)

    def one_step(p, s, k):
        g = 2 * (p - target)
        u, s = tx.update(g, s)
        return p + u, s, val(p + u, k)

    def cond(c):
        return ~c[2].stopped & (c[3] < 1000)

    def body(c):
        p, s, e, k = c
        p, s, v = one_step(p, s, k)
        return p, s, es.update(e, v, None), k + 1

    p0 = jnp.zeros(3, jnp.float32)
    out = jax.jit(lambda: jax.lax.while_loop(cond, body, (p0, tx.init(p0), es.init(), jnp.int32(0))))()
    k_loop = int(out[3])

    p, s, e = p0, tx.init(p0), es.init()
    k = 0
    while True:
        p, s, v = one_step(p, s, jnp.int32(k))
        e = es.update(e, v)
        k += 1
        if jopt.should_stop(e):
            break
    assert k_loop == k and 5 < k < 1000
    assert jopt.stop_reason(out[2]) == "patience exhausted"


def test_keep_best_restores_best_params():
    es = jopt.early_stopping(patience=2, keep_best=True, best_dtype=jnp.bfloat16)
    params = {"w": jnp.zeros(3, jnp.float32)}
    state = es.init(params)
    assert state.best_params["w"].dtype == jnp.bfloat16
    update = jax.jit(es.update)
    for i, m in enumerate([3.0, 2.0, 2.5, 2.2, 1.0]):
        state = update(state, m, {"w": jnp.full(3, float(i), jnp.float32)})
    # Best was index 1 (metric 2.0), stop at index 3.
    assert int(state.best_step) == 1
    assert tree_equal(jopt.best_params(state), {"w": jnp.full(3, 1.0, jnp.bfloat16)})


def test_state_is_arrays_and_structure_stable():
    es = jopt.early_stopping(patience=2, keep_best=True)
    params = {"w": jnp.zeros(3)}
    s0 = es.init(params)
    s1 = jax.jit(es.update)(s0, 1.0, params)
    assert jax.tree_util.tree_structure(s0) == jax.tree_util.tree_structure(s1)
    for a, b in zip(jax.tree_util.tree_leaves(s0), jax.tree_util.tree_leaves(s1)):
        assert isinstance(a, jax.Array) and a.shape == b.shape and a.dtype == b.dtype


def test_integer_metric_and_config_repr_equality():
    es = jopt.early_stopping(mode="max", patience=1)
    statuses, _ = run(es, [1, 2, 2])
    assert first_stop(statuses) == 2
    assert es == jopt.early_stopping(mode="max", patience=1)
    assert hash(es) == hash(jopt.early_stopping(mode="max", patience=1))
    assert "patience=1" in repr(es)
    assert Status.STOPPED_NON_FINITE.message == "non-finite metric"
    assert math.isinf(float(es.init().best_value))


def test_best_copy_is_a_real_copy_so_buffers_can_be_donated():
    params = {"w": jnp.ones(4)}
    es = jopt.early_stopping(patience=2, keep_best=True)
    state = es.init(params)
    assert state.best_params["w"] is not params["w"]
    tx = jopt.chain(jopt.sgd(0.1), jopt.reduce_on_plateau(restore_best=True))
    opt_state = tx.init(params)
    assert opt_state[1].best_params["w"] is not params["w"]

    def step(p, s, e):
        u, s = tx.update(p, s, p, value=jnp.sum(p["w"]))
        p = jopt.apply_updates(p, u)
        return p, s, es.update(e, jnp.sum(p["w"]), p)

    donated = jax.jit(step, donate_argnums=(0, 1, 2))
    p, s, e = donated(params, opt_state, state)
    p, s, e = donated(p, s, e)
    assert int(e.step) == 2


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_infinite_thresholds_and_baseline_are_off_whatever_their_sign(sign):
    es = jopt.early_stopping(patience=5, stopping_threshold=0.1, divergence_threshold=10.0,
                             baseline=0.5)
    state = jopt.set_hyperparams(es.init(), stopping_threshold=sign * INF,
                                 divergence_threshold=sign * INF, baseline=sign * INF)
    for m in (1.0, 0.05, 50.0):
        state = es.update(state, m)
    # 1.0 improves (no baseline), 0.05 improves (no goal), 50.0 does not (no divergence).
    assert not jopt.should_stop(state)
    assert float(state.best_value) == np.float32(0.05) and int(state.best_step) == 1


def test_scalar_set_on_a_population_state_applies_to_every_member():
    es = jopt.early_stopping(patience=1)
    pop = jax.vmap(lambda p: jopt.set_hyperparams(es.init(), patience=p))(jnp.asarray([1, 2, 3]))
    pop = jopt.set_hyperparams(pop, patience=4, min_delta=0.5)
    assert pop.hyperparams["patience"].shape == (3,)
    assert [int(x) for x in pop.hyperparams["patience"]] == [4, 4, 4]
    pop = jax.vmap(es.update, in_axes=(0, None))(pop, jnp.float32(1.0))
    assert jopt.stop_reason(pop)[0].startswith("running")


def test_population_helpers_reject_wrong_inputs():
    es = jopt.early_stopping()
    pop = jax.vmap(lambda _: es.init())(jnp.arange(3))
    with pytest.raises(jopt.errors.TreeMismatchError, match=r"gate_stopped: a leaf does not have the population axes"):
        jopt.gate_stopped(pop, {"a": jnp.ones((4, 2))}, {"a": jnp.zeros((4, 2))})
    with pytest.raises(jopt.errors.TreeMismatchError, match="gate_stopped: the first argument"):
        jopt.gate_stopped(None, {"a": jnp.ones(3)}, {"a": jnp.zeros(3)})
    with pytest.raises(jopt.errors.TreeMismatchError, match="should_stop: is a host-side helper .*state.stopped"):
        jax.jit(lambda s: jnp.asarray(jopt.should_stop(s)))(es.init())
    with pytest.raises(jopt.errors.InvalidHyperparameterError, match="best_params"):
        jopt.best_params(None)


def test_float64_options_under_x64_and_strict_promotion():
    with jax.enable_x64(True):
        es = jopt.early_stopping(stopping_threshold=np.float64(0.5), baseline=np.float64(2.0))
        state = es.update(es.init(), np.float64(0.4))
        assert jopt.stop_reason(state) == "goal reached (stopping_threshold)"
        tx = jopt.reduce_on_plateau(factor=np.float64(0.5), min_scale=np.float64(0.1), patience=0)
        s = tx.init({"w": jnp.ones(2)})
        for v in (1.0, 2.0):
            _, s = tx.update({"w": jnp.ones(2)}, s, value=v)
        assert s.scale.dtype == jnp.float32 and float(s.scale) == 0.5
