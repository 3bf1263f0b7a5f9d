"""Reading and changing hyperparameters through the optimizer state.

Every jopt transformation with a numeric hyperparameter keeps it in its state, in a field
named ``hyperparams`` (a dict from name to a float32 array or a schedule pytree). Transformations
with a schedule also keep a ``count``. These helpers find those fields anywhere in a state tree
(inside chains, named chains, tuples, dicts, and optax's ``inject_hyperparams`` states).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jopt._schedules import CallableSchedule, OneMinus, Schedule, evaluate
from jopt._validate import check_real
from jopt.errors import InvalidHyperparameterError

# Allowed ranges for well-known names, checked when a concrete value is set.
_RANGES: dict[str, dict[str, Any]] = {
    "learning_rate": {"lo": 0},
    "b1": {"lo": 0, "hi": 1, "hi_open": True},
    "b2": {"lo": 0, "hi": 1, "hi_open": True},
    "eps": {"lo": 0},
    "eps_root": {"lo": 0},
    "weight_decay": {"lo": 0},
    "max_norm": {"lo": 0},
    "max_delta": {"lo": 0},
    "decay": {"lo": 0, "hi": 1},
    "min_delta": {"lo": 0},
    "patience": {"lo": 0, "integer": True},
    "cooldown": {"lo": 0, "integer": True},
    "start_step": {"lo": 0, "integer": True},
    "accumulation_size": {"lo": 1, "integer": True},
    "factor": {"lo": 0, "hi": 1, "lo_open": True, "hi_open": True},
    "min_scale": {"lo": 0, "hi": 1},
}

# Options for which +-inf means "none" (baseline and thresholds of the plateau core).
_UNBOUNDED = {"baseline", "stopping_threshold", "divergence_threshold"}


def _is_infinite(value: Any) -> bool:
    if isinstance(value, jax.core.Tracer) or isinstance(value, (bool, np.bool_)):
        return False
    try:
        return bool(np.ndim(value) == 0 and np.isinf(float(np.asarray(value))))
    except (TypeError, ValueError):
        return False


# Hyperparameters whose transformations evaluate a schedule at the step counter.
_SCHEDULABLE = {"learning_rate", "weight_decay"}


def _is_holder(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields") and "hyperparams" in x._fields


def _key_name(k: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _holders(state: Any) -> list[tuple[tuple[str, ...], Any]]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_holder)
    return [(tuple(_key_name(k) for k in path), leaf) for path, leaf in leaves if _is_holder(leaf)]


def _entries(state: Any) -> list[tuple[str, tuple[str, ...], str, Any]]:
    """(public key, holder path, name, holder) for every hyperparameter in the state."""
    raw = []
    for path, holder in _holders(state):
        hp = holder.hyperparams
        if not isinstance(hp, Mapping):
            continue
        for name in hp:
            raw.append((path, name, holder))
    counts: dict[str, int] = {}
    for _, name, _ in raw:
        counts[name] = counts.get(name, 0) + 1
    out = []
    for path, name, holder in raw:
        key = name if counts[name] == 1 else "/".join(path + (name,))
        out.append((key, path, name, holder))
    return out


def get_hyperparams(state: Any) -> dict[str, jax.Array]:
    """The current hyperparameter values held in an optimizer state, by name.

    Scheduled values are evaluated at the state's step counter, so
    ``get_hyperparams(state)["learning_rate"]`` is the learning rate the *next* ``update``
    will use. A name that occurs in one link only is returned as is (``"learning_rate"``); a
    name that occurs in several links is qualified by the link's position in the state tree
    (``"0/max_norm"``, or ``"clip/max_norm"`` in a :func:`named_chain`).

    Works under ``jit`` and ``vmap`` (values of a population come back batched).

    Examples:
      >>> import jax.numpy as jnp, jopt
      >>> tx = jopt.adamw(jopt.linear(0.0, 1e-3, transition_steps=10), weight_decay=0.1)
      >>> state = tx.init({"w": jnp.zeros(3)})
      >>> {k: round(float(v), 6) for k, v in jopt.get_hyperparams(state).items()}
      {'b1': 0.9, 'b2': 0.999, 'eps': 0.0, 'eps_root': 0.0, 'weight_decay': 0.1,
       'learning_rate': 0.0}
      >>> _, state = tx.update({"w": jnp.ones(3)}, state, {"w": jnp.zeros(3)})
      >>> round(float(jopt.get_hyperparams(state)["learning_rate"]), 6)
      0.0001

    Args:
      state: an optimizer state (any jopt state, possibly nested in chains, tuples or dicts).

    Returns:
      A dict from name to a scalar array (float32 unless given wider); empty if the state
      holds no hyperparameters.
    """
    result = {}
    for key, _, name, holder in _entries(state):
        value = holder.hyperparams[name]
        if isinstance(value, Schedule):
            count = getattr(holder, "count", None)
            if count is None:
                count = jnp.zeros([], jnp.int32)
            # A state batched by vmap (a population) has a batched counter: evaluate each
            # member's schedule at its own count (schedules are written for one member).
            fn = evaluate
            for _ in range(jnp.ndim(count)):
                fn = jax.vmap(fn)
            value = fn(value, count)
        result[key] = jnp.asarray(value)
    return result


def set_hyperparams(state: Any, values: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
    """Returns a copy of ``state`` with some hyperparameters replaced.

    Keys are those of :func:`get_hyperparams`. A number replaces a number in place (same dtype
    and shape rules, so a jitted step does not recompile); a number given for a scheduled
    value replaces the schedule by a constant (this changes the state's tree structure and so
    retraces a jitted step once); a schedule replaces either.

    Setting inside ``jax.vmap`` with a batched value builds a population of optimizers::

        states = jax.vmap(lambda lr: jopt.set_hyperparams(state, learning_rate=lr))(lrs)

    Args:
      state: an optimizer state.
      values: optional mapping from key to new value (for keys such as ``"0/max_norm"``).
      **kwargs: more ``key=value`` pairs.

    Returns:
      The new state (the input is not modified).

    Raises:
      InvalidHyperparameterError: for an unknown key (the message lists the known ones) or a
        concrete value outside the allowed range of a well-known name (``learning_rate >= 0``,
        ``b1`` and ``b2`` in [0, 1), ...).
    """
    updates = dict(values or {})
    updates.update(kwargs)
    entries = _entries(state)
    by_key = {key: (path, name) for key, path, name, _ in entries}
    for key in updates:
        if key not in by_key:
            raise InvalidHyperparameterError(
                "set_hyperparams", "key", key, f"one of {sorted(by_key) or '(none in this state)'}"
            )
    per_holder: dict[tuple[str, ...], dict[str, Any]] = {}
    holders = {path: holder for _, path, _, holder in entries}
    for key, new in updates.items():
        path, name = by_key[key]
        old = holders[path].hyperparams[name]
        if isinstance(new, Schedule) or callable(new):
            schedulable = name in _SCHEDULABLE or (
                isinstance(old, Schedule) and not isinstance(old, OneMinus))
            if not schedulable or not hasattr(holders[path], "count"):
                raise InvalidHyperparameterError(
                    "set_hyperparams", key, new,
                    "a number (this hyperparameter cannot follow a schedule)",
                )
        elif name in _UNBOUNDED and _is_infinite(new):
            pass  # +-inf switches a baseline or threshold off
        else:
            check_real("set_hyperparams", key, new, **_RANGES.get(name, {}))
            old_shape = np.shape(old.complement if isinstance(old, OneMinus) else old)
            if (not isinstance(new, jax.core.Tracer) and np.ndim(new) != 0
                    and np.shape(new) != old_shape):
                raise InvalidHyperparameterError(
                    "set_hyperparams", key, new,
                    f"a scalar or an array of the stored shape {old_shape} (for a population, "
                    f"call set_hyperparams inside jax.vmap)",
                )
        per_holder.setdefault(path, {})[name] = new

    def replace(path, node):
        if not _is_holder(node):
            return node
        p = tuple(_key_name(k) for k in path)
        if p not in per_holder:
            return node
        hp = dict(node.hyperparams)
        for name, new in per_holder[p].items():
            old = hp[name]
            if isinstance(old, OneMinus) and not isinstance(new, Schedule) and not callable(new):
                one_minus = OneMinus.of(new)
                hp[name] = jax.tree_util.tree_map(
                    lambda c, ref: jnp.broadcast_to(c, jnp.shape(ref)), one_minus, old)
            elif isinstance(new, Schedule):
                hp[name] = new
            elif callable(new):
                hp[name] = CallableSchedule(new)
            elif isinstance(old, Schedule):
                hp[name] = jnp.asarray(new, dtype=jnp.float32)
            else:
                # Same dtype and shape as the stored value (a scalar set on a batched
                # population state applies to every member).
                dtype = getattr(old, "dtype", np.float32)
                hp[name] = jnp.broadcast_to(jnp.asarray(new).astype(dtype), jnp.shape(old))
        for name in per_holder[p]:
            hp[name] = _place_as(hp[name], node.hyperparams[name])
        return node._replace(hyperparams=hp)

    return jax.tree_util.tree_map_with_path(replace, state, is_leaf=_is_holder)


def _place_as(new: Any, old: Any) -> Any:
    """Puts the leaves of a new value where the old value's leaves were (replicated on the same
    mesh), so that a jitted step sees the same input shardings and does not recompile."""
    from jax.sharding import NamedSharding, PartitionSpec

    ref = next((x for x in jax.tree_util.tree_leaves(old)
                if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)), None)
    if ref is None or not isinstance(ref.sharding, NamedSharding):
        return new
    target = NamedSharding(ref.sharding.mesh, PartitionSpec())

    def put(x):
        if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
            return jax.device_put(x, target)
        return x

    return jax.tree_util.tree_map(put, new)
