"""Stochastic rounding to a narrower floating dtype.

Round-to-nearest loses small increments: adding ``1e-4`` to a bfloat16 weight of ``1.0``
(whose neighbours are ``1 - 2**-8`` and ``1 + 2**-7``) gives back ``1.0`` every time, so a
low-learning-rate bfloat16 model stops training although its float32 updates are non-zero.
Stochastic rounding picks one of the two neighbouring values at random, with the probability
that makes the expected result equal to the exact value, so small increments survive on
average. :func:`jopt.apply_updates` uses it when given ``key=``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jopt.errors import InvalidHyperparameterError

__all__ = ["stochastic_round"]


def check_key(function: str, key: Any) -> jax.Array:
    """Returns ``key`` if it is one JAX PRNG key, else raises :class:`InvalidHyperparameterError`.

    Accepted: a typed key of shape ``()`` (``jax.random.key(0)``) or a raw ``uint32`` key with
    the default implementation's shape (``jax.random.PRNGKey(0)``, shape ``(2,)``). Only static
    information is read, so traced keys (under ``jit`` or ``vmap``) are checked too.
    """
    raw_shape = tuple(jax.eval_shape(lambda: jax.random.PRNGKey(0)).shape)
    requirement = (
        "a JAX PRNG key: a typed key of shape () from jax.random.key, or a raw uint32 key of "
        f"shape {raw_shape} from jax.random.PRNGKey"
    )
    dtype = getattr(key, "dtype", None)
    shape = tuple(getattr(key, "shape", ()))
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape == ():
            return key
        given = f"a typed key array of shape {shape} (pass one key, not a batch)"
    elif dtype is not None and np.dtype(dtype) == np.uint32 and shape == raw_shape:
        return key
    elif dtype is not None:
        given = f"an array of shape {shape} {np.dtype(dtype).name}"
    else:
        given = f"{type(key).__name__} {key!r}"
    raise InvalidHyperparameterError(function, "key", _Shown(given), requirement)


class _Shown(str):
    """Text shown as is in an error message (``repr`` without quotes)."""

    def __repr__(self) -> str:
        return str(self)


def check_dtype(function: str, dtype: Any) -> np.dtype:
    """``dtype`` if stochastic rounding can round to it, else InvalidHyperparameterError."""
    return _as_float_dtype(function, dtype)


def _as_float_dtype(function: str, dtype: Any) -> np.dtype:
    try:
        out = np.dtype(jnp.dtype(dtype))
    except TypeError:
        out = None
    if out is None or not jnp.issubdtype(out, jnp.floating):
        raise InvalidHyperparameterError(
            function, "dtype", dtype, "a real floating dtype such as jnp.bfloat16 or jnp.float16"
        )
    # The rounding steps through values by adding one to the magnitude bits, which needs a
    # whole number of bytes per value and a sign bit apart from the magnitude (a signed zero).
    # That excludes the packed float4/float6 types and the float8 "fnuz"/"fnu" ones.
    if jnp.finfo(out).bits != 8 * out.itemsize or not np.signbit(np.asarray(-0.0).astype(out)):
        raise InvalidHyperparameterError(
            function, "dtype", _Shown(out.name),
            "a floating dtype with a sign bit, a signed zero and whole bytes per value "
            "(bfloat16, float16, float32, float8_e4m3fn, float8_e5m2, ...)",
        )
    return out


def stochastic_round(x: jax.typing.ArrayLike, dtype: Any, key: jax.Array) -> jax.Array:
    r"""Rounds ``x`` to ``dtype`` at random, so that the result equals ``x`` in expectation.

    For each element, let :math:`lo \le x \le hi` be the two neighbouring values of ``dtype``.
    The result is

    .. math::

      \operatorname{round}(x) =
      \begin{cases}
        hi & \text{with probability } p = \frac{x - lo}{hi - lo}, \\
        lo & \text{with probability } 1 - p,
      \end{cases}
      \qquad \mathbb{E}[\operatorname{round}(x)] = x.

    Values of ``x`` that ``dtype`` represents exactly are returned unchanged (``p = 0``), and
    the result is always one of the two neighbours, so it is never more than one unit in the
    last place of ``dtype`` away from ``x``. Round-to-nearest would instead return the closer
    neighbour every time: adding a small update to a low-precision weight then does nothing
    whenever the update is below half a unit in the last place of the weight (``1e-4`` added
    to a bfloat16 ``1.0`` is lost, since its spacing there is ``2**-7``), while stochastic
    rounding keeps it on average (Gupta et al., 2015; Zamirai et al., 2020).

    How it is computed: on the bit patterns of ``|x|`` and of its neighbours, as integers.
    Between two neighbours the value is linear in the bit pattern and the gap is a power of
    two, so one random integer modulo that gap picks ``hi`` with probability exactly :math:`p`:
    :math:`\mathbb{E}[\operatorname{round}(x)] = x` holds exactly, subnormal numbers included,
    also on platforms that flush subnormal floats to zero in arithmetic (XLA on CPU). For
    bfloat16 from float32 this has the distribution of the classic rule "add 16 random bits to
    the float32 bit pattern and truncate". One case is not linear: ``0 < |x| < s``, with ``s``
    the smallest positive value of ``dtype``, when ``s`` is a normal number of ``x``'s dtype
    (float16 or float8 from float32, float32 from float64; never bfloat16 from float32). There
    :math:`p = |x| / s` is compared with a random fraction of 24 bits (53 for float64 input), so
    it is too high by less than :math:`2^{-24}` (:math:`2^{-53}`), and an ``|x|`` that is
    subnormal in its own dtype may count as 0: a bias below :math:`2^{-24} s` (``2**-48`` for
    float16).

    Special values and overflow follow round-to-nearest (``x.astype(dtype)``): NaN stays NaN,
    ``±inf`` stays ``±inf``, and a finite ``x`` that the nearest cast sends to ``±inf`` (or to
    NaN, for float8 types without infinities) gives that same value. A finite ``x`` between the
    largest finite value of ``dtype`` and that overflow threshold gives the largest finite value:
    stochastic rounding never overflows where round-to-nearest does not. The sign of zero is
    kept. Where the platform's cast flushes subnormal results to zero (float64 to float32 on
    XLA's CPU backend), those results stay zero.

    Args:
      x: a real floating array (float32 or float64; bfloat16 and float16 inputs are widened to
        float32 first, which is exact).
      dtype: the floating dtype to round to, no wider than ``x``'s: ``jnp.bfloat16``,
        ``jnp.float16``, ``jnp.float32`` from float64, or a float8 type with a signed zero
        (``float8_e4m3fn``, ``float8_e5m2``, ...; not the ``fnuz`` ones). When it is ``x``'s
        own dtype, ``x`` is returned unchanged.
      key: one JAX PRNG key (``jax.random.key(seed)`` or ``jax.random.PRNGKey(seed)``). The same
        key gives the same result; use a fresh key for every rounding.

    Returns:
      An array of ``x``'s shape in ``dtype``.

    Raises:
      InvalidHyperparameterError: if ``x`` is not a real floating array, ``dtype`` is not a
        floating dtype no wider than ``x``'s, or ``key`` is not one PRNG key.

    Examples:
      >>> import jax, jax.numpy as jnp, jopt
      >>> x = jnp.full((100_000,), 1.0 + 2.0**-9)  # a quarter of the way from 1 to 1 + 2**-7
      >>> y = jopt.stochastic_round(x, jnp.bfloat16, jax.random.key(0))
      >>> sorted(set(y.astype(jnp.float32).tolist()))
      [1.0, 1.0078125]
      >>> bool(abs(jnp.mean(y.astype(jnp.float32)) - (1.0 + 2.0**-9)) < 1e-4)
      True
      >>> x.astype(jnp.bfloat16)[0]  # round-to-nearest always gives 1.0
      Array(1, dtype=bfloat16)

    References:
      Gupta, Agrawal, Gopalakrishnan and Narayanan, 2015. `Deep Learning with Limited
      Numerical Precision <https://arxiv.org/abs/1502.02551>`_.

      Zamirai, Zhang, Aberger and De Sa, 2020. `Revisiting BFloat16 Training
      <https://arxiv.org/abs/2010.06192>`_.

    See also:
      :func:`jopt.apply_updates` with ``key=``, which adds updates in float32 and rounds each
      low-precision parameter this way.
    """
    name = "stochastic_round"
    target = _as_float_dtype(name, dtype)
    key = check_key(name, key)
    x = jnp.asarray(x)
    source = np.dtype(x.dtype)
    if not jnp.issubdtype(source, jnp.floating):
        raise InvalidHyperparameterError(
            name, "x", _Shown(f"an array of {source.name}"),
            "a real floating array (float32 or float64)",
        )
    if target == source:
        return x
    if target.itemsize >= source.itemsize:
        raise InvalidHyperparameterError(
            name, "dtype", _Shown(target.name),
            f"a floating dtype narrower than x's ({source.name})",
        )
    return _round(x, target, key)


_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


@functools.partial(jax.jit, static_argnums=1)  # one compiled program when called eagerly
def _round(x: jax.Array, target: np.dtype, key: jax.Array) -> jax.Array:
    """The rounding itself; arguments already checked (``target`` narrower than ``x``).

    Works on magnitudes as integers (bit patterns), which makes the probabilities exact and
    keeps subnormal numbers working on platforms that flush them to zero in floating-point
    arithmetic (XLA on CPU does): apart from the one non-linear case below, only casts and
    bit operations touch the values.
    """
    # Narrow inputs (float16 -> float8, say) are widened first; that is exact.
    if x.dtype.itemsize < 4:
        x = x.astype(jnp.float32)
    work = np.dtype(x.dtype)
    nbits = 8 * work.itemsize
    uint, tuint = _UINT[work.itemsize], _UINT[target.itemsize]
    mag_mask = np.array(2 ** (nbits - 1) - 1, uint)

    def mag_bits(v):  # |v| as an unsigned integer of `work`'s width
        return jax.lax.bitcast_convert_type(v.astype(work), uint) & mag_mask

    nearest = x.astype(target)  # round-to-nearest; decides NaN, inf and overflow
    mag, near = mag_bits(x), mag_bits(nearest)
    exact = mag == near
    # The other neighbour is one step of `target` away from `nearest`, on x's side: one more
    # or one less in the magnitude bits (x's sign is nearest's sign, -0 included).
    t_bits = jax.lax.bitcast_convert_type(nearest, tuint)
    one = np.array(1, tuint)
    t_other = jnp.where(near < mag, t_bits + one, jnp.where(exact, t_bits, t_bits - one))
    other = jax.lax.bitcast_convert_type(t_other, target)
    far = mag_bits(other)
    usable = (~exact & jnp.isfinite(nearest) & jnp.isfinite(other)  # max + 1 is inf or NaN
              & (far != near))  # a cast that flushed both to zero
    lower, upper = jnp.minimum(near, far), jnp.maximum(near, far)
    random = jax.random.bits(key, x.shape, uint)

    # Between two neighbours that lie in one binade of `work` (closed at its top), or both in
    # its subnormal range, the value is linear in the bit pattern: x's fraction of the way
    # is (mag - lower) / (upper - lower). The gap `upper - lower` is a power of two (a ratio
    # of two spacings), so `random mod gap` is uniform on [0, gap) and taking `other` when it
    # is below |mag - near| has probability |x - nearest| / gap exactly.
    gap = jnp.where(usable, upper - lower, np.array(1, uint))
    dist = jnp.where(mag > near, mag - near, near - mag)
    take_linear = (random & (gap - np.array(1, uint))) < dist

    # The one non-linear case: between 0 and target's smallest positive value s when s is a
    # normal number of `work` (float16 from float32, float32 from float64), the interval
    # spans many binades. There P(s) = |x| / s is computed in floating point (exact: s is a
    # power of two) and compared with a draw of 24 (53) bits. For bfloat16 from float32, s
    # is subnormal in float32 and this case cannot occur.
    smallest = float(jnp.finfo(target).smallest_subnormal)
    if smallest <= float(np.finfo(work).smallest_normal):
        return jnp.where(usable & take_linear, other, nearest)
    nonlinear = (lower == 0) & (upper > mag_bits(jnp.asarray(np.finfo(work).smallest_normal, work)))
    frac_bits = np.finfo(work).nmant + 1
    x_abs = jax.lax.bitcast_convert_type(mag, work)
    threshold = jnp.where(usable & nonlinear, x_abs * jnp.asarray(1.0 / smallest, work),
                          jnp.zeros_like(x_abs))
    draw = (random >> np.array(nbits - frac_bits, uint)).astype(work)
    take_s = draw < threshold * jnp.asarray(2.0**frac_bits, work)
    take_nonlinear = jnp.where(near == 0, take_s, ~take_s)
    take_other = usable & jnp.where(nonlinear, take_nonlinear, take_linear)
    return jnp.where(take_other, other, nearest)
