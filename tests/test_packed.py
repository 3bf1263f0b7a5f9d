"""Packed mode and flat state (jopt/_packed.py): ``jopt.pack`` / ``jopt.unpack`` / ``jopt.Packed``
/ ``jopt.Layout`` and ``jopt.flatten``.

Every transformation computes the same per-leaf rule on packed values as on the tree, masks
keep their per-leaf meaning, sharded leaves stay whole, and the compiled step does not grow
with the number of leaves.

How exact "the same" is. jopt applies the same float32 operations to every element in the
three modes (tree, ``flatten(tx)``, packed), but XLA's CPU code generator does not always
round them the same way when the array shapes differ: it may contract a multiply and an add
into one fused multiply-add (which product it fuses depends on how the step was fused), and in
a vectorized loop it divides by a broadcast scalar through its reciprocal (a 0-d leaf on its
own is divided exactly; the same element inside a buffer is not). Each is a last-bit
difference per operation. So:

- configurations that the compiler cannot round differently (every product exact: power-of-two
  hyperparameters, no division) are compared bit for bit, through jit, in all three modes;
- every registry entry is compared over 10 jitted steps with a tolerance of a few float32
  ulps (one rounding step for bfloat16 values, whose float32 result may sit next to a
  bfloat16 rounding boundary); for entries with ``clip_by_global_norm`` this also covers the
  float32 summation order of the norm (per buffer instead of per leaf).
A wrong mask, offset, dtype or state mapping changes values by far more than that.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import REGISTRY, REGISTRY_IDS, counting_step, matrices_only, tree_equal
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jopt
from jopt.errors import TreeMismatchError

# optax mixes int32 counters with float32 values, which the suite's strict promotion rejects.
standard = jax.numpy_dtype_promotion("standard")

MODES = ("plain", "flatten", "packed")


def _mixed_params(seed=0):
    """A scalar, matrices, vectors, a zero-size leaf and bfloat16 leaves, in nested dicts,
    lists and tuples; float32 and bfloat16 leaves alternate in tree order."""
    rng = np.random.default_rng(seed)

    def a(shape, dtype=jnp.float32):
        return jnp.asarray(rng.normal(size=shape), dtype)

    return {
        "blocks": [
            (a((2, 2)), a((5,), jnp.bfloat16)),
            {"w": a((3, 2, 2), jnp.bfloat16), "b": a((2,))},
        ],
        "dense": {"kernel": a((4, 3)), "bias": a((3,))},
        "emb": a((6,), jnp.bfloat16),
        "empty": a((0, 5)),
        "scale": a(()),
    }


# Buffers of _mixed_params: float32 (22 elements) first, as its first leaf is float32.
F32_SIZE, BF16_SIZE = 22, 23


def _like(params, seed):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)


def _mask_tree(params=None):
    """Decayed and plain leaves alternate inside both the float32 and the bfloat16 buffer."""
    del params
    return {
        "blocks": [(True, False), {"w": True, "b": False}],
        "dense": {"kernel": True, "bias": False},
        "emb": False,
        "empty": True,
        "scale": False,
    }


def _is_packed(x):
    return isinstance(x, jopt.Packed)


# Slices only (exact copies); one compilation per layout instead of one per eager slice.
_unpack = jax.jit(jopt.unpack)


def _view(tree):
    """``tree`` with every Packed value unpacked; a FlattenState reduced to its inner state."""
    while isinstance(tree, jopt.FlattenState):  # flatten(flatten(tx)) too
        tree = tree.inner
    return jax.tree_util.tree_map(lambda x: _unpack(x) if _is_packed(x) else x, tree,
                                  is_leaf=_is_packed)


def _side_by_side(runs, params, grads_seq):
    """Trains several ``(transformation, packed)`` runs side by side in one jitted step (one
    compilation) for ``len(grads_seq)`` steps, from the same params and gradients; a packed run
    gets ``jopt.pack`` of both.

    Returns, per run, ``(params, state, [updates of every step])`` as per-leaf trees.
    """
    txs = tuple(tx for tx, _ in runs)
    pk = jopt.pack(params)
    ps = tuple(pk if packed else params for _, packed in runs)
    ss = tuple(tx.init(p) for tx, p in zip(txs, ps))
    traces = []

    @jax.jit
    def step(ps, ss, g, g_packed):
        traces.append(1)
        out = []
        for (t, packed), p, s in zip(runs, ps, ss):
            u, s = t.update(g_packed if packed else g, s, p)
            out.append((jopt.apply_updates(p, u), s, u))
        return tuple(zip(*out))

    updates = [[] for _ in runs]
    for g in grads_seq:
        ps, ss, us = step(ps, ss, g, jopt.pack(g))
        for (_, packed), p, u, seen in zip(runs, ps, us, updates):
            if packed:
                assert _is_packed(u) and u.layout == pk.layout and p.layout == pk.layout
            seen.append(_view(u))
    assert len(traces) == 1
    return [(_view(p), _view(s), u) for p, s, u in zip(ps, ss, updates)]


def _three_modes(tx, params, grads_seq):
    """``tx`` on the tree, ``flatten(tx)`` on the tree and ``tx`` on packed values (the packed
    mode), side by side: a dict from mode to ``(params, state, [updates])``."""
    runs = [(tx, False), (jopt.flatten(tx), False), (tx, True)]
    return dict(zip(MODES, _side_by_side(runs, params, grads_seq)))


def _assert_close(a, b, rtol=1e-6):
    """Same structure, shapes and dtypes; integers (counters) equal; floating values within
    ``rtol`` of the largest magnitude of their dtype in ``b`` (a normwise error, so an element
    made small by cancellation is not held to its own last bits).

    float32 ``rtol = 1e-6`` is about 8 ulps: single-operation rounding differences kept small
    over 10 steps. A bfloat16 value may be one bfloat16 rounding step away (2**-7).
    """
    la, ta = jax.tree_util.tree_flatten_with_path(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb, (ta, tb)
    scale: dict = {}
    for y in lb:
        y = np.asarray(y)
        if jnp.issubdtype(y.dtype, jnp.inexact) and y.size:
            scale[y.dtype] = max(scale.get(y.dtype, 0.0), float(np.max(np.abs(y))))
    for (path, x), y in zip(la, lb):
        where = jax.tree_util.keystr(path)
        x, y = np.asarray(x), np.asarray(y)
        assert (x.shape, x.dtype) == (y.shape, y.dtype), (where, x.shape, y.shape, x.dtype, y.dtype)
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            np.testing.assert_array_equal(x, y, err_msg=where)
            continue
        tol = (2.0**-7 if x.dtype == jnp.bfloat16 else rtol) * scale.get(x.dtype, 0.0)
        err = np.abs(x.astype(np.float64) - y.astype(np.float64))
        assert np.all(err <= tol), (where, float(np.max(err)), tol)


def _assert_runs_close(got, want):
    """``_assert_close`` on the params, the state and every step's updates, each on its own
    scale."""
    (p, s, us), (p0, s0, us0) = got, want
    _assert_close(p, p0)
    _assert_close(s, s0)
    assert len(us) == len(us0)
    for u, u0 in zip(us, us0):
        _assert_close(u, u0)


# ---------------------------------------------------------------------------------------------
# 1. Every transformation: tree mode, flatten(tx) and packed mode agree.


@pytest.mark.parametrize("name,factory,_", REGISTRY, ids=REGISTRY_IDS)
def test_registry_tree_flatten_and_packed_agree(name, factory, _):
    tx = factory()
    params = _mixed_params()
    res = _three_modes(tx, params, [_like(params, 1 + i) for i in range(10)])
    plain = res["plain"]
    # Params after 10 steps, every step's updates, and the final state with its flat buffers
    # unpacked (adam's mu and nu, trace's momentum); counters are compared exactly.
    # Entries with clip_by_global_norm: the squares are summed per buffer rather than per leaf,
    # so the norm (and the clipping factor) may differ in its last float32 bits as well.
    # The unpacked state must have the tree mode's structure, leaf for leaf.
    for mode in ("flatten", "packed"):
        _assert_runs_close(res[mode], plain)


# Every product exact (powers of two) and no division: the compiler has no rounding choice, so
# the three modes must agree bit for bit, bfloat16 leaves included.
BITWISE = [
    ("scale", lambda: jopt.scale(0.5)),
    ("sgd_nesterov", lambda: jopt.sgd(0.5, momentum=0.5, nesterov=True)),
    ("clip_trace_decay_lr", lambda: jopt.chain(
        jopt.clip(0.75), jopt.trace(0.25), jopt.add_decayed_weights(0.5),
        jopt.scale_by_learning_rate(0.125))),
    ("trace_masked_decay", lambda: jopt.chain(
        jopt.trace(0.5), jopt.add_decayed_weights(0.5, mask=_mask_tree()),
        jopt.scale_by_learning_rate(0.25))),
]


@pytest.mark.parametrize("factory", [b[1] for b in BITWISE], ids=[b[0] for b in BITWISE])
def test_elementwise_rules_bit_for_bit(factory):
    params = _mixed_params()
    res = _three_modes(factory(), params, [_like(params, 1 + i) for i in range(10)])
    assert tree_equal(res["flatten"], res["plain"])
    assert tree_equal(res["packed"], res["plain"])


def test_state_buffers_are_flat():
    params = _mixed_params()
    state = jopt.adam(0.1).init(jopt.pack(params))
    mu = state[0].mu
    assert _is_packed(mu)
    assert [b.shape for b in mu.buffers] == [(F32_SIZE,), (BF16_SIZE,)]
    # Moments of bfloat16 parameters are float32 by default, in the packed mode too.
    assert [b.dtype for b in mu.buffers] == [jnp.float32, jnp.float32]
    assert jax.tree_util.tree_map(jnp.shape, _view(mu)) == jax.tree_util.tree_map(
        jnp.shape, params)
    fstate = jopt.flatten(jopt.adam(0.1)).init(params)
    assert isinstance(fstate, jopt.FlattenState)
    assert fstate.inner[0].mu.layout == mu.layout


# ---------------------------------------------------------------------------------------------
# 2. Weight-decay masks keep their per-leaf meaning.

MASKS = [
    pytest.param(_mask_tree(), True, id="tree"),
    pytest.param(matrices_only, True, id="callable_ndim"),
    pytest.param(lambda p: jax.tree_util.tree_map(lambda x: x.dtype == jnp.bfloat16, p), False,
                 id="callable_per_dtype"),
    pytest.param(lambda p: jax.tree_util.tree_map(lambda x: True, p), False, id="all_true"),
    pytest.param(lambda p: jax.tree_util.tree_map(lambda x: False, p), False, id="all_false"),
]


@pytest.mark.parametrize("mask,with_adamw", MASKS)
def test_masks_refer_to_the_original_tree(mask, with_adamw):
    # add_decayed_weights(0.5): exact products, so bit for bit. adamw (for the masks that mix
    # decayed and plain leaves inside one buffer): a decay large enough (lr * wd = 1e-2 per
    # step) that a wrong mask is far outside the tolerance.
    params = _mixed_params()
    grads_seq = [_like(params, 1 + i) for i in range(4)]
    res = _three_modes(jopt.add_decayed_weights(0.5, mask=mask), params, grads_seq)
    assert tree_equal(res["flatten"], res["plain"])
    assert tree_equal(res["packed"], res["plain"])
    if with_adamw:
        res = _three_modes(jopt.adamw(0.1, weight_decay=0.1, mask=mask), params, grads_seq)
        _assert_runs_close(res["flatten"], res["plain"])
        _assert_runs_close(res["packed"], res["plain"])


def test_mask_decays_exactly_the_masked_leaves():
    # Zero updates: only the decay moves anything, so the result shows which leaves decayed.
    params = _mixed_params()
    tx = jopt.add_decayed_weights(0.5, mask=_mask_tree())
    pk = jopt.pack(params)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, pk)
    u, _ = jax.jit(tx.update)(zeros, tx.init(pk), pk)
    flags = jax.tree_util.tree_leaves(_mask_tree())
    for decayed, p, v in zip(flags, jax.tree_util.tree_leaves(params),
                             jax.tree_util.tree_leaves(_view(u))):
        expected = (0.5 * p.astype(jnp.float32)).astype(p.dtype) if decayed else jnp.zeros_like(p)
        assert tree_equal(v, expected)


def test_mask_resolved_per_buffer():
    from jopt._masks import resolve_mask as _resolve_mask

    params = _mixed_params()
    pk = jopt.pack(params)
    # A mask on which all leaves of a buffer agree is one Python bool for that buffer.
    per_dtype = _resolve_mask("t", lambda p: jax.tree_util.tree_map(
        lambda x: x.dtype == jnp.float32, p), pk)
    assert _is_packed(per_dtype) and per_dtype.buffers == (True, False)
    assert _resolve_mask("t", lambda p: jax.tree_util.tree_map(lambda x: True, p),
                         pk).buffers == (True, True)
    # A mixed buffer gets a boolean array marking each leaf's elements.
    mixed = _resolve_mask("t", matrices_only, pk)
    assert [np.shape(b) for b in mixed.buffers] == [(F32_SIZE,), (BF16_SIZE,)]
    tree = _resolve_mask("t", matrices_only, params)
    assert tree_equal(mixed.unpack(), jax.tree_util.tree_map(
        lambda flag, p: jnp.full(p.shape, flag), tree, params))


def test_mask_on_buffer_of_zero_size_leaves():
    # A buffer whose leaves disagree but own no element: nothing to select.
    params = {"a": jnp.ones((0,), jnp.float16), "b": jnp.ones((2, 0), jnp.float16),
              "c": jnp.ones((3,)), "d": jnp.ones((0,))}
    mask = {"a": True, "b": False, "c": True, "d": False}
    tx = jopt.add_decayed_weights(0.5, mask=mask)
    pk = jopt.pack(params)
    u, _ = jax.jit(tx.update)(pk, tx.init(pk), pk)
    plain, _ = jax.jit(tx.update)(params, tx.init(params), params)
    assert tree_equal(u.unpack(), plain)


# ---------------------------------------------------------------------------------------------
# 3. Packed basics.


@pytest.mark.parametrize("tree", [
    pytest.param(_mixed_params(), id="mixed"),
    pytest.param({}, id="empty"),
    pytest.param(jnp.arange(5.0), id="single_leaf"),
    pytest.param((jnp.float32(1.5), jnp.bfloat16(2.5), jnp.int32(3), jnp.float32(-0.0)),
                 id="scalars"),
    pytest.param({"f16": jnp.ones((2, 3), jnp.float16), "i8": jnp.arange(4, dtype=jnp.int8),
                  "c64": jnp.asarray([1 + 2j], jnp.complex64), "b": jnp.asarray([True, False]),
                  "f32": jnp.asarray([[[np.nan]]], jnp.float32),
                  "u32": jnp.arange(3, dtype=jnp.uint32), "f16b": jnp.zeros((4,), jnp.float16)},
                 id="many_dtypes"),
])
def test_pack_unpack_round_trip_bitwise(tree):
    pk = jopt.pack(tree)
    assert _is_packed(pk)
    leaves = jax.tree_util.tree_leaves(tree)
    assert len(pk.buffers) == len({np.dtype(x.dtype) for x in leaves})
    assert all(b.ndim == 1 for b in pk.buffers)
    assert [b.dtype for b in pk.buffers] == list(pk.layout.group_dtypes)
    for out in (jopt.unpack(pk), pk.unpack(), jax.jit(lambda t: jopt.pack(t).unpack())(tree)):
        assert tree_equal(out, tree)
        # Bitwise, signed zeros and NaN payloads included.
        for x, y in zip(jax.tree_util.tree_leaves(out), leaves):
            assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
    # The buffers are the pytree leaves; the layout is static data.
    assert jax.tree_util.tree_leaves(pk) == list(pk.buffers)
    again = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(pk), pk.buffers)
    assert again.layout == pk.layout


def test_python_scalar_leaves_get_the_dtype_jax_stores():
    pk = jopt.pack({"f": 1.5, "i": 3, "a": jnp.ones((2,))})
    assert pk.layout.group_dtypes == (np.dtype(np.float32), np.dtype(np.int32))
    assert [b.dtype for b in pk.buffers] == [jnp.float32, jnp.int32]
    assert repr(pk) == "Packed(3 leaves in float32[3], int32[1])"
    assert pk.unpack()["f"] == 1.5 and pk.unpack()["i"] == 3


def test_layout_of_mixed_tree():
    layout = jopt.pack(_mixed_params()).layout
    assert layout.num_leaves == 9
    assert layout.group_dtypes == (np.dtype(np.float32), np.dtype(jnp.bfloat16))
    assert layout.group_sizes == (F32_SIZE, BF16_SIZE)
    assert layout.solo == (False, False)
    # Leaves in tree order: blocks[0][0], blocks[0][1] (bf16), blocks[1].b, blocks[1].w (bf16),
    # dense.bias, dense.kernel, emb (bf16), empty, scale.
    assert layout.group_of == (0, 1, 0, 1, 0, 0, 1, 0, 0)
    assert layout.offsets == (0, 0, 4, 5, 6, 9, 17, 21, 21)
    assert jopt.Layout.of(jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _mixed_params())) == layout


def test_repr():
    assert repr(jopt.pack(_mixed_params())) == "Packed(9 leaves in float32[22], bfloat16[23])"
    assert repr(jopt.pack({})) == "Packed(0 leaves in )"


def _loss(tree):
    leaves = jax.tree_util.tree_leaves(tree)
    return sum(jnp.sum(jnp.sin(x.astype(jnp.float32)) * (i + 1.0)) for i, x in enumerate(leaves))


def test_grad_of_packed_is_packed_with_same_layout():
    params = _mixed_params()
    pk = jopt.pack(params)
    g = jax.jit(jax.grad(lambda q: _loss(q.unpack())))(pk)
    assert _is_packed(g) and g.layout == pk.layout
    ref = jax.jit(jax.grad(_loss))(params)
    # The gradient of a slice is the cotangent placed at its offsets: no arithmetic on it.
    assert tree_equal(_view(g), ref)
    assert tree_equal(g, jopt.pack(ref))


def test_jit_with_donated_packed_values():
    params = _mixed_params()
    tx = jopt.adamw(0.05, weight_decay=1e-2)

    def step(p, s):
        g = jax.grad(lambda q: _loss(q.unpack()))(p)
        u, s = tx.update(g, s, p)
        return jopt.apply_updates(p, u), s

    pk = jopt.pack(params)
    ref = jax.jit(step)(pk, tx.init(pk))
    donated = jax.jit(step, donate_argnums=(0, 1))
    old_p, old_s = jopt.pack(params), tx.init(pk)
    new_p, new_s = donated(old_p, old_s)
    assert all(b.is_deleted() for b in old_p.buffers + old_s[0].mu.buffers)
    assert tree_equal((new_p, new_s), ref)
    new_p, new_s = donated(new_p, new_s)  # a donated result feeds the next step
    assert new_p.layout == pk.layout


def test_vmap_population_of_packed_params():
    n, steps = 4, 3
    members = [_mixed_params(seed) for seed in range(n)]
    grads = [[_like(m, 10 * i + k) for k in range(steps)] for i, m in enumerate(members)]

    def stack(trees):
        return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)

    tx = jopt.adam(0.05)
    pop = stack([jopt.pack(m) for m in members])
    assert _is_packed(pop)
    assert [b.shape for b in pop.buffers] == [(n, F32_SIZE), (n, BF16_SIZE)]
    # unpack of batched buffers: every leaf gets the leading population axis.
    assert tree_equal(pop.unpack(), stack(members))
    traces = []

    def step(p, s, g):
        traces.append(1)
        view = p.unpack()  # inside vmap: the member's own tree
        assert view["dense"]["kernel"].shape == (4, 3) and view["scale"].shape == ()
        u, s = tx.update(g, s, p)
        return jopt.apply_updates(p, u), s, _loss(view)

    pop_step, solo_step = jax.jit(jax.vmap(step)), jax.jit(step)
    state = jax.vmap(tx.init)(pop)
    first = np.asarray([_loss(m) for m in members])
    for k in range(steps):
        pop, state, losses = pop_step(pop, state, stack([jopt.pack(g[k]) for g in grads]))
        if k == 0:  # each member's loss, computed from its unpacked view
            np.testing.assert_allclose(np.asarray(losses), first, rtol=1e-6)
    for i in range(n):
        p = jopt.pack(members[i])
        s = tx.init(p)
        for k in range(steps):
            p, s, _ = solo_step(p, s, jopt.pack(grads[i][k]))
        member = jax.tree_util.tree_map(lambda x, i=i: x[i], pop)
        # vmap may fuse differently from the solo program (see the module docstring).
        _assert_close(_view(member), _view(p))
    assert len(traces) == 2  # one trace for the population, one for the solo step


def test_layout_equal_and_hashable_no_recompile():
    a, b = jopt.Layout.of(_mixed_params(0)), jopt.Layout.of(_mixed_params(1))
    assert a == b and hash(a) == hash(b) and a is not b
    assert jopt.Layout.of({**_mixed_params(), "scale": jnp.zeros((), jnp.bfloat16)}) != a
    assert jopt.Layout.of({**_mixed_params(), "scale": jnp.zeros((1,))}) != a
    assert len({a, b}) == 1
    tx = jopt.sgd(0.1, momentum=0.9)
    step, traces = counting_step(tx)

    pk = jopt.pack(_mixed_params())
    state = tx.init(pk)
    for i in range(4):
        # A freshly packed gradient every step: a new, equal Layout object.
        pk, state = step(pk, state, jopt.pack(_like(_mixed_params(), i)))
    assert len(traces) == 1 and step._cache_size() == 1


# ---------------------------------------------------------------------------------------------
# 4. Sharded leaves stay whole.


def _sharded_params():
    mesh = Mesh(np.array(jax.devices()), ("x",))
    sh, rep = NamedSharding(mesh, P("x")), NamedSharding(mesh, P())
    rng = np.random.default_rng(0)

    def put(shape, dtype, sharding):
        return jax.device_put(jnp.asarray(rng.normal(size=shape), dtype), sharding)

    params = {"b": put((4,), jnp.float32, rep), "c": put((3, 3), jnp.float32, rep),
              "h": put((5,), jnp.bfloat16, rep), "w": put((16, 4), jnp.float32, sh)}
    return params, sh


def test_sharded_leaf_stays_its_own_group():
    params, sh = _sharded_params()
    pk = jopt.pack(params)
    layout = pk.layout
    # b and c (replicated float32) share a buffer; h (bfloat16) has its own; w stays whole.
    assert layout.solo == (False, False, True)
    assert layout.group_sizes == (13, 5, 64)
    assert layout.group_of == (0, 0, 1, 2)
    assert pk.buffers[2].shape == (16, 4) and pk.buffers[2].sharding == sh
    assert pk.buffers[0].shape == (13,) and pk.buffers[0].sharding.is_fully_replicated
    assert repr(pk) == "Packed(4 leaves in float32[13], bfloat16[5], float32[16, 4] (solo leaf))"
    assert tree_equal(pk.unpack(), params)


@pytest.mark.parametrize("mode", ["packed", "flatten"])
def test_sharded_leaf_keeps_its_sharding_in_the_state(mode):
    params, sh = _sharded_params()
    grads = jax.tree_util.tree_map(lambda p: (p * 0.5).astype(p.dtype), params)
    tx = jopt.adamw(1e-2, weight_decay=1e-2)
    if mode == "flatten":
        tx, p, g = jopt.flatten(tx), params, grads
    else:
        p, g = jopt.pack(params), jopt.pack(grads)
    state = tx.init(p)

    def solo_shardings(s):
        adam = (s.inner if mode == "flatten" else s)[0]
        assert adam.mu.layout.solo == (False, False, True)
        return adam.mu.buffers[2].sharding, adam.nu.buffers[2].sharding

    assert solo_shardings(state) == (sh, sh)
    step, traces = counting_step(tx)

    for _ in range(3):
        p, state = step(p, state, g)
    assert len(traces) == 1
    assert all(x.is_equivalent_to(sh, 2) for x in solo_shardings(state))
    w = p["w"] if mode == "flatten" else p.buffers[2]
    assert w.sharding.is_equivalent_to(sh, 2)
    # Same numbers as the tree mode on unsharded copies.
    local, local_grads = jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x)),
                                                (params, grads))
    ref_params = _side_by_side([(jopt.adamw(1e-2, weight_decay=1e-2), False)], local,
                               [local_grads] * 3)[0][0]
    _assert_close(jax.tree_util.tree_map(np.asarray, _view(p)), ref_params)


# ---------------------------------------------------------------------------------------------
# 5. flatten: flat state, hyperparameters, early stopping, optax.


def test_flatten_state_does_not_grow_with_leaves():
    params = {f"layer{i:02d}": jnp.full((i % 3 + 1,), float(i)) for i in range(50)}
    state = jopt.flatten(jopt.adam(1e-2)).init(params)
    mu, nu = state.inner[0].mu, state.inner[0].nu
    assert len(mu.buffers) == 1 and len(nu.buffers) == 1
    assert mu.buffers[0].shape == (sum(i % 3 + 1 for i in range(50)),)
    # count, mu, nu, b1, b2, eps, eps_root, the learning rate and its counter.
    assert len(jax.tree_util.tree_leaves(state)) == 9


@pytest.mark.parametrize("mode", ["flatten", "packed"])
def test_hyperparams_through_state_without_recompiling(mode):
    params = _mixed_params()
    tx = jopt.adamw(1e-2, weight_decay=1e-2)
    if mode == "flatten":
        tx = jopt.flatten(tx)
    else:
        params = jopt.pack(params)
    state = tx.init(params)
    hp = jopt.get_hyperparams(state)
    assert float(hp["learning_rate"]) == np.float32(1e-2)
    assert float(hp["weight_decay"]) == np.float32(1e-2)
    traces = []

    @jax.jit
    def step(p, s):
        traces.append(1)
        u, s = tx.update(jax.tree_util.tree_map(jnp.ones_like, p), s, p)
        return jopt.apply_updates(p, u), s

    params, state = step(params, state)
    for lr in (1e-3, 5e-2):
        state = jopt.set_hyperparams(state, learning_rate=lr, b2=0.99)
        assert float(jopt.get_hyperparams(state)["learning_rate"]) == np.float32(lr)
        params, state = step(params, state)
    state = jopt.set_hyperparams(state, learning_rate=0.0)
    same, _ = step(params, state)
    assert tree_equal(same, params)  # the new value is used: lr 0 leaves params unchanged
    assert len(traces) == 1


def test_early_stopping_keep_best_with_packed_params():
    stopper = jopt.early_stopping(mode="min", patience=2, keep_best=True)
    pk = jopt.pack(_mixed_params())
    state = stopper.init(pk)
    assert _is_packed(state.best_params) and state.best_params.layout == pk.layout
    update = jax.jit(stopper.update)
    for i, metric in enumerate([3.0, 1.0, 2.0, 5.0, 0.5]):
        state = update(state, jnp.float32(metric), jopt.pack(_mixed_params(seed=i)))
    assert jopt.should_stop(state) and int(state.best_step) == 1
    best = jopt.best_params(state)
    assert _is_packed(best) and best.layout == pk.layout
    assert tree_equal(_view(best), _mixed_params(seed=1))


@standard
@pytest.mark.parametrize("build,float32_only", [
    pytest.param(lambda: optax.adam(0.05), False, id="adam"),
    pytest.param(lambda: optax.adamw(0.05, weight_decay=1e-2), False, id="adamw"),
    # optax sums the squares of bfloat16 leaves in bfloat16, so its norm depends on how the
    # leaves are grouped far beyond float32 summation order: float32 leaves only here.
    pytest.param(lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.05)), True,
                 id="clip_adam"),
])
def test_optax_on_packed_params(build, float32_only):
    tx, params = build(), _mixed_params()
    if float32_only:
        params = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), params)
    grads_seq = [_like(params, 1 + i) for i in range(5)]
    tree, packed = _side_by_side([(tx, False), (tx, True)], params, grads_seq)
    # optax's state (mu, nu) holds Packed values too; unpacked it is optax's tree state.
    _assert_runs_close(packed, tree)


@standard
def test_optax_elementwise_on_packed_params_bit_for_bit():
    tx = optax.chain(optax.clip(0.75), optax.trace(0.5), optax.scale(-0.25))
    params = _mixed_params()
    grads_seq = [_like(params, 1 + i) for i in range(5)]
    tree, packed = _side_by_side([(tx, False), (tx, True)], params, grads_seq)
    assert tree_equal(packed, tree)


@standard
def test_flatten_inside_optax_chain():
    params = _mixed_params()
    grads_seq = [_like(params, 1 + i) for i in range(5)]
    ours = optax.chain(optax.clip_by_global_norm(1.0), jopt.flatten(jopt.adam(0.05)))
    ref = optax.chain(optax.clip_by_global_norm(1.0), jopt.adam(0.05))
    got, want = _side_by_side([(ours, False), (ref, False)], params, grads_seq)
    # Same params and updates; the state differs by flatten's wrapper and its flat buffers.
    assert isinstance(got[1][1], jopt.FlattenState)
    _assert_runs_close((got[0], _view(got[1][1]), got[2]), (want[0], want[1][1], want[2]))


# ---------------------------------------------------------------------------------------------
# 6. Errors name the transformation, the tree path, the expected and the given value.


def _flatten_setup():
    params = _mixed_params()
    tx = jopt.flatten(jopt.adam(0.1))
    return tx, tx.init(params), params


def _copy(tree):
    return jax.tree_util.tree_map(lambda x: x, tree)


def test_flatten_error_on_extra_leaf():
    tx, state, params = _flatten_setup()
    with pytest.raises(TreeMismatchError) as e:
        tx.update({**params, "extra": jnp.ones(2)}, state, params)
    assert str(e.value) == ("flatten: the updates do not have the structure of the packed "
                            "layout at path ['extra']: expected no leaf there, got a leaf "
                            "(shape (2,) float32).")
    assert e.value.transformation == "flatten" and e.value.path == "['extra']"


def test_flatten_error_on_missing_leaf():
    tx, state, params = _flatten_setup()
    bad = _copy(params)
    del bad["dense"]["bias"]
    with pytest.raises(TreeMismatchError, match=r"^flatten: the updates do not have the "
                       r"structure of the packed layout at path \['dense'\]\['bias'\]: "
                       r"expected a leaf \(shape \(3,\) float32\), got no leaf there\."):
        jax.jit(tx.update)(bad, state, params)


def test_flatten_error_on_different_shape():
    tx, state, params = _flatten_setup()
    bad = _copy(params)
    bad["dense"]["kernel"] = jnp.ones((3, 4))
    with pytest.raises(TreeMismatchError) as e:
        tx.update(bad, state, params)
    assert str(e.value) == ("flatten: the updates do not match the packed layout at path "
                            "['dense']['kernel']: expected float32[4, 3], got float32[3, 4].")
    assert e.value.path == "['dense']['kernel']"
    assert e.value.expected == "float32[4, 3]" and e.value.got == "float32[3, 4]"


def test_flatten_error_on_different_dtype():
    tx, state, params = _flatten_setup()
    bad = _copy(params)
    bad["blocks"][0] = (bad["blocks"][0][0], bad["blocks"][0][1].astype(jnp.float32))
    with pytest.raises(TreeMismatchError) as e:
        jax.jit(tx.update)(bad, state, params)
    # Updates may have another dtype than the params (float32 grads for bfloat16 params), but
    # the leaves that share a buffer must share one.
    assert str(e.value) == ("flatten: the updates of one packed buffer have different dtypes "
                            "at path ['blocks'][0][1]: expected bfloat16[5] (the dtype of "
                            "['blocks'][1]['w'], which shares its buffer), got float32[5].")


def test_flatten_error_on_params_of_another_tree():
    tx, state, params = _flatten_setup()
    bad = _copy(params)
    bad["scale"] = jnp.ones((1,))
    with pytest.raises(TreeMismatchError, match=r"^flatten: the params do not match the packed "
                       r"layout at path \['scale'\]: expected float32\[\], got float32\[1\]\.$"):
        tx.update(params, state, bad)


def test_packed_updates_of_another_layout():
    tx = jopt.adam(0.1)
    state = tx.init(jopt.pack(_mixed_params()))
    other = jopt.pack({**_mixed_params(), "scale": jnp.ones((2,))})
    # The message names the first differing original leaf, not the layouts' PyTreeDefs.
    with pytest.raises(TreeMismatchError) as e:
        tx.update(other, state)
    assert str(e.value) == ("scale_by_adam: the updates are packed with another layout than "
                            "the parameters init saw at path ['scale']: expected float32[], "
                            "got float32[2].")
    # Through flatten (its inner transformation sees the packed updates) and apply_updates.
    ftx = jopt.flatten(jopt.adam(0.1))
    with pytest.raises(TreeMismatchError, match=r"^scale_by_adam: the updates are packed with "
                       r"another layout than the parameters init saw at path \['scale'\]"):
        jax.jit(ftx.update)(other, ftx.init(_mixed_params()))
    with pytest.raises(TreeMismatchError, match=r"^apply_updates: the updates are packed with "
                       r"another layout than the parameters at path \['scale'\]"):
        jopt.apply_updates(jopt.pack(_mixed_params()), other)


def test_unpack_of_non_packed_value():
    with pytest.raises(TypeError, match=r"^jopt.unpack expects a jopt.Packed value, got dict$"):
        jopt.unpack({"a": jnp.ones(2)})
    with pytest.raises(TypeError, match=r"^jopt.unpack expects a jopt.Packed value, got "):
        jopt.unpack(jnp.ones(2))


# ---------------------------------------------------------------------------------------------
# 7. The compiled packed step does not grow with the number of leaves.


def _random_packed(shapes):
    """A Packed value of the tree of ``ShapeDtypeStruct`` s ``shapes``, built from flat buffers
    directly (packing hundreds of leaves eagerly would mostly time XLA's compilation of the
    concatenation)."""
    layout = jopt.Layout.of(shapes)
    rng = np.random.default_rng(0)
    return jopt.Packed(tuple(jnp.asarray(rng.normal(size=n), dt) for n, dt in
                             zip(layout.group_sizes, layout.group_dtypes)), layout)


def _tree_of(n_float32, n_bfloat16):
    shapes = {f"p{i:03d}": jax.ShapeDtypeStruct((17 + i % 5, 3), jnp.float32)
              for i in range(n_float32)}
    shapes.update({f"h{i:02d}": jax.ShapeDtypeStruct((i + 1,), jnp.bfloat16)
                   for i in range(n_bfloat16)})
    return shapes


def test_compiled_packed_step_is_constant_size():
    tx = jopt.chain(jopt.clip_by_global_norm(1.0), jopt.adamw(1e-3, weight_decay=1e-2))

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return jopt.apply_updates(p, u), s

    def compiled(shapes):
        pk = _random_packed(shapes)
        return pk, jax.jit(step).lower(pk, tx.init(pk), pk).compile()

    shapes = _tree_of(300, 20)
    pk, big = compiled(shapes)
    assert len(pk.buffers) == 2
    fusions = big.as_text().count(" fusion(")
    assert fusions < 30, fusions
    # The same kernels for 300 leaves as for 30: nothing per leaf.
    assert compiled(_tree_of(30, 2))[1].as_text().count(" fusion(") == fusions
    # No full-size temporary: clipping is one scalar factor, the rest fuses into the outputs.
    param_bytes = sum(b.size * b.dtype.itemsize for b in pk.buffers)
    temp = big.memory_analysis().temp_size_in_bytes
    assert temp < 0.05 * param_bytes, (temp, param_bytes)

    # flatten(adam) on the 320-leaf tree: exactly two state buffers (mu, nu) per dtype group.
    fstate = jax.eval_shape(jopt.flatten(jopt.adam(1e-3)).init, shapes)
    per_param = [x for x in jax.tree_util.tree_leaves(fstate) if x.ndim]
    assert sorted(x.shape for x in per_param) == sorted([(n,) for n in pk.layout.group_sizes] * 2)


# ---------------------------------------------------------------------------------------------
# 8. Review regressions: reprs of mapped trees, pack idempotence, mixed precision in flatten,
#    messages for mismatched packed values, flatten's argument check.


def _small_mixed():
    return {"w": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(2)}


def test_repr_of_state_mapped_to_non_arrays():
    params = _small_mixed()
    state = jopt.adam(1e-3).init(params)
    text = repr(jax.tree.map(lambda x: x.dtype, state))
    assert "one_minus(complement=dtype('float32'))" in text
    assert "one_minus(complement=ShapeDtypeStruct(shape=(), dtype=float32))" in repr(
        jax.eval_shape(jopt.adam(1e-3).init, params))
    flat = jopt.flatten(jopt.adam(1e-3)).init(params)
    text = repr(jax.tree.map(lambda x: (x.shape, x.dtype.name), flat))
    assert "one_minus(complement=((), 'float32'))" in text
    assert "Packed(2 leaves in ((2,), 'float32'), ((3,), 'float32'))" in text
    # Concrete values still print as numbers.
    assert "one_minus(0.9)" in repr(state)


def test_packed_repr_shows_the_buffers_dtypes_and_shapes():
    params = _small_mixed()
    # adam keeps float32 moments for bfloat16 parameters: the repr shows the buffers' dtype.
    mu = jopt.adam(0.1).init(jopt.pack(params))[0].mu
    assert repr(jopt.pack(params)) == "Packed(2 leaves in float32[2], bfloat16[3])"
    assert repr(mu) == "Packed(2 leaves in float32[2], float32[3])"
    batch = jax.vmap(jopt.pack)({"w": jnp.ones((4, 3))})
    assert repr(batch) == "Packed(1 leaves in float32[4, 3])"
    big = jopt.Layout.of({"a": jnp.ones(4), "b": jnp.ones((3, 5))}, max_leaf_size=8)
    packed = big.pack({"a": jnp.ones(4), "b": jnp.ones((3, 5))})
    assert repr(packed) == "Packed(2 leaves in float32[4], float32[3, 5] (solo leaf))"


def test_pack_of_packed_is_unchanged():
    pk = jopt.pack(_mixed_params())
    assert jopt.pack(pk) is pk
    assert tree_equal(jopt.unpack(jopt.pack(pk)), _mixed_params())


@pytest.mark.parametrize("inner", [lambda: jopt.adam(0.1), lambda: jopt.sgd(0.1, momentum=0.9),
                                   lambda: jopt.sgd(0.1)], ids=["adam", "momentum", "sgd"])
def test_flatten_mixed_precision_updates(inner):
    # bfloat16 params with float32 grads: accepted as by the plain transformation. sgd's state
    # holds no Packed, so flatten rebuilds the layout from the params.
    params = _small_mixed()
    grads = {"w": jnp.full(3, 0.5), "b": jnp.full(2, -0.25)}
    plain, flat = inner(), jopt.flatten(inner())
    ref, _ = plain.update(grads, plain.init(params), params)
    for update in (flat.update, jax.jit(flat.update)):
        out, _ = update(grads, flat.init(params), params)
        assert jax.tree.map(lambda x: x.dtype, out) == jax.tree.map(lambda x: x.dtype, ref)
        _assert_close(out, ref)
        # Without params the layout comes from the updates.
        out, _ = update(grads, flat.init(params))
        assert out["w"].dtype == ref["w"].dtype


def test_flatten_updates_of_one_buffer_with_different_dtypes():
    tx = jopt.flatten(jopt.adam(0.1))
    state = tx.init({"b": jnp.ones(2), "w": jnp.ones(3)})
    with pytest.raises(TreeMismatchError) as e:
        tx.update({"b": jnp.ones(2, jnp.bfloat16), "w": jnp.ones(3)}, state)
    # The leaf named is the odd one out (not of the params' dtype), not the later one.
    assert str(e.value) == ("flatten: the updates of one packed buffer have different dtypes at "
                            "path ['b']: expected float32[2] (the dtype of ['w'], which shares "
                            "its buffer), got bfloat16[2].")
    assert e.value.path == "['b']"


def test_packed_values_of_different_dtype_layouts():
    tx = jopt.adam(0.1)
    state = tx.init(jopt.pack(_small_mixed()))
    other = jopt.pack({"w": jnp.ones(4, jnp.bfloat16), "b": jnp.ones(2)})
    with pytest.raises(TreeMismatchError) as e:
        tx.update(other, state)
    assert str(e.value) == ("scale_by_adam: the updates are packed with another layout than "
                            "the parameters init saw at path ['w']: expected bfloat16[3], got "
                            "bfloat16[4].")
    extra = jopt.pack({**_small_mixed(), "c": jnp.ones(1)})
    with pytest.raises(TreeMismatchError, match=r"at path \['c'\]: expected no leaf there, got a "
                       r"leaf \(float32\[1\]\)\.$"):
        tx.update(extra, state)
    # Same leaves, one kept in a buffer of its own.
    p = {"a": jnp.ones(4), "b": jnp.ones(16)}
    solo = jopt.Layout.of(p, max_leaf_size=8).pack(p)
    with pytest.raises(TreeMismatchError, match=r"at path \['b'\]: expected float32\[16\] in a "
                       r"shared buffer, got float32\[16\] in a buffer of its own\.$"):
        tx.update(solo, tx.init(jopt.pack(p)))


def test_packed_against_per_leaf_messages():
    params = _small_mixed()
    tx = jopt.adam(0.1)
    with pytest.raises(TreeMismatchError, match=r"^scale_by_adam: the updates are a jopt.Packed "
                       r"but the state was built for a per-leaf tree \(init with "
                       r"jopt.pack\(params\), or pass per-leaf updates\): expected a per-leaf "
                       r"tree, got Packed\(2 leaves in float32\[2\], bfloat16\[3\]\)\.$"):
        tx.update(jopt.pack(params), tx.init(params))
    with pytest.raises(TreeMismatchError, match=r"^scale_by_adam: the updates are a per-leaf "
                       r"tree but the state was built for a jopt.Packed \(pass updates packed "):
        tx.update(params, tx.init(jopt.pack(params)))
    with pytest.raises(TreeMismatchError, match=r"^apply_updates: the updates are a jopt.Packed "
                       r"but the parameters are a per-leaf tree \(pack both with jopt.pack, or "
                       r"neither\)"):
        jopt.apply_updates(params, jopt.pack(params))


def test_flatten_rejects_a_non_transformation():
    with pytest.raises(jopt.errors.InvalidHyperparameterError,
                       match=r"^flatten: inner must be an object with init and update"):
        jopt.flatten(3)
