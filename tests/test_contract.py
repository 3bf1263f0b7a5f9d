"""The contract every public transformation obeys (DESIGN.md sections 1-4), for each one in
the registry: state tree/shapes/dtypes unchanged by update, update dtype = gradient dtype,
extra keyword arguments accepted, no retrace, abstract init, numerics in low precision,
jit / vmap / pmap / NamedSharding behaviour."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REGISTRY, REGISTRY_IDS, make_params, tree_allclose, tree_equal, tree_signature
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jopt

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


def _grads(params, seed=1):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("name,factory,_", REGISTRY, ids=REGISTRY_IDS)
def test_state_contract(name, factory, _, dtype):
    tx = factory()
    params = make_params(dtype)
    state = tx.init(params)
    # State leaves are arrays only: no Python numbers, strings or callables.
    for leaf in jax.tree_util.tree_leaves(state):
        assert isinstance(leaf, jax.Array), (name, type(leaf))
    sig0 = tree_signature(state)
    step = jax.jit(tx.update)
    for i in range(3):
        updates, state = step(_grads(params, i), state, params)
        assert tree_signature(state) == sig0
        assert tree_signature(updates) == tree_signature(params)
        for u in jax.tree_util.tree_leaves(updates):
            assert bool(jnp.all(jnp.isfinite(u.astype(jnp.float32)))), name


@pytest.mark.parametrize("name,factory,_", REGISTRY, ids=REGISTRY_IDS)
def test_extra_args_and_no_retrace(name, factory, _):
    tx = factory()
    params = make_params()
    traces = []

    def step(g, s, p, loss):
        traces.append(1)
        return tx.update(g, s, p, value=loss, anything_else=3)

    step = jax.jit(step)
    state = tx.init(params)
    for i in range(4):
        _, state = step(_grads(params, i), state, params, jnp.float32(i))
    assert len(traces) == 1


@pytest.mark.parametrize("name,factory,_", REGISTRY, ids=REGISTRY_IDS)
def test_init_on_shape_dtype_structs(name, factory, _):
    tx = factory()
    params = make_params()
    abstract = jax.tree_util.tree_map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    state_shape = jax.eval_shape(tx.init, abstract)
    assert tree_signature(state_shape) == tree_signature(tx.init(params))


@pytest.mark.parametrize("name,factory,is_opt", [r for r in REGISTRY if r[2]],
                         ids=[r[0] for r in REGISTRY if r[2]])
def test_optimizers_converge_on_quadratic(name, factory, is_opt):
    del is_opt
    tx = factory()
    target = make_params(seed=3)
    params = jax.tree_util.tree_map(jnp.zeros_like, target)

    def loss(p):
        return sum(jnp.sum((a - b) ** 2) for a, b in
                   zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(target)))

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return jopt.apply_updates(p, u), s

    state = tx.init(params)
    l0 = float(loss(params))
    for _ in range(300):
        params, state = step(params, state)
    assert float(loss(params)) < 1e-2 * l0, name


@pytest.mark.parametrize("name,factory,is_opt", [r for r in REGISTRY if r[2]],
                         ids=[r[0] for r in REGISTRY if r[2]])
def test_rosenbrock_descends(name, factory, is_opt):
    del is_opt
    tx = factory()

    def rosen(p):
        x, y = p["x"], p["y"]
        return (1 - x) ** 2 + 100 * (y - x**2) ** 2

    params = {"x": jnp.float32(-1.0), "y": jnp.float32(1.0)}
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        g = jax.grad(rosen)(p)
        g = jopt.clip_by_global_norm(1.0).update(g, jopt.clip_by_global_norm(1.0).init(p))[0]
        u, s = tx.update(g, s, p)
        return jopt.apply_updates(p, u), s

    f0 = float(rosen(params))
    for _ in range(500):
        params, state = step(params, state)
    # A descent check on a badly conditioned valley (the cosine schedule decays to zero in
    # 100 steps, so it is not asked to converge).
    assert float(rosen(params)) < 0.7 * f0, name


@pytest.mark.parametrize("name,factory,_", REGISTRY, ids=REGISTRY_IDS)
def test_repr_and_equality(name, factory, _):
    a, b = factory(), factory()
    assert a == b and hash(a) == hash(b)
    assert repr(a) == repr(b)
    # The repr names the factory that built it (the registry id is the factory's name, or the
    # factory's name and the example's suffix).
    assert name.startswith(repr(a).split("(")[0]) or repr(a).startswith(name.split("_")[0])
    # optax-style tuple unpacking still works.
    init, update = a
    assert init is a.init and update is a.update


def test_different_configs_differ():
    assert jopt.adamw(1e-3) != jopt.adamw(2e-3)
    assert jopt.adamw(1e-3) != jopt.adam(1e-3)
    assert jopt.adamw(jopt.cosine_decay(1e-3, 10)) != jopt.adamw(jopt.cosine_decay(1e-3, 20))
    assert jopt.adamw(jopt.cosine_decay(1e-3, 10)) == jopt.adamw(jopt.cosine_decay(1e-3, 10))
    assert "adamw(learning_rate=0.001" in repr(jopt.adamw(1e-3))


# ---------------------------------------------------------------------------------------------
# Low precision numerics.


def test_bfloat16_b2_stays_correct():
    # With b2 = 0.999 cast to bfloat16 it would round to 1.0 and the second moment would never
    # move. jopt keeps hyperparameters in float32 and moments (by default) in float32 for
    # low-precision parameters, so the bfloat16 run tracks the float32 run.
    tx = jopt.scale_by_adam(b1=0.9, b2=0.999)
    p32 = {"w": jnp.ones((8,), jnp.float32)}
    p16 = {"w": jnp.ones((8,), jnp.bfloat16)}
    s32, s16 = tx.init(p32), tx.init(p16)
    assert s16.nu["w"].dtype == jnp.float32
    rng = np.random.default_rng(0)
    step = jax.jit(tx.update)
    for _ in range(300):
        g = rng.normal(size=8).astype(np.float32)
        g16 = jnp.asarray(g, jnp.bfloat16)
        _, s32 = step({"w": g16.astype(jnp.float32)}, s32)
        u16, s16 = step({"w": g16}, s16)
        assert u16["w"].dtype == jnp.bfloat16
    # Same inputs (the bf16-rounded gradients): the moments agree to float32 rounding.
    np.testing.assert_allclose(np.asarray(s16.nu["w"]), np.asarray(s32.nu["w"]), rtol=1e-6)
    # And the second moment really moved: after 300 steps of unit-variance gradients the
    # bias-corrected estimate is near 1, not stuck at the first step's (1 - b2) g^2.
    nu_hat = np.asarray(s16.nu["w"]) / (1 - 0.999**300)
    assert 0.3 < nu_hat.mean() < 3.0


def test_bfloat16_nu_dtype_opt_in():
    tx = jopt.scale_by_adam(mu_dtype=jnp.bfloat16, nu_dtype="bfloat16")
    state = tx.init({"w": jnp.ones((3,), jnp.float32)})
    assert state.mu["w"].dtype == jnp.bfloat16 and state.nu["w"].dtype == jnp.bfloat16
    u, state2 = jax.jit(tx.update)({"w": jnp.ones((3,), jnp.float32)}, state)
    assert u["w"].dtype == jnp.float32 and tree_signature(state2) == tree_signature(state)


@pytest.mark.parametrize("name,factory,_", REGISTRY, ids=REGISTRY_IDS)
def test_float16_zero_gradient_gives_zero_update(name, factory, _):
    tx = factory()
    params = jax.tree_util.tree_map(jnp.zeros_like, make_params(jnp.float16))
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for _ in range(3):
        updates, state = step(zeros, state, params)
        for u in jax.tree_util.tree_leaves(updates):
            assert u.dtype == jnp.float16
            assert not bool(jnp.any(jnp.isnan(u))), name
            assert bool(jnp.all(u == 0)), name


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_clip_by_global_norm_zero_threshold_zero_grads(dtype):
    tx = jopt.clip_by_global_norm(0.0)
    g = {"a": jnp.zeros((3,), dtype), "b": jnp.zeros((), dtype)}
    u, _ = jax.jit(tx.update)(g, tx.init(g))
    for leaf in jax.tree_util.tree_leaves(u):
        assert leaf.dtype == dtype and bool(jnp.all(leaf == 0))
    # Zero threshold with non-zero gradients clips everything to zero, still no NaN.
    u, _ = jax.jit(tx.update)({"a": jnp.ones((3,), dtype), "b": jnp.ones((), dtype)}, tx.init(g))
    assert all(bool(jnp.all(x == 0)) for x in jax.tree_util.tree_leaves(u))


def test_empty_tree():
    for _, factory, _ in REGISTRY:
        tx = factory()
        state = tx.init({})
        u, _ = jax.jit(tx.update)({}, state, {})
        assert u == {}


def test_complex_parameters_use_abs_squared():
    tx = jopt.adam(0.1)
    p = {"z": jnp.asarray([1 + 2j, -1j], jnp.complex64)}
    s = tx.init(p)
    assert s[0].mu["z"].dtype == jnp.complex64 and s[0].nu["z"].dtype == jnp.float32
    g = {"z": jnp.asarray([3 + 4j, 0j], jnp.complex64)}
    u, s = jax.jit(tx.update)(g, s, p)
    # First Adam step: u = -lr * g / |g| elementwise (bias-corrected m = g, v = |g|^2).
    np.testing.assert_allclose(np.asarray(u["z"][0]), -0.1 * (3 + 4j) / 5, rtol=1e-5)
    assert np.asarray(u["z"][1]) == 0
    # 1 - float32(0.999) = 0.00099998713: the float32-stored b2 is off by 1.3e-5 relative.
    np.testing.assert_allclose(np.asarray(s[0].nu["z"][0]), 0.001 * 25, rtol=2e-5)


# ---------------------------------------------------------------------------------------------
# jit, vmap, pmap, sharding.


def _train(tx, params, grads_seq, state=None):
    state = tx.init(params) if state is None else state
    step = jax.jit(tx.update)
    for g in grads_seq:
        u, state = step(g, state, params)
        params = jopt.apply_updates(params, u)
    return params, state


def test_vmap_population_of_learning_rates_equals_solo_runs():
    lrs = jnp.asarray([1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1], jnp.float32)
    tx = jopt.chain(jopt.clip_by_global_norm(1.0), jopt.adamw(1e-3, weight_decay=1e-2))
    params = make_params()
    grads_seq = [_grads(params, i) for i in range(20)]
    state = tx.init(params)
    pop_state = jax.vmap(lambda lr: jopt.set_hyperparams(state, learning_rate=lr))(lrs)
    pop_params = jax.tree_util.tree_map(lambda p: jnp.broadcast_to(p, (8,) + p.shape), params)
    traces = []

    @jax.jit
    @jax.vmap
    def pop_step(p, s, g):
        traces.append(1)
        u, s = tx.update(g, s, p)
        return jopt.apply_updates(p, u), s

    for g in grads_seq:
        batched = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (8,) + x.shape), g)
        pop_params, pop_state = pop_step(pop_params, pop_state, batched)
    assert len(traces) == 1
    np.testing.assert_allclose(np.asarray(jopt.get_hyperparams(pop_state)["learning_rate"]), lrs)
    for i, lr in enumerate(lrs):
        solo_params, _ = _train(jopt.chain(jopt.clip_by_global_norm(1.0),
                                           jopt.adamw(float(lr), weight_decay=1e-2)),
                                params, grads_seq)
        member = jax.tree_util.tree_map(lambda x, i=i: x[i], pop_params)
        # vmap may fuse differently from the solo program: allow a few float32 ulps.
        assert tree_allclose(member, solo_params, rtol=2e-6, atol=1e-7), i


def test_pmap_replicas_bitwise_identical():
    n = jax.local_device_count()
    assert n == 8
    tx = jopt.chain(jopt.clip_by_global_norm(1.0, axis_name="d"), jopt.adamw(1e-2))
    params = make_params()
    rep = jax.tree_util.tree_map(lambda p: jnp.broadcast_to(p, (n,) + p.shape), params)
    state = jax.pmap(tx.init)(rep)
    rng = np.random.default_rng(0)

    @functools.partial(jax.pmap, axis_name="d")
    def step(p, s, g):
        g = jax.lax.pmean(g, "d")
        u, s = tx.update(g, s, p)
        return jopt.apply_updates(p, u), s

    for _ in range(5):
        # Each device sees different data; after pmean all replicas must agree exactly.
        g = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=(n,) + p.shape), p.dtype), params)
        rep, state = step(rep, state, g)
    for leaf in jax.tree_util.tree_leaves((rep, state)):
        arr = np.asarray(leaf)
        for i in range(1, n):
            assert np.array_equal(arr[0], arr[i])


def test_global_norm_with_axis_name_matches_unsharded():
    n = 8
    g = {"a": jnp.arange(n * 4, dtype=jnp.float32).reshape(n, 4) / 10.0}
    full, _ = jopt.clip_by_global_norm(1.0).update(g, jopt.clip_by_global_norm(1.0).init(g))
    tx = jopt.clip_by_global_norm(1.0, axis_name="d")
    sharded = jax.pmap(lambda x: tx.update({"a": x}, tx.init({"a": x}))[0]["a"], axis_name="d")(g["a"])
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(full["a"]), rtol=1e-6)


def test_named_sharding_state_follows_params():
    mesh = Mesh(np.array(jax.devices()), ("x",))
    sh = NamedSharding(mesh, P("x"))
    rep = NamedSharding(mesh, P())
    params = {"w": jax.device_put(jnp.ones((16, 4)), sh), "b": jax.device_put(jnp.ones((4,)), rep)}
    tx = jopt.chain(jopt.clip_by_global_norm(1.0), jopt.adamw(1e-2))
    state = tx.init(params)
    adam_state = state[1][0]
    assert adam_state.mu["w"].sharding == sh and adam_state.nu["w"].sharding == sh

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return jopt.apply_updates(p, u), s

    grads = jax.tree_util.tree_map(lambda p: p * 0.5, params)
    params2, state2 = step(params, state, grads)
    assert params2["w"].sharding.is_equivalent_to(sh, 2)
    assert state2[1][0].mu["w"].sharding.is_equivalent_to(sh, 2)
    assert state2[1][0].nu["w"].sharding.is_equivalent_to(sh, 2)
    # Same numbers as the unsharded run.
    plain = jax.tree_util.tree_map(np.asarray, params)
    p_ref, _ = step(plain, tx.init(plain), jax.tree_util.tree_map(lambda p: p * 0.5, plain))
    assert tree_allclose(params2, p_ref, rtol=1e-6)


def test_no_recompile_when_learning_rate_changes_through_state():
    tx = jopt.adamw(1e-3)
    params = make_params()
    compiles = []

    @jax.jit
    def step(p, s, g):
        compiles.append(1)
        u, s = tx.update(g, s, p)
        return jopt.apply_updates(p, u), s

    state = tx.init(params)
    params, state = step(params, state, _grads(params))
    for lr in (1e-2, 5e-3, 0.0):
        state = jopt.set_hyperparams(state, learning_rate=lr, weight_decay=lr / 10, b2=0.99)
        params, state = step(params, state, _grads(params))
    assert len(compiles) == 1
    assert step._cache_size() == 1
    # The new values were really used: lr 0 leaves the parameters unchanged.
    state = jopt.set_hyperparams(state, learning_rate=0.0)
    p2, _ = step(params, state, _grads(params))
    assert tree_equal(p2, params)


def test_apply_updates_keeps_param_dtype():
    params = {"a": jnp.ones((3,), jnp.bfloat16), "b": jnp.ones((2,), jnp.float32)}
    updates = {"a": jnp.full((3,), 1e-3, jnp.float32), "b": jnp.full((2,), 1e-3, jnp.bfloat16)}
    new = jopt.apply_updates(params, updates)
    assert new["a"].dtype == jnp.bfloat16 and new["b"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(new["b"]), 1.0 + np.float32(np.asarray(updates["b"][0], np.float32)), rtol=1e-7)


def test_counters_saturate_instead_of_wrapping():
    int_max = np.iinfo(np.int32).max
    tx = jopt.chain(jopt.adamw(jopt.cosine_decay(1e-2, 100), weight_decay=1e-2))
    params = make_params()
    state = tx.init(params)
    # The counters are the states' ``count`` fields (schedules hold int32 step counts too,
    # such as the cosine's decay_steps, which are hyperparameters, not counters).
    def is_count(path):
        return jax.tree_util.keystr(path).endswith(".count")

    state = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.full_like(x, int_max - 1) if is_count(path) else x, state)
    step = jax.jit(tx.update)
    for _ in range(3):
        u, state = step(_grads(params), state, params)
        for leaf in jax.tree_util.tree_leaves(u):
            assert bool(jnp.all(jnp.isfinite(leaf)))
    counts = [x for path, x in jax.tree_util.tree_flatten_with_path(state)[0] if is_count(path)]
    assert counts and all(int(c) == int_max for c in counts)
    assert int(jopt.safe_increment(jnp.int32(int_max))) == int_max


def _sharded_run():
    """Sharded params, a chain with a schedule, and a jitted step that records its traces."""
    mesh = Mesh(np.array(jax.devices()), ("x",))
    params = {"w": jax.device_put(jnp.ones((16, 4)), NamedSharding(mesh, P("x")))}
    tx = jopt.chain(jopt.clip_by_global_norm(1.0), jopt.adamw(jopt.cosine_decay(1e-2, 10)))
    traces = []

    @jax.jit
    def step(p, s):
        traces.append(1)
        u, s = tx.update(jax.tree_util.tree_map(lambda x: x * 0.5, p), s, p)
        return jopt.apply_updates(p, u), s

    return params, tx, step, traces


def test_sharded_state_does_not_recompile_second_step():
    params, tx, step, traces = _sharded_run()
    state = tx.init(params)
    leaves0 = jax.tree_util.tree_leaves(state)
    for _ in range(3):
        params, state = step(params, state)
    assert len(traces) == 1
    for a, b in zip(leaves0, jax.tree_util.tree_leaves(state)):
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim)


def test_set_hyperparams_on_sharded_state_does_not_recompile():
    params, tx, step, traces = _sharded_run()
    state = tx.init(params)
    params, state = step(params, state)
    for kw in ({"weight_decay": 1e-3}, {"b1": 0.8}, {"eps": 1e-6}, {"max_norm": 2.0},
               {"learning_rate": jopt.cosine_decay(5e-3, 10)}):
        state = jopt.set_hyperparams(state, **kw)
        params, state = step(params, state)
    assert len(traces) == 1


def test_meta_gradient_wrt_hyperparameters_is_finite():
    # Differentiating the loss after an update with respect to b1, b2 and the learning rate
    # (meta-learning of hyperparameters), also at b1 = 0 and zero gradients.
    tx = jopt.adam(1e-2, eps_root=1e-16)
    params = make_params()
    state = tx.init(params)

    def after(hp, grads):
        s = jopt.set_hyperparams(state, b1=hp[0], b2=hp[1], learning_rate=hp[2])
        u, _ = tx.update(grads, s, params)
        new = jopt.apply_updates(params, u)
        return sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(new))

    for hp in (jnp.asarray([0.9, 0.999, 1e-2]), jnp.asarray([0.0, 0.99, 1e-2])):
        for grads in (_grads(params), jax.tree_util.tree_map(jnp.zeros_like, params)):
            g = jax.jit(jax.grad(after))(hp, grads)
            assert bool(jnp.all(jnp.isfinite(g))), (hp, g)


def test_non_finite_gradients_poison_clip_everywhere():
    tx = jopt.clip_by_global_norm(1.0)
    for bad in (jnp.nan, jnp.inf):
        u, _ = tx.update({"a": jnp.asarray([bad, 1e6]), "b": jnp.ones(2)}, tx.init(None))
        assert all(bool(jnp.all(jnp.isnan(x))) for x in jax.tree_util.tree_leaves(u))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("restore_best", [False, True])
def test_reduce_on_plateau_state_contract(dtype, restore_best):
    # reduce_on_plateau needs value=, so it is checked here rather than through the registry.
    tx = jopt.chain(jopt.adam(0.05), jopt.reduce_on_plateau(patience=1, restore_best=restore_best))
    params = make_params(dtype)
    state = tx.init(params)
    for leaf in jax.tree_util.tree_leaves(state):
        assert isinstance(leaf, jax.Array)
    sig0 = tree_signature(state)
    traces = []

    def step(g, s, p, v):
        traces.append(1)
        return tx.update(g, s, p, value=v)

    step = jax.jit(step)
    for i, v in enumerate([1.0, 2.0, 3.0, 0.5, 0.7]):
        updates, state = step(_grads(params, i), state, params, jnp.float32(v))
        assert tree_signature(state) == sig0
        assert tree_signature(updates) == tree_signature(params)
    assert len(traces) == 1
    assert float(state[1].scale) < 1.0
    assert tree_signature(jax.eval_shape(tx.init, params)) == sig0


@pytest.mark.parametrize("name,factory,_", REGISTRY, ids=REGISTRY_IDS)
def test_state_can_be_donated_and_init_called_again(name, factory, _):
    # Every init returns buffers of its own: donating a state neither aliases a buffer twice
    # nor deletes the transformation's constants (a later init still works).
    tx = factory()
    params = make_params()
    step = jax.jit(tx.update, donate_argnums=1)
    state = tx.init(params)
    for i in range(2):
        _, state = step(_grads(params, i), state, params)
    again = tx.init(params)
    assert all(not x.is_deleted() for x in jax.tree_util.tree_leaves(again))
    _, again = step(_grads(params), again, params)


def test_apply_updates_adds_float16_and_bfloat16_in_float32():
    # Neither float16 nor bfloat16 holds the other: the sum is taken in float32 (the update
    # was cast to float16 first, and -65504 + bfloat16(65536) gave inf instead of 32).
    params = {"a": jnp.asarray([-65504.0, 1.0], jnp.float16)}
    updates = {"a": jnp.asarray([65536.0, 2.0**-10], jnp.bfloat16)}
    new = jopt.apply_updates(params, updates)
    assert new["a"].dtype == jnp.float16
    np.testing.assert_array_equal(np.asarray(new["a"], np.float32), [32.0, 1.0 + 2.0**-10])
    back = jopt.apply_updates({"b": jnp.asarray([1.0], jnp.bfloat16)},
                              {"b": jnp.asarray([2.0**-9], jnp.float16)})
    assert back["b"].dtype == jnp.bfloat16 and float(back["b"][0]) == 1.0


def _flax_cases():
    """(id, factory, packed) for every registered transformation, packed where its kind
    takes packed values (the others refuse them: test_layout)."""
    cases = []
    for name, factory, _ in REGISTRY:
        cases.append(pytest.param(factory, False, id=f"{name}-tree"))
        if factory().kind in ("elementwise", "combinator"):
            cases.append(pytest.param(factory, True, id=f"{name}-packed"))
    return cases


@pytest.mark.parametrize("factory,packed", _flax_cases())
def test_state_round_trips_through_flax_serialization(factory, packed):
    """flax.serialization.to_bytes/from_bytes (the checkpoint format of flax's own
    utilities) writes every state and restores it bitwise into a target state; jopt's pytree
    node types (schedules, OneMinus complements, 8-bit buffers, packed buffers) are
    registered with it."""
    serialization = pytest.importorskip("flax.serialization")
    tx = factory()
    params = jopt.pack(make_params()) if packed else make_params()
    state = tx.init(params)
    for i in range(2):
        grads = _grads(make_params(), i)
        _, state = tx.update(jopt.pack(grads) if packed else grads, state, params)
    restored = serialization.from_bytes(tx.init(params), serialization.to_bytes(state))
    assert tree_equal(restored, state)
