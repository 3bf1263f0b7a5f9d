"""Early stopping at scale: vmapped populations that stop member by member, whole training
loops compiled as one ``lax.while_loop``, many devices (``pmap`` with ``axis_name``, ``jit`` with
a ``NamedSharding`` mesh) and checkpoints (orbax round trip, resumed runs decide the same).

The training problem is an over-parameterized linear regression (24 features, 16 training
rows): the validation loss falls, reaches a minimum and rises, so early stopping has something
to do. One *round* is ``ROUND_STEPS`` AdamW steps followed by one early-stopping decision on the
validation loss; patience counts rounds.
"""

import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tree_allclose, tree_equal
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jopt
from jopt import Status

ROOT = pathlib.Path(__file__).parent.parent

# ---------------------------------------------------------------------------------------------
# The problem.

D, N_TRAIN, N_VAL = 24, 16, 64
ROUND_STEPS = 5
MAX_ROUNDS = 80
WEIGHT_DECAY = 1e-4


def _data(seed=0):
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=(D,)).astype(np.float32)

    def make(n):
        x = rng.normal(size=(n, D)).astype(np.float32)
        y = (x @ w_true + 0.5 * rng.normal(size=(n,))).astype(np.float32)
        return jnp.asarray(x), jnp.asarray(y)

    return make(N_TRAIN), make(N_VAL)


(X_TRAIN, Y_TRAIN), (X_VAL, Y_VAL) = _data()
P0 = {"w": jnp.zeros((D,), jnp.float32), "b": jnp.zeros([], jnp.float32)}


def mse(p, x, y):
    return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)


def train_round(tx, es, p, s, e):
    """ROUND_STEPS optimizer steps, one decision on the validation loss, then gating: a member
    already stopped before this round keeps its parameters and optimizer state."""

    def step(_, carry):
        p, s = carry
        g = jax.grad(mse)(p, X_TRAIN, Y_TRAIN)
        u, s = tx.update(g, s, p)
        return jopt.apply_updates(p, u), s

    p_new, s_new = jax.lax.fori_loop(0, ROUND_STEPS, step, (p, s))
    e_new = es.update(e, mse(p_new, X_VAL, Y_VAL), p_new)
    return jopt.gate_stopped(e, p_new, p), jopt.gate_stopped(e, s_new, s), e_new


# Four members: learning rates, patience and a goal (stopping_threshold) per member. Member 0
# (slow) reaches the goal 6.0 before its validation loss turns; the others stop on patience
# (a goal of 0.0 never fires for a mean squared error).
LRS = (0.01, 0.03, 0.1, 0.3)
PATIENCE = (3, 2, 4, 2)
GOAL = (6.0, 0.0, 0.0, 0.0)
REASONS = ("goal reached (stopping_threshold)",) + ("patience exhausted",) * 3
# The population's configuration; the numbers above are set per member as data.
POP_TX = jopt.adamw(1e-3, weight_decay=WEIGHT_DECAY)
POP_ES = jopt.early_stopping(patience=1, keep_best=True, stopping_threshold=1.0)


def solo_setup(i):
    tx = jopt.adamw(LRS[i], weight_decay=WEIGHT_DECAY)
    es = jopt.early_stopping(patience=PATIENCE[i], keep_best=True, stopping_threshold=GOAL[i])
    return tx, es


@functools.cache
def solo_run(i):
    """Member i alone, Python loop: (stop round, params, opt state, es state)."""
    tx, es = solo_setup(i)
    p, s, e = P0, tx.init(P0), es.init(P0)
    step = jax.jit(functools.partial(train_round, tx, es))
    for r in range(MAX_ROUNDS):
        p, s, e = step(p, s, e)
        if jopt.should_stop(e):
            return r, p, s, e
    raise AssertionError(f"member {i} did not stop in {MAX_ROUNDS} rounds")


def population_init():
    s0, e0 = POP_TX.init(P0), POP_ES.init(P0)

    def member(lr, patience, goal):
        return (P0, jopt.set_hyperparams(s0, learning_rate=lr),
                jopt.set_hyperparams(e0, patience=patience, stopping_threshold=goal))

    return jax.vmap(member)(jnp.asarray(LRS, jnp.float32), jnp.asarray(PATIENCE, jnp.int32),
                            jnp.asarray(GOAL, jnp.float32))


pop_round = jax.jit(jax.vmap(functools.partial(train_round, POP_TX, POP_ES)))


@functools.cache
def population_run():
    """The vmapped population in a Python loop until every member stopped; returns the host
    copy of (params, opt state, es state) after every round."""
    p, s, e = population_init()
    history = []
    for _ in range(MAX_ROUNDS):
        p, s, e = pop_round(p, s, e)
        history.append(jax.device_get((p, s, e)))
        if np.all(jopt.should_stop(e)):
            return history
    raise AssertionError("the population did not stop")


def member_of(tree, i):
    return jax.tree_util.tree_map(lambda x: x[i], tree)


def first_stop_round(history, i):
    for r, (_, _, e) in enumerate(history):
        if Status(int(e.status[i])).stopped:
            return r
    return None


# ---------------------------------------------------------------------------------------------
# 1. Populations.


def test_population_members_equal_their_solo_runs():
    history = population_run()
    p, s, e = history[-1]
    stops = [first_stop_round(history, i) for i in range(4)]
    # Every member stops, each on its own round (the test would be weak otherwise).
    assert len(set(stops)) == 4, stops
    for i in range(4):
        r, sp, ss, se = solo_run(i)
        assert stops[i] == r, (i, stops[i], r)
        me = member_of(e, i)
        assert int(me.step) == int(se.step) == r + 1
        assert int(me.best_step) == int(se.best_step)
        assert int(me.status) == int(se.status)
        np.testing.assert_allclose(float(me.best_value), float(se.best_value), rtol=1e-6)
        assert tree_allclose(member_of(p, i), sp, rtol=1e-6, atol=1e-6), i
        assert tree_allclose(member_of(s, i), ss, rtol=1e-6, atol=1e-6), i
        assert tree_allclose(me.best_params, se.best_params, rtol=1e-6, atol=1e-6), i
        assert jopt.stop_reason(se) == REASONS[i]


def test_stopped_members_stay_bitwise_frozen():
    history = population_run()
    for i in range(4):
        r = first_stop_round(history, i)
        frozen = member_of(history[r], i)
        for t in range(r + 1, len(history)):
            assert tree_equal(member_of(history[t], i), frozen), (i, r, t)
        # And a member still running at round t did move.
        if r > 0:
            assert not tree_equal(member_of(history[r - 1][0], i), frozen[0])


def test_population_status_reports_each_member():
    history = population_run()
    e = history[-1][2]
    report = jopt.population_status(e)
    assert [m["member"] for m in report] == [0, 1, 2, 3]
    for i, m in enumerate(report):
        r, _, _, se = solo_run(i)
        assert m["stopped"] is True
        assert m["reason"] == REASONS[i]
        assert m["calls"] == r + 1
        assert m["best_step"] == int(se.best_step)
        assert m["best_step"] <= r
        np.testing.assert_allclose(m["best_value"], float(se.best_value), rtol=1e-6)
    # Mid-run: after the first member's stop, the others are reported running.
    stops = [first_stop_round(history, i) for i in range(4)]
    first = min(stops)
    mid = jopt.population_status(history[first][2])
    for i, m in enumerate(mid):
        assert m["stopped"] is (stops[i] == first)
        assert m["calls"] == first + 1
        if not m["stopped"]:
            assert m["reason"].startswith("running: ")


def test_should_stop_and_stop_reason_on_batched_states():
    history = population_run()
    stops = [first_stop_round(history, i) for i in range(4)]
    for r, (_, _, e) in enumerate(history):
        flags = jopt.should_stop(e)
        assert isinstance(flags, np.ndarray) and flags.dtype == np.bool_ and flags.shape == (4,)
        assert list(flags) == [r >= stops[i] for i in range(4)]
        reasons = jopt.stop_reason(e)
        assert isinstance(reasons, list) and len(reasons) == 4
        for i in range(4):
            assert (reasons[i] == REASONS[i]) if r >= stops[i] else reasons[i].startswith("running")
        # The traceable flag agrees, batched.
        assert np.array_equal(np.asarray(jax.device_get(e.stopped)), flags)


def test_gate_stopped_outside_vmap_equals_inside():
    # gate_stopped on batched trees (status with the population axis) gives the same as
    # gating inside the vmapped round.
    history = population_run()
    r = min(first_stop_round(history, i) for i in range(4))
    p, s, e = jax.tree_util.tree_map(jnp.asarray, history[r])  # some stopped, some running

    def ungated(p, s, e):
        def step(_, c):
            g = jax.grad(mse)(c[0], X_TRAIN, Y_TRAIN)
            u, s2 = POP_TX.update(g, c[1], c[0])
            return jopt.apply_updates(c[0], u), s2

        p2, s2 = jax.lax.fori_loop(0, ROUND_STEPS, step, (p, s))
        return p2, s2, POP_ES.update(e, mse(p2, X_VAL, Y_VAL), p2)

    p2, s2, e2 = jax.jit(jax.vmap(ungated))(p, s, e)
    outside = (jopt.gate_stopped(e, p2, p), jopt.gate_stopped(e, s2, s), e2)
    inside = pop_round(p, s, e)
    assert tree_equal(outside, inside)


# ---------------------------------------------------------------------------------------------
# 2. The whole training loop compiled as one lax.while_loop.


@pytest.mark.parametrize("i", [0, 2])
def test_while_loop_solo_stops_where_python_loop_does(i):
    tx, es = solo_setup(i)
    traces = []

    @jax.jit
    def train(p, s, e):
        traces.append(1)

        def cond(c):
            return ~c[2].stopped & (c[3] < MAX_ROUNDS)

        def body(c):
            return (*train_round(tx, es, *c[:3]), c[3] + 1)

        return jax.lax.while_loop(cond, body, (p, s, e, jnp.int32(0)))

    p, s, e, rounds = train(P0, tx.init(P0), es.init(P0))
    r, sp, ss, se = solo_run(i)
    assert int(rounds) == r + 1 and len(traces) == 1
    assert jopt.should_stop(e) and jopt.stop_reason(e) == REASONS[i]
    assert int(e.step) == int(se.step) and int(e.best_step) == int(se.best_step)
    assert tree_allclose(p, sp, rtol=1e-6, atol=1e-6)
    assert tree_allclose(e.best_params, se.best_params, rtol=1e-6, atol=1e-6)


def test_while_loop_population_runs_until_all_members_stopped():
    history = population_run()

    @jax.jit
    def train(p, s, e):
        def cond(c):
            return ~jnp.all(c[2].stopped) & (c[3] < MAX_ROUNDS)

        def body(c):
            return (*jax.vmap(functools.partial(train_round, POP_TX, POP_ES))(*c[:3]), c[3] + 1)

        return jax.lax.while_loop(cond, body, (p, s, e, jnp.int32(0)))

    p, s, e, rounds = train(*population_init())
    assert int(rounds) == len(history)
    hp, hs, he = history[-1]
    for f in ("step", "best_step", "status", "wait"):
        assert np.array_equal(np.asarray(getattr(e, f)), getattr(he, f)), f
    assert tree_allclose(p, hp, rtol=1e-6, atol=1e-6)
    assert tree_allclose(e.best_params, he.best_params, rtol=1e-6, atol=1e-6)
    for i in range(4):
        assert int(e.step[i]) == solo_run(i)[0] + 1


def test_while_loop_example_script():
    path = ROOT / "examples" / "while_loop_early_stopping.py"
    spec = importlib.util.spec_from_file_location("while_loop_early_stopping", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(verbose=False)
    # The example checks itself against a Python loop; it also returns what it found.
    assert result["compiled_rounds"] == result["python_rounds"]
    assert all(result["stopped"])
    assert result["compiled_stops"] == result["python_stops"]


# ---------------------------------------------------------------------------------------------
# 3. Many devices.

N_DEV = 8
# Per-call means (dyadic, so the float32 mean over replicas is exact) and per-replica offsets
# summing to zero, rotated on every call so that replicas deciding alone would disagree. With patience 2: 1.0, 0.75 improve; 0.875 waits 1; 0.5 improves; 0.625,
# 0.5625 wait 1, 2 -> stop on call 5; later calls change nothing.
MEANS = np.asarray([1.0, 0.75, 0.875, 0.5, 0.625, 0.5625, 0.25, 0.125], np.float32)
OFFSETS = (np.arange(N_DEV, dtype=np.float32) - 3.5) * 0.125


def _replicas_agree(tree):
    for leaf in jax.tree_util.tree_leaves(tree):
        arr = np.asarray(leaf)
        for d in range(1, arr.shape[0]):
            assert np.array_equal(arr[0], arr[d])


def test_pmap_early_stopping_averages_the_metric_across_replicas():
    es_axis = jopt.early_stopping(patience=2, axis_name="d")
    es_one = jopt.early_stopping(patience=2)
    states = jax.pmap(lambda _: es_axis.init(), axis_name="d")(jnp.arange(N_DEV))
    update = jax.pmap(es_axis.update, axis_name="d")
    update_local = jax.pmap(es_one.update)  # no axis_name: each replica decides alone
    local = states
    single = es_one.init()
    statuses = []
    for k, m in enumerate(MEANS):
        per_device = jnp.asarray(m + np.roll(OFFSETS, 3 * k))
        states = update(states, per_device)
        local = update_local(local, per_device)
        single = es_one.update(single, jnp.float32(m))
        _replicas_agree(states)
        assert tree_equal(member_of(states, 0), single)
        statuses.append(int(single.status))
        # The host reads the replicated scalar: one value per device, all equal.
        flags = jopt.should_stop(states)
        assert flags.shape == (N_DEV,) and len(set(flags.tolist())) == 1
        assert bool(flags[0]) == jopt.should_stop(single)
    assert statuses.index(int(Status.STOPPED_PATIENCE)) == 5
    assert jopt.stop_reason(single) == "patience exhausted" and int(single.best_step) == 3
    # Without the axis the replicas see different metrics and disagree: the test has teeth.
    assert len(set(np.asarray(local.step).tolist())) > 1, np.asarray(local.step)


def test_pmap_reduce_on_plateau_with_axis_name():
    kw = dict(factor=0.5, patience=1, min_delta=0.0)
    tx_axis = jopt.chain(jopt.sgd(0.1), jopt.reduce_on_plateau(**kw, axis_name="d"))
    tx_one = jopt.chain(jopt.sgd(0.1), jopt.reduce_on_plateau(**kw))
    params = {"w": jnp.arange(3, dtype=jnp.float32)}
    rep = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (N_DEV,) + x.shape), params)
    state = jax.pmap(tx_axis.init, axis_name="d")(rep)
    single_p, single_s = params, tx_one.init(params)

    @functools.partial(jax.pmap, axis_name="d")
    def step(p, s, v):
        g = jax.tree_util.tree_map(jnp.ones_like, p)
        u, s = tx_axis.update(g, s, p, value=v)
        return jopt.apply_updates(p, u), s

    scales = []
    for k, m in enumerate(MEANS):
        rep, state = step(rep, state, jnp.asarray(m + np.roll(OFFSETS, 3 * k)))
        g = jax.tree_util.tree_map(jnp.ones_like, single_p)
        u, single_s = tx_one.update(g, single_s, single_p, value=jnp.float32(m))
        single_p = jopt.apply_updates(single_p, u)
        _replicas_agree((rep, state))
        assert tree_equal(member_of((rep, state), 0), (single_p, single_s))
        scales.append(float(single_s[1].scale))
    # patience 1 reduces on each non-improving decision: calls 2, 4, 5 (0-based).
    assert scales == [1.0, 1.0, 0.5, 0.5, 0.25, 0.125, 0.125, 0.125]


def test_shard_map_early_stopping_with_axis_name_and_sharded_best_params():
    # Under shard_map (replication checker on) each shard sees its own metric; the averaged
    # decision leaves the scalar state replicated (out_specs P()) and best_params sharded.
    mesh = Mesh(np.array(jax.devices()), ("x",))
    es = jopt.early_stopping(patience=2, keep_best=True, axis_name="x")
    es_one = jopt.early_stopping(patience=2, keep_best=True)
    sh = NamedSharding(mesh, P("x"))
    params = {"w": jax.device_put(jnp.arange(16, dtype=jnp.float32), sh)}
    state = es.init(params)
    specs = jopt.EarlyStoppingState(
        *(P(),) * 6, hyperparams=jax.tree_util.tree_map(lambda _: P(), state.hyperparams),
        best_params={"w": P("x")})
    update = jax.jit(jax.shard_map(lambda s, m, p: es.update(s, m[0], p), mesh=mesh,
                                   in_specs=(specs, P("x"), {"w": P("x")}), out_specs=specs))
    single = es_one.init(jax.device_get(params))
    for k, m in enumerate(MEANS):
        p = {"w": params["w"] + k}
        state = update(state, jnp.asarray(m + np.roll(OFFSETS, 3 * k)), p)
        single = es_one.update(single, jnp.float32(m), jax.device_get(p))
        assert jopt.should_stop(state) is jopt.should_stop(single)
        assert tree_equal(jax.device_get(state), single)
    assert jopt.stop_reason(state) == "patience exhausted"
    assert state.best_params["w"].sharding.is_equivalent_to(sh, 1)
    assert update._cache_size() == 1


def test_jit_named_sharding_keep_best_compiles_once():
    mesh = Mesh(np.array(jax.devices()), ("x",))
    sh, rep = NamedSharding(mesh, P("x")), NamedSharding(mesh, P())
    rng = np.random.default_rng(1)
    w_true = rng.normal(size=(16, 4))
    x, xv = rng.normal(size=(12, 16)), rng.normal(size=(64, 16))  # over-parameterized
    y = jnp.asarray(x @ w_true + rng.normal(size=(12, 4)), jnp.float32)
    yv = jnp.asarray(xv @ w_true + rng.normal(size=(64, 4)), jnp.float32)
    x, xv = jnp.asarray(x, jnp.float32), jnp.asarray(xv, jnp.float32)
    tx = jopt.adamw(0.05, weight_decay=WEIGHT_DECAY)
    es = jopt.early_stopping(patience=2, keep_best=True)

    def loss(p, a, b):
        return jnp.mean((a @ p["w"] + p["b"][None] - b) ** 2)

    traces = []

    def round_(p, s, e):
        traces.append(1)
        for _ in range(3):
            u, s = tx.update(jax.grad(loss)(p, x, y), s, p)
            p = jopt.apply_updates(p, u)
        return p, s, es.update(e, loss(p, xv, yv), p)

    def run(p, step):
        s, e = tx.init(p), es.init(p)
        for r in range(60):
            p, s, e = step(p, s, e)
            stop = jopt.should_stop(e)
            assert isinstance(stop, bool)  # a replicated scalar read by the host
            if stop:
                return r, p, e
        raise AssertionError("did not stop")

    p0 = {"w": jnp.zeros((16, 4), jnp.float32), "b": jnp.zeros((4,), jnp.float32)}
    sharded = {"w": jax.device_put(p0["w"], sh), "b": jax.device_put(p0["b"], rep)}
    e0 = es.init(sharded)
    assert e0.best_params["w"].sharding == sh and e0.best_params["b"].sharding == rep
    step = jax.jit(round_)
    r, p, e = run(sharded, step)
    assert len(traces) == 1 and step._cache_size() == 1
    assert e.best_params["w"].sharding.is_equivalent_to(sh, 2)
    assert e.best_params["b"].sharding.is_equivalent_to(rep, 1)
    assert p["w"].sharding.is_equivalent_to(sh, 2)
    assert e.status.sharding.is_fully_replicated
    # Same decisions and numbers as the unsharded run.
    r1, p1, e1 = run(jax.device_get(p0), jax.jit(round_))
    assert r == r1 > 2 and int(e.best_step) == int(e1.best_step) < r
    assert tree_allclose(e.best_params, e1.best_params, rtol=1e-5, atol=1e-6)
    assert tree_allclose(p, p1, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# 4. Checkpoints.


def _ckpt_setup():
    es = jopt.early_stopping(patience=1, keep_best=True)
    tx = jopt.chain(jopt.adamw(0.05, weight_decay=WEIGHT_DECAY),
                    jopt.reduce_on_plateau(factor=0.5, patience=1, cooldown=1))

    def init():
        e = jopt.set_hyperparams(es.init(P0), patience=3, min_delta=1e-3)
        return {"params": P0, "opt": tx.init(P0), "es": e}

    def step(c):
        def one(_, pc):
            p, s = pc
            g = jax.grad(mse)(p, X_TRAIN, Y_TRAIN)
            u, s = tx.update(g, s, p, value=mse(p, X_VAL, Y_VAL))
            return jopt.apply_updates(p, u), s

        p, s = jax.lax.fori_loop(0, ROUND_STEPS, one, (c["params"], c["opt"]))
        e = es.update(c["es"], mse(p, X_VAL, Y_VAL), p)
        return {"params": jopt.gate_stopped(c["es"], p, c["params"]),
                "opt": jopt.gate_stopped(c["es"], s, c["opt"]), "es": e}

    return init, jax.jit(step)


def test_orbax_round_trip_and_resumed_run_decides_the_same(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    init, step = _ckpt_setup()

    # Uninterrupted run.
    c = init()
    full = []
    for _ in range(40):
        c = step(c)
        full.append(jax.device_get(c))
        if jopt.should_stop(c["es"]):
            break
    assert jopt.should_stop(c["es"]) and len(full) > 6
    # The chain's reduce_on_plateau acted at least once.
    assert float(full[-1]["opt"][1].scale) < 1.0

    # Interrupted after k rounds, saved, restored into an abstract target, continued.
    # k is chosen so that the saved state is mid-flight: a reduction done (scale < 1), a
    # non-zero early-stopping wait, not yet stopped.
    k = len(full) - 2
    c = init()
    for _ in range(k):
        c = step(c)
    assert not jopt.should_stop(c["es"]) and int(c["es"].wait) > 0
    assert float(c["opt"][1].scale) < 1.0
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp_path / "ckpt", c)
    ckptr.wait_until_finished()
    # The abstract target comes from the default configuration (patience=1, no min_delta):
    # the per-run hyperparameters must come from the checkpoint.
    abstract = jax.eval_shape(init)
    restored = ckptr.restore(tmp_path / "ckpt", abstract)
    ckptr.close()
    assert isinstance(restored["es"], jopt.EarlyStoppingState)
    assert isinstance(restored["opt"][1], jopt.ReduceOnPlateauState)
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(c)
    assert tree_equal(restored, c)  # bitwise, dtypes (int32 counters, status) included
    assert int(restored["es"].hyperparams["patience"]) == 3
    assert tree_equal(jopt.get_hyperparams(restored["es"]), jopt.get_hyperparams(c["es"]))

    resumed = [jax.device_get(c)]
    c = restored
    for _ in range(len(full) - k):
        c = step(c)
        resumed.append(jax.device_get(c))
    assert tree_equal(resumed[-1], full[-1])
    for a, b in zip(resumed[1:], full[k:]):
        assert tree_equal(a, b)


def test_set_hyperparams_on_a_population_sharded_over_members_does_not_recompile():
    # A population whose members are spread over devices (its per-member hyperparameters
    # sharded on the member axis): setting a value re-placed it replicated, so the step's
    # input sharding changed and it compiled again.
    mesh = Mesh(np.array(jax.devices()), ("pop",))
    members = NamedSharding(mesh, P("pop"))
    tx = jopt.adamw(1e-3, weight_decay=1e-2)
    params = {"w": jnp.ones((8, 3))}
    state = jax.vmap(lambda lr: jopt.set_hyperparams(tx.init({"w": jnp.ones(3)}),
                                                     learning_rate=lr))(jnp.logspace(-4, -1, 8))
    state = jax.device_put(state, members)
    params = jax.device_put(params, members)
    traces = []

    @jax.jit
    def step(p, s):
        traces.append(1)
        return jax.vmap(lambda p, s: tx.update(p, s, p))(p, s)[1]

    state = step(params, state)
    lr = state[2].hyperparams["learning_rate"]
    assert lr.sharding.is_equivalent_to(members, 1)
    for new in (jnp.linspace(1e-3, 1e-2, 8), 5e-3):
        state = jopt.set_hyperparams(state, learning_rate=new, weight_decay=0.0)
        assert state[2].hyperparams["learning_rate"].sharding.is_equivalent_to(members, 1)
        state = step(params, state)
    assert len(traces) == 1
    np.testing.assert_allclose(np.asarray(jopt.get_hyperparams(state)["learning_rate"]), 5e-3,
                               rtol=1e-6)
