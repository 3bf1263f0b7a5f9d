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

:class:`GradientTransformation` is a ``NamedTuple`` whose two fields are ``init`` and
``update``, so code written for optax (``tx.init``, ``tx.update``, ``init, update = tx``,
flax's ``nnx.Optimizer`` and ``TrainState``) takes a jopt transformation as is. On top of the
tuple it records the factory's name and arguments, which give it a readable ``repr`` and make
two transformations built with the same arguments compare and hash equal.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Params = PyTree
Updates = PyTree
OptState = PyTree

INT32_MAX = np.iinfo(np.int32).max


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


def _config_key(value: Any) -> Any:
    """A hashable, comparable stand-in for a configuration value."""
    if isinstance(value, jax.core.Tracer):
        return ("id", id(value))
    if isinstance(value, GradientTransformation):
        return ("tx", value._key())
    if isinstance(value, (bool, np.bool_)):
        return ("bool", bool(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        return ("num", float(value))
    if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0 and (
        jnp.issubdtype(value.dtype, jnp.integer) or jnp.issubdtype(value.dtype, jnp.floating)
    ):
        return ("num", float(np.asarray(value)))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_config_key(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _config_key(v)) for k, v in value.items())))
    if isinstance(value, (np.ndarray, jax.Array)):
        arr = np.asarray(value)
        return ("array", arr.shape, str(arr.dtype), arr.tobytes())
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return ("dtype", str(np.dtype(value)))
    leaves, treedef = jax.tree_util.tree_flatten(value)
    if treedef.num_nodes > 1 or (leaves and leaves[0] is not value):
        # A pytree (a schedule, a mask tree): compare its structure and its numbers.
        return ("tree", str(treedef), tuple(_config_key(leaf) for leaf in leaves))
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return value


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, jax.core.Tracer):
        return "<traced>"
    if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0:
        return repr(np.asarray(value).item())
    if isinstance(value, (np.dtype, type)) and value is not None:
        try:
            return f"'{np.dtype(value).name}'"
        except TypeError:
            pass
    if callable(value) and not isinstance(value, GradientTransformation) and hasattr(
        value, "__name__"
    ):
        return value.__name__
    return repr(value)


def _placing_init(init: TransformInitFn) -> TransformInitFn:
    """``init`` followed by :func:`jopt._tree.place_like` (state scalars on the params' mesh)."""
    if getattr(init, "_jopt_places", False):
        return init

    def placed_init(params):
        from jopt._tree import place_like

        return place_like(params, init(params))

    placed_init._jopt_places = True
    placed_init.__wrapped__ = init
    return placed_init


class GradientTransformation(_TransformationFields):
    """A pure ``(init, update)`` pair; the type of every jopt transformation.

    A ``NamedTuple`` with exactly the fields ``init`` and ``update``: anything that accepts an
    optax ``GradientTransformation`` accepts this. Beyond the tuple it keeps the name and
    arguments of the factory that built it:

    * ``repr(tx)`` reads like the call that built it, e.g.
      ``adamw(learning_rate=0.001, b1=0.9, ...)``;
    * two transformations built with equal arguments compare and hash equal (so jit caches
      and flax modules keyed on the transformation are shared); a transformation built
      directly from two functions compares by identity of those functions.

    Args:
      init: ``init(params) -> state``.
      update: ``update(updates, state, params=None, **extra_args) -> (updates, state)``.
      name: the factory's name, shown by ``repr``. Optional.
      config: the factory's arguments as a mapping, shown by ``repr`` and used for equality.
        Optional.
    """

    def __new__(
        cls,
        init: TransformInitFn,
        update: TransformUpdateFn,
        *,
        name: str | None = None,
        config: dict[str, Any] | None = None,
    ):
        if name is not None:
            init = _placing_init(init)
        self = super().__new__(cls, init, update)
        self._name = name
        self._config = dict(config) if config is not None else None
        return self

    # NamedTuple's helpers rebuild through tuple.__new__; keep them working.
    def __getnewargs__(self):
        return (self.init, self.update)

    def _key(self) -> Any:
        if self._name is None or self._config is None:
            return ("fns", id(self.init), id(self.update))
        return (self._name, _config_key(self._config))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GradientTransformation):
            return NotImplemented
        if getattr(self, "_config", None) is None or getattr(other, "_config", None) is None:
            return self.init is other.init and self.update is other.update
        return self._key() == other._key()

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        if getattr(self, "_config", None) is None:
            return hash((id(self.init), id(self.update)))
        return hash(self._key())

    def __repr__(self) -> str:
        name = getattr(self, "_name", None)
        config = getattr(self, "_config", None)
        if name is None:
            return f"GradientTransformation(init={self.init!r}, update={self.update!r})"
        if config is None:
            return f"{name}()"
        if name in ("chain",) and "transformations" in config:
            inner = ", ".join(repr(t) for t in config["transformations"])
            return f"{name}({inner})"
        if name == "named_chain" and "transformations" in config:
            inner = ", ".join(f"({n!r}, {t!r})" for n, t in config["transformations"])
            return f"{name}({inner})"
        args = ", ".join(f"{k}={_format_value(v)}" for k, v in config.items())
        return f"{name}({args})"

    @property
    def name(self) -> str | None:
        """The factory's name (``"adamw"``, ``"chain"``, ...), or ``None``."""
        return getattr(self, "_name", None)

    @property
    def config(self) -> dict[str, Any]:
        """A copy of the arguments the transformation was built with."""
        return dict(getattr(self, "_config", None) or {})


def safe_increment(count: jax.Array) -> jax.Array:
    """Adds one to an int32 counter, saturating at ``2**31 - 1`` instead of wrapping.

    Args:
      count: an int32 array (any shape).

    Returns:
      ``count + 1`` where ``count < 2**31 - 1``, else ``count``; int32, same shape.
    """
    return count + (count < INT32_MAX).astype(count.dtype)


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


def zero_count() -> jax.Array:
    """A fresh int32 step counter (scalar zero)."""
    return jnp.zeros([], jnp.int32)


def is_gradient_transformation(obj: Any) -> bool:
    """True for anything with callable ``init`` and ``update`` attributes (optax's too)."""
    return callable(getattr(obj, "init", None)) and callable(getattr(obj, "update", None))


class EmptyState(NamedTuple):
    """The state of a transformation that keeps nothing (no leaves)."""


def identity() -> GradientTransformation:
    """The transformation that returns updates unchanged and keeps an empty state.

    Returns:
      A :class:`GradientTransformation` whose state is ``EmptyState()``.
    """

    def init_fn(params):
        del params
        return EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return updates, state

    return GradientTransformation(init_fn, update_fn, name="identity", config={})

