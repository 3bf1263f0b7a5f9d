"""``inject_hyperparams``: optax's way of reaching hyperparameters, for code written for optax.

jopt needs no injection: every hyperparameter already lives in the state and may be a
schedule. This wrapper gives code written against ``optax.inject_hyperparams`` the state it
expects (``state.hyperparams["learning_rate"]``, readable and writable) on top of jopt's.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jopt import _hyperparams, _tree
from jopt._base import GradientTransformation
from jopt._checks import check_state_type
from jopt._registry import register
from jopt._serialization import serializable
from jopt._validate import bind
from jopt.errors import AmbiguousKeyError, InvalidHyperparameterError
from jopt.schedules._core import OneMinus, Schedule


@serializable
@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["count", "hyperparams", "inner_state"], meta_fields=["targets"])
@dataclasses.dataclass(frozen=True)
class InjectHyperparamsState:
    """State of :func:`jopt.inject_hyperparams`, shaped like optax's.

    Attributes:
      count: int32 scalar, the number of updates applied.
      hyperparams: ``{name: value}``, the current value of every injected hyperparameter: the
        value the next update uses. Writing a number to it (``state.hyperparams["learning_rate"]
        = 1e-4``, as with optax) sets that value for the next updates; for a scheduled one the
        schedule wins (the entry is rewritten after every update), as in optax. Use
        :func:`jopt.set_hyperparams` to replace a schedule.
      inner_state: the wrapped transformation's state, which holds the hyperparameters as
        every jopt state does.
      targets: static: for every injected name, the key of the inner hyperparameter it sets.
    """

    count: Any
    hyperparams: dict[str, Any]
    inner_state: Any
    targets: tuple[tuple[str, str], ...] = ()

    _jopt_inject: ClassVar[bool] = True

    def _replace(self, **changes: Any) -> InjectHyperparamsState:
        return dataclasses.replace(self, **changes)


def _is_numeric(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating, np.ndarray, jax.Array))
            and not isinstance(value, (bool, np.bool_)))


def _is_schedule(value: Any) -> bool:
    return isinstance(value, Schedule) or (callable(value) and not isinstance(
        value, (jax.Array, np.ndarray)))


@register(examples={
    "": lambda jopt: jopt.inject_hyperparams(jopt.adam)(learning_rate=0.05),
    "schedule": lambda jopt: jopt.inject_hyperparams(jopt.sgd)(
        learning_rate=jopt.cosine_decay(0.1, 100), momentum=0.9)}, descends=True)
def inject_hyperparams(
    inner_factory: Callable[..., Any],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: Any = None,
) -> Callable[..., GradientTransformation]:
    """optax's ``inject_hyperparams`` for jopt factories, for code written for optax.

    ``jopt.inject_hyperparams(jopt.adamw)(learning_rate=schedule, b1=0.9)`` builds
    ``jopt.adamw(learning_rate=schedule, b1=0.9)`` (values and schedules go straight into the
    factory: every jopt hyperparameter is data and may be a schedule) and wraps its state in an
    :class:`InjectHyperparamsState` whose ``hyperparams`` dict holds the current value of
    every numeric or scheduled argument, defaults included (as optax's does): read it for
    logging, write a number to it to change a value for the next updates. A key the wrapper
    does not hold is refused at the next update rather than dropped. :func:`jopt.get_hyperparams`
    and :func:`jopt.set_hyperparams` read and write the same values (and ``set_hyperparams``
    can replace a schedule).

    Differences from optax: the values are float32 (or ``hyperparam_dtype``, float32 or
    float64) whatever the parameters' dtype, so bfloat16 parameters never turn ``b2 = 0.999``
    into 1; an argument of a jopt factory that is not a hyperparameter of the built
    transformation (an integer block size, say) is passed through as a static argument, and
    for other factories such an argument is an error (it would silently not be injected).
    A scheduled entry holds the value the *next* update uses (``schedule(count)``), as
    :func:`jopt.get_hyperparams` reports it; optax's holds the value the last update used
    (``schedule(count - 1)``), so a log of it ported from optax moves one step earlier. Both
    hold ``schedule(0)`` after ``init``.

    (``optax.inject_hyperparams(jopt.adamw)`` works too: a jopt transformation built inside
    optax's wrapper uses the values optax passes at each step.)

    Args:
      inner_factory: a jopt factory (``jopt.adamw``, ``jopt.scale_by_adam``, or any function
        returning a jopt transformation).
      static_args: names of arguments never injected (as optax's ``static_args``).
      hyperparam_dtype: dtype of the values in ``state.hyperparams``; default float32.

    Returns:
      A function with ``inner_factory``'s arguments that returns a
      :class:`GradientTransformation` with state :class:`InjectHyperparamsState`.

    Raises:
      InvalidHyperparameterError: for a factory that is not callable, unknown
        ``static_args``, a ``hyperparam_dtype`` narrower than float32, arguments the factory
        does not take; in ``init``, if an injected name matches several hyperparameters of
        the inner state (the message lists them) or, for a factory jopt did not declare,
        none.

    Examples:
      >>> import jax.numpy as jnp, jopt
      >>> tx = jopt.inject_hyperparams(jopt.sgd)(learning_rate=0.1, momentum=0.9)
      >>> state = tx.init({"w": jnp.zeros(2)})
      >>> float(state.hyperparams["learning_rate"])
      0.10000000149011612
      >>> state.hyperparams["learning_rate"] = 0.5    # as with optax
      >>> updates, state = tx.update({"w": jnp.ones(2)}, state)
      >>> updates["w"].tolist()
      [-0.5, -0.5]
    """
    name = "inject_hyperparams"
    if not callable(inner_factory):
        raise InvalidHyperparameterError(name, "inner_factory", inner_factory,
                                         "a function returning a transformation")
    if isinstance(static_args, str):
        statics = {static_args}
    else:
        try:
            statics = set(static_args)
        except TypeError:
            raise InvalidHyperparameterError(name, "static_args", static_args,
                                             "a name or an iterable of names") from None
    try:
        sig = inspect.signature(inner_factory)
    except (TypeError, ValueError):
        raise InvalidHyperparameterError(name, "inner_factory", inner_factory,
                                         "a function with a signature") from None
    unknown = statics - set(sig.parameters)
    if unknown:
        raise InvalidHyperparameterError(
            name, "static_args", sorted(unknown),
            f"names of {getattr(inner_factory, '__name__', 'the factory')}'s arguments "
            f"({', '.join(sig.parameters)})")
    dtype = np.dtype(np.float32)
    if hyperparam_dtype is not None:
        try:
            dtype = np.dtype(jnp.dtype(hyperparam_dtype))
        except TypeError:
            dtype = None
        # Narrower floats would round the values (b2 = 0.999 to 1 in bfloat16).
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating) or dtype.itemsize < 4:
            raise InvalidHyperparameterError(
                name, "hyperparam_dtype", hyperparam_dtype,
                "None, float32 or float64 (narrower types would round the values: b2 = 0.999 "
                "is 1.0 in bfloat16)")
    renames = getattr(inner_factory, "renames", {})
    declared = getattr(inner_factory, "declaration", None) is not None or hasattr(
        inner_factory, "renames")

    @functools.wraps(inner_factory)
    def wrapped(*args: Any, **kwargs: Any) -> GradientTransformation:
        bound = bind(f"{name}({getattr(inner_factory, '__name__', 'factory')})", sig, args,
                     kwargs)
        given = set(sig.bind(*args, **kwargs).arguments)
        inner = inner_factory(*args, **kwargs)
        # Every numeric or scheduled argument, defaults included, as optax's wrapper holds.
        names = [k for k, v in bound.arguments.items() if k not in statics
                 and (_is_numeric(v) or _is_schedule(v))]

        def targets_of(inner_state):
            entries = _hyperparams._find(inner_state, "inject_hyperparams")
            canon = [e.canonical for e in entries]
            out = []
            for arg in names:
                want = renames.get(arg, arg)
                matches = [c for c, e in zip(canon, entries) if e.name == want]
                if len(matches) > 1:
                    raise AmbiguousKeyError("inject_hyperparams", arg, matches)
                if matches:
                    out.append((arg, matches[0]))
                elif not declared and arg in given:
                    # A factory jopt does not know: an argument that reaches no
                    # hyperparameter would silently not be injected.
                    raise InvalidHyperparameterError(
                        name, arg, bound.arguments[arg],
                        "the name of a hyperparameter of the transformation the factory builds "
                        f"(it has {sorted({e.name for e in entries}) or 'none'}); name the "
                        "argument like it, or list it in static_args")
            return tuple(out)

        def values(inner_state, targets):
            entries = {e.canonical: e for e in _hyperparams._find(inner_state,
                                                                    "inject_hyperparams")}
            out = {}
            for name, target in targets:
                v = _hyperparams._value(entries[target])
                out[name] = v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v
            return out

        def init_fn(params):
            inner_state = inner.init(params)
            targets = targets_of(inner_state)
            return InjectHyperparamsState(count=jnp.zeros([], jnp.int32),
                                          hyperparams=values(inner_state, targets),
                                          inner_state=inner_state, targets=targets)

        def update_fn(updates, state, params=None, **extra_args):
            check_state_type("inject_hyperparams", state, InjectHyperparamsState)
            _check_keys(state)
            inner_state = _push(state)
            updates, inner_state = inner.update(updates, inner_state, params, **extra_args)
            return updates, InjectHyperparamsState(
                count=_tree.safe_increment(state.count),
                hyperparams=values(inner_state, state.targets), inner_state=inner_state,
                targets=state.targets)

        # A transformation jopt did not build keeps its unknown kind (packed values then
        # need jopt.declare_kind); jopt's own run by their kinds inside the wrapper.
        kind = "combinator" if isinstance(inner, GradientTransformation) and \
            inner.kind is not None else None
        built = GradientTransformation._configured(
            init_fn, update_fn, name=f"{name}({getattr(inner_factory, '__name__', 'factory')})",
            config=inner.config if isinstance(inner, GradientTransformation) else {},
            key=("inject_hyperparams", _key(inner), tuple(names), str(dtype)),
            kind=kind, links=(inner,))
        return built

    return wrapped


def _key(tx: Any) -> Any:
    from jopt._config import config_key

    return config_key(tx)


def _check_keys(state: InjectHyperparamsState) -> None:
    """A key written into ``state.hyperparams`` that the wrapper does not hold would be
    dropped without effect: refused, naming the keys it holds."""
    held = [n for n, _ in state.targets]
    if not isinstance(state.hyperparams, dict):
        raise InvalidHyperparameterError(
            "inject_hyperparams", "state.hyperparams", state.hyperparams,
            f"a dict with the keys {held}")
    extra = sorted(set(state.hyperparams) - set(held), key=str)
    missing = [n for n in held if n not in state.hyperparams]
    if extra or missing:
        raise InvalidHyperparameterError(
            "inject_hyperparams", "state.hyperparams keys", sorted(state.hyperparams, key=str),
            f"the keys the wrapper holds, {held}"
            + (f" ({extra} would have no effect" if extra else " (")
            + (f"; {missing} removed" if missing else "")
            + "); use jopt.set_hyperparams for a hyperparameter the wrapper does not hold")


def _push(state: InjectHyperparamsState) -> Any:
    """The inner state with the wrapper's values written into it (those not scheduled)."""
    entries = {e.canonical: e for e in _hyperparams._find(state.inner_state,
                                                           "inject_hyperparams")}
    changes = {}
    for name, target in state.targets:
        e = entries[target]
        old = e.holder.hyperparams[e.name]
        if isinstance(old, Schedule) and not isinstance(old, OneMinus):
            continue  # the schedule wins, as with optax
        decl = type(e.holder)._jopt_hyperparams.get(e.name, _hyperparams._PLAIN)
        changes[e.path, e.name] = decl.store("inject_hyperparams", name,
                                             state.hyperparams[name], like=old)
    return _hyperparams._replace(state.inner_state, changes)
