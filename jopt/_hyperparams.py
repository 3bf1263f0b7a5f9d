"""Reading and changing hyperparameters through the optimizer state.

Every jopt transformation with a numeric hyperparameter keeps it in its state, in a field
named ``hyperparams`` (a dict from name to a float32 array or a schedule pytree), next to a
``count``; its state type carries the hyperparameters' declarations. These helpers find those
fields anywhere in a state tree: inside chains, named chains, tuples, dicts, ``jopt.flatten``,
optax wrappers (``MultiSteps``, ``masked``, ...), flax ``nnx.Optimizer`` states (whose leaves
are ``nnx.Variable`` s) and both libraries' ``inject_hyperparams`` states.

Keys. Every hyperparameter has a canonical key, the path of its link in the state tree and
its name (``"1/2/learning_rate"``, ``"clip/max_norm"`` in a named chain; a ``/`` or ``~``
inside a dict key is written ``~1`` or ``~0``, as in a JSON pointer). ``get_hyperparams``
lists each under its short name when that is unique in the state, else under its canonical
key, and accepts either when indexed; so does ``set_hyperparams``. A short name that matches
several entries raises :class:`jopt.errors.AmbiguousKeyError` listing them: appending a link
never silently changes which value a key reads or sets. (Positions count from the start of
a chain, so a link inserted before others shifts their canonical keys: name the links with
:func:`jopt.named_chain` for keys that survive any edit of the chain.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jopt import _tree
from jopt._base import fresh
from jopt._hyper import Hyper, value_now
from jopt._serialization import serializable
from jopt.errors import (
    AmbiguousKeyError,
    InvalidHyperparameterError,
    TreeMismatchError,
    UnknownKeyError,
)
from jopt.schedules._core import OneMinus, Schedule

_PLAIN = Hyper()


def _segment(k: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            text = str(getattr(k, attr))
            break
    else:
        text = str(k)
    # As in a JSON pointer: a "/" inside one segment must not read as two.
    return text.replace("~", "~0").replace("/", "~1")


def _is_jopt_holder(x: Any) -> bool:
    return hasattr(type(x), "_jopt_hyperparams") and hasattr(x, "hyperparams")


def _is_inject(x: Any) -> bool:
    return bool(getattr(type(x), "_jopt_inject", False))


def _is_foreign_holder(x: Any) -> bool:
    """optax's ``inject_hyperparams`` states (NamedTuples with a ``hyperparams`` dict and an
    ``inner_state``): a state of another type that happens to have such a field is just a
    container, searched like any other."""
    return (isinstance(x, tuple) and type(x).__name__ in _OPTAX_INJECT
            and type(x).__module__.split(".")[0] == "optax"
            and isinstance(getattr(x, "hyperparams", None), Mapping))


_OPTAX_INJECT = ("InjectHyperparamsState", "InjectStatefulHyperparamsState")


def _is_holder(x: Any) -> bool:
    return _is_jopt_holder(x) or _is_inject(x) or _is_foreign_holder(x)


def _looks_restored(x: Any) -> bool:
    """A jopt state that lost its types (restored from a checkpoint without a target):
    plain dicts where the state had named tuples."""
    return (isinstance(x, dict) and isinstance(x.get("hyperparams"), Mapping)
            and any(k in x for k in ("count", "step", "inner_state")))


class _Entry:
    """One hyperparameter found in a state."""

    def __init__(self, path: tuple[str, ...], name: str, holder: Any, kind: str,
                 target: tuple[str, ...] | None = None):
        self.path = path
        self.name = name
        self.holder = holder
        self.kind = kind  # "jopt", "inject" (jopt's inject wrapper), "optax"
        self.target = target  # for "inject": the canonical key of the inner entry

    @property
    def canonical(self) -> str:
        return "/".join(self.path + (self.name,))


def _find(state: Any, function: str) -> list[_Entry]:
    """Every hyperparameter of ``state`` (variables already unwrapped), shadowed inner
    entries of inject wrappers left out."""
    entries: list[_Entry] = []
    _collect(state, (), entries, function, shadowed=lambda canonical: False)
    return entries


def _collect(tree: Any, prefix: tuple[str, ...], out: list[_Entry], function: str,
             shadowed) -> None:
    found, _ = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: _is_holder(x) or _looks_restored(x))
    for path, node in found:
        segs = prefix + tuple(_segment(k) for k in path)
        if _looks_restored(node):
            raise TreeMismatchError(
                function, "the state holds hyperparameters in plain containers (a checkpoint "
                "restored without its structure?)", jax.tree_util.keystr(path),
                "the state type tx.init builds: restore the checkpoint with the abstract state "
                "as its target, e.g. orbax's checkpointer.restore(path, "
                "jax.eval_shape(tx.init, params))",
                f"a {type(node).__name__} with keys {sorted(node)}")
        if _is_inject(node):
            inner = segs + ("inner_state",)
            targets = {"/".join(inner) + "/" + t for _, t in node.targets}
            for name in node.hyperparams:
                out.append(_Entry(segs, name, node, "inject", target=dict(node.targets)[name]))
            # The inner entries the wrapper's values set are reported (and set) through it.
            _collect(node.inner_state, inner, out, function,
                     lambda c, outer=shadowed, t=targets: c in t or outer(c))
        elif _is_jopt_holder(node):
            for name in node.hyperparams:
                entry = _Entry(segs, name, node, "jopt")
                if node.hyperparams[name] is None or shadowed(entry.canonical):
                    continue
                out.append(entry)
        elif _is_foreign_holder(node):
            scheduled = set(getattr(node, "hyperparams_states", None) or {})
            for name in node.hyperparams:
                entry = _Entry(segs, name, node, "optax")
                # optax keeps a scheduled value's schedule in a closure; the state holds the
                # value of the last update, not the next: not reported (see get_hyperparams).
                if name in scheduled or shadowed(entry.canonical):
                    continue
                out.append(entry)
            inner = getattr(node, "inner_state", None)
            if inner is not None:
                # A jopt transformation built by optax's inject_hyperparams uses the values
                # optax passes at every step: its state's copies never take effect.
                _collect(inner, segs + ("inner_state",), out, function, lambda c: True)


def _display_keys(entries: list[_Entry]) -> list[str]:
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.name] = counts.get(e.name, 0) + 1
    return [e.name if counts[e.name] == 1 else e.canonical for e in entries]


def _resolve(function: str, key: Any, entries: list[_Entry], display: list[str],
             state: Any = None, new: Any = None) -> int:
    """The index of the entry ``key`` names: a listed key, a canonical key, or a short name
    (a hyperparameter's own name) that only one entry has."""
    if not isinstance(key, str):
        raise InvalidHyperparameterError(function, "key", key, "a string")
    if key in display:
        return display.index(key)
    canon = [e.canonical for e in entries]
    if key in canon:
        return canon.index(key)
    matches = [i for i, e in enumerate(entries) if e.name == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise AmbiguousKeyError(function, key, [canon[i] for i in matches])
    if state is not None and key.rpartition("/")[2] in _optax_scheduled(state):
        raise InvalidHyperparameterError(
            function, key, new,
            "a value optax's inject_hyperparams does not schedule (it keeps this schedule in "
            "a closure and overwrites the state's copy at the next update; rebuild the "
            "transformation with the new schedule, or use jopt.inject_hyperparams, whose "
            "schedules live in the state)")
    raise UnknownKeyError(function, key, sorted(display))


def _optax_scheduled(state: Any) -> set[str]:
    names: set[str] = set()
    found = jax.tree_util.tree_leaves(state, is_leaf=_is_foreign_holder)
    for node in found:
        if _is_foreign_holder(node):
            names |= set(getattr(node, "hyperparams_states", None) or {})
    return names


class Hyperparams(dict):
    """The hyperparameters of a state, as returned by :func:`jopt.get_hyperparams`.

    A ``dict`` (and a pytree, so it can be returned from ``jit``) keyed by short names where
    they are unique and canonical keys (link paths) where not. Indexing also accepts the
    canonical key of any entry; an ambiguous short name raises
    :class:`jopt.errors.AmbiguousKeyError` listing the candidates.
    """

    def __init__(self, items=(), canonical: Mapping[str, str] | None = None):
        super().__init__(items)
        self._canonical = dict(canonical or {})

    def canonical(self) -> dict[str, Any]:
        """The same values keyed by their canonical keys (the full link paths)."""
        return {self._canonical.get(k, k): v for k, v in self.items()}

    def __getitem__(self, key):
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        inverse = {c: k for k, c in self._canonical.items()}
        if key in inverse:
            return dict.__getitem__(self, inverse[key])
        if isinstance(key, str) and "/" not in key:
            matches = [k for k, c in self._canonical.items()
                       if c.rpartition("/")[2] == key]
            if len(matches) > 1:
                raise AmbiguousKeyError("get_hyperparams", key,
                                        [self._canonical[k] for k in matches])
        raise UnknownKeyError("get_hyperparams", key, list(self))

    def __contains__(self, key) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default


def _flatten_hp(h: Hyperparams):
    keys = tuple(h.keys())
    return tuple((jax.tree_util.DictKey(k), h[k]) for k in keys), (keys, tuple(
        h._canonical.get(k, k) for k in keys))


def _unflatten_hp(aux, values):
    keys, canon = aux
    return Hyperparams(zip(keys, values), dict(zip(keys, canon)))


jax.tree_util.register_pytree_with_keys(
    Hyperparams, _flatten_hp, _unflatten_hp,
    flatten_func=lambda h: (tuple(h.values()), (tuple(h.keys()), tuple(
        h._canonical.get(k, k) for k in h.keys()))))
serializable(Hyperparams)


def _count(holder: Any) -> Any:
    field = getattr(type(holder), "_jopt_count", "count")
    return getattr(holder, field, None)


def _value(entry: _Entry) -> jax.Array:
    hp = entry.holder.hyperparams[entry.name]
    if entry.kind == "jopt":
        return value_now(hp, _count(entry.holder))
    return jnp.asarray(hp)


def get_hyperparams(state: Any) -> Hyperparams:
    """The current hyperparameter values held in an optimizer state.

    Scheduled values are evaluated at the state's step counter, so
    ``get_hyperparams(state)["learning_rate"]`` is the learning rate the *next* ``update``
    will use. A name that occurs in one link only is listed as is (``"learning_rate"``); a
    name that occurs in several links is listed under its canonical key, the link's path in
    the state tree (``"0/max_norm"``, or ``"clip/max_norm"`` in a :func:`named_chain`).
    Indexing accepts a listed key or a canonical key; an ambiguous short name raises
    :class:`jopt.errors.AmbiguousKeyError` naming the candidates. ``.canonical()`` gives every
    value under its canonical key, which appending links never changes (name the links with
    :func:`jopt.named_chain` for keys that survive links inserted before them).

    Works under ``jit`` and ``vmap`` (values of a population come back batched), through
    flax ``nnx.Optimizer`` states (``opt.opt_state``), optax wrappers and both libraries'
    ``inject_hyperparams`` states. From optax's ``inject_hyperparams`` states it reports the
    numeric hyperparameters; those optax schedules are left out (optax keeps the schedule in a
    closure and the state only the value of the last update, a step behind:
    ``jopt.inject_hyperparams`` reports them).

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
      >>> list(jopt.get_hyperparams(state).canonical())[-1]
      '2/learning_rate'

    Args:
      state: an optimizer state (any jopt state, possibly nested in chains, tuples, dicts or
        the wrappers above).

    Returns:
      A :class:`Hyperparams` dict from key to a scalar array (float32 unless given wider,
      int32 for counts such as ``patience``); empty if the state holds no hyperparameters.

    Raises:
      TreeMismatchError: for a state whose jopt types were lost (a checkpoint restored
        without a target: plain dicts and lists where jopt had its state types).
      UnknownKeyError: when the returned dict is indexed with a key it does not have (a
        ``KeyError`` listing the keys); AmbiguousKeyError for a short name of several.
    """
    entries = _find(_tree.unwrap_variables(state), "get_hyperparams")
    display = _display_keys(entries)
    return Hyperparams(((k, _value(e)) for k, e in zip(display, entries)),
                       {k: e.canonical for k, e in zip(display, entries)})


def set_hyperparams(state: Any, values: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
    """Returns a copy of ``state`` with some hyperparameters replaced.

    Keys are those :func:`get_hyperparams` accepts (a listed key or a canonical key; a short
    name when it is unique). A number replaces a number in place, in the stored dtype and
    shape and on the stored devices, so a jitted step does not recompile; a number given for
    a scheduled value replaces the schedule by a constant (this changes the state's tree
    structure and so retraces a jitted step once); a schedule (a jopt schedule or any callable
    of the step) may replace any numeric hyperparameter.

    Setting inside ``jax.vmap`` with a batched value builds a population of optimizers::

        states = jax.vmap(lambda lr: jopt.set_hyperparams(state, learning_rate=lr))(lrs)

    flax ``nnx.Optimizer`` states keep their variables: ``opt.opt_state =
    jopt.set_hyperparams(opt.opt_state, learning_rate=1e-4)``.

    Args:
      state: an optimizer state.
      values: optional mapping from key to new value (for keys such as ``"0/max_norm"``).
      **kwargs: more ``key=value`` pairs.

    Returns:
      The new state (the input is not modified).

    Raises:
      UnknownKeyError: for an unknown key (a ``KeyError`` and an
        ``InvalidHyperparameterError``; the message lists the known ones).
      InvalidHyperparameterError: for a concrete value outside the range the owning
        transformation declares (``learning_rate >= 0``, ``b1`` and ``b2`` in [0, 1), ...),
        a schedule whose values leave that range, or a schedule for a value that optax's
        ``inject_hyperparams`` holds (it accepts numbers only). Traced values are data and
        are not checked.
      AmbiguousKeyError: for a short name that names several entries (the message lists
        their canonical keys).
      TreeMismatchError: for a state whose jopt types were lost (see :func:`get_hyperparams`).
    """
    function = "set_hyperparams"
    updates = dict(values or {})
    updates.update(kwargs)
    pure = _tree.unwrap_variables(state)
    entries = _find(pure, function)
    display = _display_keys(entries)
    # (holder path, name) -> new stored value
    changes: dict[tuple, Any] = {}
    chosen: dict[str, str] = {}
    for key, new in updates.items():
        e = entries[_resolve(function, key, entries, display, pure, new)]
        if e.canonical in chosen:
            raise InvalidHyperparameterError(
                function, "key", key, f"given once (it names {e.canonical!r}, like "
                f"{chosen[e.canonical]!r})")
        chosen[e.canonical] = key
        if e.kind == "optax":
            changes[e.path, e.name] = _optax_value(function, key, e, new)
        elif e.kind == "inject":
            inner = _inner_entry(pure, e)
            stored = _store(function, key, inner, new)
            changes[inner.path, inner.name] = stored
            changes[e.path, e.name] = value_now(stored, _count(inner.holder)).astype(
                jnp.asarray(e.holder.hyperparams[e.name]).dtype)
        else:
            changes[e.path, e.name] = _store(function, key, e, new)
    new_state = _replace(pure, changes)
    if _tree.has_variables(state):
        new_state = _tree.rewrap_variables(state, new_state)
    return new_state


def _inner_entry(pure: Any, e: _Entry) -> _Entry:
    """The entry of a jopt inject wrapper's inner state that a wrapper value sets."""
    inner: list[_Entry] = []
    _collect(e.holder.inner_state, e.path + ("inner_state",), inner, "set_hyperparams",
             lambda canonical: False)
    for x in inner:
        if x.canonical == "/".join(e.path + ("inner_state",)) + "/" + e.target:
            return x
    raise TreeMismatchError("set_hyperparams", "the inject state's inner state has no entry",
                            "", e.target, "none")  # pragma: no cover - built by inject


def _store(function: str, key: str, e: _Entry, new: Any) -> Any:
    holder = e.holder
    old = holder.hyperparams[e.name]
    decl = type(holder)._jopt_hyperparams.get(e.name, _PLAIN)
    is_schedule = isinstance(new, Schedule) or (callable(new) and not isinstance(
        new, (jax.Array, np.ndarray)))
    if not is_schedule and new is not None:
        old_shape = np.shape(old.complement if isinstance(old, OneMinus) else old) if not (
            isinstance(old, Schedule) and not isinstance(old, OneMinus)) else ()
        decl.check(function, key, new)
        if (not isinstance(new, jax.core.Tracer) and np.ndim(new) != 0
                and np.shape(new) != old_shape):
            raise InvalidHyperparameterError(
                function, key, new,
                f"a scalar or an array of the stored shape {old_shape} (for a population, "
                f"call set_hyperparams inside jax.vmap)")
    like = old if not (isinstance(old, Schedule) and not isinstance(old, OneMinus)) else None
    stored = decl.store(function, key, new, like=like)
    if stored is not None and (like is None or (isinstance(stored, Schedule)
                                                 and not isinstance(stored, OneMinus))):
        # A population state set outside vmap (its counter batched): a new schedule, or a
        # number replacing one, gets the members' axes too, as every other leaf has them.
        batch = tuple(np.shape(_count(holder)) if _count(holder) is not None else ())
        if batch:
            stored = jax.tree_util.tree_map(
                lambda x: jnp.broadcast_to(x, batch + tuple(np.shape(x)))
                if np.shape(x)[:len(batch)] != batch else x, stored)
    # Buffers of the state's own: the caller's arrays must survive a donated step.
    return _tree.place_as(fresh(stored), old)


def _optax_value(function: str, key: str, e: _Entry, new: Any) -> Any:
    old = e.holder.hyperparams[e.name]
    if isinstance(new, Schedule) or (callable(new) and not isinstance(
            new, (jax.Array, np.ndarray))):
        raise InvalidHyperparameterError(
            function, key, new,
            "a number: optax's inject_hyperparams state holds numbers only (its schedules "
            "live in a closure); build the transformation with the schedule, or use "
            "jopt.inject_hyperparams, whose states take schedules")
    _PLAIN.check(function, key, new)
    arr = jnp.asarray(old)
    value = jnp.broadcast_to(jnp.asarray(new).astype(arr.dtype), arr.shape)
    return _tree.place_as(value, old)


def _replace(state: Any, changes: dict[tuple, Any]) -> Any:
    """``state`` with the entries named by ``(holder path, name)`` replaced by stored
    values."""
    if not changes:
        return state
    by_holder: dict[tuple[str, ...], dict[str, Any]] = {}
    for (path, name), value in changes.items():
        by_holder.setdefault(tuple(path), {})[name] = value
    return _replace_in(state, (), by_holder)


def _replace_in(tree: Any, prefix: tuple[str, ...], by_holder: dict) -> Any:
    def visit(path, node):
        if not _is_holder(node):
            return node
        segs = prefix + tuple(_segment(k) for k in path)
        new = node
        if segs in by_holder:
            hp = dict(node.hyperparams)
            hp.update(by_holder[segs])
            new = node._replace(hyperparams=hp)
        inner = getattr(node, "inner_state", None)
        if inner is not None:
            new = new._replace(inner_state=_replace_in(inner, segs + ("inner_state",),
                                                       by_holder))
        return new

    return jax.tree_util.tree_map_with_path(visit, tree, is_leaf=_is_holder)
