"""Hyperparameters are data: get/set through the state, schedules evaluated at the step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import make_params, tree_signature

import jopt


def test_get_hyperparams_names_and_current_schedule_value():
    sched = jopt.warmup_cosine_decay(0.0, 1e-2, warmup_steps=10, decay_steps=100)
    tx = jopt.chain(jopt.clip_by_global_norm(1.0), jopt.adamw(sched, weight_decay=1e-2))
    params = make_params()
    state = tx.init(params)
    hp = jopt.get_hyperparams(state)
    assert set(hp) == {"max_norm", "b1", "b2", "eps", "eps_root", "weight_decay", "learning_rate"}
    assert all(v.dtype == jnp.float32 for v in hp.values())
    assert float(hp["learning_rate"]) == 0.0
    step = jax.jit(tx.update)
    g = jax.tree_util.tree_map(jnp.ones_like, params)
    for k in range(1, 16):
        _, state = step(g, state, params)
        # The value the next update will use: the schedule at the number of updates done.
        expected = 1e-2 * k / 10 if k < 10 else 1e-2 * 0.5 * (1 + np.cos(np.pi * (k - 10) / 90))
        np.testing.assert_allclose(float(jopt.get_hyperparams(state)["learning_rate"]), expected,
                                   rtol=1e-6)


def test_duplicate_names_are_qualified_by_position_and_link_name():
    tx = jopt.chain(jopt.scale_by_learning_rate(0.1), jopt.scale_by_learning_rate(0.2))
    state = tx.init(make_params())
    assert set(jopt.get_hyperparams(state)) == {"0/learning_rate", "1/learning_rate"}
    state = jopt.set_hyperparams(state, {"1/learning_rate": 0.5})
    assert float(jopt.get_hyperparams(state)["1/learning_rate"]) == 0.5
    assert float(jopt.get_hyperparams(state)["0/learning_rate"]) == pytest.approx(0.1)

    named = jopt.named_chain(("warm", jopt.scale_by_learning_rate(0.1)),
                             ("main", jopt.sgd(0.3, momentum=0.9)))
    state = named.init(make_params())
    assert set(jopt.get_hyperparams(state)) == {"warm/learning_rate", "main/1/learning_rate",
                                                "decay"}
    assert isinstance(state["main"][0], jopt.TraceState)


def test_set_hyperparams_changes_the_update_and_keeps_structure():
    tx = jopt.sgd(0.1)
    params = make_params()
    state = tx.init(params)
    new = jopt.set_hyperparams(state, learning_rate=0.25)
    assert tree_signature(new) == tree_signature(state)
    g = jax.tree_util.tree_map(jnp.ones_like, params)
    u, _ = tx.update(g, new)
    np.testing.assert_allclose(np.asarray(u["scale"]), -0.25)
    # The original state is untouched.
    assert float(jopt.get_hyperparams(state)["learning_rate"]) == pytest.approx(0.1)


def test_set_schedule_and_replace_schedule_by_number():
    tx = jopt.adam(1e-3)
    state = tx.init(make_params())
    state = jopt.set_hyperparams(state, learning_rate=jopt.linear(0.0, 1.0, 10))
    assert float(jopt.get_hyperparams(state)["learning_rate"]) == 0.0
    state = jopt.set_hyperparams(state, learning_rate=0.3)
    assert float(jopt.get_hyperparams(state)["learning_rate"]) == pytest.approx(0.3)


def test_schedule_leaves_can_be_changed_without_recompiling():
    tx = jopt.adamw(jopt.cosine_decay(1e-2, 100), weight_decay=1e-3)
    params = make_params()
    traces = []

    @jax.jit
    def step(p, s):
        traces.append(1)
        u, s = tx.update(jax.tree_util.tree_map(jnp.ones_like, p), s, p)
        return jopt.apply_updates(p, u), s

    state = tx.init(params)
    params, state = step(params, state)
    state = jopt.set_hyperparams(state, learning_rate=jopt.cosine_decay(5e-2, 100))
    params, state = step(params, state)
    assert len(traces) == 1
    np.testing.assert_allclose(float(jopt.get_hyperparams(state)["learning_rate"]),
                               5e-2 * 0.5 * (1 + np.cos(np.pi * 2 / 100)), rtol=1e-6)


def test_callable_schedule_is_static_and_reported():
    sched = optax.linear_schedule(1.0, 0.0, 10)
    tx = jopt.sgd(sched)
    state = tx.init(make_params())
    for leaf in jax.tree_util.tree_leaves(state):
        assert isinstance(leaf, jax.Array)
    assert float(jopt.get_hyperparams(state)["learning_rate"]) == 1.0
    _, state = tx.update(make_params(), state)
    assert float(jopt.get_hyperparams(state)["learning_rate"]) == pytest.approx(0.9)


def test_get_hyperparams_under_vmap_population():
    tx = jopt.adam(1e-3)
    state = tx.init(make_params())
    lrs = jnp.linspace(1e-4, 1e-2, 5)
    b2s = jnp.asarray([0.9, 0.99, 0.999, 0.9999, 0.95])
    pop = jax.vmap(lambda lr, b2: jopt.set_hyperparams(state, learning_rate=lr, b2=b2))(lrs, b2s)
    hp = jopt.get_hyperparams(pop)
    np.testing.assert_allclose(np.asarray(hp["learning_rate"]), np.asarray(lrs))
    np.testing.assert_allclose(np.asarray(hp["b2"]), np.asarray(b2s))
    # vmap returns every leaf batched (unchanged members share the value).
    np.testing.assert_allclose(np.asarray(hp["b1"]), 0.9, rtol=1e-7)


def test_float64_hyperparameters_kept_wide():
    with jax.enable_x64(True):
        tx = jopt.scale(np.float64(0.1))
        state = tx.init({"w": jnp.ones(2, jnp.float64)})
        assert state.hyperparams["step_size"].dtype == jnp.float64
        u, _ = tx.update({"w": jnp.ones(2, jnp.float64)}, state)
        assert u["w"].dtype == jnp.float64 and float(u["w"][0]) == 0.1


def test_optax_inject_hyperparams_state_is_read_too():
    otx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.3)
    tx = jopt.chain(jopt.clip_by_global_norm(1.0), otx)
    with jax.numpy_dtype_promotion("standard"):  # optax itself is not strict-promotion clean
        state = tx.init(make_params())
    hp = jopt.get_hyperparams(state)
    assert float(hp["learning_rate"]) == pytest.approx(0.3)
    assert float(hp["max_norm"]) == 1.0


def test_get_hyperparams_on_batched_state_evaluates_each_member():
    # Outside vmap, a population state has batched counters and schedules: each member's
    # schedule is evaluated at its own count (join needs this; elementwise ones work anyway).
    def sched(peak):
        return jopt.join([jopt.linear(0.0, peak, 5), jopt.constant(peak)], [5])

    tx = jopt.adam(sched(1.0))
    state = tx.init(make_params())
    pop = jax.vmap(lambda peak: jopt.set_hyperparams(state, learning_rate=sched(peak)))(
        jnp.asarray([1.0, 2.0], jnp.float32))
    _, pop = jax.vmap(lambda s: tx.update(make_params(), s))(pop)
    np.testing.assert_allclose(np.asarray(jopt.get_hyperparams(pop)["learning_rate"]),
                               [0.2, 0.4], rtol=1e-6)
