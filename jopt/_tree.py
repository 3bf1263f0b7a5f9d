"""Tree helpers: readable structure checks, dtype rules, norms, placement, flax variables.

This module knows nothing of jopt's packed layouts (``_layout``) or transformations; the
packed-aware checks that transformations call are in ``_checks``.
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jopt.errors import TreeMismatchError

PyTree = Any
INT32_MAX = int(np.iinfo(np.int32).max)


def safe_increment(count: jax.Array) -> jax.Array:
    """Adds one to an int32 counter, saturating at ``2**31 - 1`` instead of wrapping.

    Args:
      count: an int32 array (any shape).

    Returns:
      ``count + 1`` where ``count < 2**31 - 1``, else ``count``; int32, same shape.
    """
    return count + (count < INT32_MAX).astype(count.dtype)


def zero_count() -> jax.Array:
    """A fresh int32 step counter (scalar zero)."""
    return jnp.zeros([], jnp.int32)


def dtype_of(leaf: Any) -> np.dtype:
    """The dtype of an array, ``ShapeDtypeStruct`` or Python/NumPy scalar leaf (a Python float
    counts as float32, as ``jnp.asarray`` makes it)."""
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        dtype = jnp.asarray(leaf).dtype
    return np.dtype(dtype)


def shape_of(leaf: Any) -> tuple[int, ...]:
    """The shape of an array-like leaf as a tuple of ints."""
    return tuple(int(d) for d in getattr(leaf, "shape", np.shape(leaf)))


def as_arrays(tree: PyTree) -> PyTree:
    """Python and NumPy scalar leaves as JAX arrays (arrays are returned as they are)."""
    return jax.tree_util.tree_map(
        lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x), tree
    )


def describe(leaf: Any) -> str:
    """``'shape (3, 4) float32'`` for an array-like leaf."""
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        dtype = np.asarray(leaf).dtype
    return f"shape {shape_of(leaf)} {np.dtype(dtype).name}"


def paths(tree: PyTree) -> dict[str, Any]:
    """``{keystr(path): leaf}`` for every leaf of ``tree``."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def check_structure(transformation: str, expected: PyTree, got: PyTree, *, expected_name: str,
                    got_name: str, shapes: bool = True, dtypes: bool = False) -> None:
    """Raises :class:`TreeMismatchError` unless ``got`` matches ``expected``: the tree
    structure, then (optionally) every leaf's shape and dtype, naming the first tree path
    that differs. Only static information is compared, so this costs nothing at run time."""
    exp_def = jax.tree_util.tree_structure(expected)
    got_def = jax.tree_util.tree_structure(got)
    if exp_def != got_def:
        exp_paths = paths(expected)
        got_paths = paths(got)
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
        bad_shape = shapes and shape_of(e) != shape_of(g)
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


def moment_dtype(param_dtype: Any, option: Any = None, real: bool = False) -> np.dtype:
    """The storage dtype of a per-parameter buffer: ``option`` if given, else the parameter's
    compute dtype; the real part of it for a ``real`` buffer, else (for a complex parameter)
    the narrowest complex type that holds the requested real precision."""
    param_dtype = np.dtype(param_dtype)
    dtype = np.dtype(option) if option is not None else compute_dtype(param_dtype)
    if real:
        return real_dtype(dtype)
    if jnp.issubdtype(param_dtype, jnp.complexfloating) and not jnp.issubdtype(
            dtype, jnp.complexfloating):
        return np.dtype(np.complex128 if dtype == np.float64 else np.complex64)
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


def wider(a: np.dtype, b: np.dtype) -> np.dtype:
    """The wider of two dtypes: inexact over integer, complex over real, then more bytes."""
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


def place_as(new: PyTree, old: PyTree) -> PyTree:
    """Puts the leaves of a new value where the old value's leaves were, so that a jitted step
    sees the same input shardings and does not recompile: a new leaf takes the sharding of an
    old leaf of the same shape (a population sharded over its member axis stays so), any other
    leaf is replicated on the old value's mesh."""
    from jax.sharding import NamedSharding, PartitionSpec

    old_leaves = [x for x in jax.tree_util.tree_leaves(old)
                  if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)]
    if not old_leaves or not isinstance(old_leaves[0].sharding, NamedSharding):
        return new
    by_shape: dict[tuple[int, ...], Any] = {}
    for x in old_leaves:
        by_shape.setdefault(tuple(x.shape), x.sharding)
    replicated = NamedSharding(old_leaves[0].sharding.mesh, PartitionSpec())

    def put(x):
        if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
            return x
        return jax.device_put(x, by_shape.get(tuple(x.shape), replicated))

    return jax.tree_util.tree_map(put, new)


# ------------------------------------------------------------------------ flax variables


def _variable_type() -> type | None:
    """flax's ``nnx.Variable`` if flax.nnx has been imported (jopt never imports flax)."""
    module = sys.modules.get("flax.nnx.variablelib") or sys.modules.get("flax.nnx")
    return getattr(module, "Variable", None) if module is not None else None


def is_variable(x: Any) -> bool:
    """Whether ``x`` is a flax ``nnx.Variable`` (``nnx.Param``, an optimizer's ``OptArray``)."""
    cls = _variable_type()
    return cls is not None and isinstance(cls, type) and isinstance(x, cls)


def variable_value(x: Any) -> Any:
    return x.get_value() if hasattr(x, "get_value") else x.value


def unwrap_variables(tree: PyTree) -> PyTree:
    """``tree`` with every flax ``nnx.Variable`` replaced by its value.

    flax's ``nnx.Optimizer`` calls ``init`` with ``nnx.state(model, wrt)`` (a tree of
    ``nnx.Param`` variables) but ``update`` with plain arrays, and keeps the optimizer state
    as a tree of ``OptArray`` variables: jopt reads through the variables so that the state
    ``init`` builds, and what ``get_hyperparams`` reads, are plain arrays.
    """
    if _variable_type() is None:
        return tree
    return jax.tree_util.tree_map(lambda x: variable_value(x) if is_variable(x) else x, tree,
                                  is_leaf=is_variable)


def has_variables(tree: PyTree) -> bool:
    if _variable_type() is None:
        return False
    return any(is_variable(x) for x in jax.tree_util.tree_leaves(tree, is_leaf=is_variable))


def matrices_mask(params: PyTree) -> PyTree:
    """A mask selecting the leaves of two or more dimensions (weight matrices, not biases or
    scalars), the usual choice for weight decay."""
    return jax.tree_util.tree_map(lambda x: jnp.ndim(x) > 1, params)


def rewrap_variables(original: PyTree, new: PyTree) -> PyTree:
    """``new`` (a tree of plain arrays computed from ``unwrap_variables(original)``) with each
    leaf wrapped again in the flax variable that held the leaf at the same path of
    ``original`` (a leaf at a new path, such as a schedule that replaced a number, in a
    variable of the type of the first one)."""
    wrapped, _ = jax.tree_util.tree_flatten_with_path(original, is_leaf=is_variable)
    by_path = {jax.tree_util.keystr(p): v for p, v in wrapped if is_variable(v)}
    if not by_path:
        return new
    first = next(iter(by_path.values()))

    def wrap(path, leaf):
        var = by_path.get(jax.tree_util.keystr(path))
        if var is not None:
            return var.replace(leaf) if hasattr(var, "replace") else type(var)(leaf)
        return type(first)(leaf)

    return jax.tree_util.tree_map_with_path(wrap, new)
