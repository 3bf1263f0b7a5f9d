"""The contract every jopt transformation obeys.

A *gradient transformation* is a pair of pure functions:

``init(params) -> state``
    Builds the optimizer state from the parameters (only their structure, shapes, dtypes
    and shardings are read, so ``jax.ShapeDtypeStruct`` leaves work too).
``update(updates, state, params=None, **extra_args) -> (updates, state)``
    Maps incoming updates (usually gradients) and the state to outgoing updates and the
    next state. Extra keyword arguments (``value=loss``, ...) are accepted and forwarded by
    every jopt transformation, so a chain can hold links that need the loss.

Rules (tests check each of them for every public transformation):

* Purity: no side effects, no Python control flow on traced values, no host round trips.
* Tree invariants: the state's tree structure, leaf shapes, dtypes and shardings are the same
  before and after ``update``; outgoing updates have the tree, shapes and dtypes of the
  incoming updates.
* Hyperparameters are data: every numeric hyperparameter lives in the state as an array
  (or a schedule pytree whose numbers are arrays); only structure is static.
* Counters are int32 and saturate at ``2**31 - 1`` instead of wrapping.
* Every transformation has a *kind* (``"elementwise"``, ``"per_leaf"``, ``"whole_tree"``, or
  ``"combinator"`` for chains and wrappers), which says how it runs on packed buffers
  (``jopt.pack``): see ``docs/design.md``, section 3.

:class:`GradientTransformation` is a ``NamedTuple`` whose two fields are ``init`` and
``update``, so code written for optax (``tx.init``, ``tx.update``, ``init, update = tx``,
flax's ``nnx.Optimizer`` and ``TrainState``) takes a jopt transformation as is. When optax is
installed it is moreover an ``optax.GradientTransformationExtraArgs``, so optax's own
combinators (``optax.chain``, ``optax.MultiSteps``) pass extra arguments such as ``value=``
to it. On top of the tuple it records the factory's name and arguments, which give it a
readable ``repr`` and make two transformations built with the same arguments compare and hash
equal. The full design contract is ``docs/design.md``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jopt import _rounding, _tree
from jopt._checks import check_match
from jopt._config import format_value
from jopt._tree import INT32_MAX, safe_increment, zero_count  # noqa: F401 (re-exported)

PyTree = Any
Params = PyTree
Updates = PyTree
OptState = PyTree

KINDS = ("elementwise", "per_leaf", "whole_tree", "combinator")


class TransformInitFn(Protocol):
    """``init(params) -> state``."""

    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    """``update(updates, state, params=None, **extra_args) -> (updates, state)``."""

    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, OptState]: ...


class _TransformationFields(NamedTuple):
    init: TransformInitFn
    update: TransformUpdateFn


def _optax_base() -> type:
    """optax's ``GradientTransformationExtraArgs`` when optax can be imported (an optional
    dependency), else a plain ``NamedTuple`` with the same two fields."""
    try:
        import optax
    except Exception:  # noqa: BLE001 - optax missing or broken: jopt works without it
        return _TransformationFields
    base = getattr(optax, "GradientTransformationExtraArgs", None)
    if isinstance(base, type) and getattr(base, "_fields", None) == ("init", "update"):
        return base
    return _TransformationFields  # pragma: no cover - an optax without the class


def _placing_init(init: TransformInitFn) -> TransformInitFn:
    """``init`` followed by :func:`jopt._tree.place_like` (state scalars on the params' mesh)."""
    if getattr(init, "_jopt_places", False):
        return init

    def placed_init(params):
        return _tree.place_like(params, init(params))

    placed_init._jopt_places = True
    placed_init.__wrapped__ = init
    return placed_init


class GradientTransformation(_optax_base()):
    """A pure ``(init, update)`` pair; the type of every jopt transformation.

    A ``NamedTuple`` with exactly the fields ``init`` and ``update`` (and, when optax is
    installed, an ``optax.GradientTransformationExtraArgs``): anything that accepts an optax
    transformation accepts this. Beyond the tuple it keeps the name and arguments of the
    factory that built it:

    * ``repr(tx)`` reads like the call that built it, e.g.
      ``adamw(learning_rate=0.001, b1=0.9, ...)``;
    * two transformations built by the same jopt factory with equal arguments compare and
      hash equal, arguments being compared by the values the state stores (``1e-3`` and
      ``np.float32(1e-3)`` agree), so jit caches and flax modules keyed on the transformation
      are shared;
    * a transformation built directly from two functions compares by identity of those
      functions, whatever ``name`` and ``config`` say: only jopt's factories configure, so a
      hand-built or ``_replace`` d transformation never equals a configured one.

    Args:
      init: ``init(params) -> state``.
      update: ``update(updates, state, params=None, **extra_args) -> (updates, state)``.
      name: a name shown by ``repr``. Optional.
      config: arguments shown by ``repr`` (a mapping). Optional; not used for equality.
    """

    def __new__(
        cls,
        init: TransformInitFn,
        update: TransformUpdateFn,
        *,
        name: str | None = None,
        config: dict[str, Any] | None = None,
    ):
        self = super().__new__(cls, init, update)
        self._name = name
        self._config = dict(config) if config is not None else None
        self._factory_key = None
        self._kind = None
        self._links = ()
        return self

    @classmethod
    def _configured(cls, init, update, *, name: str, config: dict[str, Any], key: Any,
                    kind: str | None, links: tuple = ()) -> GradientTransformation:
        """A transformation built by a jopt factory: ``key`` identifies the factory and the
        values its state stores (equality and hashing), ``kind`` how it runs on packed
        buffers, ``links`` the transformations it is made of (a chain's links)."""
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        self = cls(_placing_init(init), update, name=name, config=config)
        self._factory_key = key
        self._kind = kind
        self._links = tuple(links)
        return self

    # NamedTuple's helpers rebuild through tuple.__new__; keep them working.
    def __getnewargs__(self):
        return (self.init, self.update)

    def _replace(self, **changes: Any) -> GradientTransformation:
        """A copy with ``init`` and/or ``update`` replaced. The name, configuration and kind
        are kept for ``repr`` and introspection, but a copy whose functions changed no longer
        compares equal to the original (it is not what the factory built)."""
        unknown = set(changes) - {"init", "update"}
        if unknown:
            raise ValueError(f"Got unexpected field names: {sorted(unknown)!r}")
        init = changes.get("init", self.init)
        update = changes.get("update", self.update)
        new = type(self)(init, update, name=self.name, config=self._config)
        new._kind = self._kind
        new._links = self._links
        if init is self.init and update is self.update:
            new._factory_key = self._factory_key
        else:
            new._replaced = sorted(k for k in changes if changes[k] is not getattr(self, k))
        return new

    def _jopt_key(self) -> Any:
        key = getattr(self, "_factory_key", None)
        if key is None:
            return ("fns", id(self.init), id(self.update))
        return key

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GradientTransformation):
            return NotImplemented
        mine, theirs = getattr(self, "_factory_key", None), getattr(other, "_factory_key", None)
        if mine is None and theirs is None:
            return self.init is other.init and self.update is other.update
        # A configured transformation equals only one configured alike (and hashes alike).
        return mine is not None and theirs is not None and mine == theirs

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        if getattr(self, "_factory_key", None) is None:
            return hash((id(self.init), id(self.update)))
        return hash(self._factory_key)

    def __repr__(self) -> str:
        name = getattr(self, "_name", None)
        config = getattr(self, "_config", None)
        if name is None:
            return f"GradientTransformation(init={self.init!r}, update={self.update!r})"
        if config is None:
            text = f"{name}()"
        elif name in ("chain",) and "transformations" in config:
            text = f"{name}({', '.join(repr(t) for t in config['transformations'])})"
        elif name == "named_chain" and "transformations" in config:
            inner = ", ".join(f"({n!r}, {t!r})" for n, t in config["transformations"])
            text = f"{name}({inner})"
        else:
            text = f"{name}({', '.join(f'{k}={format_value(v)}' for k, v in config.items())})"
        replaced = getattr(self, "_replaced", None)
        if replaced:
            text += "._replace(" + ", ".join(f"{k}=..." for k in replaced) + ")"
        return text

    @property
    def name(self) -> str | None:
        """The factory's name (``"adamw"``, ``"chain"``, ...), or ``None``."""
        return getattr(self, "_name", None)

    @property
    def config(self) -> dict[str, Any]:
        """A copy of the arguments the transformation was built with."""
        return dict(getattr(self, "_config", None) or {})

    @property
    def kind(self) -> str | None:
        """How the transformation runs on packed buffers: ``"elementwise"`` (on the buffers as
        they are), ``"per_leaf"`` (on each original leaf), ``"whole_tree"`` (on the whole
        tree, with reductions that do not depend on the layout), ``"combinator"`` (a chain or
        wrapper: each link by its own kind), or ``None`` for a transformation jopt did not
        build (see :func:`jopt.declare_kind`)."""
        return getattr(self, "_kind", None)


def is_gradient_transformation(obj: Any) -> bool:
    """True for anything with callable ``init`` and ``update`` attributes (optax's too)."""
    return callable(getattr(obj, "init", None)) and callable(getattr(obj, "update", None))


def fresh(tree: Any) -> Any:
    """Copies of the concrete arrays in ``tree`` (hyperparameters made when a transformation
    is built), so that every ``init`` returns buffers of its own: a state may then be donated
    to a jitted step without deleting the transformation's constants or aliasing a buffer
    twice. Traced leaves and non-arrays are returned as they are."""
    return jax.tree_util.tree_map(
        lambda x: jnp.array(x, copy=True)
        if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) else x,
        tree,
    )


class EmptyState(NamedTuple):
    """The state of a transformation that keeps nothing (no leaves)."""


# ----------------------------------------------------------------------------- apply_updates


def apply_updates(params: PyTree, updates: PyTree, *, key: jax.Array | None = None) -> PyTree:
    r"""Adds updates to parameters; each result leaf keeps its parameter's dtype.

    The sum is computed in the wider of the two dtypes (float32 updates added to bfloat16
    parameters, or bfloat16 updates added to float16 parameters, are added in float32), then
    cast back to the parameter's dtype, so the parameter loses no more than the final
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
        ct = _sum_dtype(p_dtype, np.dtype(u.dtype))
        if jnp.issubdtype(p_dtype, jnp.complexfloating) or not jnp.issubdtype(
            ct, jnp.complexfloating
        ):
            return (p.astype(ct) + u.astype(ct)).astype(p_dtype)
        return (p.astype(ct) + u.astype(ct)).real.astype(p_dtype)

    if key is None:
        return jax.tree_util.tree_map(add, params, updates)

    key = _rounding.check_key("apply_updates", key)

    def add_rounded(index, p, u):
        p, u = jnp.asarray(p), jnp.asarray(u)
        p_dtype = np.dtype(p.dtype)
        if not (jnp.issubdtype(p_dtype, jnp.floating) and p_dtype.itemsize < 4):
            return add(p, u)
        ct = _tree.wider(_sum_dtype(p_dtype, np.dtype(u.dtype)), np.dtype(np.float32))
        total = p.astype(ct) + u.astype(ct)
        if jnp.issubdtype(ct, jnp.complexfloating):
            total = total.real
        return _rounding.stochastic_round(total, p_dtype, jax.random.fold_in(key, index))

    p_leaves, treedef = jax.tree_util.tree_flatten(params)
    u_leaves = treedef.flatten_up_to(updates)
    return treedef.unflatten(
        [add_rounded(i, p, u) for i, (p, u) in enumerate(zip(p_leaves, u_leaves))]
    )


def _sum_dtype(p: np.dtype, u: np.dtype) -> np.dtype:
    """The dtype ``params + updates`` is computed in: the wider of the two, or, for two
    different floating types of the same width neither of which holds the other (float16 and
    bfloat16), the type JAX promotes them to (float32), so neither is rounded first."""
    if (p != u and p.itemsize == u.itemsize and jnp.issubdtype(p, jnp.floating)
            and jnp.issubdtype(u, jnp.floating)):
        return np.dtype(np.float32 if p.itemsize < 4 else np.float64)
    return _tree.wider(p, u)
