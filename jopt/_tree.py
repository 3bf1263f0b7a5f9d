"""Tree helpers: structure checks with readable errors, dtype rules, norms, apply_updates."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jopt.errors import TreeMismatchError

PyTree = Any


def dtype_of(leaf: Any) -> np.dtype:
    """The dtype of an array, ``ShapeDtypeStruct`` or Python/NumPy scalar leaf (a Python float
    counts as float32, as ``jnp.asarray`` makes it)."""
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        dtype = jnp.asarray(leaf).dtype
    return np.dtype(dtype)


def as_arrays(tree: PyTree) -> PyTree:
    """Python and NumPy scalar leaves as JAX arrays (arrays are returned as they are)."""
    return jax.tree_util.tree_map(
        lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x), tree
    )


def describe(leaf: Any) -> str:
    """``'shape (3, 4) float32'`` for an array-like leaf."""
    shape = tuple(getattr(leaf, "shape", np.shape(leaf)))
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        dtype = np.asarray(leaf).dtype
    return f"shape {shape} {np.dtype(dtype).name}"


def _paths(tree: PyTree) -> dict[str, Any]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def check_match(
    transformation: str,
    expected: PyTree,
    got: PyTree,
    *,
    expected_name: str,
    got_name: str,
    shapes: bool = True,
    dtypes: bool = False,
) -> None:
    """Raises :class:`TreeMismatchError` unless ``got`` matches ``expected``.

    Compares tree structure, then (optionally) leaf shapes and dtypes. All comparisons are on
    static information, so this costs nothing at run time.

    Args:
      transformation: name shown in the message.
      expected: the reference tree (for example the state's first moment).
      got: the tree to check (for example the incoming updates).
      expected_name: what ``expected`` is, in words (``"the parameters init saw"``).
      got_name: what ``got`` is, in words (``"updates"``).
      shapes: compare leaf shapes.
      dtypes: compare leaf dtypes.
    """
    exp_def = jax.tree_util.tree_structure(expected)
    got_def = jax.tree_util.tree_structure(got)
    if exp_def != got_def:
        from jopt._packed import Packed, _check_packed_match

        if isinstance(expected, Packed) or isinstance(got, Packed):
            # A layout mismatch names the original leaf, not two PyTreeDefs of the layouts.
            _check_packed_match(transformation, expected, got, expected_name=expected_name,
                                got_name=got_name)
        exp_paths = _paths(expected)
        got_paths = _paths(got)
        missing = [p for p in exp_paths if p not in got_paths]
        extra = [p for p in got_paths if p not in exp_paths]
        what = f"the {got_name} do not have the structure of {expected_name}"
        if missing:
            raise TreeMismatchError(
                transformation, what, missing[0], f"a leaf ({describe(exp_paths[missing[0]])})",
                "no leaf there" + (f" (extra leaf at {extra[0]})" if extra else ""),
            )
        if extra:
            raise TreeMismatchError(
                transformation, what, extra[0], "no leaf there",
                f"a leaf ({describe(got_paths[extra[0]])})",
            )
        raise TreeMismatchError(transformation, what, "", f"tree {exp_def}", f"tree {got_def}")
    if not (shapes or dtypes):
        return
    exp_leaves, _ = jax.tree_util.tree_flatten_with_path(expected)
    got_leaves = jax.tree_util.tree_leaves(got)
    for (path, e), g in zip(exp_leaves, got_leaves):
        e_shape = tuple(np.shape(e)) if not hasattr(e, "shape") else tuple(e.shape)
        g_shape = tuple(np.shape(g)) if not hasattr(g, "shape") else tuple(g.shape)
        bad_shape = shapes and e_shape != g_shape
        bad_dtype = dtypes and dtype_of(e) != dtype_of(g)
        if bad_shape or bad_dtype:
            kind = "shape" if bad_shape else "dtype"
            raise TreeMismatchError(
                transformation,
                f"the {got_name} have the wrong {kind} for {expected_name}",
                jax.tree_util.keystr(path),
                describe(e),
                describe(g),
            )


def compute_dtype(dtype: Any) -> np.dtype:
    """The dtype arithmetic is done in: at least float32, complex stays complex.

    bfloat16 and float16 inputs are promoted to float32 so that hyperparameters such as
    ``b2 = 0.999`` and ``eps = 1e-8`` keep their meaning; float32, float64 and complex types
    are kept.
    """
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return dtype
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
        return np.dtype(np.float32)
    if not jnp.issubdtype(dtype, jnp.floating):
        return np.dtype(np.float32)
    return dtype


def real_dtype(dtype: Any) -> np.dtype:
    """The real counterpart of a (possibly complex) dtype."""
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return np.dtype(np.float64) if dtype == np.complex128 else np.dtype(np.float32)
    return dtype


def abs_sq(x: jax.Array) -> jax.Array:
    """``|x|**2`` as a real array (``x * conj(x)`` for complex ``x``)."""
    if jnp.iscomplexobj(x):
        return jnp.real(x) ** 2 + jnp.imag(x) ** 2
    return x * x


def cast_scalar(value: jax.Array, dtype: Any) -> jax.Array:
    """Casts a (float32) hyperparameter to the dtype of the arithmetic it enters."""
    return jnp.asarray(value).astype(dtype)


def _sum_sq(leaf: jax.Array) -> jax.Array:
    """``sum(|x|**2)`` of one leaf in its compute dtype, as a dot product of the flattened
    leaf with itself: XLA runs it as one multithreaded kernel without a squared temporary,
    where a reduction of ``x * x`` over a matrix becomes a product kernel plus a slower
    windowed reduction (about 10% of a clipped Adam step on a GPT-2-sized tree). Small
    leaves keep the plain reduction, which XLA compiles to fewer kernels for them."""
    x = leaf.astype(compute_dtype(leaf.dtype))
    if x.size < 1 << 14:
        return jnp.sum(abs_sq(x))
    x = jnp.ravel(x)
    if jnp.iscomplexobj(x):
        return jnp.vdot(x, x).real  # vdot conjugates its first argument: sum |x|^2
    return jnp.dot(x, x)


def global_norm_sq(tree: PyTree, axis_name: Any = None) -> jax.Array:
    """Sum of ``|x|**2`` over every leaf, in float32 (float64 for float64 leaves).

    With ``axis_name``, the sum also runs over that mapped axis (``lax.psum``), which gives the
    norm of a tree whose leaves are sharded across ``pmap`` or ``shard_map`` devices.
    """
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        total = jnp.zeros([], jnp.float32)
    else:
        acc = np.dtype(np.float32)
        for leaf in leaves:
            if real_dtype(compute_dtype(leaf.dtype)) == np.float64:
                acc = np.dtype(np.float64)
        total = sum(_sum_sq(leaf).astype(acc) for leaf in leaves)
    if axis_name is not None:
        total = jax.lax.psum(total, axis_name)
    return total


def zeros_like(tree: PyTree, dtype: Any = None) -> PyTree:
    """Zeros with each leaf's shape (and sharding, for concrete arrays), in ``dtype`` if given."""
    return jax.tree_util.tree_map(lambda p: jnp.zeros_like(p, dtype=dtype or p.dtype), tree)


def _wider(a: np.dtype, b: np.dtype) -> np.dtype:
    if a == b:
        return a
    a_inexact = jnp.issubdtype(a, jnp.inexact)
    if a_inexact != jnp.issubdtype(b, jnp.inexact):
        return a if a_inexact else b
    if jnp.issubdtype(b, jnp.complexfloating) and not jnp.issubdtype(a, jnp.complexfloating):
        return b
    if jnp.issubdtype(a, jnp.complexfloating) and not jnp.issubdtype(b, jnp.complexfloating):
        return a
    return a if a.itemsize >= b.itemsize else b


def apply_updates(params: PyTree, updates: PyTree, *, key: jax.Array | None = None) -> PyTree:
    r"""Adds updates to parameters; each result leaf keeps its parameter's dtype.

    The sum is computed in the wider of the two dtypes, then cast back to the parameter's
    dtype, so float32 updates added to bfloat16 parameters lose no more than the final
    rounding. Leaves that are ``None`` in ``params`` stay ``None``.

    With ``key``, every parameter leaf of a floating dtype narrower than float32 (bfloat16,
    float16, float8 types) is updated with stochastic rounding instead of round-to-nearest:

    .. math::

      p_{\text{new}} = \operatorname{stochastic\_round}(\operatorname{float32}(p) + u,
        \operatorname{dtype}(p)), \qquad \mathbb{E}[p_{\text{new}}] = p + u,

    with the sum in float64 instead when ``u`` is float64, and a random stream per leaf (``key``
    folded with the leaf's index in ``jax.tree_util.tree_leaves(params)``). With
    round-to-nearest, an update smaller than half the spacing of the parameter's dtype at
    ``p`` is lost entirely: a bfloat16 weight of ``1.0`` plus ``1e-4`` stays ``1.0``, step
    after step, since bfloat16 values near 1 are ``2**-7`` apart. Stochastic rounding keeps
    such updates in expectation, so low-precision training keeps following small learning
    rates (Gupta et al., 2015; Zamirai et al., 2020). Special values and overflow follow
    round-to-nearest; see :func:`jopt.stochastic_round`. float32, float64, complex and integer
    leaves are updated exactly as without ``key``. Use a fresh key every step (for example
    ``jax.random.fold_in(key, step)``): the same key gives the same rounding.

    Args:
      params: a tree of arrays.
      updates: a tree of arrays with the same structure and shapes as ``params``.
      key: optional JAX PRNG key (``jax.random.key(seed)`` or ``jax.random.PRNGKey(seed)``);
        when given, low-precision leaves are rounded stochastically. Keyword only.

    Returns:
      ``params + updates``, same tree, shapes and dtypes as ``params``.

    Raises:
      TreeMismatchError: if the trees differ in structure or a shape differs; the message
        names the tree path.
      InvalidHyperparameterError: if ``key`` is given and is not one PRNG key.

    Examples:
      >>> import jax, jax.numpy as jnp, jopt
      >>> params = {"w": jnp.ones((10_000,), jnp.bfloat16)}
      >>> updates = {"w": jnp.full((10_000,), 1e-3)}  # below half a bfloat16 spacing at 1.0
      >>> float(jopt.apply_updates(params, updates)["w"].astype(jnp.float32).mean())
      1.0
      >>> new = jopt.apply_updates(params, updates, key=jax.random.key(0))
      >>> bool(abs(new["w"].astype(jnp.float32).mean() - 1.001) < 3e-4)
      True

    References:
      Gupta, Agrawal, Gopalakrishnan and Narayanan, 2015. `Deep Learning with Limited
      Numerical Precision <https://arxiv.org/abs/1502.02551>`_.

      Zamirai, Zhang, Aberger and De Sa, 2020. `Revisiting BFloat16 Training
      <https://arxiv.org/abs/2010.06192>`_.
    """
    check_match(
        "apply_updates", params, updates, expected_name="the parameters", got_name="updates"
    )

    def add(p, u):
        p, u = jnp.asarray(p), jnp.asarray(u)
        p_dtype = np.dtype(p.dtype)
        ct = _wider(p_dtype, np.dtype(u.dtype))
        if jnp.issubdtype(p_dtype, jnp.complexfloating) or not jnp.issubdtype(
            ct, jnp.complexfloating
        ):
            return (jnp.asarray(p).astype(ct) + jnp.asarray(u).astype(ct)).astype(p_dtype)
        return (jnp.asarray(p).astype(ct) + jnp.asarray(u).astype(ct)).real.astype(p_dtype)

    if key is None:
        return jax.tree_util.tree_map(add, params, updates)

    from jopt import _rounding

    key = _rounding.check_key("apply_updates", key)

    def add_rounded(index, p, u):
        p, u = jnp.asarray(p), jnp.asarray(u)
        p_dtype = np.dtype(p.dtype)
        if not (jnp.issubdtype(p_dtype, jnp.floating) and p_dtype.itemsize < 4):
            return add(p, u)
        ct = _wider(_wider(p_dtype, np.dtype(u.dtype)), np.dtype(np.float32))
        total = p.astype(ct) + u.astype(ct)
        if jnp.issubdtype(ct, jnp.complexfloating):
            total = total.real
        return _rounding.stochastic_round(total, p_dtype, jax.random.fold_in(key, index))

    p_leaves, treedef = jax.tree_util.tree_flatten(params)
    u_leaves = treedef.flatten_up_to(updates)
    return treedef.unflatten(
        [add_rounded(i, p, u) for i, (p, u) in enumerate(zip(p_leaves, u_leaves))]
    )


def check_state_type(transformation: str, state: Any, cls: type) -> None:
    """Raises :class:`TreeMismatchError` if ``state`` is not the state ``init`` builds."""
    if not isinstance(state, cls):
        raise TreeMismatchError(
            transformation,
            "the state is not the one this transformation's init builds",
            "",
            cls.__name__,
            type(state).__name__,
        )


def check_updates(
    transformation: str, updates: PyTree, reference: PyTree | None, params: PyTree | None
) -> tuple[PyTree, PyTree | None]:
    """Checks updates against a per-parameter state tree and, if given, the parameters.

    Returns ``(updates, params)`` with Python/NumPy scalar leaves turned into JAX arrays.
    """
    if reference is not None:
        check_match(
            transformation, reference, updates,
            expected_name="the parameters init saw", got_name="updates",
        )
    if params is not None:
        check_match(
            transformation, updates, params, expected_name="the updates", got_name="params"
        )
    return as_arrays(updates), (None if params is None else as_arrays(params))


def place_like(params: PyTree, state: PyTree) -> PyTree:
    """Puts unsharded state leaves (counters, hyperparameters) on the parameters' mesh.

    When the parameters are concrete arrays with a ``NamedSharding``, scalar state leaves made
    on one device are replicated over the same mesh. Otherwise the first jitted ``update``
    would return them with a mesh sharding, the state's shardings would change between steps
    and the step would compile twice. Per-parameter leaves already follow their parameter.
    """
    from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

    target = None
    for leaf in jax.tree_util.tree_leaves(params):
        if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer):
            sharding = getattr(leaf, "sharding", None)
            if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
                target = NamedSharding(sharding.mesh, PartitionSpec())
                break
    if target is None:
        return state

    def put(x):
        if (isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)
                and isinstance(x.sharding, SingleDeviceSharding)):
            return jax.device_put(x, target)
        return x

    return jax.tree_util.tree_map(put, state)
