"""Flat buffers for trees with many leaves: :func:`pack`, :class:`Packed` and :class:`Layout`.

A model with thousands of small tensors pays a fixed runtime and compile cost per buffer and
per kernel, several times per leaf for every optimizer. Here the leaves of one dtype are laid
end to end in one 1-D buffer (a *group*), so an elementwise optimizer runs a handful of
kernels on a handful of buffers whatever the number of leaves.

- :class:`Layout` (static, hashable): where every leaf of a tree lives in the groups.
- :class:`Packed`: a pytree whose leaves are the group buffers and whose static data is the
  layout; :meth:`Packed.unpack` gives the original tree back (slices and reshapes, which XLA
  fuses into their consumers). Every jopt transformation accepts packed parameters directly
  (the *packed mode*), each according to its kind: an elementwise rule runs on the buffers as
  they are (its state is a few flat buffers too), a per-leaf rule on each original leaf, and
  per-leaf options such as a weight-decay mask are resolved through the layout.
- ``jopt.flatten`` (in ``_flatten``) wraps a transformation so that ordinary per-leaf
  parameters and updates are packed on the way in and unpacked on the way out.

Leaves that are sharded over several devices are never concatenated (that would move data
between devices): each is a group of its own, kept in its shape and sharding. Under
:func:`flatten`, so is every leaf larger than its ``max_leaf_size``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jopt import _tree
from jopt._serialization import serializable
from jopt._validate import checked_call
from jopt.errors import LayoutError, PackedMismatchError, TreeMismatchError


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where each leaf of a tree lives in a :class:`Packed` value (static metadata).

    Attributes:
      treedef: the structure of the original tree.
      shapes: the shape of every leaf, in ``tree_leaves`` order.
      dtypes: the dtype of every leaf.
      group_of: for every leaf, the index of the group (buffer) that holds it.
      offsets: for every leaf, its first element in its group's buffer (0 for a solo leaf).
      group_dtypes: the dtype of every group.
      group_sizes: the number of elements of every group buffer.
      solo: for every group, whether it is one leaf kept in its own shape (a sharded leaf, or
        a leaf larger than ``max_leaf_size`` in :meth:`of`) rather than a 1-D concatenation.
    """

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]
    group_of: tuple[int, ...]
    offsets: tuple[int, ...]
    group_dtypes: tuple[np.dtype, ...]
    group_sizes: tuple[int, ...]
    solo: tuple[bool, ...]

    @classmethod
    def of(cls, tree: Any, *, max_leaf_size: int | None = None) -> Layout:
        """The layout of ``tree``: leaves grouped by dtype, in tree order within a group.

        Leaves may be arrays, ``jax.ShapeDtypeStruct`` s or tracers. A concrete ``jax.Array``
        sharded over more than one device (not fully replicated) gets a solo group, and so
        does a leaf of more than ``max_leaf_size`` elements when that is given.
        """
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        shapes = tuple(tuple(int(d) for d in np.shape(x)) for x in leaves)
        dtypes = tuple(_dtype(x) for x in leaves)
        group_key: dict[Any, int] = {}
        group_of, offsets, g_dtypes, g_sizes, solo = [], [], [], [], []
        for i, (x, shape, dtype) in enumerate(zip(leaves, shapes, dtypes)):
            size = int(np.prod(shape, dtype=np.int64))
            if _is_sharded(x) or (max_leaf_size is not None and size > max_leaf_size):
                key = ("solo", i)
            else:
                key = ("flat", dtype)
            if key not in group_key:
                group_key[key] = len(g_dtypes)
                g_dtypes.append(dtype)
                g_sizes.append(0)
                solo.append(key[0] == "solo")
            g = group_key[key]
            group_of.append(g)
            offsets.append(g_sizes[g])
            g_sizes[g] += size
        return cls(treedef, shapes, dtypes, tuple(group_of), tuple(offsets), tuple(g_dtypes),
                   tuple(g_sizes), tuple(solo))

    @property
    def num_leaves(self) -> int:
        """The number of leaves of the original tree."""
        return len(self.shapes)

    def pack(self, tree: Any, *, what: str = "tree", transformation: str = "pack",
             dtypes: bool = True) -> Packed:
        """Lays out ``tree`` (with this layout's structure, shapes and dtypes) in flat buffers.

        With ``dtypes=False`` only the structure and shapes must match (gradients in float32
        for bfloat16 parameters): each group's leaves are concatenated in their own dtype,
        which must then be the same for all the leaves of one group.

        Raises:
          TreeMismatchError: if ``tree`` differs in structure, a shape or (with ``dtypes``) a
            dtype, or (without) if the leaves of one group have different dtypes; the message
            names the tree path.
        """
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        if treedef != self.treedef:
            # Name the first missing or extra leaf, as every other structure check does.
            expected = jax.tree_util.tree_unflatten(self.treedef, [
                jax.ShapeDtypeStruct(s, d) for s, d in zip(self.shapes, self.dtypes)])
            _tree.check_structure(transformation, expected, tree,
                                  expected_name="the packed layout", got_name=what, shapes=False)
            raise TreeMismatchError(transformation, f"the {what} do not have the packed layout's "
                                    "structure", "", f"tree {self.treedef}", f"tree {treedef}")
        for i, x in enumerate(leaves):
            if tuple(np.shape(x)) != self.shapes[i] or (dtypes and _dtype(x) != self.dtypes[i]):
                raise TreeMismatchError(
                    transformation, f"the {what} do not match the packed layout",
                    _leaf_path(self, i), f"{self.dtypes[i].name}{list(self.shapes[i])}",
                    f"{_dtype(x).name}{list(np.shape(x))}")
        if not dtypes:
            self._check_group_dtypes(leaves, what, transformation)
        if any(isinstance(x, jax.ShapeDtypeStruct) for x in leaves):
            # Abstract leaves (tx.init on ShapeDtypeStructs): abstract buffers of the layout.
            return Packed(tuple(
                jax.ShapeDtypeStruct(self.shapes[self.group_of.index(g)] if self.solo[g]
                                     else (self.group_sizes[g],),
                                     leaves[self.group_of.index(g)].dtype)
                for g in range(len(self.group_dtypes))), self)
        parts: list[list[jax.Array]] = [[] for _ in self.group_dtypes]
        for i, x in enumerate(leaves):
            parts[self.group_of[i]].append(jnp.asarray(x))
        buffers = []
        for g, xs in enumerate(parts):
            if self.solo[g]:
                buffers.append(xs[0])
            elif len(xs) == 1:
                buffers.append(jnp.ravel(xs[0]))
            else:
                buffers.append(jnp.concatenate([jnp.ravel(x) for x in xs]))
        return Packed(tuple(buffers), self)

    def _check_group_dtypes(self, leaves: list[Any], what: str, transformation: str) -> None:
        """The leaves of one group must share a dtype (they are concatenated). The reference
        is the group's first leaf of the layout's dtype if any (so the leaf named is the odd
        one out), else its first leaf."""
        for g in range(len(self.group_dtypes)):
            members = [i for i in range(self.num_leaves) if self.group_of[i] == g]
            if len({_dtype(leaves[i]) for i in members}) < 2:
                continue
            ref = next((i for i in members if _dtype(leaves[i]) == self.group_dtypes[g]),
                       members[0])
            i = next(i for i in members if _dtype(leaves[i]) != _dtype(leaves[ref]))
            raise TreeMismatchError(
                transformation, f"the {what} of one packed buffer have different dtypes",
                _leaf_path(self, i),
                f"{_dtype(leaves[ref]).name}{list(self.shapes[i])} (the dtype of "
                f"{_leaf_path(self, ref)}, which shares its buffer)",
                f"{_dtype(leaves[i]).name}{list(self.shapes[i])}")

    def unpack(self, buffers: tuple[Any, ...]) -> Any:
        """The original tree, from group buffers of this layout (slices and reshapes).

        Outside ``jit`` (checkpointing, logging), concrete buffers are unpacked in one compiled
        program per layout rather than one small program per leaf.
        """
        if buffers and not any(isinstance(b, jax.core.Tracer) for b in buffers):
            return _unpack_jit(tuple(buffers), self)
        return self._slices(buffers)

    def _slices(self, buffers: tuple[Any, ...]) -> Any:
        leaves = []
        for i, shape in enumerate(self.shapes):
            g = self.group_of[i]
            buf = buffers[g]
            if self.solo[g]:
                leaves.append(buf)
                continue
            size = int(np.prod(shape, dtype=np.int64))
            start = self.offsets[i]
            if start == 0 and size == self.group_sizes[g]:
                piece = buf
            else:
                piece = jax.lax.slice_in_dim(buf, start, start + size, axis=buf.ndim - 1)
            leaves.append(piece.reshape(buf.shape[:-1] + shape))
        return jax.tree_util.tree_unflatten(self.treedef, leaves)

    def expand(self, per_leaf: list[Any], dtype: Any = None) -> tuple[Any, ...]:
        """Per-leaf static values spread over the groups: for every group, a Python scalar
        when all of its leaves share the value, otherwise a buffer-shaped array holding each
        leaf's value on that leaf's elements (built from broadcasts, which XLA fuses into the
        consumer instead of storing)."""
        out = []
        for g in range(len(self.group_sizes)):
            members = [i for i in range(self.num_leaves) if self.group_of[i] == g]
            sizes = [int(np.prod(self.shapes[i], dtype=np.int64)) for i in members]
            values = [per_leaf[i] for i in members]
            # Zero-size leaves own no element, so their value never makes a group mixed (a
            # group of zero-size leaves only would otherwise concatenate nothing).
            present = [v for v, n in zip(values, sizes) if n] or values[:1]
            if all(v == present[0] for v in present):
                out.append(present[0])
                continue
            runs: list[tuple[Any, int]] = []
            for v, n in zip(values, sizes):
                if not n:
                    continue
                if runs and runs[-1][0] == v:
                    runs[-1] = (v, runs[-1][1] + n)
                else:
                    runs.append((v, n))
            out.append(jnp.concatenate([jnp.full((n,), v, dtype) for v, n in runs]))
        return tuple(out)


@functools.partial(jax.jit, static_argnums=1)
def _unpack_jit(buffers: tuple[Any, ...], layout: Layout) -> Any:
    return layout._slices(buffers)


def _dtype(x: Any) -> np.dtype:
    """The dtype JAX stores ``x`` in (a Python float or a float64 NumPy array is float32
    unless x64 is enabled), so a layout's dtypes are those of its buffers."""
    dtype = getattr(x, "dtype", None) or np.asarray(x).dtype
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def _is_sharded(x: Any) -> bool:
    if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
        return False
    sharding = getattr(x, "sharding", None)
    return sharding is not None and len(sharding.device_set) > 1 and not \
        sharding.is_fully_replicated


def _leaf_path(layout: Layout, i: int) -> str:
    dummy = jax.tree_util.tree_unflatten(layout.treedef, list(range(layout.num_leaves)))
    paths = jax.tree_util.tree_flatten_with_path(dummy)[0]
    return jax.tree_util.keystr(paths[i][0])


class Packed:
    """A tree stored as a few flat buffers, one per dtype (see :func:`pack`).

    A pytree: its leaves are the group buffers (1-D arrays, or a solo leaf kept whole: a
    sharded leaf, or under :func:`flatten` a leaf larger than its ``max_leaf_size``) and
    its static data is the :class:`Layout`, so ``jax.grad`` of a function of a ``Packed``
    returns a ``Packed`` of gradients with the same layout, and ``jit``, ``vmap`` and donation
    treat it like any other tree. Two ``Packed`` values are the same tree structure exactly
    when their layouts are equal.

    Attributes:
      buffers: tuple of group buffers, ``layout.group_dtypes[g]`` and
        ``(layout.group_sizes[g],)`` (a solo group: the leaf's own shape). A state's buffers
        may have another dtype (float32 moments of bfloat16 parameters), and a ``vmap`` ped
        value a leading batch axis.
      layout: the static :class:`Layout`.
    """

    __slots__ = ("buffers", "layout")

    def __init__(self, buffers: tuple[Any, ...], layout: Layout):
        self.buffers = tuple(buffers)
        self.layout = layout

    def unpack(self) -> Any:
        """The tree this value packs: each leaf is a slice of its group buffer, reshaped.

        Inside ``jit`` these are views XLA fuses into their consumers, so a model can read its
        parameters from a ``Packed`` without copies: ``loss(packed.unpack(), batch)``.
        """
        return self.layout.unpack(self.buffers)

    def __repr__(self) -> str:
        # The buffers' own dtypes and shapes (a state's moments, a vmapped batch), or the
        # buffer itself when a tree map made it something else (a dtype, a tuple).
        groups = ", ".join(
            _describe_buffer(b) + (" (solo leaf)" if solo else "")
            for b, solo in zip(self.buffers, self.layout.solo))
        return f"Packed({self.layout.num_leaves} leaves in {groups})"


class _NotPackedError(LayoutError, TypeError):
    """``jopt.unpack`` of something that is not packed."""


def tree_view(tree: Any) -> Any:
    """The per-leaf tree of a :class:`Packed` value (``tree`` itself otherwise)."""
    return tree.unpack() if isinstance(tree, Packed) else tree


def _describe_buffer(b: Any) -> str:
    shape, dtype = getattr(b, "shape", None), getattr(b, "dtype", None)
    try:
        return f"{np.dtype(dtype).name}{[int(d) for d in shape]}"
    except Exception:  # noqa: BLE001 - not an array-like buffer
        return repr(b)


def _flatten_packed(p: Packed):
    keys = tuple(jax.tree_util.GetAttrKey(f"buffers[{g}]") for g in range(len(p.buffers)))
    return tuple(zip(keys, p.buffers)), p.layout


jax.tree_util.register_pytree_with_keys(
    Packed, _flatten_packed, lambda layout, buffers: Packed(tuple(buffers), layout),
    flatten_func=lambda p: (p.buffers, p.layout),
)
serializable(Packed)


@checked_call
def pack(tree: Any) -> Packed:
    """Packs a tree of arrays into flat buffers, one per dtype (the packed mode).

    For a model with many small tensors: the optimizer then runs a few kernels on a few
    buffers instead of several per leaf, and a jitted step has a few arguments and results
    instead of thousands. Train on the packed value and read the tree view inside the loss::

        packed = jopt.pack(params)
        state = tx.init(packed)
        def step(packed, state, batch):
            grads = jax.grad(lambda pk: loss(pk.unpack(), batch))(packed)
            updates, state = tx.update(grads, state, packed)
            return jopt.apply_updates(packed, updates), state

    Every jopt transformation gives the same per-leaf results on packed parameters as on the
    tree, to float32 rounding (XLA may contract a multiply-add or divide by a scalar through
    its reciprocal differently for differently shaped buffers: about one ulp), and
    per-leaf options (a weight-decay ``mask``) refer to the original tree.

    Args:
      tree: a pytree of arrays (any shapes; leaves of one dtype share a buffer, in tree
        order). A leaf sharded over several devices stays a buffer of its own. A
        :class:`Packed` value is returned unchanged (packing never nests).

    Returns:
      A :class:`Packed` value; ``jopt.unpack(packed)`` (or ``packed.unpack()``) gives the
      tree back, bitwise.

    Raises:
      TreeMismatchError: never for a tree of arrays; raised by :meth:`Layout.pack` when a
        tree is packed into a layout it does not match.
    """
    if isinstance(tree, Packed):
        return tree
    return Layout.of(tree).pack(tree)


def unpack(packed: Packed) -> Any:
    """The tree a :class:`Packed` value holds (see :meth:`Packed.unpack`).

    Raises:
      LayoutError: if ``packed`` is not a :class:`Packed` (also a ``TypeError``, as before).
    """
    if not isinstance(packed, Packed):
        raise _NotPackedError(
            f"jopt.unpack expects a jopt.Packed value, got {type(packed).__name__}")
    return packed.unpack()


def check_packed_match(transformation: str, expected: Any, got: Any, *, expected_name: str,
                        got_name: str) -> None:
    """Raises a readable :class:`PackedMismatchError` for two trees of different structures
    when one of them is a :class:`Packed` (called by ``_checks.check_match``; returns when it has
    nothing more specific to say than the generic structure message)."""
    exp_packed, got_packed = isinstance(expected, Packed), isinstance(got, Packed)
    state = expected_name == "the parameters init saw"
    if got_packed and not exp_packed:
        what = (f"the {got_name} are a jopt.Packed but the state was built for a per-leaf tree "
                f"(init with jopt.pack(params), or pass per-leaf {got_name})" if state else
                f"the {got_name} are a jopt.Packed but {expected_name} are a per-leaf tree "
                "(pack both with jopt.pack, or neither)")
        raise PackedMismatchError(transformation, what, "", "a per-leaf tree", repr(got))
    if exp_packed and not got_packed:
        what = (f"the {got_name} are a per-leaf tree but the state was built for a jopt.Packed "
                f"(pass {got_name} packed with the same layout, such as gradients with respect "
                "to the packed parameters, or init with per-leaf params)" if state else
                f"the {got_name} are a per-leaf tree but {expected_name} are a jopt.Packed "
                "(pack both with jopt.pack, or neither)")
        raise PackedMismatchError(transformation, what, "", repr(expected), "a per-leaf tree")
    if not (exp_packed and got_packed):
        return
    a, b = expected.layout, got.layout
    what = f"the {got_name} are packed with another layout than {expected_name}"

    def leaf(layout: Layout, i: int) -> str:
        return f"{layout.dtypes[i].name}{list(layout.shapes[i])}"

    if a.treedef != b.treedef:
        a_paths = {_leaf_path(a, i): i for i in range(a.num_leaves)}
        b_paths = {_leaf_path(b, i): i for i in range(b.num_leaves)}
        missing = [p for p in a_paths if p not in b_paths]
        extra = [p for p in b_paths if p not in a_paths]
        if missing:
            raise PackedMismatchError(
                transformation, what, missing[0], f"a leaf ({leaf(a, a_paths[missing[0]])})",
                "no leaf there" + (f" (extra leaf at {extra[0]})" if extra else ""))
        if extra:
            raise PackedMismatchError(transformation, what, extra[0], "no leaf there",
                                    f"a leaf ({leaf(b, b_paths[extra[0]])})")
        return
    for i in range(a.num_leaves):
        if (a.shapes[i], a.dtypes[i]) != (b.shapes[i], b.dtypes[i]):
            raise PackedMismatchError(transformation, what, _leaf_path(a, i), leaf(a, i),
                                    leaf(b, i))
    for i in range(a.num_leaves):
        a_solo, b_solo = a.solo[a.group_of[i]], b.solo[b.group_of[i]]
        if a_solo != b_solo:
            def where(solo: bool) -> str:
                return "in a buffer of its own" if solo else "in a shared buffer"

            raise PackedMismatchError(transformation, what, _leaf_path(a, i),
                                    f"{leaf(a, i)} {where(a_solo)}",
                                    f"{leaf(b, i)} {where(b_solo)}")
