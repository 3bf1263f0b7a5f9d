"""Adam with 8-bit block-wise quantized moments: ``scale_by_adam_8bit``, ``adam_8bit``,
``adamw_8bit``.

The update rule and its float32 arithmetic are those of :func:`jopt.scale_by_adam` (same
stored complements of ``b1``/``b2``, same bias corrections, same operation order); only the
storage of the moments between steps changes. Each step dequantizes ``m`` and ``v`` to
float32, does one Adam step, and requantizes the new moments (:mod:`jopt._quantize`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jopt import _tree
from jopt._aliases import _named
from jopt._base import GradientTransformation, fresh, safe_increment, zero_count
from jopt._chain import chain
from jopt._packed import Packed
from jopt._quantize import (
    QuantizedArray,
    block_absmax,
    check_block_size,
    dequantize_blocks,
    dequantize_flat,
    encode_blocks,
    from_blocks,
    num_blocks,
    to_blocks,
)
from jopt._scale import _complement, _moment_dtype, _one_minus_power, scale_by_learning_rate
from jopt._schedules import OneMinus
from jopt._validate import as_state_scalar, check_real
from jopt._weight_decay import add_decayed_weights
from jopt.errors import InvalidHyperparameterError, TreeMismatchError


class ScaleByAdam8bitState(NamedTuple):
    """State of :func:`scale_by_adam_8bit`.

    Attributes:
      count: int32 scalar, number of updates applied (saturates at ``2**31 - 1``).
      mu: first moment, same tree as the parameters. A leaf with at least ``min_8bit_size``
        elements is a :class:`jopt.QuantizedArray` (signed map): ``codes``
        ``uint8[n_blocks, block_size]`` and ``absmax`` ``float32[n_blocks]`` with
        ``n_blocks = ceil(size / block_size)``; its static ``shape``/``dtype`` are the
        parameter's shape and the moment's float dtype (float32, or float64 for float64
        parameters). A smaller leaf is a plain array exactly as in :func:`jopt.scale_by_adam`
        (the parameter's shape, dtype promoted to at least float32).
      nu: second moment of ``|g|``, laid out as ``mu`` (unsigned map for quantized leaves).
      hyperparams: ``{"b1", "b2", "eps", "eps_root"}`` as in
        :class:`jopt.ScaleByAdamState` (``b1``, ``b2`` as :class:`jopt.schedules.OneMinus`
        float32 complements; ``eps``, ``eps_root`` float32 scalars).
    """

    count: jax.Array
    mu: Any
    nu: Any
    hyperparams: dict[str, Any]


def _is_quantized(x: Any) -> bool:
    return isinstance(x, QuantizedArray)


def _shape(p: Any) -> tuple[int, ...]:
    return tuple(p.shape) if hasattr(p, "shape") else tuple(np.shape(p))


def _check_size_option(name: str, arg: str, value: Any, lo: int) -> int:
    # Structure, not data: a Python int (it decides shapes and which leaves are quantized).
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
            or value < lo):
        raise InvalidHyperparameterError(name, arg, value, f"a Python integer >= {lo}")
    return int(value)


# Elements per iteration of the XLA:CPU loop in _quantized_step. Measured on a 2-core CPU
# (jitted, donated, medians of interleaved runs) for 2**13..2**19: 2**15 and 2**17 ran
# 2-15 % faster than 2**13 with the same temporaries; 2**19 raised them on a GPT-2-like tree.
_CPU_CHUNK = 1 << 15


class _Coefficients(NamedTuple):
    """The step's scalars (float32 unless the hyperparameters are float64)."""

    c1: jax.Array  # 1 - b1
    b1: jax.Array
    c2: jax.Array  # 1 - b2
    b2: jax.Array
    bc1: jax.Array  # 1 - b1**t
    bc2: jax.Array  # 1 - b2**t
    eps: jax.Array
    eps_root: jax.Array


def _adam(g: jax.Array, m: jax.Array, v: jax.Array, k: _Coefficients):
    """jopt.scale_by_adam's arithmetic, operation for operation, on ``g``, ``m`` in the
    compute dtype and ``v`` in its real counterpart: a leaf below ``min_8bit_size`` is then
    bit-identical to scale_by_adam, and a quantized one differs only by the storage of m, v.
    Returns ``(u, m_new, v_new)``."""
    ct = g.dtype
    rt = _tree.real_dtype(ct)

    def cc(x):
        return _tree.cast_scalar(x, ct)

    def cr(x):
        return _tree.cast_scalar(x, rt)

    m_new = cc(k.c1) * g + cc(k.b1) * m
    v_new = cr(k.c2) * _tree.abs_sq(g) + cr(k.b2) * v
    m_hat = m_new / cc(k.bc1)
    v_hat = v_new / cr(k.bc2)
    # With eps = 0 a zero second moment means a zero first moment: 0, not 0/0 (the floor on
    # the scalar eps, as in scale_by_adam).
    denom = jnp.sqrt(v_hat + cr(k.eps_root)) + jnp.maximum(cr(k.eps), jnp.finfo(rt).tiny)
    return m_hat / denom.astype(ct), m_new, v_new


def _saturate(x: jax.Array, g: jax.Array) -> jax.Array:
    """A new moment that overflowed from finite inputs (``g**2`` above the float32 range, or
    a float64 moment beyond it) clipped to +-(largest float32), so that only a non-finite
    gradient or stored moment (which keeps its infinity or NaN: see :func:`block_absmax`)
    poisons its block. A NaN or infinite stored moment never reaches here as a finite one."""
    big = jnp.float32(np.finfo(np.float32).max)
    return jnp.where(jnp.isfinite(g), jnp.clip(x, -big, big), x)


def _step_blocks(gb, m_codes, m_absmax, v_codes, v_absmax, k):
    """One Adam step on whole blocks: dequantize, update, requantize (all ``(n, bs)``)."""
    ct = gb.dtype
    mb = dequantize_blocks(m_codes, m_absmax, True).astype(ct)
    vb = dequantize_blocks(v_codes, v_absmax, False).astype(ct)
    ub, m_new, v_new = _adam(gb, mb, vb, k)
    m_new = _saturate(m_new.astype(jnp.float32), gb)
    v_new = _saturate(v_new.astype(jnp.float32), gb)
    m_absmax = block_absmax(m_new)
    v_absmax = block_absmax(v_new)
    return (ub, encode_blocks(m_new, m_absmax, True), m_absmax,
            encode_blocks(v_new, v_absmax, False), v_absmax)


def _step_whole(g, leaves, k):
    """The step as one expression over the whole (zero-padded) leaf.

    Requantization needs each block's new absmax before any of its codes. Decoding is plain
    arithmetic (no table gather), so a backend that fuses elementwise producers into
    reductions and into several consumers (XLA's GPU fusion passes are designed to) need not
    write the new moments out in float32. Used off CPU; on CPU the tests check it against
    :func:`_step_chunked` bit for bit (its memory behaviour on GPU/TPU is not measured here)."""
    bs = leaves[0].shape[-1]
    ub, *new = _step_blocks(to_blocks(g, bs), *leaves, k)
    return (from_blocks(ub, tuple(g.shape)), *new)


def _step_chunked(g, leaves, k, cpu_chunk):
    """The same step as :func:`_step_whole`, as a loop over chunks of whole blocks.

    XLA:CPU does not fuse a computed operand into a reduction (it writes the new moments out
    in float32, 8 bytes per element of the leaf, and keeps those of every leaf alive at
    once). Each block only needs its own elements, so a loop over chunks of about
    ``cpu_chunk`` elements bounds those temporaries by the chunk."""
    m_codes, m_absmax, v_codes, v_absmax = leaves
    n_blocks, bs = m_codes.shape
    size = math.prod(g.shape)
    per = max(1, cpu_chunk // bs)  # blocks per chunk
    chunk = per * bs
    full = size // chunk  # chunks that hold no padding
    flat = g.reshape(-1)
    ct = g.dtype
    # The update is elementwise in (g, old codes, old scales): computed outside the loop, in
    # the parameter's layout, it fuses into its consumers (the learning rate,
    # apply_updates) instead of being written out.
    u = _adam(flat, dequantize_flat(m_codes, m_absmax, True, size).astype(ct),
              dequantize_flat(v_codes, v_absmax, False, size).astype(ct), k)[0]

    def body(i, carry):
        # Codes and scales are read and rewritten chunk by chunk in the loop carry, in place.
        mc, ma, vc, va = carry
        e0, b0 = i * chunk, i * per
        out = _step_blocks(
            jax.lax.dynamic_slice(flat, (e0,), (chunk,)).reshape(per, bs),
            jax.lax.dynamic_slice(mc, (b0, 0), (per, bs)),
            jax.lax.dynamic_slice(ma, (b0,), (per,)),
            jax.lax.dynamic_slice(vc, (b0, 0), (per, bs)),
            jax.lax.dynamic_slice(va, (b0,), (per,)), k)
        return (jax.lax.dynamic_update_slice(mc, out[1], (b0, 0)),
                jax.lax.dynamic_update_slice(ma, out[2], (b0,)),
                jax.lax.dynamic_update_slice(vc, out[3], (b0, 0)),
                jax.lax.dynamic_update_slice(va, out[4], (b0,)))

    carry = (m_codes, m_absmax, v_codes, v_absmax)
    if full:
        carry = jax.lax.fori_loop(0, full, body, carry)
    mc, ma, vc, va = carry
    e0, b0 = full * chunk, full * per
    if e0 < size:
        # The last, partial chunk (zero-padded to whole blocks), outside the loop.
        out = _step_blocks(to_blocks(flat[e0:], bs), m_codes[b0:], m_absmax[b0:],
                           v_codes[b0:], v_absmax[b0:], k)
        mc, ma = mc.at[b0:].set(out[1]), ma.at[b0:].set(out[2])
        vc, va = vc.at[b0:].set(out[3]), va.at[b0:].set(out[4])
    return u.reshape(g.shape), mc, ma, vc, va


def _quantized_step(g, m: QuantizedArray, v: QuantizedArray, k: _Coefficients, *,
                    chunked: bool | None = None):
    """Update and new moments of one quantized leaf, ``(u, m_new, v_new)``.

    ``chunked``: ``None`` picks per platform (the loop on CPU, one expression elsewhere);
    ``True``/``False`` force one (tests compare them)."""
    return _quantized_step_jit(g, m, v, k, chunked=chunked, cpu_chunk=_CPU_CHUNK)


@functools.partial(jax.jit, static_argnames=("chunked", "cpu_chunk"))
def _quantized_step_jit(g, m, v, k, *, chunked, cpu_chunk):
    # Jitted (and inlined into a caller's jit) so that an eager update runs as one compiled
    # program per leaf rather than a hundred small operations.
    leaves = (m.codes, m.absmax, v.codes, v.absmax)
    g_ = g.astype(_tree.compute_dtype(g.dtype))
    if chunked is None:
        ub, mc, ma, vc, va = jax.lax.platform_dependent(
            g_, leaves, k, cpu=functools.partial(_step_chunked, cpu_chunk=cpu_chunk),
            default=_step_whole)
    elif chunked:
        ub, mc, ma, vc, va = _step_chunked(g_, leaves, k, cpu_chunk)
    else:
        ub, mc, ma, vc, va = _step_whole(g_, leaves, k)
    return (ub.astype(g.dtype), QuantizedArray(mc, ma, m.shape, m.dtype, True),
            QuantizedArray(vc, va, v.shape, v.dtype, False))


def scale_by_adam_8bit(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    block_size: int = 2048,
    min_8bit_size: int = 4096,
) -> GradientTransformation:
    """Adam's scaling with both moments stored in 8 bits, block-wise (8-bit Adam).

    The step is that of :func:`jopt.scale_by_adam`, in float32, with the moments read from
    and written to 8-bit storage (:func:`jopt.dequantize_blockwise` /
    :func:`jopt.quantize_blockwise` with ``block_size``):

    .. math::
       m_{t-1} = Q_s^{-1}(\\bar m_{t-1}), \\qquad v_{t-1} = Q_u^{-1}(\\bar v_{t-1})

       m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\qquad
       v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2

       u_t = \\frac{m_t / (1 - \\beta_1^t)}{\\sqrt{v_t / (1 - \\beta_2^t) + \\epsilon_{root}}
       + \\epsilon}, \\qquad \\bar m_t = Q_s(m_t), \\quad \\bar v_t = Q_u(v_t)

    where :math:`Q_s` and :math:`Q_u` quantize each block of ``block_size`` elements to the
    nearest value of the signed or unsigned dynamic map (:func:`jopt.dynamic_map`) times the
    block's largest magnitude. The update uses the new moments *before* requantization, as
    in the paper. The learning rate is not applied here (use :func:`adam_8bit`).

    Leaves with fewer than ``min_8bit_size`` elements (biases, norms, scalars) keep plain
    moments and behave exactly like :func:`jopt.scale_by_adam` (complex ones included). A
    quantized leaf is computed in its compute dtype (float32 for bfloat16/float16/float32
    and integer parameters, float64 for float64) and its moments are quantized from float32.

    State bytes per quantized leaf of ``n`` elements: ``2 n`` bytes of codes (padded to
    whole blocks) plus ``8`` bytes per block of scales, about 2.004 bytes per parameter at
    the default ``block_size``, against ``8 n`` for float32 Adam: a quarter of the memory.
    The update keeps the incoming dtype. The step is elementwise except for one maximum per
    block, so it needs no float32 copy of the moments: on XLA:CPU it runs as a loop over
    chunks of blocks (temporaries measured at about half a parameter copy, mostly copies XLA
    makes of the codes it rewrites), elsewhere as one expression for XLA to fuse.

    Accuracy: a stored moment is off by at most half a gap of the map times its block's
    ``absmax`` (0.7 % of ``absmax`` for ``m``, 0.35 % for ``v`` near the block's largest
    values; for smaller values the relative error grows about twofold per decade, see
    :func:`jopt.dynamic_map`). The update ``u_t`` itself is exact float32 Adam given the
    dequantized previous moments.

    Packed parameters (:func:`jopt.pack`, :func:`jopt.flatten`): blocks never span two
    tensors, so the state stays per leaf (the tree view's), the rule runs on the tree view and
    its updates are packed back, which costs one more float32 temporary the size of the
    updates; results equal the tree's bit for bit.

    Non-finite gradients: a NaN or infinity makes the whole block's stored moment NaN (see
    :func:`jopt.quantize_blockwise`), so the non-finite value is not hidden; use
    gradient clipping or skipping upstream as with any optimizer. Only non-finite inputs
    (gradient or stored moment) do that: a moment that overflows from finite inputs (``g**2``
    above the float32 range for ``|g|`` beyond about ``1.8e19``) is stored saturated, as are
    both moments in general: second moments are saturated at the largest float32 (first
    moments at plus or minus it). That element's update is then 0, as in
    :func:`jopt.scale_by_adam`, and the rest of its block keeps finite updates.

    Speed: memory is the point, not speed. On CPU a step costs several float32 Adam steps,
    for the decoding and requantization arithmetic: ``benchmarks/run.py`` on a 2-core CPU
    (jitted, donated, medians of interleaved rounds against optax's float32 Adam) measured
    8.2x on one ``2**24``-element leaf and 11.8x on a GPT-2-small tree. Accelerators are not
    measured here.

    Sharding: ``init`` does not choose a sharding for the codes and scales. Under a mesh with
    sharded parameters, a jitted step can return them sharded like the gradients (for
    example ``P('x')`` over blocks), so the second step compiles once more for the new input
    sharding; later steps reuse that program. To avoid the extra compilation, place the
    state with the sharding the first step returns (or jit with ``in_shardings``/
    ``out_shardings``).

    Args:
      b1: :math:`\\beta_1` in [0, 1). Default 0.9.
      b2: :math:`\\beta_2` in [0, 1). Default 0.999.
      eps: :math:`\\epsilon >= 0`, added to the root. Default 1e-8.
      eps_root: :math:`\\epsilon_{root} >= 0`, added inside the root. Default 0.
      block_size: elements per quantization block, a Python int >= 1 (a power of two suits
        accelerators but is not required; smaller blocks track local scales better and
        cost ``8 / block_size`` more bytes per element). Default 2048, the paper's.
      min_8bit_size: leaves with fewer elements keep float moments, a Python int >= 0
        (0 quantizes every leaf). Default 4096.

    Returns:
      A :class:`GradientTransformation` with state :class:`ScaleByAdam8bitState`. ``update``
      follows the layout the state holds (which leaves are quantized, their block size).

    Raises:
      InvalidHyperparameterError: for ``b1``/``b2`` outside [0, 1), negative ``eps`` or
        ``eps_root``, or a ``block_size``/``min_8bit_size`` that is not an integer in range.
      TreeMismatchError: in ``init``, for a complex parameter with at least
        ``min_8bit_size`` elements (8-bit moments are real); in ``update``, if the updates or
        params do not match the tree ``init`` saw.

    Examples:
      >>> import jax.numpy as jnp, jopt
      >>> tx = jopt.scale_by_adam_8bit(block_size=256, min_8bit_size=1000)
      >>> state = tx.init({"w": jnp.zeros((40, 50)), "b": jnp.zeros(50)})
      >>> state.mu["w"].codes.shape, state.mu["w"].codes.dtype.name, state.mu["b"].dtype.name
      ((8, 256), 'uint8', 'float32')
      >>> u, state = tx.update({"w": jnp.ones((40, 50)), "b": jnp.ones(50)}, state)
      >>> round(float(u["w"][0, 0]), 4), float(jopt.dequantize_blockwise(state.mu["w"])[0, 0])
      (1.0, 0.10000000149011612)

    References:
      Dettmers, Lewis, Shleifer & Zettlemoyer, `8-bit Optimizers via Block-wise Quantization
      <https://arxiv.org/abs/2110.02861>`_, ICLR 2022.
      Kingma & Ba, `Adam: A Method for Stochastic Optimization
      <https://arxiv.org/abs/1412.6980>`_, ICLR 2015.
    """
    name = "scale_by_adam_8bit"
    check_real(name, "b1", b1, lo=0, hi=1, hi_open=True)
    check_real(name, "b2", b2, lo=0, hi=1, hi_open=True)
    check_real(name, "eps", eps, lo=0)
    check_real(name, "eps_root", eps_root, lo=0)
    block_size = check_block_size(name, block_size)
    min_8bit_size = _check_size_option(name, "min_8bit_size", min_8bit_size, 0)
    hp0 = {"b1": OneMinus.of(b1), "b2": OneMinus.of(b2), "eps": as_state_scalar(eps),
           "eps_root": as_state_scalar(eps_root)}

    def quantizes(p) -> bool:
        return math.prod(_shape(p)) >= min_8bit_size

    def zeros_q(p, signed: bool, dtype) -> QuantizedArray:
        nb = num_blocks(math.prod(_shape(p)), block_size)
        # The code of 0 (index 128 in the signed map, 0 in the unsigned one), scale 0.
        zero_code = 128 if signed else 0
        return QuantizedArray(
            codes=jnp.full((nb, block_size), zero_code, jnp.uint8),
            absmax=jnp.zeros((nb,), jnp.float32),
            shape=_shape(p), dtype=np.dtype(dtype), signed=signed)

    def init_fn(params):
        if isinstance(params, Packed):
            # Blocks are per leaf (a block never spans two tensors), so packed parameters get
            # the per-leaf state of their tree.
            params = params.unpack()

        def check(path, p):
            if quantizes(p) and jnp.issubdtype(_tree.dtype_of(p), jnp.complexfloating):
                raise TreeMismatchError(
                    name, "the parameters have a dtype 8-bit moments cannot hold",
                    jax.tree_util.keystr(path),
                    f"a real dtype (or a complex leaf of fewer than {min_8bit_size} elements, "
                    "which keeps float moments; or split it into real and imaginary parts)",
                    _tree.describe(p))

        jax.tree_util.tree_map_with_path(check, params)

        def mu0(p):
            dt = _moment_dtype(_tree.dtype_of(p), None)
            return zeros_q(p, True, dt) if quantizes(p) else jnp.zeros_like(p, dtype=dt)

        def nu0(p):
            dt = _moment_dtype(_tree.dtype_of(p), None, real=True)
            return zeros_q(p, False, dt) if quantizes(p) else jnp.zeros_like(p, dtype=dt)

        mu = jax.tree_util.tree_map(mu0, params)
        nu = jax.tree_util.tree_map(nu0, params)
        return ScaleByAdam8bitState(count=zero_count(), mu=mu, nu=nu, hyperparams=fresh(hp0))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _tree.check_state_type(name, state, ScaleByAdam8bitState)
        if isinstance(updates, Packed):
            # Packed mode: the per-leaf rule on the tree view, the updates packed back.
            tree_params = params.unpack() if isinstance(params, Packed) else params
            u, new_state = update_fn(updates.unpack(), state, tree_params)
            return updates.layout.pack(u, what="updates", transformation=name,
                                       dtypes=False), new_state
        # The parameters' shapes and dtypes as init saw them (a quantized leaf keeps them as
        # static data), to check the updates against.
        reference = jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype) if _is_quantized(m) else m,
            state.mu, is_leaf=_is_quantized)
        updates, params = _tree.check_updates(name, updates, reference, params)
        hp = state.hyperparams
        count = safe_increment(state.count)
        c1, c2 = _complement(hp["b1"]), _complement(hp["b2"])
        k = _Coefficients(c1=c1, b1=1.0 - c1, c2=c2, b2=1.0 - c2,
                          bc1=_one_minus_power(c1, count), bc2=_one_minus_power(c2, count),
                          eps=jnp.asarray(hp["eps"]), eps_root=jnp.asarray(hp["eps_root"]))

        def one(g, m, v):
            if not _is_quantized(m):
                ct = _tree.compute_dtype(g.dtype)
                u, m_new, v_new = _adam(g.astype(ct), m.astype(ct),
                                        v.astype(_tree.real_dtype(ct)), k)
                return u.astype(g.dtype), m_new.astype(m.dtype), v_new.astype(v.dtype)
            if jnp.issubdtype(g.dtype, jnp.complexfloating):
                raise TreeMismatchError(
                    name, "the updates have the wrong dtype for the 8-bit moments", "",
                    f"a real dtype (the quantized moment of {_tree.describe(m)})",
                    _tree.describe(g))
            return _quantized_step(g, m, v, k)

        treedef = jax.tree_util.tree_structure(updates)
        flat = [one(g, m, v) for g, m, v in zip(
            treedef.flatten_up_to(updates), treedef.flatten_up_to(state.mu),
            treedef.flatten_up_to(state.nu))]
        new_updates = treedef.unflatten([o[0] for o in flat])
        mu = treedef.unflatten([o[1] for o in flat])
        nu = treedef.unflatten([o[2] for o in flat])
        return new_updates, ScaleByAdam8bitState(count=count, mu=mu, nu=nu, hyperparams=hp)

    config: dict[str, Any] = {"b1": b1, "b2": b2, "eps": eps, "eps_root": eps_root}
    if block_size != 2048:
        config["block_size"] = block_size
    if min_8bit_size != 4096:
        config["min_8bit_size"] = min_8bit_size
    return GradientTransformation(init_fn, update_fn, name=name, config=config)


def _size_config(config: dict[str, Any], block_size: int, min_8bit_size: int, name: str):
    block_size = check_block_size(name, block_size)
    min_8bit_size = _check_size_option(name, "min_8bit_size", min_8bit_size, 0)
    if block_size != 2048:
        config["block_size"] = block_size
    if min_8bit_size != 4096:
        config["min_8bit_size"] = min_8bit_size
    return config


def adam_8bit(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    block_size: int = 2048,
    min_8bit_size: int = 4096,
) -> GradientTransformation:
    """8-bit Adam: ``chain(scale_by_adam_8bit(...), scale_by_learning_rate(learning_rate))``.

    :func:`jopt.adam` with moments stored block-wise in 8 bits (about a quarter of the
    state memory); see :func:`scale_by_adam_8bit` for the rule, the layout, the accuracy,
    saturation (second moments are saturated at the largest float32), and the costs: memory
    is the point; on CPU a step takes about 8-12x the time of float32 Adam's (measured on a
    2-core CPU), and with sharded parameters the second jitted step may compile once more.

    Args:
      learning_rate: :math:`\\eta`: a float >= 0, a jopt schedule or a callable of the step.
      b1, b2, eps, eps_root, block_size, min_8bit_size: as in :func:`scale_by_adam_8bit`
        (defaults 0.9, 0.999, 1e-8, 0.0, 2048, 4096).

    Returns:
      A :class:`GradientTransformation`; state
      ``(ScaleByAdam8bitState, ScaleByLearningRateState)``.

    Raises:
      InvalidHyperparameterError: for out-of-range hyperparameters.

    Examples:
      >>> import jax, jax.numpy as jnp, jopt
      >>> tx = jopt.adam_8bit(0.1, min_8bit_size=0)
      >>> params = {"x": jnp.asarray([1.0, -2.0, 3.0])}
      >>> state = tx.init(params)
      >>> loss = lambda p: jnp.sum(p["x"] ** 2)
      >>> @jax.jit
      ... def step(params, state):
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
      ...     return jopt.apply_updates(params, updates), state
      >>> for _ in range(200):
      ...     params, state = step(params, state)
      >>> bool(loss(params) < 1e-2)
      True

    References:
      Dettmers, Lewis, Shleifer & Zettlemoyer, `8-bit Optimizers via Block-wise Quantization
      <https://arxiv.org/abs/2110.02861>`_, ICLR 2022.
    """
    name = "adam_8bit"
    config: dict[str, Any] = {"learning_rate": learning_rate, "b1": b1, "b2": b2, "eps": eps,
                              "eps_root": eps_root}
    _size_config(config, block_size, min_8bit_size, name)
    tx = chain(
        scale_by_adam_8bit(b1, b2, eps, eps_root, block_size=block_size,
                           min_8bit_size=min_8bit_size),
        scale_by_learning_rate(learning_rate),
    )
    return _named(tx, name, config)


def adamw_8bit(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: Any = 1e-4,
    mask: Any = None,
    *,
    block_size: int = 2048,
    min_8bit_size: int = 4096,
) -> GradientTransformation:
    """8-bit AdamW: Adam with 8-bit moments and decoupled weight decay.

    ``chain(scale_by_adam_8bit(...), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``, the chain of :func:`jopt.adamw` with
    :func:`scale_by_adam_8bit` as its first link:

    .. math::
       \\theta_t = \\theta_{t-1} - \\eta(t)\\big(u_t + \\lambda\\, \\theta_{t-1}\\big)

    with :math:`u_t` the update of :func:`scale_by_adam_8bit`.

    Args:
      learning_rate: :math:`\\eta`: a float >= 0, a jopt schedule or a callable of the step.
      b1, b2, eps, eps_root, block_size, min_8bit_size: as in :func:`scale_by_adam_8bit`.
      weight_decay: :math:`\\lambda \\ge 0` (float, schedule or callable). Default 1e-4.
      mask: which parameters to decay, as in :func:`jopt.add_decayed_weights`. Default None.

    Returns:
      A :class:`GradientTransformation`; state ``(ScaleByAdam8bitState,
      AddDecayedWeightsState, ScaleByLearningRateState)``.

    Raises:
      InvalidHyperparameterError: for out-of-range hyperparameters.

    Examples:
      >>> import jopt
      >>> jopt.adamw_8bit(1e-3, weight_decay=0.01, block_size=256)
      adamw_8bit(learning_rate=0.001, b1=0.9, b2=0.999, eps=1e-08, eps_root=0.0,
                 weight_decay=0.01, block_size=256)

    References:
      Dettmers, Lewis, Shleifer & Zettlemoyer, `8-bit Optimizers via Block-wise Quantization
      <https://arxiv.org/abs/2110.02861>`_, ICLR 2022. Loshchilov & Hutter, `Decoupled
      Weight Decay Regularization <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
    """
    name = "adamw_8bit"
    config: dict[str, Any] = {"learning_rate": learning_rate, "b1": b1, "b2": b2, "eps": eps,
                              "eps_root": eps_root, "weight_decay": weight_decay}
    if mask is not None:
        config["mask"] = mask
    _size_config(config, block_size, min_8bit_size, name)
    tx = chain(
        scale_by_adam_8bit(b1, b2, eps, eps_root, block_size=block_size,
                           min_8bit_size=min_8bit_size),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
    return _named(tx, name, config)
