"""Combinators: ``chain`` and ``named_chain``, and the optax adapter ``to_optax``."""

from __future__ import annotations

import inspect
from typing import Any

from jopt._base import GradientTransformation, is_gradient_transformation
from jopt.errors import InvalidHyperparameterError, MissingDependencyError, TreeMismatchError


def _accepts_extra_args(tx: Any) -> bool:
    """Whether ``tx.update`` may be given keyword arguments beyond ``params``."""
    if isinstance(tx, GradientTransformation):
        return True
    try:
        import optax

        if isinstance(tx, optax.GradientTransformationExtraArgs):
            return True
        if isinstance(tx, optax.GradientTransformation):
            return False
    except ImportError:  # pragma: no cover - optax is optional
        pass
    try:
        sig = inspect.signature(tx.update)
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def _keyword_names(tx: Any) -> set[str]:
    """Names of keyword arguments ``tx.update`` takes beyond updates, state and params."""
    try:
        sig = inspect.signature(tx.update)
    except (TypeError, ValueError):
        return set()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [p.name for p in sig.parameters.values() if p.kind in kinds]
    return set(names[3:]) | {p.name for p in sig.parameters.values()
                             if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _link_update(tx: Any):
    if _accepts_extra_args(tx):
        return tx.update
    # A link without **kwargs still receives the extra arguments it names (value=...).
    wanted = _keyword_names(tx)

    def update(updates, state, params=None, **extra_args):
        picked = {k: v for k, v in extra_args.items() if k in wanted}
        return tx.update(updates, state, params, **picked)

    return update


def _check_link(combinator: str, where: str, tx: Any) -> None:
    if not is_gradient_transformation(tx):
        raise InvalidHyperparameterError(
            combinator, f"transformation {where}", tx,
            "an object with init and update (a jopt or optax transformation)",
        )


def chain(*transformations: Any) -> GradientTransformation:
    """Applies transformations one after the other.

    .. math::
       u \\leftarrow T_n(\\cdots T_2(T_1(u)))

    Each link receives the previous link's output, the same ``params`` and the same extra
    keyword arguments (``value=loss``...). Links may be jopt transformations or any object with
    ``init``/``update`` (optax's included; optax transformations that do not take extra
    arguments are called without them).

    Examples:
      >>> import jax.numpy as jnp, jopt
      >>> tx = jopt.chain(jopt.clip_by_global_norm(1.0), jopt.sgd(0.5))
      >>> state = tx.init({"w": jnp.zeros(2)})
      >>> updates, state = tx.update({"w": jnp.asarray([3.0, 4.0])}, state)
      >>> updates["w"].tolist()  # clipped to norm 1, then scaled by -0.5
      [-0.30000001192092896, -0.4000000059604645]

    Args:
      *transformations: the links, in order.

    Returns:
      A :class:`GradientTransformation` whose state is a tuple of the links' states.

    Raises:
      InvalidHyperparameterError: if a link has no ``init``/``update``.
    """
    for i, tx in enumerate(transformations):
        _check_link("chain", f"#{i}", tx)
    links = tuple(transformations)
    updates_fns = tuple(_link_update(tx) for tx in links)

    def init_fn(params):
        return tuple(tx.init(params) for tx in links)

    def update_fn(updates, state, params=None, **extra_args):
        if not isinstance(state, tuple) or len(state) != len(links):
            raise TreeMismatchError(
                "chain", "the state is not the one this chain's init builds", "",
                f"a tuple of {len(links)} link states",
                type(state).__name__
                + (f" of length {len(state)}" if isinstance(state, tuple) else ""),
            )
        new_state = []
        for fn, s in zip(updates_fns, state):
            updates, s = fn(updates, s, params, **extra_args)
            new_state.append(s)
        return updates, tuple(new_state)

    return GradientTransformation(
        init_fn, update_fn, name="chain", config={"transformations": links}
    )


def named_chain(*transformations: tuple[str, Any]) -> GradientTransformation:
    """Like :func:`chain`, with each link named; the state is a dict keyed by those names.

    ``state["clip"]`` reaches a link's state directly, and :func:`jopt.get_hyperparams` uses
    the names to qualify hyperparameters that occur in more than one link
    (``"warmup/learning_rate"``).

    Args:
      *transformations: ``(name, transformation)`` pairs; names are unique strings.

    Returns:
      A :class:`GradientTransformation` whose state is a ``dict`` from name to link state.

    Raises:
      InvalidHyperparameterError: for a duplicate or non-string name, or a link without
        ``init``/``update``.
    """
    names = []
    for item in transformations:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise InvalidHyperparameterError(
                "named_chain", "argument", item, "a (name, transformation) pair"
            )
        name, tx = item
        if name in names:
            raise InvalidHyperparameterError("named_chain", "name", name, "unique")
        names.append(name)
        _check_link("named_chain", repr(name), tx)
    links = tuple(transformations)
    updates_fns = tuple(_link_update(tx) for _, tx in links)

    def init_fn(params):
        return {name: tx.init(params) for name, tx in links}

    def update_fn(updates, state, params=None, **extra_args):
        if not isinstance(state, dict) or set(state) != set(names):
            raise TreeMismatchError(
                "named_chain", "the state is not the one this chain's init builds", "",
                f"a dict with keys {names}",
                type(state).__name__
                + (f" with keys {list(state)}" if isinstance(state, dict) else ""),
            )
        new_state = {}
        for (name, _), fn in zip(links, updates_fns):
            updates, new_state[name] = fn(updates, state[name], params, **extra_args)
        return updates, new_state

    return GradientTransformation(
        init_fn, update_fn, name="named_chain", config={"transformations": links}
    )


def to_optax(tx: Any):
    """Wraps a jopt transformation as an optax ``GradientTransformationExtraArgs``.

    optax's own combinators (``optax.chain``, ``optax.MultiSteps``...) only forward extra
    keyword arguments such as ``value=loss`` to links of that type; wrapping a jopt
    transformation lets them reach it. The wrapper shares ``init`` and ``update`` with ``tx``.

    Args:
      tx: a jopt (or any) transformation.

    Returns:
      ``optax.GradientTransformationExtraArgs(tx.init, tx.update)``.

    Raises:
      MissingDependencyError: if optax is not installed.
      InvalidHyperparameterError: if ``tx`` has no ``init``/``update``.
    """
    _check_link("to_optax", "tx", tx)
    try:
        import optax
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("to_optax needs optax: pip install optax") from e
    return optax.GradientTransformationExtraArgs(tx.init, tx.update)
