"""Block-wise 8-bit quantization with a dynamic (tree) code map.

An array is flattened, padded with zeros to a whole number of blocks, and each block is
stored as 256-level codes (one ``uint8`` per element) and one float32 scale, the block's
largest magnitude ``absmax``. An element ``x`` of a block becomes the code ``c`` whose map
value is nearest to ``x / absmax``, and comes back as ``map[c] * absmax``.

The map is non-uniform: it spends its 256 values on seven (signed) or eight (unsigned)
decades of magnitude, so small values keep a bounded *relative* error, as the moments of
Adam need (they span several orders of magnitude within a tensor). Per-block scales keep an
outlier from flattening the codes of the rest of the tensor. Both ideas are from Dettmers et
al. (2022), `8-bit Optimizers via Block-wise Quantization
<https://arxiv.org/abs/2110.02861>`_, which builds on Dettmers (2016), `8-Bit
Approximations for Parallelism in Deep Learning <https://arxiv.org/abs/1511.04561>`_.

The computations are elementwise (plus one max per block) so that XLA can fuse them into
the surrounding update: decoding is exact float32 arithmetic on the code (no gather),
encoding a closed-form guess corrected against lookups in tables of at most 257 entries.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jopt._serialization import serializable
from jopt.errors import InvalidHyperparameterError

__all__ = ["QuantizedArray", "dequantize_blockwise", "dynamic_map", "quantize_blockwise"]


def _at_least(x: Any, t: int, xp: Any) -> Any:
    """``1.0`` where ``x >= t`` else ``0.0``, for integer-valued float32 ``x`` in [0, 255] and
    an integer ``t`` in [1, 256]: ``floor((x + 256 - t) / 256)``, exact in float32. (Written
    with floor rather than a comparison so that the decoding is plain arithmetic, which XLA
    can fuse into any consumer, reductions included.)"""
    return xp.floor((x + xp.float32(256 - t)) * xp.float32(1.0 / 256.0))


def _decode(index: Any, signed: bool, xp: Any) -> Any:
    """The map value of each code index (float32 ``index`` in [0, 255]), with NumPy or
    jax.numpy as ``xp``: the construction of :func:`dynamic_map` in exact float32 arithmetic
    except for one correctly rounded division, so device and host agree bit for bit."""
    bits = 7 if signed else 8
    one = xp.float32(1.0)
    if signed:
        # Indices 0..127 are negative (128 - index is the rank of the magnitude, 1 for the
        # smallest), 128 is zero, 129..255 positive (index - 128). ``rank`` counts from 0 at
        # 10**-7, the extra negative value, so it is one less than that on the negative side.
        negative = one - _at_least(index, 128, xp)
        rank = xp.abs(index - xp.float32(128.0)) - negative
        nonzero = one - (_at_least(index, 128, xp) - _at_least(index, 129, xp))
        sign = nonzero - xp.float32(2.0) * negative
    else:
        rank = index
        sign = _at_least(index, 1, xp)
    # A magnitude's rank r >= 1 has F = floor(log2 r) fraction bits, k = r - 2**F, decade
    # E = bits - 1 - F (rank 0 is handled below).
    pow2 = one  # 2**F
    pow10 = xp.float32(10.0)  # 10**(E + 1) = 10**(bits - F)
    for j in range(1, bits):
        above = _at_least(rank, 2**j, xp)
        pow2 = pow2 + above * xp.float32(2 ** (j - 1))
        pow10 = pow10 * (xp.float32(10.0) - xp.float32(9.0) * above)
    # 10**-E (0.1 + 0.9 (k + 1) / 2**F) = (2**F + 9 (k + 1)) / (10**(E+1) 2**F), k = r - 2**F:
    # numerator and denominator are exact float32 integers (10**(E+1) 2**F = 2**(E+1+F)
    # 5**(E+1) with 5**8 < 2**24), so the quotient is the correctly rounded value. At r = 0
    # it gives 10**-bits, the signed map's -1e-7; the zeros are set by ``sign``.
    numerator = xp.float32(9.0) * (rank + one) - xp.float32(8.0) * pow2
    return sign * (numerator / (pow10 * pow2))


@functools.lru_cache(maxsize=2)
def _tables(signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """The float32 map and the float32 midpoints between its neighbours."""
    with np.errstate(all="raise"):
        values = _decode(np.arange(256, dtype=np.float32), signed, np).astype(np.float32)
    assert values.shape == (256,) and bool(np.all(np.diff(values) > 0))
    wide = values.astype(np.float64)
    # Midpoints of the float32 values, computed exactly in float64 and rounded once.
    mids = ((wide[1:] + wide[:-1]) / 2.0).astype(np.float32)
    values.setflags(write=False)
    mids.setflags(write=False)
    return values, mids


def dynamic_map(signed: bool) -> np.ndarray:
    """The 256 values of the dynamic (tree) quantization map, sorted.

    A code is read as a bit pattern of four parts (dynamic tree quantization as described by
    Dettmers et al. 2022, after Dettmers 2016): an optional sign bit; ``E`` zero bits, which
    make the value's decade :math:`10^{-E}`; an indicator bit (the first one); and the ``F``
    remaining bits, a linear fraction ``k``:

    .. math::
       q(E, k) = \\pm 10^{-E}\\left(0.1 + 0.9\\,\\frac{k + 1}{2^F}\\right),
       \\qquad k = 0, \\dots, 2^F - 1

    so decade ``E`` holds the upper edges of :math:`2^F` equal steps of
    :math:`(10^{-(E+1)}, 10^{-E}]`: the codes of :math:`[10^{-(E+1)}, 10^{-E}]` are evenly
    spaced, both ends included, and large magnitudes get more fraction bits than small ones.

    * ``signed=True`` (first moment): sign bit, then 7 bits, so ``E = 0..6`` with
      ``F = 6 - E`` fraction bits (64 codes in ``[0.1, 1]`` down to one at ``1e-6``). The
      pattern of seven zeros is ``0`` with a plus sign; with a minus sign it would be a second
      zero, so it is given the next decade's value ``-1e-7``. The map is therefore symmetric
      except for that one value; it holds ``-1``, ``0`` and ``1``.
    * ``signed=False`` (second moment, which is never negative): the sign bit becomes one
      more bit for the exponent and fraction (the paper's "dynamic quantization"): ``E = 0..7``
      with ``F = 7 - E`` (128 codes in ``[0.1, 1]``, the smallest non-zero value ``1e-7``),
      and the all-zero byte is ``0``.

    Rounding to the nearest code makes an absolute error of at most half a step,
    :math:`0.45 \\cdot 10^{-E} / 2^F`, for :math:`|x|` in :math:`[10^{-(E+1)}, 10^{-E}]`, so
    the relative error there is at most :math:`4.5 / (2^F + 4.5)` (6.6 % for signed and 3.4 %
    for unsigned codes in ``[0.1, 1]``, doubling roughly with each decade further down),
    whatever the magnitude: that is what makes the map suited to values spread over several
    orders of magnitude. The largest half gap of the whole map is ``0.45 / 64`` (signed) or
    ``0.45 / 128`` (unsigned), between the codes near 1.

    The stored ``uint8`` of :func:`quantize_blockwise` is the *index* of a value in this
    sorted array (so codes order as their values do), not the bit pattern above.

    Args:
      signed: the signed map (values in ``[-1, 1]``) or the unsigned one (``[0, 1]``).

    Returns:
      A new float32 NumPy array of shape ``(256,)``, strictly increasing.

    Examples:
      >>> import jopt
      >>> m = jopt.dynamic_map(signed=False)
      >>> m.shape, m.dtype.name, float(m[0]), float(m[1]), float(m[-1])
      ((256,), 'float32', 0.0, 1.0000000116860974e-07, 1.0)
      >>> s = jopt.dynamic_map(signed=True)
      >>> float(s[0]), float(s[-1]), int((s > 0).sum()), int((s < 0).sum())
      (-1.0, 1.0, 127, 128)
    """
    if not isinstance(signed, (bool, np.bool_)):
        raise InvalidHyperparameterError("dynamic_map", "signed", signed, "a bool")
    return _tables(bool(signed))[0].copy()


@serializable
@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["codes", "absmax"],
    meta_fields=["shape", "dtype", "signed"],
)
@dataclasses.dataclass(frozen=True)
class QuantizedArray:
    """An array stored block-wise in 8 bits (a pytree; see :func:`quantize_blockwise`).

    Leaves (what ``jax.tree_util`` flattens, what ``jit``, ``vmap``, donation and checkpoints
    see):

    Attributes:
      codes: ``uint8`` array of shape ``(n_blocks, block_size)``: per element, the index of
        the nearest value of :func:`dynamic_map` to ``x / absmax`` of its block. The last
        block is padded with the code of 0.
      absmax: float32 array of shape ``(n_blocks,)``: each block's largest ``|x|`` (0 for a
        block of zeros; NaN for a block holding a NaN or an infinity).

    Static data (part of the tree structure, not leaves):

    Attributes:
      shape: the original shape (``n_blocks = ceil(prod(shape) / block_size)``).
      dtype: the dtype :func:`dequantize_blockwise` returns (the original one).
      signed: which map the codes index (``True``: signed, ``False``: unsigned).

    Memory: ``n_blocks * block_size`` bytes of codes plus ``4 * n_blocks`` bytes of scales,
    about ``1 + 4 / block_size`` bytes per element.
    """

    codes: Any
    absmax: Any
    shape: tuple[int, ...]
    dtype: Any
    signed: bool

    @property
    def block_size(self) -> int:
        """Elements per block (the last axis of ``codes``)."""
        return int(self.codes.shape[-1])

    @property
    def nbytes(self) -> int:
        """Bytes held by the leaves."""
        return int(np.prod(self.codes.shape)) * 1 + int(np.prod(self.absmax.shape)) * 4


def check_block_size(transformation: str, block_size: Any) -> int:
    """``block_size`` as a Python int >= 1, else :class:`InvalidHyperparameterError`."""
    if isinstance(block_size, (bool, np.bool_)) or not isinstance(block_size, (int, np.integer)):
        raise InvalidHyperparameterError(
            transformation, "block_size", block_size, "a Python integer >= 1")
    if block_size < 1:
        raise InvalidHyperparameterError(
            transformation, "block_size", block_size, "a Python integer >= 1")
    return int(block_size)


def _check_real_input(transformation: str, dtype: Any) -> None:
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise InvalidHyperparameterError(
            transformation, "x", np.dtype(dtype).name, "a real array (not complex)")


def num_blocks(size: int, block_size: int) -> int:
    """``ceil(size / block_size)``."""
    return -(-size // block_size)


def to_blocks(x: jax.Array, block_size: int) -> jax.Array:
    """``x`` flattened, zero-padded to whole blocks, shaped ``(n_blocks, block_size)``."""
    flat = x.reshape(-1)
    pad = num_blocks(flat.size, block_size) * block_size - flat.size
    if pad:
        flat = jnp.pad(flat, (0, pad))
    return flat.reshape(-1, block_size)


def from_blocks(blocks: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Inverse of :func:`to_blocks`: drops the padding and restores ``shape``."""
    size = math.prod(shape)
    flat = blocks.reshape(-1)
    if flat.size != size:
        flat = flat[:size]
    return flat.reshape(shape)


@functools.lru_cache(maxsize=2)
def _decade_tables(signed: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-decade constants of the map's construction, for the closed-form first guess of
    :func:`nearest_codes`: thresholds ``10**-j``, and per decade ``E`` its lower edge
    ``10**-(E+1)``, ``1 / step`` and the rank of its lower edge among the positive codes."""
    bits = 7 if signed else 8
    thresholds = np.asarray([10.0**-j for j in range(1, bits)], np.float32)
    e = np.arange(bits)
    f = bits - 1 - e
    lo = 10.0 ** -(e + 1.0)
    inv_step = (2.0**f / (9.0 * lo)).astype(np.float32)
    base = (2**f - 1).astype(np.int32)
    return thresholds, lo.astype(np.float32), inv_step, base


def _take(table: np.ndarray, index: jax.Array) -> jax.Array:
    # Indices are in range by construction; skip the bounds handling of x[i].
    return jnp.asarray(table).at[index].get(mode="promise_in_bounds")


def nearest_codes(normed: jax.Array, signed: bool) -> jax.Array:
    """Index of the nearest map value to each element of ``normed`` (float32, in [-1, 1]).

    Exactly ``searchsorted(midpoints, normed, side="right")`` on the map's float32 midpoints,
    computed elementwise: a closed-form guess from the construction (the decade by comparing
    with powers of ten, then the fraction by rounding ``(|x| - lo) / step``), which float32
    rounding can leave one code off near a midpoint, then one correction against the two
    midpoints around the guess. About 30 operations per element and five lookups in tables
    of at most 257 entries, which XLA fuses with the producer of ``normed`` (on XLA:CPU,
    ``jnp.searchsorted`` wrote 16 bytes per element with its unrolled binary search and 1 KB
    per element comparing with all midpoints; this wrote none).
    Returns int32 indices in [0, 255]; NaN inputs give an arbitrary valid index.
    """
    thresholds, lo_t, inv_step_t, base_t = _decade_tables(signed)
    _, mids = _tables(signed)
    mids_ext = np.concatenate([[-np.inf], mids, [np.inf]]).astype(np.float32)
    mag = jnp.abs(normed) if signed else jnp.maximum(normed, jnp.float32(0.0))
    decade = sum((mag < t).astype(jnp.int32) for t in thresholds.tolist())
    frac = (mag - _take(lo_t, decade)) * _take(inv_step_t, decade)
    rank = _take(base_t, decade) + jnp.floor(frac + jnp.float32(0.5)).astype(jnp.int32)
    top = 127 if signed else 255
    rank = jnp.clip(rank, 0, top)
    if signed:
        # Sorted map: 128 negative values (the extra -1e-7 is the negative side's rank 1),
        # 0 at index 128, 127 positive values.
        neg_rank = jnp.where(rank >= 1, rank + 1, 0)
        guess = jnp.where(normed < 0, 128 - neg_rank, 128 + rank)
    else:
        guess = rank
    # mids_ext[i] is the midpoint below code i, mids_ext[i + 1] the one above.
    fix = ((normed >= _take(mids_ext, guess + 1)).astype(jnp.int32)
           - (normed < _take(mids_ext, guess)).astype(jnp.int32))
    return jnp.clip(guess + fix, 0, 255)


def block_absmax(blocks: jax.Array) -> jax.Array:
    """Each block's largest magnitude (last axis), NaN for a block holding NaN or +-inf."""
    # A NaN scale makes the whole block dequantize to NaN: the non-finite value is not
    # hidden behind finite codes. NaN is looked for apart from the maximum: XLA:CPU's
    # floating-point max reduction over a 2-D array does not always propagate NaN (a NaN in
    # a (16, 256) array came back as a finite maximum); a boolean any is exact, and XLA
    # computes both reductions in one pass over the block (no more temporaries).
    absmax = jnp.max(jnp.abs(blocks), axis=-1)
    absmax = jnp.where(jnp.any(jnp.isnan(blocks), axis=-1), jnp.float32(np.nan), absmax)
    return jnp.where(jnp.isfinite(absmax), absmax, jnp.float32(np.nan))


def encode_blocks(blocks: jax.Array, absmax: jax.Array, signed: bool) -> jax.Array:
    """``uint8`` codes of float32 blocks given their :func:`block_absmax` (elementwise)."""
    # A block of zeros divides by 1 instead of 0: its codes are those of 0, its scale 0.
    scale = jnp.where(absmax > 0, absmax, jnp.float32(1.0))
    # XLA may divide by multiplying with the reciprocal, which for a scale above 2**126 is
    # subnormal and flushed to zero on CPU. Both sides are first multiplied by 2**-64 there
    # (exact, and any element it would flush is below 2**-126 of the scale, code 0 anyway).
    pre = jnp.where(scale > jnp.float32(2.0**100), jnp.float32(2.0**-64), jnp.float32(1.0))
    normed = (blocks * pre[..., None]) / (scale * pre)[..., None]
    return nearest_codes(normed, signed).astype(jnp.uint8)


def quantize_blocks(blocks: jax.Array, signed: bool) -> tuple[jax.Array, jax.Array]:
    """Codes and scales of a float32 ``(n_blocks, block_size)`` array."""
    absmax = block_absmax(blocks)
    return encode_blocks(blocks, absmax, signed), absmax


def dequantize_blocks(codes: jax.Array, absmax: jax.Array, signed: bool) -> jax.Array:
    """``map[codes] * absmax`` as float32, shape ``(n_blocks, block_size)``.

    The map value is computed from the code (:func:`_decode`, bit-identical to the table)
    rather than looked up: a table lookup is a gather, which XLA:CPU cannot fuse into the
    block reduction of the next requantization, and would then write a full-size float32
    temporary."""
    return _decode(codes.astype(jnp.float32), signed, jnp) * absmax[..., None]


def dequantize_flat(codes: jax.Array, absmax: jax.Array, signed: bool, size: int) -> jax.Array:
    """The first ``size`` dequantized elements, flat, without the padding (float32)."""
    n_blocks, block_size = codes.shape
    scale = jnp.broadcast_to(absmax[:, None], (n_blocks, block_size)).reshape(-1)[:size]
    return _decode(codes.reshape(-1)[:size].astype(jnp.float32), signed, jnp) * scale


def quantize_blockwise(x: jax.typing.ArrayLike, signed: bool = True,
                       block_size: int = 2048) -> QuantizedArray:
    """Stores ``x`` in 8 bits per element with one float32 scale per block.

    ``x`` is flattened (C order), converted to float32 and padded with zeros to
    ``n_blocks = ceil(x.size / block_size)`` blocks. For each block,
    ``absmax = max |x|``; each element's code is the index of the :func:`dynamic_map` value
    nearest to ``x / absmax``.

    Rounding: nearest value, where "nearest" compares ``x / absmax`` (one float32 division)
    with the float32 midpoints of neighbouring map values (each the exact midpoint rounded
    once); a value equal to a midpoint takes the larger code. With ``signed=False`` negative
    values quantize to 0.

    Special values: a block of zeros has ``absmax = 0`` and the codes of 0, and dequantizes
    to exact zeros (no division by zero). The element of largest magnitude of a block is
    ``+-1`` after division and dequantizes exactly (the map holds ``+-1``). A block holding a
    NaN or an infinity gets ``absmax = NaN`` and dequantizes to NaN everywhere; the codes stay
    valid ``uint8`` values. Any finite scale works, up to the largest float32 (no
    reciprocal of ``absmax`` is formed, so none underflows).

    Args:
      x: a real array (any shape, any real dtype; computed in float32).
      signed: use the signed map (for data of either sign) or the unsigned one (for data
        >= 0, which it resolves twice as finely). Default True.
      block_size: elements per block, a Python int >= 1 (powers of two suit accelerators but
        are not required). Default 2048.

    Returns:
      A :class:`QuantizedArray` with codes ``uint8[n_blocks, block_size]``, scales
      ``float32[n_blocks]``, and the original shape and dtype.

    Raises:
      InvalidHyperparameterError: for an ``x`` that is not a real array (complex, or not
        convertible by ``jax.numpy.asarray``), a ``block_size`` that is not an integer
        >= 1, or a non-bool ``signed``.

    Examples:
      >>> import jax.numpy as jnp, jopt
      >>> x = jnp.asarray([0.0, 0.5, -2.0, 1e-3, 4.0])
      >>> q = jopt.quantize_blockwise(x, block_size=4)
      >>> q.codes.shape, q.codes.dtype.name, q.absmax.tolist()
      ((2, 4), 'uint8', [2.0, 4.0])
      >>> [round(v, 5) for v in jopt.dequantize_blockwise(q).tolist()]
      [0.0, 0.50937, -2.0, 0.0011, 4.0]
    """
    name = "quantize_blockwise"
    if not isinstance(signed, (bool, np.bool_)):
        raise InvalidHyperparameterError(name, "signed", signed, "a bool")
    block_size = check_block_size(name, block_size)
    try:
        x = jnp.asarray(x)
    except (TypeError, ValueError):
        raise InvalidHyperparameterError(
            name, "x", x, "a real array (or a value jax.numpy.asarray accepts)") from None
    if not jnp.issubdtype(x.dtype, jnp.number) and x.dtype != jnp.bool_:
        raise InvalidHyperparameterError(name, "x", np.dtype(x.dtype).name, "a real array")
    _check_real_input(name, x.dtype)
    codes, absmax = _quantize_jit(x, bool(signed), block_size)
    return QuantizedArray(codes=codes, absmax=absmax, shape=tuple(x.shape),
                          dtype=np.dtype(x.dtype), signed=bool(signed))


# Jitted (and inlined into a caller's jit) so that eager calls run as one compiled program
# instead of a few hundred small operations.
@functools.partial(jax.jit, static_argnums=(1, 2))
def _quantize_jit(x: jax.Array, signed: bool, block_size: int):
    return quantize_blocks(to_blocks(x.astype(jnp.float32), block_size), signed)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _dequantize_jit(q: QuantizedArray, shape: tuple[int, ...], signed: bool) -> jax.Array:
    blocks = dequantize_blocks(q.codes, q.absmax, signed)
    return from_blocks(blocks, shape).astype(q.dtype)


def dequantize_blockwise(q: QuantizedArray, shape: tuple[int, ...] | None = None) -> jax.Array:
    """The array a :class:`QuantizedArray` stands for: ``map[codes] * absmax``, unpadded.

    Args:
      q: from :func:`quantize_blockwise`.
      shape: the shape to return; default ``q.shape`` (the original). Must have
        ``prod(q.shape)`` elements.

    Returns:
      An array of ``shape`` and ``q.dtype`` (computed in float32, then cast). Blocks of zeros
      give exact zeros; a block whose ``absmax`` is NaN gives NaN.

    Raises:
      InvalidHyperparameterError: if ``q`` is not a :class:`QuantizedArray`, if its leaves do
        not match its static shape (``codes`` ``uint8[n_blocks, block_size]``, ``absmax``
        ``float32[n_blocks]``), or if ``shape`` is not a tuple of integers >= 0 with
        ``prod(q.shape)`` elements.
    """
    name = "dequantize_blockwise"
    if not isinstance(q, QuantizedArray):
        raise InvalidHyperparameterError(
            name, "q", _describe(q), "a jopt.QuantizedArray (from jopt.quantize_blockwise)")
    _check_layout(name, q)
    target = q.shape if shape is None else _check_shape(name, shape)
    if math.prod(target) != math.prod(q.shape):
        raise InvalidHyperparameterError(
            "dequantize_blockwise", "shape", target,
            f"a shape with {math.prod(q.shape)} elements (the quantized array's {q.shape})")
    return _dequantize_jit(q, target, q.signed)


def _describe(x: Any) -> str:
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{type(x).__name__} {np.dtype(dtype).name}{list(shape)}"
    return type(x).__name__


def _check_shape(name: str, shape: Any) -> tuple[int, ...]:
    try:
        dims = tuple(shape)
    except TypeError:
        dims = None
    if dims is None or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) and d >= 0
            for d in dims):
        raise InvalidHyperparameterError(name, "shape", shape, "a tuple of integers >= 0")
    return tuple(int(d) for d in dims)


def _check_layout(name: str, q: QuantizedArray) -> None:
    """The leaves of ``q`` against its static data (they may be hand-built or edited)."""
    shape = _check_shape(name, q.shape)
    codes_shape = getattr(q.codes, "shape", None)
    absmax_shape = getattr(q.absmax, "shape", None)
    ok = (codes_shape is not None and len(codes_shape) == 2 and codes_shape[1] >= 1
          and getattr(q.codes, "dtype", None) == np.uint8
          and getattr(q.absmax, "dtype", None) == np.float32)
    if ok:
        nb = num_blocks(math.prod(shape), codes_shape[1])
        ok = tuple(codes_shape) == (nb, codes_shape[1]) and tuple(absmax_shape) == (nb,)
    if not ok:
        raise InvalidHyperparameterError(
            name, "q", f"codes {_describe(q.codes)}, absmax {_describe(q.absmax)}",
            f"codes uint8[ceil({math.prod(shape)} / block_size), block_size] and absmax "
            f"float32[n_blocks] for its shape {shape}")
