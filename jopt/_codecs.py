"""Storage codecs for per-parameter buffers (slots): how a moment is kept between steps.

Any slot of any declared transformation takes its storage from its dtype option (``mu_dtype``,
``nu_dtype``, ``accumulator_dtype``, ...):

* ``None``: the parameter's dtype promoted to at least float32 (the default);
* a floating dtype (``"bfloat16"``, ``jnp.float16``, ...): stored in that dtype, rounded to
  nearest;
* :class:`StochasticRounding` (``jopt.StochasticRounding("bfloat16")``): stored in a narrow
  dtype, rounded stochastically so that small increments survive on average;
* :class:`Blockwise8bit` (or the string ``"8bit"``): stored block-wise in 8 bits with a
  float32 scale per block (Dettmers et al. 2022), leaves smaller than ``min_size`` in float.

A rule is written once, for arrays in its compute dtype; the codec decodes a slot before the
rule and encodes the rule's new value after it. An 8-bit slot needs whole tensors (blocks never
span two), so a transformation with one runs per leaf on packed parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jopt import _rounding, _tree
from jopt._quantize import (
    QuantizedArray,
    check_block_size,
    dequantize_blocks,
    dequantize_flat,
    encode_blocks,
    from_blocks,
    num_blocks,
    to_blocks,
)
from jopt._validate import check_dtype_option
from jopt.errors import InvalidHyperparameterError, TreeMismatchError

__all__ = ["Blockwise8bit", "StochasticRounding"]

_F32_MAX = np.float32(np.finfo(np.float32).max)
# Elements per iteration of the XLA:CPU loop of quantized_leaf_step. Measured on a 2-core CPU
# (jitted, donated, medians of interleaved runs) for 2**13..2**19: 2**15 and 2**17 ran
# 2-15 % faster than 2**13 with the same temporaries; 2**19 raised them on a GPT-2-like tree.
CPU_CHUNK = 1 << 15


def _size_option(owner: str, arg: str, value: Any, lo: int) -> int:
    # Structure, not data: a Python int (it decides shapes and which leaves are quantized).
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
            or value < lo):
        raise InvalidHyperparameterError(owner, arg, value, f"a Python integer >= {lo}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class Blockwise8bit:
    """Block-wise 8-bit storage of a slot (the moments of 8-bit Adam, or of any optimizer).

    Each leaf of at least ``min_size`` elements is stored as a :class:`jopt.QuantizedArray`:
    one ``uint8`` code per element (the nearest value of :func:`jopt.dynamic_map`, signed for
    moments of either sign, unsigned for a slot declared non-negative such as a second
    moment) and one float32 scale per block of ``block_size`` elements, about
    ``1 + 4 / block_size`` bytes per element instead of 4. Smaller leaves (biases, norms)
    keep float moments. Each step decodes the moments to float32, runs the rule and
    requantizes the new moments; the update itself uses the new moments before
    requantization.

    Non-finite values: a NaN or infinite gradient makes its block's stored moment NaN (the
    block's scale is NaN), so the non-finite value is not hidden. A moment that overflows from
    finite inputs (``g**2`` beyond float32 for ``|g|`` above about ``1.8e19``) is stored
    saturated at the largest float32 and read back as infinity, as float32 arithmetic would
    hold it: that element's update stays 0 from then on, as in float32 Adam (its block-mates
    are then stored relative to that scale, so the small ones read back as 0).

    Args:
      block_size: elements per block, a Python int >= 1. Default 2048 (the paper's).
      min_size: leaves with fewer elements keep float storage, a Python int >= 0 (0 quantizes
        every leaf). Default 4096.

    References:
      Dettmers, Lewis, Shleifer & Zettlemoyer, `8-bit Optimizers via Block-wise Quantization
      <https://arxiv.org/abs/2110.02861>`_, ICLR 2022.
    """

    block_size: int = 2048
    min_size: int = 4096

    whole_tensor = True  # blocks never span two tensors

    def validated(self, owner: str, option: str) -> Blockwise8bit:
        check_block_size(owner, self.block_size)
        _size_option(owner, "min_8bit_size" if option == "8bit" else "min_size",
                     self.min_size, 0)
        return Blockwise8bit(int(self.block_size), int(self.min_size))

    def __repr__(self) -> str:
        return f"Blockwise8bit(block_size={self.block_size}, min_size={self.min_size})"


@dataclasses.dataclass(frozen=True)
class StochasticRounding:
    """Storage of a slot in a narrow floating dtype with stochastic rounding.

    The new value (computed in float32) is rounded to ``dtype`` at random, up or down, with
    the probabilities that make the stored value equal the computed one in expectation
    (:func:`jopt.stochastic_round`): a bfloat16 momentum keeps increments below half a
    bfloat16 spacing on average, where round-to-nearest drops them every step. The random
    bits come from ``seed``, the step counter, the slot and the leaf (or packed buffer), so a
    run is reproducible; packed and per-leaf layouts draw different bits.

    Args:
      dtype: a floating dtype narrower than float32 (``"bfloat16"``, ``"float16"``, float8
        types with a signed zero). Default ``"bfloat16"``.
      seed: an integer seed. Default 0.
    """

    dtype: Any = "bfloat16"
    seed: int = 0

    whole_tensor = False

    def validated(self, owner: str, option: str) -> StochasticRounding:
        dtype = check_dtype_option(owner, option, self.dtype)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating) or dtype.itemsize >= 4:
            raise InvalidHyperparameterError(
                owner, option, self,
                "a StochasticRounding to a floating dtype narrower than float32 (bfloat16, "
                "float16, ...)")
        _rounding.check_dtype(owner, dtype)
        _size_option(owner, "seed", self.seed, 0)
        return StochasticRounding(dtype, int(self.seed))

    def __repr__(self) -> str:
        return f"StochasticRounding({np.dtype(self.dtype).name!r}, seed={self.seed})"


def resolve(owner: str, option: str, value: Any) -> Any:
    """A slot's storage option, validated: ``None``, a floating dtype, or a codec."""
    if value is None:
        return None
    if isinstance(value, str) and value == "8bit":
        return Blockwise8bit().validated(owner, option)
    if isinstance(value, (Blockwise8bit, StochasticRounding)):
        return value.validated(owner, option)
    try:
        return check_dtype_option(owner, option, value)
    except InvalidHyperparameterError:
        raise InvalidHyperparameterError(
            owner, option, value, "None, a floating dtype (e.g. 'bfloat16'), '8bit', "
            "jopt.Blockwise8bit(...) or jopt.StochasticRounding(...)") from None


def whole_tensor(spec: Any) -> bool:
    """Whether a storage needs whole tensors (blocks that never span two leaves)."""
    return bool(getattr(spec, "whole_tensor", False))


def init_leaf(owner: str, spec: Any, p: Any, *, real: bool, nonnegative: bool,
              path: str = "") -> Any:
    """The zero-initialised slot leaf for parameter ``p`` under storage ``spec``."""
    p_dtype = _tree.dtype_of(p)
    shape = _tree.shape_of(p)
    if isinstance(spec, Blockwise8bit):
        dtype = _tree.moment_dtype(p_dtype, None, real=real)
        if math.prod(shape) < spec.min_size:
            return jnp.zeros_like(p, dtype=dtype)
        if jnp.issubdtype(p_dtype, jnp.complexfloating):
            # Also for a real slot (|g|**2): the 8-bit step computes on real blocks only.
            raise TreeMismatchError(
                owner, "the parameters have a dtype 8-bit moments cannot hold", path,
                f"a real dtype (or a complex leaf of fewer than {spec.min_size} elements, "
                "which keeps float moments; or split it into real and imaginary parts)",
                _tree.describe(p))
        signed = not nonnegative
        nb = num_blocks(math.prod(shape), spec.block_size)
        # The code of 0 (index 128 in the signed map, 0 in the unsigned one), scale 0.
        return QuantizedArray(
            codes=jnp.full((nb, spec.block_size), 128 if signed else 0, jnp.uint8),
            absmax=jnp.zeros((nb,), jnp.float32), shape=shape, dtype=np.dtype(dtype),
            signed=signed)
    if isinstance(spec, StochasticRounding):
        if jnp.issubdtype(p_dtype, jnp.complexfloating) and not real:
            raise TreeMismatchError(
                owner, "the parameters have a dtype stochastic rounding cannot store", path,
                "a real dtype", _tree.describe(p))
        return jnp.zeros_like(p, dtype=spec.dtype)
    return jnp.zeros_like(p, dtype=_tree.moment_dtype(p_dtype, spec, real=real))


def decode(leaf: jax.Array, dtype: Any) -> jax.Array:
    """A plain (float or stochastically rounded) slot leaf in the rule's dtype."""
    return leaf.astype(dtype)


def encode(spec: Any, new: jax.Array, leaf: jax.Array, key: Any = None) -> jax.Array:
    """A rule's new value in the storage of ``leaf``."""
    if isinstance(spec, StochasticRounding) and np.dtype(leaf.dtype) == np.dtype(spec.dtype):
        x = new.astype(_tree.wider(np.dtype(new.dtype), np.dtype(np.float32)))
        return _rounding.stochastic_round(x, leaf.dtype, key)
    return new.astype(leaf.dtype)


def random_bits(spec: Any) -> bool:
    """Whether a storage draws random bits (stochastic rounding)."""
    return isinstance(spec, StochasticRounding)


def stochastic_key(spec: Any, count: jax.Array, slot: int, leaf: int) -> Any:
    """The random key of a stochastically rounded slot leaf at a step."""
    if not isinstance(spec, StochasticRounding):
        return None
    key = jax.random.fold_in(jax.random.PRNGKey(spec.seed), count)
    return jax.random.fold_in(jax.random.fold_in(key, slot), leaf)


# --------------------------------------------------------------------- 8-bit leaves


def _saturate(x: jax.Array, g: jax.Array) -> jax.Array:
    """A new moment ready for its block's maximum.

    A moment that overflowed from finite inputs (``g**2`` above the float32 range, or a
    float64 moment beyond it) is clipped to +-(largest float32), so that only a non-finite
    gradient or stored moment poisons its block; the decoder reads a saturated value back as
    infinity (:func:`_unsaturate`). A NaN (from a NaN gradient or a poisoned stored block)
    becomes +inf: XLA:CPU's max reduction over a 2-D array does not always propagate NaN (a
    NaN in a (16, 256) array came back as a finite maximum) but never loses an infinity, and
    an infinite maximum makes the block's scale NaN. Done here, in the producer of the
    reduction's input, it costs no pass over the block of its own."""
    x = jnp.where(jnp.isfinite(g), jnp.clip(x, -_F32_MAX, _F32_MAX), x)
    return jnp.where(jnp.isnan(x), jnp.float32(np.inf), x)


def _unsaturate(x: jax.Array) -> jax.Array:
    """A decoded moment equal to +-(largest float32) is a saturated one (nothing else decodes
    to it: it needs a block scale of exactly that value and the code of +-1): read it as the
    infinity float32 arithmetic would hold, so it stays saturated instead of decaying."""
    # Constants in the selected branch (not x * inf): a derivative through the step (a
    # meta-gradient) must not meet 0 * inf in the branch that is not taken.
    inf = jnp.where(x > 0, jnp.float32(np.inf), jnp.float32(-np.inf))
    return jnp.where(jnp.abs(x) == _F32_MAX, jax.lax.stop_gradient(inf), x)


def _decode_blocks(q: Any, signed: bool, codes: Any = None, absmax: Any = None) -> jax.Array:
    return _unsaturate(dequantize_blocks(q.codes if codes is None else codes,
                                         q.absmax if absmax is None else absmax, signed))


def _requantize(new: jax.Array, g: jax.Array, signed: bool):
    new = _saturate(new.astype(jnp.float32), g)
    absmax = jnp.max(jnp.abs(new), axis=-1)
    absmax = jnp.where(jnp.isfinite(absmax), absmax, jnp.float32(np.nan))
    return encode_blocks(new, absmax, signed), absmax


@dataclasses.dataclass(frozen=True, eq=False)
class RuleCall:
    """A transformation's rule with the static facts the 8-bit step needs: one object per
    transformation, so the jitted step is compiled once per rule."""

    fn: Any  # fn(g, values, param, kw) -> (u, new values)


def quantized_leaf_step(call: RuleCall, g: jax.Array, leaves: tuple, dtypes: tuple,
                        param: Any, kw: dict, *, chunked: bool | None = None):
    """One step of a rule on a leaf with at least one 8-bit slot: ``(u, new values)``, the
    new value of a quantized slot a :class:`QuantizedArray`, that of a plain slot the rule's
    output in its compute dtype (the caller stores it).

    ``leaves``: the slot leaves (:class:`QuantizedArray` or plain arrays); ``dtypes``: the
    dtype each plain slot is read in (ignored for quantized ones). ``chunked``: ``None``
    picks per platform (a loop over chunks of blocks on CPU, one expression elsewhere);
    ``True``/``False`` force one (tests compare them).
    """
    meta = tuple(("q", leaf.signed) if isinstance(leaf, QuantizedArray) else ("p", np.dtype(d))
                 for leaf, d in zip(leaves, dtypes))
    sizes = {leaf.block_size for leaf in leaves if isinstance(leaf, QuantizedArray)}
    if len(sizes) != 1:
        raise InvalidHyperparameterError(
            "8-bit storage", "block_size", sorted(sizes),
            "the same for every 8-bit slot of one transformation")
    return _qstep_jit(g, tuple(leaves), param, kw, call=call, meta=meta, chunked=chunked,
                      cpu_chunk=CPU_CHUNK)


@functools.partial(jax.jit, static_argnames=("call", "meta", "chunked", "cpu_chunk"))
def _qstep_jit(g, leaves, param, kw, *, call, meta, chunked, cpu_chunk):
    # Jitted (and inlined into a caller's jit) so that an eager update runs as one compiled
    # program per leaf rather than a hundred small operations.
    if chunked is None:
        return jax.lax.platform_dependent(
            g, leaves, param, kw,
            cpu=functools.partial(_step_chunked, call=call, meta=meta, cpu_chunk=cpu_chunk),
            default=functools.partial(_step_whole, call=call, meta=meta))
    if chunked:
        return _step_chunked(g, leaves, param, kw, call=call, meta=meta, cpu_chunk=cpu_chunk)
    return _step_whole(g, leaves, param, kw, call=call, meta=meta)


def _flat_inputs(g, leaves, param, meta):
    """The step's inputs as flat arrays of the leaf's size (quantized slots decoded)."""
    size = math.prod(g.shape)
    ct = g.dtype
    values = []
    for leaf, (kind, info) in zip(leaves, meta):
        if kind == "q":
            values.append(_unsaturate(dequantize_flat(leaf.codes, leaf.absmax, info, size))
                          .astype(ct))
        else:
            values.append(leaf.reshape(-1).astype(info))
    flat_param = None if param is None else param.reshape(-1)
    return g.reshape(-1), values, flat_param


def _block_step(call, meta, gb, q_parts, plain_blocks, pb, kw):
    """The rule on whole blocks; returns ``(u blocks, [(codes, absmax) per quantized slot],
    [new blocks per plain slot])``."""
    ct = gb.dtype
    values, qi, pi = [], 0, 0
    for kind, info in meta:
        if kind == "q":
            codes, absmax = q_parts[qi]
            values.append(_decode_blocks(None, info, codes, absmax).astype(ct))
            qi += 1
        else:
            values.append(plain_blocks[pi])
            pi += 1
    ub, new = call.fn(gb, tuple(values), pb, kw)
    q_out, p_out = [], []
    for (kind, info), v in zip(meta, new):
        if kind == "q":
            q_out.append(_requantize(v, gb, info))
        else:
            p_out.append(v)
    return ub, q_out, p_out


def _rebuild(leaves, meta, q_out, p_out):
    out, qi, pi = [], 0, 0
    for leaf, (kind, _) in zip(leaves, meta):
        if kind == "q":
            codes, absmax = q_out[qi]
            out.append(QuantizedArray(codes, absmax, leaf.shape, leaf.dtype, leaf.signed))
            qi += 1
        else:
            out.append(p_out[pi])
            pi += 1
    return out


def _step_whole(g, leaves, param, kw, *, call, meta):
    """The step as one expression over the whole (zero-padded) leaf.

    Requantization needs each block's new absmax before any of its codes. Decoding is plain
    arithmetic (no table gather), so a backend that fuses elementwise producers into
    reductions and into several consumers (XLA's GPU fusion passes are designed to) need not
    write the new moments out in float32. Used off CPU; on CPU the tests check it against
    :func:`_step_chunked` bit for bit (its memory behaviour on GPU/TPU is not measured here)."""
    bs = next(leaf.block_size for leaf in leaves if isinstance(leaf, QuantizedArray))
    q_parts = [(leaf.codes, leaf.absmax) for leaf in leaves if isinstance(leaf, QuantizedArray)]
    plain = [to_blocks(leaf.astype(info), bs) for leaf, (kind, info) in zip(leaves, meta)
             if kind == "p"]
    pb = None if param is None else to_blocks(param, bs)
    ub, q_out, p_out = _block_step(call, meta, to_blocks(g, bs), q_parts, plain, pb, kw)
    shape = tuple(g.shape)
    p_out = [from_blocks(v, shape) for v in p_out]
    return from_blocks(ub, shape), _rebuild(leaves, meta, q_out, p_out)


def _step_chunked(g, leaves, param, kw, *, call, meta, cpu_chunk):
    """The same step as :func:`_step_whole`, as a loop over chunks of whole blocks.

    XLA:CPU does not fuse a computed operand into a reduction (it writes the new moments out
    in float32, 8 bytes per element of the leaf, and keeps those of every leaf alive at
    once). Each block only needs its own elements, so a loop over chunks of about
    ``cpu_chunk`` elements bounds those temporaries by the chunk. The update, and the new
    values of slots kept in float, are elementwise in the old values: they are computed
    outside the loop, in the parameter's layout, where they fuse into their consumers (the
    learning rate, ``apply_updates``) instead of being written out."""
    q_leaves = [leaf for leaf in leaves if isinstance(leaf, QuantizedArray)]
    bs = q_leaves[0].block_size
    size = math.prod(g.shape)
    per = max(1, cpu_chunk // bs)  # blocks per chunk
    chunk = per * bs
    full = size // chunk  # chunks that hold no padding
    flat, values, flat_param = _flat_inputs(g, leaves, param, meta)
    u, new = call.fn(flat, tuple(values), flat_param, kw)
    plain_flat = [v for v, (kind, _) in zip(values, meta) if kind == "p"]
    p_out = [v.reshape(g.shape) for v, (kind, _) in zip(new, meta) if kind == "p"]

    def chunk_inputs(e0, b0):
        gb = jax.lax.dynamic_slice(flat, (e0,), (chunk,)).reshape(per, bs)
        plain = [jax.lax.dynamic_slice(v, (e0,), (chunk,)).reshape(per, bs)
                 for v in plain_flat]
        pb = None if flat_param is None else jax.lax.dynamic_slice(
            flat_param, (e0,), (chunk,)).reshape(per, bs)
        return gb, plain, pb

    def body(i, carry):
        # Codes and scales are read and rewritten chunk by chunk in the loop carry, in place.
        e0, b0 = i * chunk, i * per
        gb, plain, pb = chunk_inputs(e0, b0)
        parts = [(jax.lax.dynamic_slice(c, (b0, 0), (per, bs)),
                  jax.lax.dynamic_slice(a, (b0,), (per,))) for c, a in carry]
        _, q_out, _ = _block_step(call, meta, gb, parts, plain, pb, kw)
        return tuple((jax.lax.dynamic_update_slice(c, qc, (b0, 0)),
                      jax.lax.dynamic_update_slice(a, qa, (b0,)))
                     for (c, a), (qc, qa) in zip(carry, q_out))

    carry = tuple((leaf.codes, leaf.absmax) for leaf in q_leaves)
    if full:
        carry = jax.lax.fori_loop(0, full, body, carry)
    e0, b0 = full * chunk, full * per
    if e0 < size:
        # The last, partial chunk (zero-padded to whole blocks), outside the loop.
        parts = [(leaf.codes[b0:], leaf.absmax[b0:]) for leaf in q_leaves]
        plain = [to_blocks(v[e0:], bs) for v in plain_flat]
        pb = None if flat_param is None else to_blocks(flat_param[e0:], bs)
        _, q_out, _ = _block_step(call, meta, to_blocks(flat[e0:], bs), parts, plain, pb, kw)
        carry = tuple((c.at[b0:].set(qc), a.at[b0:].set(qa))
                      for (c, a), (qc, qa) in zip(carry, q_out))
    return u.reshape(g.shape), _rebuild(leaves, meta, list(carry), p_out)
