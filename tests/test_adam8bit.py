"""8-bit block-wise quantization and 8-bit Adam against independent references.

References written here from Dettmers et al. (2022), "8-bit Optimizers via Block-wise
Quantization" (arXiv:2110.02861), not from jopt's code or any other implementation:

* the dynamic map, built from its bit-level description with exact rationals (``fractions``);
* a float64 NumPy block-wise quantizer (zero padding, per-block absmax, nearest code by
  brute-force argmin over the 256 values);
* a float64 NumPy 8-bit Adam (dequantize, Adam step, requantize).

jopt computes in float32. Where the two can disagree, and by how much, is stated next to each
tolerance.
"""

from __future__ import annotations

import dataclasses
import fractions
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tree_equal, tree_signature

import jopt
from jopt import _codecs, _quantize, _scale
from jopt.errors import InvalidHyperparameterError, TreeMismatchError

# ---------------------------------------------------------------------------------------------
# The dynamic map.


def _exact_map(signed: bool) -> list[fractions.Fraction]:
    """The map as exact rationals, from the paper's description: [sign bit], E zero bits
    (decade 10**-E), an indicator bit, then F linear fraction bits. jopt's documented reading
    of the fraction: the 2**F upper edges of equal steps of (10**-(E+1), 10**-E]. The signed
    map's negative zero pattern reads as -10**-7 (documented)."""
    bits = 7 if signed else 8
    mags = []
    for e in range(bits):
        f = bits - 1 - e
        lo, hi = fractions.Fraction(1, 10 ** (e + 1)), fractions.Fraction(1, 10**e)
        mags += [lo + (hi - lo) * (k + 1) / 2**f for k in range(2**f)]
    values = [fractions.Fraction(0)] + mags
    if signed:
        values += [-m for m in mags] + [fractions.Fraction(-1, 10**7)]
    return sorted(values)


def _is_nearest_float32(v: np.float32, exact: fractions.Fraction) -> bool:
    """``v`` is a float32 nearest to ``exact`` (correct rounding, ties either way)."""
    err = abs(fractions.Fraction(float(v)) - exact)
    for w in (np.nextafter(v, np.float32(-np.inf)), np.nextafter(v, np.float32(np.inf))):
        if abs(fractions.Fraction(float(w)) - exact) < err:
            return False
    return True


@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_is_the_papers_construction(signed):
    m = jopt.dynamic_map(signed)
    assert m.shape == (256,) and m.dtype == np.float32
    assert len(np.unique(m)) == 256 and bool(np.all(np.diff(m) > 0))
    assert 0.0 in m and 1.0 in m and m.max() == 1.0
    assert m.min() == (-1.0 if signed else 0.0)
    exact = _exact_map(signed)
    assert len(exact) == 256
    # Each value is the correctly rounded float32 of the exact rational.
    assert all(_is_nearest_float32(v, x) for v, x in zip(m, exact))
    # A copy: changing it does not change the next call's result.
    m[0] = 5.0
    assert jopt.dynamic_map(signed)[0] != 5.0


def test_signed_map_is_symmetric_but_for_one_value():
    m = jopt.dynamic_map(True)
    pos, neg = set(m[m > 0].tolist()), set((-m[m < 0]).tolist())
    assert len(pos) == 127 and len(neg) == 128
    assert neg - pos == {float(np.float32(1e-7))} and pos <= neg
    # The unsigned map spends the sign bit on resolution: twice as many codes in [0.1, 1].
    u = jopt.dynamic_map(False)
    assert int(np.sum(m >= 0.1)) == 65 and int(np.sum(u >= 0.1)) == 129


@pytest.mark.parametrize("signed", [True, False])
def test_relative_rounding_error_is_bounded_per_decade(signed):
    # Derivation: in [10**-(E+1), 10**-E] the codes are evenly spaced by
    # h = 0.9 * 10**-E / 2**F (both ends included), F = (6 if signed else 7) - E. Rounding to
    # the nearest is off by at most h / 2, and the worst *relative* error is just above the
    # first midpoint, x = lo + h/2 rounded down to lo = 10**-(E+1):
    #     (h / 2) / (lo + h / 2) = 4.5 / (2**F + 4.5).
    # 6.6 % (signed) and 3.4 % (unsigned) in [0.1, 1]; the bound about doubles per decade down:
    # a relative-error guarantee at every magnitude, unlike linear 8-bit codes, whose relative
    # error at 1e-3 of the absmax is ~400 %.
    m = jopt.dynamic_map(signed).astype(np.float64)
    f0 = 6 if signed else 7
    rng = np.random.default_rng(0)
    for e in range(6):
        x = 10.0 ** rng.uniform(-(e + 1), -e, size=20000)
        x = np.concatenate([x, [10.0 ** -(e + 1), 10.0**-e]])
        q = m[np.abs(x[:, None] - m).argmin(-1)]
        rel = np.abs(q - x) / x
        bound = 4.5 / (2 ** (f0 - e) + 4.5)
        assert rel.max() <= bound * (1 + 1e-6), (e, rel.max(), bound)
        assert rel.max() >= 0.9 * bound  # the bound is attained (dense sampling)
    # Absolute: at most half the largest gap, which is between the codes near 1 (the float32
    # codes move a gap of 0.014 by up to 1 ulp of 1, 8.5e-6 relative).
    half_gap = np.diff(m).max() / 2
    assert half_gap == pytest.approx(0.45 / 2**f0, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Block-wise quantization against a float64 NumPy reference.


def _np_quantize(x: np.ndarray, signed: bool, block_size: int):
    """float64 reference: codes (brute-force nearest of the 256 values), absmax, x / absmax."""
    m = jopt.dynamic_map(signed).astype(np.float64)
    flat = np.asarray(x, np.float64).reshape(-1)
    nb = -(-flat.size // block_size)
    blocks = np.zeros(nb * block_size)
    blocks[: flat.size] = flat
    blocks = blocks.reshape(nb, block_size)
    absmax = np.abs(blocks).max(axis=1) if nb else np.zeros(0)
    normed = blocks / np.where(absmax > 0, absmax, 1.0)[:, None]
    codes = np.abs(normed[..., None] - m).argmin(-1)
    return codes, absmax, normed


def _np_dequantize(codes, absmax, signed, size):
    m = jopt.dynamic_map(signed).astype(np.float64)
    return (m[codes] * absmax[:, None]).reshape(-1)[:size]


def _midpoint_distance(normed, signed):
    m = jopt.dynamic_map(signed).astype(np.float64)
    mids = (m[1:] + m[:-1]) / 2
    return np.abs(normed[..., None] - mids).min(-1)


# jopt divides x / absmax once in float32 (relative error <= 6e-8, i.e. <= 6e-8 absolute in
# [-1, 1]) and compares with midpoints rounded to float32 (<= 3e-8 off): its code can differ
# from the float64 nearest code only when x / absmax is within ~1e-7 of a midpoint, and then by
# one. Allowed: 2.5e-7 (2.5x).
TIE_WINDOW = 2.5e-7


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("shape,block_size", [((3000,), 256), ((37, 41), 64), ((4096,), 2048),
                                              ((5,), 8), ((), 4)])
def test_quantize_matches_float64_reference(signed, shape, block_size):
    rng = np.random.default_rng(1)
    size = math.prod(shape)
    # Several decades of magnitude per block, and one block of zeros where there is room.
    x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-5, 0, size=shape)
    if not signed:
        x = np.abs(x)
    x = np.asarray(x, np.float32)
    if size >= 3 * block_size:
        x.reshape(-1)[block_size: 2 * block_size] = 0.0
    q = jax.jit(lambda x: jopt.quantize_blockwise(x, signed, block_size))(x)
    codes, absmax, normed = _np_quantize(x, signed, block_size)
    assert q.codes.dtype == jnp.uint8 and q.codes.shape == codes.shape
    assert q.absmax.dtype == jnp.float32 and q.absmax.shape == absmax.shape
    assert q.shape == shape and q.dtype == np.float32 and q.signed == signed
    # absmax is a max of float32 values: exact.
    np.testing.assert_array_equal(np.asarray(q.absmax), absmax)
    got = np.asarray(q.codes).astype(int)
    bad = got != codes
    assert bool(np.all(np.abs(got[bad] - codes[bad]) == 1))
    assert bool(np.all(_midpoint_distance(normed[bad], signed) <= TIE_WINDOW))
    # The documented rule, exactly: count of float32 midpoints <= float32(x) / float32(absmax).
    mids32 = _quantize._tables(signed)[1]
    blocks32 = np.zeros(codes.size, np.float32)
    blocks32[:size] = x.reshape(-1)
    scale = np.where(absmax > 0, absmax, 1).astype(np.float32)
    want = np.searchsorted(mids32, blocks32.reshape(codes.shape) / scale[:, None], side="right")
    np.testing.assert_array_equal(got, want)
    # Round trip: the shape and dtype come back, and each element is within half the largest
    # gap of the map times its block's absmax (float32 product: + 1 ulp of absmax).
    deq = jax.jit(jopt.dequantize_blockwise)(q)
    assert deq.shape == shape and deq.dtype == jnp.float32
    half_gap = np.diff(jopt.dynamic_map(signed).astype(np.float64)).max() / 2
    per_elem = np.repeat(absmax, block_size)[:size].reshape(shape)
    err = np.abs(np.asarray(deq, np.float64) - x)
    assert bool(np.all(err <= per_elem * (half_gap + 1.2e-7)))
    # And it equals the reference dequantization of jopt's own codes, to float32 rounding.
    ref = _np_dequantize(got, absmax, signed, size).reshape(shape)
    np.testing.assert_allclose(np.asarray(deq), ref, rtol=6e-8, atol=0)


@pytest.mark.parametrize("signed", [True, False])
def test_nearest_codes_is_exact_at_midpoints_and_codes(signed):
    # The closed-form first guess plus one correction must equal searchsorted on the float32
    # midpoints for every input, including the float32 neighbours of every midpoint, every
    # code, every power of ten and random values over 9 decades.
    values, mids = _quantize._tables(signed)
    points = np.concatenate([mids, values, -mids, -values, [10.0**-j for j in range(10)]])
    xs = [points.astype(np.float32)]
    up = dn = xs[0]
    for _ in range(4):
        up, dn = np.nextafter(up, np.float32(2)), np.nextafter(dn, np.float32(-2))
        xs += [up, dn]
    rng = np.random.default_rng(2)
    xs.append(10.0 ** rng.uniform(-9, 0, 1 << 16) * rng.choice([-1, 1], 1 << 16))
    xs.append(np.asarray([0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30]))
    x = np.clip(np.concatenate(xs).astype(np.float32), -1, 1)
    got = np.asarray(jax.jit(lambda x: _quantize.nearest_codes(x, signed))(x))
    np.testing.assert_array_equal(got, np.searchsorted(mids, x, side="right"))


@pytest.mark.parametrize("signed", [True, False])
def test_decoding_on_device_equals_the_map(signed):
    codes = jnp.arange(256, dtype=jnp.uint8).reshape(1, 256)
    got = jax.jit(lambda c: _quantize.dequantize_blocks(c, jnp.ones(1), signed))(codes)
    np.testing.assert_array_equal(np.asarray(got)[0], jopt.dynamic_map(signed))


def test_zero_blocks_padding_and_non_finite_values():
    x = np.zeros(10, np.float32)
    x[4:8] = [1.0, -3.0, np.nan, 2.0]
    x[8:] = [np.inf, 0.5]
    q = jopt.quantize_blockwise(x, signed=True, block_size=4)
    # 10 elements -> 3 blocks of 4; the padding holds the code of 0.
    assert q.codes.shape == (3, 4) and q.shape == (10,)
    zero_code = int(np.flatnonzero(jopt.dynamic_map(True) == 0)[0])
    assert np.asarray(q.codes)[0].tolist() == [zero_code] * 4
    assert np.asarray(q.codes)[2, 2:].tolist() == [zero_code] * 2
    absmax = np.asarray(q.absmax)
    assert absmax[0] == 0.0 and np.isnan(absmax[1]) and np.isnan(absmax[2])
    deq = np.asarray(jopt.dequantize_blockwise(q))
    # A zero block is exact zeros (no 0/0); a block with NaN or inf is NaN throughout.
    assert deq[:4].tolist() == [0.0] * 4 and not np.signbit(deq[:4]).any()
    assert bool(np.all(np.isnan(deq[4:])))
    # Unsigned codes hold negative values as 0.
    qu = jopt.quantize_blockwise(np.asarray([-1.0, 0.1, 1.0], np.float32), signed=False)
    assert np.asarray(jopt.dequantize_blockwise(qu)).tolist() == [0.0, np.float32(0.1), 1.0]
    # Empty arrays work.
    qe = jopt.quantize_blockwise(jnp.zeros((0, 3)), block_size=4)
    assert qe.codes.shape == (0, 4) and jopt.dequantize_blockwise(qe).shape == (0, 3)


def test_quantized_array_is_a_pytree_of_two_arrays():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(6, 7)), jnp.bfloat16)
    q = jopt.quantize_blockwise(x, block_size=16)
    leaves, treedef = jax.tree_util.tree_flatten(q)
    assert [leaf.dtype for leaf in leaves] == [jnp.uint8, jnp.float32]
    assert q.block_size == 16 and q.nbytes == 3 * 16 + 3 * 4
    # The original shape and dtype are static data: they survive flattening, jit and vmap.
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert back.shape == (6, 7) and back.dtype == jnp.bfloat16
    deq = jax.jit(jopt.dequantize_blockwise)(q)
    assert deq.shape == (6, 7) and deq.dtype == jnp.bfloat16
    assert jopt.dequantize_blockwise(q, (42,)).shape == (42,)
    batch = jax.vmap(lambda x: jopt.quantize_blockwise(x, block_size=16))(jnp.stack([x, -x]))
    assert batch.codes.shape == (2, 3, 16) and batch.shape == (6, 7)
    np.testing.assert_array_equal(np.asarray(jax.vmap(jopt.dequantize_blockwise)(batch)[0]),
                                  np.asarray(deq))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(q)[0]]
    assert paths == [".codes", ".absmax"]


def test_quantize_errors():
    with pytest.raises(InvalidHyperparameterError,
                       match=r"^quantize_blockwise: x must be a real array \(not complex\); "
                             r"got 'complex64'\.$"):
        jopt.quantize_blockwise(jnp.ones(3, jnp.complex64))
    for bad in (0, 2.5, True, None):
        with pytest.raises(InvalidHyperparameterError,
                           match=r"^quantize_blockwise: block_size must be a Python integer >= 1; "
                                 rf"got {bad!r}\.$"):
            jopt.quantize_blockwise(jnp.ones(3), block_size=bad)
    with pytest.raises(InvalidHyperparameterError, match="signed must be a bool; got 1"):
        jopt.quantize_blockwise(jnp.ones(3), signed=1)
    with pytest.raises(InvalidHyperparameterError, match="dynamic_map: signed must be a bool"):
        jopt.dynamic_map("yes")
    with pytest.raises(InvalidHyperparameterError,
                       match=r"^dequantize_blockwise: shape must be a shape with 6 elements \(the "
                             r"quantized array's \(2, 3\)\); got \(4,\)\.$"):
        jopt.dequantize_blockwise(jopt.quantize_blockwise(jnp.ones((2, 3))), (4,))


# ---------------------------------------------------------------------------------------------
# 8-bit Adam against a float64 NumPy 8-bit Adam.

T = 50
BS = 256
# "w": whole blocks (12); "v": 1000 elements, not a multiple of BS (4 blocks, the last one
# padded); "b": below min_8bit_size, float32 moments.
SHAPES = {"w": (48, 64), "v": (1000,), "b": (40,)}
MIN_8BIT = 500


def _grads(seed=0):
    """Gradients over 3 decades per element and 3 decades per step (as tests/test_reference)."""
    rng = np.random.default_rng(seed)
    step = 10.0 ** rng.uniform(-2, 1, size=T)
    return {k: (rng.standard_normal((T, *s)) * 10.0 ** rng.uniform(-1, 1, size=s)
                * step.reshape((T,) + (1,) * len(s))).astype(np.float32)
            for k, s in SHAPES.items()}


GRADS = _grads()
P0 = {k: jnp.zeros(s, jnp.float32) for k, s in SHAPES.items()}


def _run(tx, grads=GRADS, params=P0):
    """All steps in one jitted scan: (updates[t], state after step t)."""

    @jax.jit
    def run(gs):
        def body(s, g):
            u, s = tx.update(g, s, params)
            return s, (u, s)

        return jax.lax.scan(body, tx.init(params), gs)[1]

    return run(grads)


@pytest.fixture(scope="module")
def run_8bit():
    # A small CPU chunk (2 blocks), so that the step's loop over chunks runs several times
    # and the partial last chunk is handled after it.
    mp = pytest.MonkeyPatch()
    mp.setattr(_codecs, "CPU_CHUNK", 2 * BS)
    tx = jopt.scale_by_adam_8bit(block_size=BS, min_8bit_size=MIN_8BIT)
    out = _run(tx)
    mp.undo()
    return out


def _np_adam_step(m, v, g, t, b1=0.9, b2=0.999, eps=1e-8):
    """The paper's step on dequantized float64 moments; t is 1-based."""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return u, m, v


# Update tolerance, as for float32 Adam in tests/test_reference.py (ADAM_RTOL, ADAM_ATOL):
# given the same dequantized moments the 8-bit step is float32 Adam, whose first updates are
# up to 6.4e-6 relative off the float64 value (float32(0.999) != 0.999 in the bias
# correction). rtol 2e-5 plus 6e-6 of the step's largest |u|. Measured: 0.4 of that.
U_RTOL, U_ATOL = 2e-5, 6e-6
# New absmax: a max of float32 moments, each a few roundings (<= ~2e-7 relative) off the
# float64 value. Measured 1.3e-7; allowed 5e-7.
ABSMAX_RTOL = 5e-7


def test_8bit_adam_matches_float64_reference_step_by_step(run_8bit):
    # Teacher forcing: at every step the reference starts from jopt's previous state (its
    # codes and absmax, dequantized exactly in float64), so each step is compared on its own
    # and a single tie cannot send the two trajectories apart.
    us, states = run_8bit
    mism = total = 0
    for t in range(T):
        for k in ("w", "v"):
            n = math.prod(SHAPES[k])
            if t == 0:
                m = v = np.zeros(n)
            else:
                mq, vq = states.mu[k], states.nu[k]
                m = _np_dequantize(np.asarray(mq.codes[t - 1]),
                                   np.asarray(mq.absmax[t - 1], np.float64), True, n)
                v = _np_dequantize(np.asarray(vq.codes[t - 1]),
                                   np.asarray(vq.absmax[t - 1], np.float64), False, n)
            u, m, v = _np_adam_step(m, v, GRADS[k][t].reshape(-1).astype(np.float64), t + 1)
            got_u = np.asarray(us[k][t], np.float64).reshape(-1)
            tol = U_RTOL * np.abs(u) + U_ATOL * np.abs(u).max()
            assert bool(np.all(np.abs(got_u - u) <= tol)), (t, k)
            for x, signed, q in ((m, True, states.mu[k]), (v, False, states.nu[k])):
                codes, absmax, normed = _np_quantize(x, signed, BS)
                np.testing.assert_allclose(np.asarray(q.absmax[t]), absmax, rtol=ABSMAX_RTOL)
                got = np.asarray(q.codes[t]).astype(int)
                bad = got != codes
                # Codes differ only at ties (see TIE_WINDOW: here x / absmax carries a few more
                # float32 roundings from the moment update, measured 1 case in 409600, at
                # 3e-11 from the midpoint), and then by one.
                assert bool(np.all(np.abs(got[bad] - codes[bad]) == 1)), (t, k)
                assert bool(np.all(_midpoint_distance(normed[bad], signed) <= 4 * TIE_WINDOW))
                mism += int(bad.sum())
                total += bad.size
    assert mism <= 1e-4 * total
    # The small leaf keeps float32 moments.
    assert states.mu["b"].dtype == jnp.float32 and states.mu["b"].shape == (T, 40)


def test_8bit_adam_free_running_stays_close_to_reference(run_8bit):
    # Without teacher forcing a tie decided differently changes a stored moment by one code
    # (<= 1.4 % of its block's absmax for m), which then decays with b1 (b2 for v). Measured
    # over 50 steps: 10 codes of 409600 differ, updates within 3.2 % of the step's largest
    # |u|. Allowed: 1e-3 of the codes, 10 % of the largest |u|, and the step tolerance above
    # for 99.9 % of the elements.
    us, states = run_8bit
    mism = total = close = count = 0
    for k in ("w", "v"):
        n = math.prod(SHAPES[k])
        mc, ma, _ = _np_quantize(np.zeros(n), True, BS)
        vc, va, _ = _np_quantize(np.zeros(n), False, BS)
        for t in range(T):
            m, v = _np_dequantize(mc, ma, True, n), _np_dequantize(vc, va, False, n)
            u, m, v = _np_adam_step(m, v, GRADS[k][t].reshape(-1).astype(np.float64), t + 1)
            mc, ma, _ = _np_quantize(m, True, BS)
            vc, va, _ = _np_quantize(v, False, BS)
            got_u = np.asarray(us[k][t], np.float64).reshape(-1)
            assert np.abs(got_u - u).max() <= 0.1 * np.abs(u).max(), (t, k)
            close += int(np.sum(np.abs(got_u - u) <= U_RTOL * np.abs(u)
                                + U_ATOL * np.abs(u).max()))
            count += n
            mism += int(np.sum(np.asarray(states.mu[k].codes[t]) != mc))
            mism += int(np.sum(np.asarray(states.nu[k].codes[t]) != vc))
            total += 2 * mc.size
    assert mism <= 1e-3 * total and close >= 0.999 * count


def test_loop_and_single_expression_agree_bit_for_bit():
    # XLA:CPU runs the step as a loop over chunks of blocks; other platforms as one fused
    # expression. Both are forced here, on leaves with several chunks and a padded last block.
    rng = np.random.default_rng(4)
    f32 = jnp.float32
    k = dict(one_minus_b1=f32(0.1), b1=f32(0.9), one_minus_b2=f32(0.001), b2=f32(0.999),
             bc1=f32(0.5), bc2=f32(0.01), bc1_next=f32(0.7), eps=f32(1e-8), eps_root=f32(0))
    call = _codecs.RuleCall(lambda g, values, param, kw: (lambda u, m, v: (u, (m, v)))(
        *_scale._adam_rule(g, *values, nesterov=False, **kw)))

    for shape in [(7, 300)]:
        g = jnp.asarray(rng.normal(size=shape), jnp.float32)
        m = jopt.quantize_blockwise(rng.normal(size=shape).astype(np.float32), True, 64)
        v = jopt.quantize_blockwise(rng.random(size=shape).astype(np.float32), False, 64)
        outs = []
        for chunked in (True, False):
            f = jax.jit(lambda g, m, v, c=chunked: _codecs.quantized_leaf_step(
                call, g, (m, v), (jnp.float32, jnp.float32), None, k, chunked=c))
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(_codecs, "CPU_CHUNK", 128)
                outs.append(f(g, m, v))
        assert tree_equal(outs[0], outs[1]), shape


def test_below_min_8bit_size_it_is_scale_by_adam_bit_for_bit():
    params = {"a": jnp.zeros((30, 7)), "b": jnp.zeros(()), "c": jnp.zeros(5, jnp.bfloat16)}
    rng = np.random.default_rng(5)
    grads = {k: jnp.asarray(rng.normal(size=(6, *p.shape)), p.dtype) for k, p in params.items()}
    for tx8, tx in [(jopt.scale_by_adam_8bit(min_8bit_size=1000, eps_root=1e-9),
                     jopt.scale_by_adam(eps_root=1e-9)),
                    (jopt.adamw_8bit(0.1, weight_decay=0.1, min_8bit_size=1000),
                     jopt.adamw(0.1, weight_decay=0.1))]:
        u8, s8 = _run(tx8, grads, params)
        u, s = _run(tx, grads, params)
        assert tree_equal(u8, u)
        first8, first = (s8, s) if isinstance(s8, jopt.ScaleByAdam8bitState) else (s8[0], s[0])
        assert tree_equal((first8.mu, first8.nu, first8.count), (first.mu, first.nu, first.count))


# ---------------------------------------------------------------------------------------------
# Training, memory.


def test_trains_a_least_squares_problem_like_float32_adam():
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(size=(512, 64)), jnp.float32)
    y = jnp.asarray(x @ rng.normal(size=(64, 128)) + 0.1 * rng.normal(size=(512, 128)),
                    jnp.float32)
    # W (8192 elements) is quantized with the default block_size and min_8bit_size; b is not.
    p0 = {"w": jnp.zeros((64, 128), jnp.float32), "b": jnp.zeros((128,), jnp.float32)}

    def loss(p):
        return jnp.mean((x @ p["w"] + p["b"][None, :] - y) ** 2)

    def train(tx):
        @jax.jit
        def run(p):
            def body(c, _):
                p, s = c
                u, s = tx.update(jax.grad(loss)(p), s, p)
                p = jopt.apply_updates(p, u)
                return (p, s), loss(p)

            (_, s), losses = jax.lax.scan(body, (p, tx.init(p)), None, length=300)
            return losses, s

        return run(p0)

    l8, s8 = train(jopt.adam_8bit(3e-2))
    l32, _ = train(jopt.adam(3e-2))
    assert isinstance(s8[0].mu["w"], jopt.QuantizedArray)
    assert not isinstance(s8[0].mu["b"], jopt.QuantizedArray)
    # From ~63 to the noise floor (0.01) in 300 steps. Measured final losses: 0.009187 (8-bit)
    # and 0.009148 (float32), 0.4 % apart; allowed 5 %.
    assert float(l32[-1]) < 1e-3 * float(l32[0])
    assert float(l8[-1]) <= 1.05 * float(l32[-1])


def _nbytes(tree):
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
               for x in jax.tree_util.tree_leaves(tree))


def test_state_bytes_of_a_gpt2_like_model():
    d, vocab, ctx, layers = 768, 50257, 1024, 12
    f32 = jnp.float32

    def s(*shape):
        return jax.ShapeDtypeStruct(shape, f32)

    block = {"ln_1": {"g": s(d), "b": s(d)}, "ln_2": {"g": s(d), "b": s(d)},
             "attn": {"c_attn": {"w": s(d, 3 * d), "b": s(3 * d)},
                      "c_proj": {"w": s(d, d), "b": s(d)}},
             "mlp": {"c_fc": {"w": s(d, 4 * d), "b": s(4 * d)},
                     "c_proj": {"w": s(4 * d, d), "b": s(d)}}}
    params = {"wte": s(vocab, d), "wpe": s(ctx, d), "h": [block] * layers,
              "ln_f": {"g": s(d), "b": s(d)}}
    n_params = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))
    assert 124e6 < n_params < 125e6
    b8 = _nbytes(jax.eval_shape(jopt.adam_8bit(1e-3).init, params))
    b32 = _nbytes(jax.eval_shape(jopt.adam(1e-3).init, params))
    ratio = b8 / b32
    print(f"8-bit Adam state: {b8 / 2**20:.1f} MiB, float32 Adam: {b32 / 2**20:.1f} MiB, "
          f"ratio {ratio:.4f}, {b8 / n_params:.3f} bytes/param")
    # 2 bytes of codes per parameter + 8 bytes of scales per 2048-element block, against
    # 8 bytes: 0.2505 for the quantized leaves; biases and norms (< 4096 elements) stay float32.
    assert ratio <= 0.3
    assert b8 / n_params < 2.02


def test_step_temporaries_stay_under_one_parameter_copy():
    # Three 1M-element leaves (one not a multiple of the block size), donated params and
    # state. Measured on XLA:CPU: 6.4 MB of temporaries against 12.2 MB of parameters, 0.52x:
    # the loop's chunk buffers (32768 elements) and, mostly, copies XLA makes of the codes,
    # which the update's consumer reads while the loop rewrites them in place.
    rng = np.random.default_rng(7)
    params = {"a": jnp.asarray(rng.normal(size=(1024, 1024)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=(1000, 1000)), jnp.float32),
              "c": jnp.asarray(rng.normal(size=(1 << 20,)), jnp.float32)}
    tx = jopt.adam_8bit(1e-3)

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return jopt.apply_updates(p, u), s

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params),
                                                          params).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    param_bytes = _nbytes(params)
    print(f"step temporaries: {temp} bytes = {temp / param_bytes:.3f} x parameter bytes")
    assert temp < 0.75 * param_bytes


# ---------------------------------------------------------------------------------------------
# jit, vmap, donation, hyperparameters, dtypes, contract, errors.


def _small():
    rng = np.random.default_rng(8)
    params = {"w": jnp.asarray(rng.normal(size=(20, 30)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=(30,)), jnp.float32)}
    grads = [jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype),
                                    params) for _ in range(4)]
    return params, grads


def test_contract_jit_retrace_extra_args_and_abstract_init():
    tx = jopt.adamw_8bit(1e-2, block_size=64, min_8bit_size=100)
    params, grads = _small()
    state = tx.init(params)
    assert all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(state))
    assert isinstance(state[0], jopt.ScaleByAdam8bitState)
    assert state[0].mu["w"].codes.shape == (10, 64) and state[0].nu["w"].signed is False
    sig = tree_signature(state)
    traces = []

    @jax.jit
    def step(g, s, p):
        traces.append(1)
        return tx.update(g, s, p, value=jnp.float32(1.0), anything_else=3)

    for g in grads:
        u, state = step(g, state, params)
        assert tree_signature(state) == sig and tree_signature(u) == tree_signature(params)
    assert len(traces) == 1
    abstract = jax.tree_util.tree_map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    assert tree_signature(jax.eval_shape(tx.init, abstract)) == sig
    u, _ = jax.jit(tx.update)({}, tx.init({}), {})
    assert u == {}


def test_donation_gives_the_same_result():
    tx = jopt.adam_8bit(1e-2, block_size=64, min_8bit_size=100)
    params, grads = _small()

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return jopt.apply_updates(p, u), s

    donated = jax.jit(step, donate_argnums=(0, 1))
    plain = jax.jit(step)
    p1, s1 = jax.tree_util.tree_map(jnp.copy, params), tx.init(params)
    p2, s2 = params, tx.init(params)
    for g in grads:
        p1, s1 = donated(p1, s1, g)
        p2, s2 = plain(p2, s2, g)
    assert tree_equal((p1, s1), (p2, s2))


def test_population_of_learning_rates_under_vmap_equals_solo_runs():
    tx = jopt.adam_8bit(1e-2, block_size=64, min_8bit_size=100)
    params, grads = _small()
    lrs = jnp.asarray([1e-2, 3e-3])
    states = jax.vmap(lambda lr: jopt.set_hyperparams(tx.init(params), learning_rate=lr))(lrs)
    step = jax.jit(jax.vmap(tx.update, in_axes=(None, 0, None)))
    for g in grads:
        us, states = step(g, states, params)
    for i, lr in enumerate([1e-2, 3e-3]):
        solo = jopt.adam_8bit(lr, block_size=64, min_8bit_size=100)
        s = solo.init(params)
        for g in grads:
            u, s = jax.jit(solo.update)(g, s, params)
        member_u, member_s = jax.tree_util.tree_map(lambda x, i=i: x[i], (us, states))
        # The same states bit for bit; the updates to 1 ulp (XLA may fuse the vectorized
        # learning-rate product differently, as for float32 Adam).
        assert tree_equal(member_s, s)
        for a, b in zip(jax.tree_util.tree_leaves(member_u), jax.tree_util.tree_leaves(u)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2.4e-7, atol=0)


def test_get_and_set_hyperparams_without_recompiling():
    tx = jopt.adam_8bit(1e-2, block_size=64, min_8bit_size=100)
    params, grads = _small()
    state = tx.init(params)
    hp = jopt.get_hyperparams(state)
    assert set(hp) == {"b1", "b2", "eps", "eps_root", "learning_rate"}
    assert float(hp["b2"]) == pytest.approx(0.999, rel=1e-7)
    assert float(hp["learning_rate"]) == pytest.approx(1e-2, rel=1e-7)
    traces = []

    @jax.jit
    def step(g, s):
        traces.append(1)
        return tx.update(g, s, params)

    u1, _ = step(grads[0], state)
    changed = jopt.set_hyperparams(state, b1=0.5, learning_rate=2e-2)
    assert tree_signature(changed) == tree_signature(state)
    u2, _ = step(grads[0], changed)
    assert len(traces) == 1
    assert float(jopt.get_hyperparams(changed)["b1"]) == pytest.approx(0.5)
    # First step: the bias-corrected moment is g whatever b1, so only the rate doubles.
    np.testing.assert_allclose(np.asarray(u2["w"]), 2 * np.asarray(u1["w"]), rtol=1e-6)


def test_bfloat16_params_quantize_float32_moments_and_return_bfloat16_updates():
    tx = jopt.scale_by_adam_8bit(block_size=64, min_8bit_size=100)
    params, grads = _small()
    p16 = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), params)
    g16 = [jax.tree_util.tree_map(lambda g: g.astype(jnp.bfloat16), g) for g in grads]
    g32 = [jax.tree_util.tree_map(lambda g: g.astype(jnp.float32), g) for g in g16]
    s16, s32 = tx.init(p16), tx.init(params)
    assert s16.mu["w"].dtype == np.float32 and s16.mu["b"].dtype == jnp.float32
    step = jax.jit(tx.update)
    for a, b in zip(g16, g32):
        u16, s16 = step(a, s16)
        u32, s32 = step(b, s32)
        assert u16["w"].dtype == jnp.bfloat16 and u16["b"].dtype == jnp.bfloat16
        # The same float32 arithmetic on the same (bfloat16-rounded) gradients: the same
        # 8-bit moments, and the update is the float32 one rounded once.
        assert tree_equal((s16.mu["w"], s16.nu["w"]), (s32.mu["w"], s32.nu["w"]))
        np.testing.assert_array_equal(np.asarray(u16["w"]),
                                      np.asarray(u32["w"].astype(jnp.bfloat16)))
        # The small leaf's float32 moments agree to float32 rounding: XLA contracts one
        # product into a fused multiply-add or not depending on the input dtype (as for
        # scale_by_adam, see test_contract.test_bfloat16_b2_stays_correct).
        np.testing.assert_allclose(np.asarray(s16.mu["b"]), np.asarray(s32.mu["b"]), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(s16.nu["b"]), np.asarray(s32.nu["b"]), rtol=1e-6)


def test_zero_float16_gradients_give_zero_updates_and_nan_stays_in_its_block():
    tx = jopt.adam_8bit(0.1, block_size=64, min_8bit_size=0)
    p = {"w": jnp.zeros((4, 64), jnp.float16), "s": jnp.zeros((), jnp.float16)}
    state = tx.init(p)
    step = jax.jit(tx.update)
    for _ in range(3):
        u, state = step(jax.tree_util.tree_map(jnp.zeros_like, p), state, p)
        assert all(bool(jnp.all(x == 0)) and x.dtype == jnp.float16
                   for x in jax.tree_util.tree_leaves(u))
    g = {"w": jnp.ones((4, 64), jnp.float16).at[1, 3].set(jnp.nan), "s": jnp.ones((), jnp.float16)}
    _, state = step(g, state, p)
    m = np.asarray(jopt.dequantize_blockwise(state[0].mu["w"]), np.float32)
    assert bool(np.all(np.isnan(m[1]))) and bool(np.all(np.isfinite(np.delete(m, 1, 0))))


def test_complex_parameters():
    # Below min_8bit_size a complex leaf keeps complex moments, as in scale_by_adam.
    tx = jopt.adam_8bit(0.1, min_8bit_size=10)
    p = {"z": jnp.asarray([1 + 2j, -1j], jnp.complex64)}
    s = tx.init(p)
    assert s[0].mu["z"].dtype == jnp.complex64
    u, _ = jax.jit(tx.update)({"z": jnp.asarray([3 + 4j, 0j], jnp.complex64)}, s, p)
    np.testing.assert_allclose(np.asarray(u["z"][0]), -0.1 * (3 + 4j) / 5, rtol=1e-5)
    with pytest.raises(TreeMismatchError,
                       match=r"^scale_by_adam_8bit: the parameters have a dtype 8-bit moments "
                             r"cannot hold at path \['big'\]: expected a real dtype \(or a complex "
                             r"leaf of fewer than 10 elements, which keeps float moments; or "
                             r"split it into real and imaginary parts\), got shape \(12,\) "
                             r"complex64\.$"):
        tx.init({"big": jnp.zeros(12, jnp.complex64)})
    # Complex updates for a quantized (real) leaf are refused at trace time too.
    real = jopt.scale_by_adam_8bit(min_8bit_size=0)
    with pytest.raises(TreeMismatchError,
                       match=r"^scale_by_adam_8bit: the updates have the wrong dtype for the "
                             r"8-bit moments: expected a real dtype \(the quantized moment of "
                             r"shape \(3,\) float32\), got shape \(3,\) complex64\.$"):
        real.update({"w": jnp.ones(3, jnp.complex64)}, real.init({"w": jnp.ones(3)}))


def test_hyperparameter_and_tree_errors():
    cases = [
        (lambda: jopt.scale_by_adam_8bit(block_size=0),
         "scale_by_adam_8bit: block_size must be a Python integer >= 1; got 0."),
        (lambda: jopt.scale_by_adam_8bit(block_size=256.0),
         "scale_by_adam_8bit: block_size must be a Python integer >= 1; got 256.0."),
        (lambda: jopt.scale_by_adam_8bit(min_8bit_size=-1),
         "scale_by_adam_8bit: min_8bit_size must be a Python integer >= 0; got -1."),
        (lambda: jopt.scale_by_adam_8bit(b1=1.0),
         "scale_by_adam_8bit: b1 must be in [0, 1); got 1.0."),
        (lambda: jopt.scale_by_adam_8bit(eps=-1e-8),
         "scale_by_adam_8bit: eps must be >= 0; got -1e-08."),
        (lambda: jopt.adam_8bit(1e-3, block_size=False),
         "adam_8bit: block_size must be a Python integer >= 1; got False."),
        (lambda: jopt.adamw_8bit(1e-3, min_8bit_size="4096"),
         "adamw_8bit: min_8bit_size must be a Python integer >= 0; got '4096'."),
        (lambda: jopt.adamw_8bit(-1.0),
         "scale_by_learning_rate: learning_rate must be >= 0; got -1.0."),
    ]
    for make, message in cases:
        with pytest.raises(InvalidHyperparameterError) as info:
            make()
        assert str(info.value) == message
    tx = jopt.scale_by_adam_8bit(min_8bit_size=2)
    state = tx.init({"w": jnp.ones(3)})
    with pytest.raises(TreeMismatchError) as info:
        tx.update({"w": jnp.ones(2)}, state)
    assert str(info.value) == ("scale_by_adam_8bit: the updates have the wrong shape for the "
                               "parameters init saw at path ['w']: expected shape (3,) float32, "
                               "got shape (2,) float32.")
    with pytest.raises(TreeMismatchError, match="state is not the one"):
        tx.update({"w": jnp.ones(3)}, jopt.scale_by_adam().init({"w": jnp.ones(3)}))


def test_repr_equality_and_chain_structure():
    a = jopt.adamw_8bit(1e-3, weight_decay=0.01, block_size=256)
    assert a == jopt.adamw_8bit(1e-3, weight_decay=0.01, block_size=256)
    assert hash(a) == hash(jopt.adamw_8bit(1e-3, weight_decay=0.01, block_size=256))
    assert a != jopt.adamw_8bit(1e-3, weight_decay=0.01)
    assert repr(jopt.adam_8bit(1e-3)) == ("adam_8bit(learning_rate=0.001, b1=0.9, b2=0.999, "
                                          "eps=1e-08, eps_root=0.0)")
    assert repr(jopt.scale_by_adam_8bit(min_8bit_size=0)) == (
        "scale_by_adam_8bit(b1=0.9, b2=0.999, eps=1e-08, eps_root=0.0, min_8bit_size=0)")
    state = a.init({"w": jnp.zeros(3)})
    assert [type(s).__name__ for s in state] == [
        "ScaleByAdam8bitState", "AddDecayedWeightsState", "ScaleByLearningRateState"]
    assert [type(s).__name__ for s in jopt.adam_8bit(1e-3).init({"w": jnp.zeros(3)})] == [
        "ScaleByAdam8bitState", "ScaleByLearningRateState"]
    init, update = a
    assert init is a.init and update is a.update



# ---------------------------------------------------------------------------------------------
# Review regressions: huge scales, overflowing moments, input errors, sharded parameters.


def _force_single_expression(mp):
    """Makes the 8-bit step use its single-expression form (the one used off CPU) on CPU."""
    mp.setattr(_codecs, "_step_chunked",
               lambda g, leaves, param, kw, *, call, meta, cpu_chunk:
               _codecs._step_whole(g, leaves, param, kw, call=call, meta=meta))


def test_blocks_with_scales_up_to_float32_max_round_trip():
    # A reciprocal of absmax > 2**126 is subnormal (flushed to 0 on CPU): the block came back
    # as zeros. The largest element must come back exactly, the rest within half a gap of
    # the map (0.45 / 64 of absmax, signed; 0.45 / 128 unsigned), chunked or whole.
    big = np.float32(np.finfo(np.float32).max)
    x = np.asarray([8.6e37, 1e37, big, -big / 3, 2.0**127, 1.0, -(2.0**126), 3e36],
                   np.float32)
    for signed, gap in ((True, 0.45 / 64), (False, 0.45 / 128)):
        xs = x if signed else np.abs(x)
        q = jopt.quantize_blockwise(xs, signed=signed, block_size=2)
        back = np.asarray(jopt.dequantize_blockwise(q)).reshape(-1, 2)
        blocks = xs.reshape(-1, 2)
        top = np.abs(blocks).argmax(axis=1)
        rows = np.arange(len(blocks))
        np.testing.assert_array_equal(back[rows, top], blocks[rows, top])
        err = np.abs(back.astype(np.float64) - blocks) / np.abs(blocks).max(axis=1)[:, None]
        assert err.max() <= gap * (1 + 1e-6), (signed, err)
    np.testing.assert_array_equal(
        np.asarray(jopt.dequantize_blockwise(jopt.quantize_blockwise(jnp.asarray([8.6e37, 1e37]),
                                                                     block_size=2)))[0],
        np.float32(8.6e37))


@pytest.mark.parametrize("chunked", [True, False])
def test_finite_huge_gradient_saturates_instead_of_poisoning_its_block(chunked):
    # |g| > 1.8e19 overflows g**2 to inf: the block's absmax became NaN and its second moment
    # NaN forever, where float32 Adam stays finite (u = 0 for that element).
    g = jnp.asarray([1e20, 1.0, -2.0, 3.0], jnp.float32)
    tx = jopt.scale_by_adam_8bit(min_8bit_size=0, block_size=4)
    ref = jopt.scale_by_adam()
    s, rs = tx.init(g), ref.init(g)
    step = jax.jit(lambda g, s: tx.update(g, s))
    with pytest.MonkeyPatch.context() as mp:
        # A distinct chunk size per case: the jitted step's cache would keep the other.
        mp.setattr(_codecs, "CPU_CHUNK", 4 if chunked else 5)
        if not chunked:
            _force_single_expression(mp)
        for _ in range(4):
            u, s = step(g, s)
            ru, rs = ref.update(g, rs)
            u, ru = np.asarray(u), np.asarray(ru)
            assert np.all(np.isfinite(u)) and u[0] == ru[0] == 0.0
            # The normal elements lose their moments below the block's 1e-7 floor but keep
            # sensible updates: the gradient's sign, magnitude at most ~1 like Adam's.
            assert np.all(np.sign(u[1:]) == np.sign(np.asarray(g)[1:]))
            assert np.all((np.abs(u[1:]) > 0.3) & (np.abs(u[1:]) <= 1.5)), u
            assert np.isfinite(float(s.nu.absmax[0])) and np.isfinite(float(s.mu.absmax[0]))
    assert float(s.nu.absmax[0]) == np.finfo(np.float32).max
    # A genuinely non-finite gradient still poisons its block.
    u, s = tx.update(g.at[1].set(jnp.inf), s)
    assert np.isnan(float(s.nu.absmax[0])) and np.isnan(float(s.mu.absmax[0]))


def test_dequantize_and_quantize_input_errors():
    q = jopt.quantize_blockwise(jnp.ones(10), block_size=4)
    with pytest.raises(InvalidHyperparameterError,
                       match=r"^dequantize_blockwise: q must be a jopt.QuantizedArray .*; "
                             r"got 'ArrayImpl float32\[3\]'\.$"):
        jopt.dequantize_blockwise(jnp.ones(3))
    for bad in ((-2, -3), 5, (2.5, 4)):
        with pytest.raises(InvalidHyperparameterError,
                           match=r"^dequantize_blockwise: shape must be a tuple of integers"):
            jopt.dequantize_blockwise(q, bad)
    for edited in (dataclasses.replace(q, shape=(20,)),
                   dataclasses.replace(q, codes=q.codes.astype(jnp.int32)),
                   dataclasses.replace(q, absmax=q.absmax[:2]),
                   dataclasses.replace(q, codes=q.codes.reshape(-1))):
        with pytest.raises(InvalidHyperparameterError,
                           match=r"^dequantize_blockwise: q must be codes uint8\[ceil\(.*got "):
            jopt.dequantize_blockwise(edited)
    for bad in (None, "abc", object()):
        with pytest.raises(InvalidHyperparameterError,
                           match=r"^quantize_blockwise: x must be a real array"):
            jopt.quantize_blockwise(bad)


def test_sharded_parameters_compile_at_most_once_more():
    # Documented limitation: init does not pick a sharding for the codes; the first jitted
    # step may return them sharded like the gradients, so the second step compiles once
    # more, and no later step does. Results match the unsharded run.
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P
    mesh = Mesh(np.asarray(jax.devices()[:4]), ("x",))
    w = jnp.arange(64.0, dtype=jnp.float32).reshape(16, 4)
    tx = jopt.adam_8bit(0.1, min_8bit_size=0, block_size=4)

    def run(params):
        @jax.jit
        def step(p, s):
            u, s = tx.update(jax.tree_util.tree_map(jnp.sin, p), s, p)
            return jopt.apply_updates(p, u), s

        p, s = params, tx.init(params)
        for _ in range(4):
            p, s = step(p, s)
        return p, step._cache_size()

    sharded, n_compiled = run({"w": jax.device_put(w, NamedSharding(mesh, P("x")))})
    plain, _ = run({"w": w})
    assert n_compiled <= 2
    np.testing.assert_array_equal(np.asarray(sharded["w"]), np.asarray(plain["w"]))


# ---------------------------------------------------------------------------------------------
# Adversarial regressions: NaN in large leaves, a huge finite gradient followed by decay.


@pytest.mark.parametrize("chunked", [True, False])
def test_nan_gradient_in_a_large_leaf_stays_nan(chunked):
    # XLA:CPU's max reduction over a (16, 256) array lost the NaN: after a NaN gradient the
    # 8-bit first moment held 0.11 where adam holds NaN.
    params = {"w": jnp.zeros((64, 64))}  # 4096 elements, two blocks of 2048
    tx = jopt.scale_by_adam_8bit()
    ref = jopt.scale_by_adam()
    g = {"w": jnp.ones((64, 64)).at[3, 5].set(jnp.nan)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_codecs, "CPU_CHUNK", 2048 if chunked else 4097)
        if not chunked:
            _force_single_expression(mp)
        _, s = jax.jit(tx.update)(g, tx.init(params))
    _, r = ref.update(g, ref.init(params))
    mu = np.asarray(jopt.dequantize_blockwise(s.mu["w"]))
    assert np.isnan(mu[3, 5]) and np.isnan(np.asarray(r.mu["w"])[3, 5])
    # The NaN poisons its block (the first 2048 elements), not the other one.
    assert np.isnan(mu.reshape(-1)[:2048]).all() and np.isfinite(mu.reshape(-1)[2048:]).all()


def test_huge_finite_gradient_then_decay_keeps_the_update_at_zero():
    # One gradient of 1e30 (g**2 overflows float32) late in training (step 3003, where the
    # bias correction no longer overflows v_hat), then normal gradients: the saturated second
    # moment used to decay, and tens of steps later that element's update reached 3e7.
    # float32 Adam keeps v = inf there, so its update stays 0; so does 8-bit Adam now.
    rng = np.random.default_rng(6)
    tx = jopt.scale_by_adam_8bit(min_8bit_size=0, block_size=64)
    ref = jopt.scale_by_adam()
    params = jnp.zeros(256)
    s, r = tx.init(params), ref.init(params)
    s, r = s._replace(count=jnp.int32(3000)), r._replace(count=jnp.int32(3000))
    step, ref_step = jax.jit(tx.update), jax.jit(ref.update)
    worst = 0.0
    for t in range(80):
        g = jnp.asarray(rng.normal(size=256), jnp.float32)
        if t == 3:
            g = g.at[10].set(1e30)
        u, s = step(g, s)
        ru, r = ref_step(g, r)
        assert float(ru[10]) == 0.0 or t < 3
        if t >= 3:
            worst = max(worst, abs(float(u[10])))
    assert worst == 0.0
    # The other blocks are untouched by it: their updates follow float32 Adam's (up to the
    # 8-bit storage error of their moments, a few percent of an update of size ~1).
    np.testing.assert_allclose(np.asarray(u[64:]), np.asarray(ru[64:]), atol=0.1)
