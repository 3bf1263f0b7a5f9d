"""Hyperparameters are data: get/set through the state, schedules evaluated at the step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import make_params, tree_signature

import jopt
from jopt.errors import InvalidHyperparameterError


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


# ---------------------------------------------------------------------------------------------
# Stable keys: canonical link paths, unique short names, ambiguity is an error.


def test_keys_do_not_move_when_a_link_is_added():
    params = make_params()
    before = jopt.chain(jopt.clip_by_global_norm(1.0), jopt.adamw(1e-3)).init(params)
    after = jopt.chain(jopt.clip_by_global_norm(1.0), jopt.adamw(1e-3),
                       jopt.scale_by_learning_rate(0.5)).init(params)
    hp_before, hp_after = jopt.get_hyperparams(before), jopt.get_hyperparams(after)
    # The canonical key of adamw's learning rate is the same in both states.
    assert "1/2/learning_rate" in hp_before.canonical()
    assert "1/2/learning_rate" in hp_after.canonical()
    np.testing.assert_allclose(float(hp_before["1/2/learning_rate"]), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(hp_after["1/2/learning_rate"]), 1e-3, rtol=1e-6)
    # The short name is accepted where it is unique and refused, listing the candidates,
    # where it is not: never silently another value.
    assert float(hp_before["learning_rate"]) == float(hp_before["1/2/learning_rate"])
    with pytest.raises(jopt.errors.AmbiguousKeyError, match=r"'1/2/learning_rate', '2/learning_rate'") as info:
        hp_after["learning_rate"]
    assert info.value.candidates == ["1/2/learning_rate", "2/learning_rate"]
    assert isinstance(info.value, KeyError)
    with pytest.raises(jopt.errors.AmbiguousKeyError, match="is ambiguous"):
        jopt.set_hyperparams(after, learning_rate=0.1)
    # A canonical key, or an unambiguous end of one, sets exactly that entry.
    new = jopt.set_hyperparams(after, {"1/2/learning_rate": 0.1, "2/learning_rate": 0.25})
    np.testing.assert_allclose(float(jopt.get_hyperparams(new)["1/2/learning_rate"]), 0.1, rtol=1e-6)
    np.testing.assert_allclose(float(jopt.get_hyperparams(new)["2/learning_rate"]), 0.25)
    with pytest.raises(InvalidHyperparameterError, match="given once"):
        jopt.set_hyperparams(after, {"1/1/weight_decay": 0.0, "weight_decay": 1.0})


def test_named_chain_keys_use_the_names():
    named = jopt.named_chain(("clip", jopt.clip_by_global_norm(1.0)), ("opt", jopt.adam(1e-3)))
    hp = jopt.get_hyperparams(named.init(make_params()))
    assert set(hp.canonical()) == {"clip/max_norm", "opt/0/b1", "opt/0/b2", "opt/0/eps",
                                   "opt/0/eps_root", "opt/1/learning_rate"}
    assert float(hp["opt/1/learning_rate"]) == pytest.approx(1e-3)
    assert float(hp["clip/max_norm"]) == 1.0


def test_hyperparams_mapping_is_a_pytree_for_jit():
    tx = jopt.adamw(jopt.linear(0.0, 1.0, 10))
    state = tx.init(make_params())
    hp = jax.jit(jopt.get_hyperparams)(state)
    assert isinstance(hp, jopt.Hyperparams) and float(hp["learning_rate"]) == 0.0
    assert hp.canonical()["2/learning_rate"] is hp["learning_rate"]


# ---------------------------------------------------------------------------------------------
# inject_hyperparams: jopt's, and optax's around jopt factories.


def test_jopt_inject_hyperparams_state_access_as_optax():
    tx = jopt.inject_hyperparams(jopt.adamw)(learning_rate=jopt.linear(0.0, 1e-2, 4), b1=0.8)
    params = make_params()
    state = tx.init(params)
    assert isinstance(state, jopt.InjectHyperparamsState)
    # Every numeric argument, defaults included, as optax's wrapper holds them.
    assert list(state.hyperparams) == list(
        optax.inject_hyperparams(optax.adamw)(learning_rate=1e-2, b1=0.8).init(params).hyperparams)
    assert all(v.dtype == jnp.float32 for v in state.hyperparams.values())
    step = jax.jit(tx.update)
    g = jax.tree_util.tree_map(jnp.ones_like, params)
    for t in range(1, 4):
        _, state = step(g, state, params)
        # The value the next update will use (optax reports the last one used).
        np.testing.assert_allclose(float(state.hyperparams["learning_rate"]), 1e-2 * t / 4,
                                   rtol=1e-6)
    # Writing a number into the dict, as optax users do, changes the next update.
    state.hyperparams["b1"] = 0.5
    assert float(jopt.get_hyperparams(state)["b1"]) == 0.5
    _, state = step(g, state, params)
    assert float(jopt.get_hyperparams(state.inner_state)["b1"]) == 0.5
    # set_hyperparams sets both, and may replace the schedule.
    state = jopt.set_hyperparams(state, learning_rate=0.3)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.3)
    u, _ = tx.update(g, state, params)
    assert np.all(np.isfinite(np.asarray(u["scale"])))


def test_jopt_inject_hyperparams_equals_the_plain_optimizer():
    params = make_params()
    sched = jopt.warmup_cosine_decay(0.0, 0.05, 3, 20)
    tx = jopt.inject_hyperparams(jopt.sgd)(learning_rate=sched, momentum=0.9)
    ref = jopt.sgd(sched, momentum=0.9)
    s, r = tx.init(params), ref.init(params)
    for i in range(6):
        g = jax.tree_util.tree_map(lambda p, i=i: p * (i + 1.0), params)
        u, s = jax.jit(tx.update)(g, s, params)
        v, r = jax.jit(ref.update)(g, r, params)
        assert jax.tree_util.tree_all(jax.tree_util.tree_map(
            lambda a, b: bool(jnp.array_equal(a, b)), u, v))
    assert set(s.hyperparams) == {"learning_rate", "momentum"}  # sgd's momentum is trace's decay
    assert float(jopt.get_hyperparams(s)["momentum"]) == pytest.approx(0.9)


def test_optax_inject_hyperparams_of_a_jopt_factory_follows_the_schedule():
    # optax rebuilds the transformation at every step with the current values: a jopt
    # factory built there uses them (it ignored them before, keeping its first values).
    params = {"w": jnp.ones(3)}
    with jax.numpy_dtype_promotion("standard"):
        ours = optax.inject_hyperparams(jopt.sgd)(learning_rate=optax.linear_schedule(1.0, 0.0, 10))
        ref = optax.inject_hyperparams(optax.sgd)(learning_rate=optax.linear_schedule(1.0, 0.0, 10))
        s, r = ours.init(params), ref.init(params)
        for _ in range(4):
            u, s = ours.update(params, s, params)
            v, r = ref.update(params, r, params)
            np.testing.assert_allclose(np.asarray(u["w"]), np.asarray(v["w"]), rtol=1e-6)
        np.testing.assert_allclose(float(u["w"][0]), -0.7, rtol=1e-6)
        # Numbers optax holds are reported and settable (the next update uses them) ...
        numeric = optax.inject_hyperparams(jopt.sgd)(learning_rate=0.1, momentum=0.9)
        state = numeric.init(params)
        assert set(jopt.get_hyperparams(state)) == {"learning_rate", "momentum"}
        state = jopt.set_hyperparams(state, learning_rate=0.5)
        u, state = numeric.update(params, state, params)
        np.testing.assert_allclose(np.asarray(u["w"]), -0.5)
        # ... values optax schedules are not (its state holds the last one only), and
        # setting one, or setting a schedule, is refused with the way out.
        assert "learning_rate" not in jopt.get_hyperparams(s)
        with pytest.raises(InvalidHyperparameterError, match="jopt.inject_hyperparams"):
            jopt.set_hyperparams(s, learning_rate=5.0)
        with pytest.raises(InvalidHyperparameterError, match="holds numbers only"):
            jopt.set_hyperparams(state, learning_rate=jopt.linear(0.0, 1.0, 5))


def test_state_restored_without_its_structure_fails_loudly(tmp_path):
    import orbax.checkpoint as ocp

    tx = jopt.chain(jopt.clip_by_global_norm(1.0), jopt.adamw(jopt.linear(0.0, 1e-3, 10)))
    params = make_params()
    state = tx.init(params)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", state)
    checkpointer.wait_until_finished()
    plain = checkpointer.restore(tmp_path / "ckpt")  # no target: lists and dicts
    with pytest.raises(jopt.errors.TreeMismatchError,
                       match=r"plain containers .*jax.eval_shape\(tx.init, params\)"):
        jopt.get_hyperparams(plain)
    with pytest.raises(jopt.errors.TreeMismatchError, match="plain containers"):
        jopt.set_hyperparams(plain, max_norm=2.0)
    typed = checkpointer.restore(tmp_path / "ckpt", jax.eval_shape(tx.init, params))
    assert float(jopt.get_hyperparams(typed)["max_norm"]) == 1.0


def test_optax_wrappers_are_descended_into():
    params = make_params()
    with jax.numpy_dtype_promotion("standard"):
        multi = optax.MultiSteps(jopt.adamw(1e-3), every_k_schedule=2)
        masked = optax.masked(jopt.sgd(0.1, momentum=0.9), lambda p: jax.tree_util.tree_map(
            lambda x: x.ndim > 0, p))
        for tx, name in ((multi, "weight_decay"), (masked, "decay")):
            state = tx.init(params)
            assert name in jopt.get_hyperparams(state)
            state = jopt.set_hyperparams(state, learning_rate=0.5)
            assert float(jopt.get_hyperparams(state)["learning_rate"]) == 0.5


def test_float64_hyperparameter_set_keeps_the_stored_dtype():
    # With x64 on, setting b1/b2 from a NumPy float64 kept float64 and the step recompiled.
    with jax.enable_x64(True):
        tx = jopt.adam(1e-3)
        params = {"w": jnp.ones(3, jnp.float32)}
        state = tx.init(params)
        traces = []

        @jax.jit
        def step(s):
            traces.append(1)
            return tx.update(params, s, params)[1]

        state = step(state)
        for b in (np.float64(0.95), 0.9, jnp.float64(0.8)):
            state = jopt.set_hyperparams(state, b1=b, b2=b, learning_rate=np.float64(1e-2))
            assert state[0].hyperparams["b1"].complement.dtype == jnp.float32
            state = step(state)
        assert len(traces) == 1
