"""Stochastic rounding (``jopt.stochastic_round``) and ``jopt.apply_updates(..., key=)``.

Neighbours are checked against an independent reference: every finite value of the target
dtype, enumerated from its bit patterns with ml_dtypes/NumPy, sorted, and searched. Statistical
checks use fixed keys, so they are deterministic; their bounds are derived where they are used.
"""

import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from helpers import tree_equal

import jopt
from jopt.errors import InvalidHyperparameterError, TreeMismatchError

DTYPES = [jnp.bfloat16, jnp.float16]
IDS = ["bfloat16", "float16"]


def _all_finite_values(dtype):
    """Every finite value of a 16-bit float dtype, ascending, as float64 (-0 and +0 both 0)."""
    values = np.arange(2**16, dtype=np.uint16).view(np.dtype(dtype))
    with np.errstate(invalid="ignore"):  # NaN bit patterns are among them
        finite = np.isfinite(values)
    return np.unique(values[finite].astype(np.float64))


def _neighbours(x, dtype):
    """(lo, hi) in float64: the largest value of dtype <= x and the smallest >= x."""
    grid = _all_finite_values(dtype)
    x = np.asarray(x, np.float64)
    hi = grid[np.clip(np.searchsorted(grid, x, side="left"), 0, len(grid) - 1)]
    lo = grid[np.clip(np.searchsorted(grid, x, side="right") - 1, 0, len(grid) - 1)]
    return lo, hi


def _in_range_samples(dtype, n, seed):
    """float32 values spread over dtype's whole finite range, log-uniform in magnitude, both
    signs, from below its smallest subnormal up to its largest finite value."""
    rng = np.random.default_rng(seed)
    info = ml_dtypes.finfo(dtype)
    smallest = float(info.smallest_subnormal)
    exponent = rng.uniform(np.log2(smallest) - 8, np.log2(float(info.max)), n)
    x = (2.0**exponent * rng.choice([-1.0, 1.0], n)).astype(np.float32)
    return x[np.abs(x.astype(np.float64)) <= float(info.max)]


def _f64(a):
    return np.asarray(jnp.asarray(a).astype(jnp.float32), np.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_result_is_always_one_of_the_two_neighbours(dtype):
    x = _in_range_samples(dtype, 20_000, seed=0)
    lo, hi = _neighbours(x, dtype)
    assert np.all(lo <= x) and np.all(x <= hi)
    seen_lo = seen_hi = np.zeros(x.shape, bool)
    for seed in range(8):
        y = _f64(jopt.stochastic_round(jnp.asarray(x), dtype, jax.random.key(seed)))
        assert y.dtype == np.float64 and np.all((y == lo) | (y == hi))
        seen_lo, seen_hi = seen_lo | (y == lo), seen_hi | (y == hi)
    # Both neighbours actually occur (the rounding is not secretly deterministic).
    inexact = lo != hi
    assert seen_lo[inexact].mean() > 0.3 and seen_hi[inexact].mean() > 0.3


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_representable_values_are_unchanged(dtype):
    grid = _all_finite_values(dtype)
    x = jnp.asarray(grid.astype(np.float32))  # every finite value of dtype, exactly
    y = jopt.stochastic_round(x, dtype, jax.random.key(3))
    assert y.dtype == dtype
    np.testing.assert_array_equal(_f64(y), grid)
    # -0.0 keeps its sign.
    z = jopt.stochastic_round(jnp.asarray([-0.0, 0.0], jnp.float32), dtype, jax.random.key(0))
    assert np.signbit(_f64(z)).tolist() == [True, False]


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_unbiased_mean_over_many_keys(dtype):
    # x = lo + p * gap for several p (in [0, 1], both signs, normal and subnormal spacing).
    # Each rounding is lo + gap * B with B ~ Bernoulli(p), so the mean of N independent
    # roundings has mean x and standard error gap * sqrt(p (1 - p) / N). We allow 5 standard
    # errors: a correct implementation fails one value with probability about 6e-7 (normal
    # approximation), and the keys are fixed, so the outcome is reproducible. p = 0 and p = 1
    # (exact values) must come out exactly.
    # The bases cover normal spacing, the subnormal spacing and [0, s] (s the smallest
    # positive value: for float16 the case computed in floating point, see the docstring).
    info = ml_dtypes.finfo(dtype)
    bases = np.asarray([1.0, -3.0, 1000.0, float(info.smallest_normal),
                        4 * float(info.smallest_subnormal), 0.0, -0.0], np.float64)
    fracs = np.asarray([0.0, 1 / 64, 3 / 32, 1 / 4, 1 / 2, 45 / 64, 63 / 64, 1.0])
    grid = _all_finite_values(dtype)
    gap = grid[np.searchsorted(grid, np.abs(bases), side="right")] - np.abs(bases)
    signs = np.copysign(1.0, bases)
    x64 = (bases[:, None] + signs[:, None] * fracs[None, :] * gap[:, None]).ravel()
    x = x64.astype(np.float32)
    assert np.array_equal(x.astype(np.float64), x64)  # the test points are exact in float32
    n = 4096
    keys = jax.random.split(jax.random.key(42), n)
    rounded = jax.vmap(lambda k: jopt.stochastic_round(jnp.asarray(x), dtype, k))(keys)
    mean = _f64(rounded).mean(axis=0)
    lo, hi = _neighbours(x64, dtype)
    p = np.where(hi > lo, (x64 - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    stderr = (hi - lo) * np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(mean - x64) <= 5 * stderr), (x64, mean, stderr)
    exact = (lo == hi)
    assert exact.sum() >= len(bases) and np.all(mean[exact] == x64[exact])


def test_probability_is_right_for_every_bfloat16_fraction():
    # Between 1 and 1 + 2**-7 float32 holds 2**16 values; the k-th rounds up with probability
    # p_k = k / 2**16. Rounding M copies of each, the count of "up" for k is Binomial(M, p_k).
    # Summed over a bin of 256 consecutive k the count has mean M sum p_k and variance
    # M sum p_k (1 - p_k) (independent draws); every bin must be within 5 standard deviations.
    k = np.arange(2**16, dtype=np.uint32)
    x = (np.uint32(0x3F800000) + k).view(np.float32)  # 1.0 plus k float32 spacings
    m = 64
    y = _f64(jopt.stochastic_round(jnp.tile(jnp.asarray(x), (m, 1)), jnp.bfloat16,
                                   jax.random.key(7)))
    assert np.all((y == 1.0) | (y == 1.0 + 2.0**-7)) and np.all(y[:, 0] == 1.0)
    up = (y > 1.0).sum(axis=0).reshape(256, 256).sum(axis=1)
    p = (k / 2.0**16).reshape(256, 256)
    mean, sd = m * p.sum(axis=1), np.sqrt(m * (p * (1 - p)).sum(axis=1))
    assert np.all(np.abs(up - mean) <= 5 * sd), np.max(np.abs(up - mean) / sd)


@pytest.mark.parametrize("dtype,spacing", [(jnp.bfloat16, 2.0**-7), (jnp.float16, 2.0**-10)],
                         ids=IDS)
def test_one_float32_spacing_from_a_neighbour_has_the_smallest_probability(dtype, spacing):
    # x one float32 spacing (2**-23) above 1 rounds up with p = 2**-23 / spacing, and x one
    # spacing below 1 + spacing rounds down with the same p; an off-by-one in the integer
    # arithmetic would double it. The count of such roundings among N is Binomial(N, p):
    # mean N p = 64 (N = 2**22 for bfloat16, 2**19 for float16), standard deviation about
    # sqrt(N p) = 8; we allow 5 standard deviations, which excludes 2 N p = 128.
    p = 2.0**-23 / spacing
    n = int(64 / p)
    x = jnp.asarray([1.0 + 2.0**-23, 1.0 + spacing - 2.0**-23], jnp.float32)
    y = _f64(jopt.stochastic_round(jnp.tile(x, (n, 1)), dtype, jax.random.key(13)))
    counts = [(y[:, 0] == 1.0 + spacing).sum(), (y[:, 1] == 1.0).sum()]
    assert np.all((y == 1.0) | (y == 1.0 + spacing))
    for count in counts:
        assert abs(count - n * p) <= 5 * np.sqrt(n * p * (1 - p)), (counts, n * p)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_special_values_and_overflow_follow_round_to_nearest(dtype):
    info = ml_dtypes.finfo(dtype)
    top = float(info.max)
    ulp_top = top - float(np.nextafter(np.asarray(top, dtype), np.asarray(0, dtype)))
    threshold = top + ulp_top / 2  # round-to-nearest overflows from here on
    inside = np.float32(top + ulp_top / 4)  # beyond max, still finite when cast
    beyond = np.float32(threshold * 1.001)
    x = np.asarray([np.nan, np.inf, -np.inf, inside, -inside, beyond, -beyond],
                   np.float32)
    nearest = _f64(jnp.asarray(x).astype(dtype))
    assert nearest[3] == top and nearest[5] == np.inf  # the cases are what their names say
    for seed in range(20):
        y = _f64(jopt.stochastic_round(jnp.asarray(x), dtype, jax.random.key(seed)))
        np.testing.assert_array_equal(y, nearest)


def test_float8_e4m3fn_without_infinities():
    # Its largest value is 448 and the nearest cast sends x >= 464 to NaN (no inf). Between
    # 448 and 464 the only finite neighbour is 448; elsewhere the result is a neighbour of x
    # with its sign, -0 for tiny negatives.
    x = np.asarray([np.nan, 450.0, -450.0, 500.0, 1.0625, -1.0625, -1e-30, 1e-30], np.float32)
    for seed in range(10):
        y = _f64(jopt.stochastic_round(jnp.asarray(x), jnp.float8_e4m3fn, jax.random.key(seed)))
        assert np.isnan(y[0]) and np.isnan(y[3]) and y[1] == 448 and y[2] == -448
        assert abs(y[4]) in (1.0, 1.125) and np.sign(y[4]) == -np.sign(y[5])
        assert y[6] == 0 and np.signbit(y[6]) and y[7] == 0 and not np.signbit(y[7])


def test_float32_from_float64_and_narrow_inputs():
    with jax.enable_x64(True):
        x64 = 1.0 + 2.0**-25  # a quarter of a float32 spacing above 1
        x = jnp.full((40_000,), x64, jnp.float64)
        y = jopt.stochastic_round(x, jnp.float32, jax.random.key(0))
        assert y.dtype == jnp.float32
        assert set(np.unique(np.asarray(y)).tolist()) == {1.0, 1.0 + 2.0**-23}
        frac_up = float(np.mean(np.asarray(y) > 1.0))
        assert abs(frac_up - 0.25) <= 5 * np.sqrt(0.25 * 0.75 / x.size)
        # same dtype: returned unchanged
        assert jopt.stochastic_round(x, jnp.float64, jax.random.key(0)) is x
    # bfloat16 input rounded to float8_e5m2 (widened to float32 first, which is exact)
    xb = jnp.full((40_000,), 1.125, jnp.bfloat16)  # half-way between 1.0 and 1.25 in e5m2
    yb = jopt.stochastic_round(xb, jnp.float8_e5m2, jax.random.key(1))
    assert yb.dtype == jnp.float8_e5m2
    assert abs(float(_f64(yb).mean()) - 1.125) <= 5 * 0.25 * 0.5 / np.sqrt(xb.size)


def test_same_key_same_result_and_different_keys_differ():
    x = jnp.asarray(_in_range_samples(jnp.bfloat16, 5_000, seed=1))
    a = jopt.stochastic_round(x, jnp.bfloat16, jax.random.key(5))
    b = jax.jit(jopt.stochastic_round, static_argnums=1)(x, jnp.bfloat16, jax.random.key(5))
    c = jopt.stochastic_round(x, jnp.bfloat16, jax.random.key(6))
    raw = jopt.stochastic_round(x, jnp.bfloat16, jax.random.PRNGKey(5))
    assert tree_equal(a, b)
    assert not tree_equal(a, c)
    assert raw.dtype == jnp.bfloat16 and raw.shape == x.shape


def test_small_bfloat16_updates_are_lost_with_nearest_and_kept_with_stochastic_rounding():
    # M independent bf16 parameters start at 1.0; each of N steps adds 1e-4 (float32), a
    # fortieth of the bf16 spacing 2**-7 on [1, 2). Round-to-nearest returns 1.0 every step.
    # With stochastic rounding E[p_{t+1} | p_t] = p_t + 1e-4 (up to the float32 rounding of
    # p_t + 1e-4, under 2**-24 per step, 6e-5 over N steps), so E[p_N] = 1 + N * 1e-4. While
    # p stays in [1, 2) each step adds a variance of at most gap**2 / 4 (Bernoulli with gap
    # 2**-7), so Var(p_N) <= N gap**2 / 4 and the mean over M parameters has standard error at
    # most sqrt(N / 4 / M) * gap. We allow 5 of those.
    n_steps, m = 1000, 4096
    params = {"w": jnp.ones((m,), jnp.bfloat16)}
    updates = {"w": jnp.full((m,), 1e-4, jnp.float32)}

    @jax.jit
    def train(params, key):
        def step(p, t):
            k = None if key is None else jax.random.fold_in(key, t)
            return jopt.apply_updates(p, updates, key=k), None
        return jax.lax.scan(step, params, jnp.arange(n_steps))[0]

    nearest = train(params, None)
    assert np.all(_f64(nearest["w"]) == 1.0)
    final = _f64(train(params, jax.random.key(0))["w"])
    assert np.all((final >= 1.0) & (final < 2.0))
    expected = 1.0 + n_steps * 1e-4
    bound = 5 * np.sqrt(n_steps / 4 / m) * 2.0**-7 + 6e-5
    assert abs(final.mean() - expected) <= bound, (final.mean(), expected, bound)


def _mixed_tree():
    rng = np.random.default_rng(0)
    params = {
        "bf16": jnp.asarray(rng.normal(size=(64,)), jnp.bfloat16),
        "bf16_twin": jnp.asarray(rng.normal(size=(64,)), jnp.bfloat16),
        "f16": jnp.asarray(rng.normal(size=(3, 5)), jnp.float16),
        "f32": jnp.asarray(rng.normal(size=(7,)), jnp.float32),
        "int": jnp.arange(4, dtype=jnp.int32),
        "none": None,
    }
    params["bf16_twin"] = params["bf16"]
    small = lambda p: jnp.asarray(rng.normal(size=p.shape) * 1e-3, jnp.float32)
    updates = {k: (None if v is None else small(v)) for k, v in params.items()}
    updates["bf16_twin"] = updates["bf16"]
    updates["int"] = jnp.ones((4,), jnp.int32)
    return params, updates


def test_apply_updates_with_key_rounds_each_low_precision_leaf_with_its_own_key():
    params, updates = _mixed_tree()
    key = jax.random.key(9)
    got = jopt.apply_updates(params, updates, key=key)
    plain = jopt.apply_updates(params, updates)
    # float32 and integer leaves: bit-identical to the no-key result; None stays None.
    assert tree_equal(got["f32"], plain["f32"]) and tree_equal(got["int"], plain["int"])
    assert got["none"] is None
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(params)
    # Low-precision leaves: float32 sum, rounded with the key folded with the leaf index.
    index = {jax.tree_util.keystr(path): i for i, (path, _) in
             enumerate(jax.tree_util.tree_flatten_with_path(params)[0])}
    for name in ["bf16", "bf16_twin", "f16"]:
        total = params[name].astype(jnp.float32) + updates[name]
        want = jopt.stochastic_round(total, params[name].dtype,
                                     jax.random.fold_in(key, index[f"['{name}']"]))
        assert tree_equal(got[name], want), name
        assert got[name].dtype == params[name].dtype
    # Two identical leaves get different random streams.
    assert not tree_equal(got["bf16"], got["bf16_twin"])
    # A raw uint32 key works too.
    raw = jopt.apply_updates(params, updates, key=jax.random.PRNGKey(9))
    assert jax.tree_util.tree_structure(raw) == jax.tree_util.tree_structure(params)


def test_apply_updates_without_key_is_unchanged():
    params, updates = _mixed_tree()
    got = jopt.apply_updates(params, updates, key=None)
    assert tree_equal(got, jopt.apply_updates(params, updates))
    for name in ["bf16", "f16", "f32"]:
        want = (params[name].astype(jnp.float32) + updates[name]).astype(params[name].dtype)
        assert tree_equal(got[name], want)


def test_apply_updates_with_key_under_jit_vmap_and_donation():
    params, updates = _mixed_tree()
    key = jax.random.key(11)
    eager = jopt.apply_updates(params, updates, key=key)
    step = jax.jit(lambda p, u, k: jopt.apply_updates(p, u, key=k))
    assert tree_equal(eager, step(params, updates, key))

    # vmap over a population: each member equals its own solo run.
    b = 3
    keys = jax.random.split(key, b)
    batch = lambda t: jax.tree_util.tree_map(lambda x: jnp.stack([x] * b), t)
    pop = jax.jit(jax.vmap(lambda p, u, k: jopt.apply_updates(p, u, key=k)))(
        batch(params), batch(updates), keys)
    for i in range(b):
        solo = step(params, updates, keys[i])
        assert tree_equal(jax.tree_util.tree_map(lambda x, i=i: x[i], pop), solo)
    assert not tree_equal(pop["bf16"][0], pop["bf16"][1])

    # Donated parameters: the result reuses their buffers and is what the eager call gives.
    donated = jax.jit(lambda p, u, k: jopt.apply_updates(p, u, key=k), donate_argnums=0)
    fresh = jax.tree_util.tree_map(jnp.copy, params)
    assert tree_equal(donated(fresh, updates, key), eager)


def test_apply_updates_with_key_keeps_sharding():
    mesh = jax.make_mesh((8,), ("x",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
    params = {"w": jax.device_put(jnp.ones((64,), jnp.bfloat16), sharding)}
    updates = {"w": jax.device_put(jnp.full((64,), 2.0**-9, jnp.float32), sharding)}
    out = jax.jit(lambda p, u, k: jopt.apply_updates(p, u, key=k))(
        params, updates, jax.random.key(0))
    assert out["w"].sharding.is_equivalent_to(sharding, 1)
    assert tree_equal(out, jopt.apply_updates(params, updates, key=jax.random.key(0)))


RAW_SHAPE = tuple(jax.random.PRNGKey(0).shape)
KEY_RULE = (f"a JAX PRNG key: a typed key of shape () from jax.random.key, or a raw uint32 key "
            f"of shape {RAW_SHAPE} from jax.random.PRNGKey")


@pytest.mark.parametrize(
    "x,dtype,key,message",
    [
        (jnp.ones(3, jnp.int32), jnp.bfloat16, jax.random.key(0),
         "stochastic_round: x must be a real floating array (float32 or float64); got an array of int32."),
        (jnp.ones(3), jnp.int8, jax.random.key(0),
         "stochastic_round: dtype must be a real floating dtype such as jnp.bfloat16 or jnp.float16; got <class 'jax.numpy.int8'>."),
        (jnp.ones(3), "not-a-dtype", jax.random.key(0),
         "stochastic_round: dtype must be a real floating dtype such as jnp.bfloat16 or jnp.float16; got 'not-a-dtype'."),
        (jnp.ones(3), jnp.float8_e4m3fnuz, jax.random.key(0),
         "stochastic_round: dtype must be a floating dtype with a sign bit, a signed zero and whole bytes per value (bfloat16, float16, float32, float8_e4m3fn, float8_e5m2, ...); got float8_e4m3fnuz."),
        (jnp.ones(3), jnp.float4_e2m1fn, jax.random.key(0),
         "stochastic_round: dtype must be a floating dtype with a sign bit, a signed zero and whole bytes per value (bfloat16, float16, float32, float8_e4m3fn, float8_e5m2, ...); got float4_e2m1fn."),
        (jnp.ones(3), jnp.float64, jax.random.key(0),
         "stochastic_round: dtype must be a floating dtype narrower than x's (float32); got float64."),
        (jnp.ones(3, jnp.bfloat16), jnp.float16, jax.random.key(0),
         "stochastic_round: dtype must be a floating dtype narrower than x's (bfloat16); got float16."),
        (jnp.ones(3), jnp.bfloat16, 0,
         f"stochastic_round: key must be {KEY_RULE}; got int 0."),
        (jnp.ones(3), jnp.bfloat16, jax.random.split(jax.random.key(0), 2),
         f"stochastic_round: key must be {KEY_RULE}; got a typed key array of shape (2,) (pass one key, not a batch)."),
        (jnp.ones(3), jnp.bfloat16, jnp.zeros((3,), jnp.uint32),
         f"stochastic_round: key must be {KEY_RULE}; got an array of shape (3,) uint32."),
        (jnp.ones(3), jnp.bfloat16, jnp.zeros((2,), jnp.float32),
         f"stochastic_round: key must be {KEY_RULE}; got an array of shape (2,) float32."),
    ],
    ids=["int-x", "int-dtype", "bad-dtype", "fnuz-dtype", "float4-dtype", "wider-dtype", "same-size-dtype", "int-key",
         "key-batch", "raw-key-shape", "float-key"],
)
def test_stochastic_round_bad_inputs(x, dtype, key, message):
    with pytest.raises(InvalidHyperparameterError, match=re.escape(message)):
        jopt.stochastic_round(x, dtype, key)


def test_apply_updates_bad_key_and_tree_errors():
    params = {"w": jnp.ones((3,), jnp.bfloat16)}
    with pytest.raises(InvalidHyperparameterError,
                       match=re.escape(f"apply_updates: key must be {KEY_RULE}; got int 1.")):
        jopt.apply_updates(params, {"w": jnp.ones((3,))}, key=1)
    with pytest.raises(InvalidHyperparameterError, match="apply_updates: key must be"):
        jax.jit(lambda p, k: jopt.apply_updates(p, p, key=k))(params, jnp.zeros((4,), jnp.uint32))
    # Structure errors are apply_updates' usual ones, key or not.
    for bad in [{"v": jnp.ones((3,))}, {"w": jnp.ones((4,))}]:
        with pytest.raises(TreeMismatchError) as plain:
            jopt.apply_updates(params, bad)
        with pytest.raises(TreeMismatchError) as keyed:
            jopt.apply_updates(params, bad, key=jax.random.key(0))
        assert str(plain.value) == str(keyed.value)
        assert str(keyed.value).startswith("apply_updates: ")

