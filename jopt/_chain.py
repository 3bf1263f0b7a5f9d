"""Combinators: ``chain``, ``named_chain``, ``declare_kind`` and the optax adapter ``to_optax``."""

from __future__ import annotations

import inspect
from typing import Any

from jopt import _tree
from jopt._base import KINDS, GradientTransformation, is_gradient_transformation
from jopt._config import config_key
from jopt._layout import Packed
from jopt._registry import register
from jopt.errors import (
    InvalidHyperparameterError,
    LayoutError,
    MissingDependencyError,
    TreeMismatchError,
)


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


def kind_of(tx: Any) -> str | None:
    """The kind of a transformation (see :attr:`GradientTransformation.kind`), ``None`` if it
    is not known (a transformation jopt did not build)."""
    return getattr(tx, "kind", None) if isinstance(tx, GradientTransformation) else None


def check_packed_ok(combinator: str, where: str, tx: Any) -> None:
    """Raises :class:`LayoutError` for a link of unknown kind given packed values: jopt cannot
    tell whether its rule treats every element alike, so it could silently compute something
    other than it does on the tree (a per-tensor trust ratio over a whole buffer, say)."""
    if kind_of(tx) is None:
        raise LayoutError(
            f"{combinator}: link {where} ({_describe_link(tx)}) has no declared kind, "
            "so jopt does not know whether its rule treats every element alike, and it was "
            "given packed values (jopt.pack / jopt.flatten), where a per-tensor rule would "
            "silently compute something else. Declare its kind: "
            "jopt.declare_kind(tx, 'elementwise') if it does the same arithmetic on every "
            "element (optax.scale_by_adam, optax.scale), or jopt.declare_kind(tx, "
            "'per_leaf') to run it on each original leaf (optax.scale_by_trust_ratio, "
            "anything reading a tensor's norm or shape), or 'whole_tree' for a rule over the "
            "whole tree (optax.clip_by_global_norm; it also runs on the original tree).")


def _describe_link(tx: Any) -> str:
    if isinstance(tx, GradientTransformation):
        return (f"{tx.name} wrapping another library's transformation" if tx.name else
                "a jopt.GradientTransformation built by hand")
    module = type(tx).__module__.split(".")[0]
    return f"an {module} {type(tx).__name__}" if module[:1] in "aeiou" else \
        f"a {module} {type(tx).__name__}"


def _link_key(tx: Any) -> Any:
    return config_key(tx)


@register(examples={"": lambda jopt: jopt.chain(jopt.clip_by_global_norm(1.0),
                                                  jopt.scale_by_adam(),
                                                  jopt.scale_by_learning_rate(0.05))},
          descends=True)
def chain(*transformations: Any) -> GradientTransformation:
    """Applies transformations one after the other.

    .. math::
       u \\leftarrow T_n(\\cdots T_2(T_1(u)))

    Each link receives the previous link's output, the same ``params`` and the same extra
    keyword arguments (``value=loss``...). Links may be jopt transformations or any object with
    ``init``/``update`` (optax's included; optax transformations that do not take extra
    arguments are called without them). On packed values (:func:`jopt.pack`) every link runs
    by its kind; a link from another library must then be declared with
    :func:`jopt.declare_kind`.

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
      LayoutError: in ``init`` or ``update`` on packed values, for a link of unknown kind.
    """
    for i, tx in enumerate(transformations):
        _check_link("chain", f"#{i}", tx)
    links = tuple(transformations)
    updates_fns = tuple(_link_update(tx) for tx in links)

    def check_packed(tree):
        if isinstance(tree, Packed):
            for i, tx in enumerate(links):
                check_packed_ok("chain", f"#{i}", tx)

    def init_fn(params):
        params = _tree.unwrap_variables(params)
        check_packed(params)
        return tuple(tx.init(params) for tx in links)

    def update_fn(updates, state, params=None, **extra_args):
        if not isinstance(state, tuple) or len(state) != len(links):
            raise TreeMismatchError(
                "chain", "the state is not the one this chain's init builds", "",
                f"a tuple of {len(links)} link states",
                type(state).__name__
                + (f" of length {len(state)}" if isinstance(state, tuple) else ""),
            )
        check_packed(updates)
        new_state = []
        for fn, s in zip(updates_fns, state):
            updates, s = fn(updates, s, params, **extra_args)
            new_state.append(s)
        return updates, tuple(new_state)

    return GradientTransformation._configured(
        init_fn, update_fn, name="chain", config={"transformations": links},
        key=("chain", tuple(_link_key(tx) for tx in links)), kind="combinator", links=links)


@register(examples={"": lambda jopt: jopt.named_chain(("clip", jopt.clip(1.0)),
                                                        ("sgd", jopt.sgd(0.05, momentum=0.9)))},
          descends=True)
def named_chain(*transformations: tuple[str, Any]) -> GradientTransformation:
    """Like :func:`chain`, with each link named; the state is a dict keyed by those names.

    ``state["clip"]`` reaches a link's state directly, and :func:`jopt.get_hyperparams` uses
    the names in its keys (``"warmup/learning_rate"``).

    Args:
      *transformations: ``(name, transformation)`` pairs; names are unique strings.

    Returns:
      A :class:`GradientTransformation` whose state is a ``dict`` from name to link state.

    Raises:
      InvalidHyperparameterError: for a duplicate, empty or non-string name, one with a
        ``/`` (it separates the links of a hyperparameter key), or a link without
        ``init``/``update``.
      LayoutError: in ``init`` or ``update`` on packed values, for a link of unknown kind.
    """
    names = []
    for item in transformations:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise InvalidHyperparameterError(
                "named_chain", "argument", item, "a (name, transformation) pair"
            )
        name, tx = item
        if not name or "/" in name:
            # "/" separates the links of a hyperparameter key ("clip/max_norm").
            raise InvalidHyperparameterError("named_chain", "name", name,
                                             "a non-empty string without '/'")
        if name in names:
            raise InvalidHyperparameterError("named_chain", "name", name, "unique")
        names.append(name)
        _check_link("named_chain", repr(name), tx)
    links = tuple(transformations)
    updates_fns = tuple(_link_update(tx) for _, tx in links)

    def check_packed(tree):
        if isinstance(tree, Packed):
            for name, tx in links:
                check_packed_ok("named_chain", repr(name), tx)

    def init_fn(params):
        params = _tree.unwrap_variables(params)
        check_packed(params)
        return {name: tx.init(params) for name, tx in links}

    def update_fn(updates, state, params=None, **extra_args):
        if not isinstance(state, dict) or set(state) != set(names):
            raise TreeMismatchError(
                "named_chain", "the state is not the one this chain's init builds", "",
                f"a dict with keys {names}",
                type(state).__name__
                + (f" with keys {list(state)}" if isinstance(state, dict) else ""),
            )
        check_packed(updates)
        new_state = {}
        for (name, _), fn in zip(links, updates_fns):
            updates, new_state[name] = fn(updates, state[name], params, **extra_args)
        return updates, new_state

    return GradientTransformation._configured(
        init_fn, update_fn, name="named_chain", config={"transformations": links},
        key=("named_chain", tuple((n, _link_key(tx)) for n, tx in links)), kind="combinator",
        links=tuple(tx for _, tx in links))


@register(examples={
    "elementwise": lambda jopt: jopt.declare_kind(jopt.scale(0.5), "elementwise"),
    "per_leaf": lambda jopt: jopt.declare_kind(jopt.sgd(0.05, momentum=0.9), "per_leaf")},
    descends=False)
def declare_kind(tx: Any, kind: str) -> GradientTransformation:
    """Declares how a transformation jopt did not build runs on packed values.

    jopt knows the kind of its own transformations; for one from another library (optax's)
    it cannot tell whether the rule treats every element alike, so a chain or
    :func:`jopt.flatten` given packed values (:func:`jopt.pack`) refuses it with a
    :class:`jopt.errors.LayoutError` rather than risk computing something else. Declaring it:

    * ``"elementwise"``: the same arithmetic on every element, with scalars shared by the
      whole step (``optax.scale_by_adam``, ``optax.scale``, ``optax.add_decayed_weights``
      without a mask): it runs on the flat buffers as they are, its state is flat too;
    * ``"per_leaf"`` (or ``"whole_tree"``): it reads whole tensors (a norm per tensor, a
      shape: ``optax.scale_by_trust_ratio``, LARS, LAMB, Adafactor) or the tree's structure:
      on packed values it runs on the original per-leaf tree (its state is per leaf) and its
      updates are packed back.

    On per-leaf trees the declaration changes nothing.

    Args:
      tx: any transformation (an object with ``init`` and ``update``).
      kind: ``"elementwise"``, ``"per_leaf"`` or ``"whole_tree"``.

    Returns:
      A :class:`GradientTransformation` with ``tx``'s state.

    Raises:
      InvalidHyperparameterError: if ``tx`` has no ``init``/``update`` or ``kind`` is unknown.

    Examples:
      >>> import jax.numpy as jnp, jopt, optax
      >>> tx = jopt.chain(jopt.declare_kind(optax.scale_by_trust_ratio(), "per_leaf"),
      ...                 jopt.sgd(0.1))
      >>> packed = jopt.pack({"w": jnp.ones(3), "b": jnp.ones(2)})
      >>> state = tx.init(packed)  # the trust ratio is computed per original leaf
    """
    _check_link("declare_kind", "tx", tx)
    if kind not in KINDS[:3]:
        raise InvalidHyperparameterError("declare_kind", "kind", kind,
                                         "'elementwise', 'per_leaf' or 'whole_tree'")
    update = _link_update(tx)
    if kind == "elementwise":
        def init_fn(params):
            return tx.init(params)

        def update_fn(updates, state, params=None, **extra_args):
            return update(updates, state, params, **extra_args)
    else:
        def init_fn(params):
            params = _tree.unwrap_variables(params)
            return tx.init(params.unpack() if isinstance(params, Packed) else params)

        def update_fn(updates, state, params=None, **extra_args):
            if not isinstance(updates, Packed):
                return update(updates, state, params, **extra_args)
            tree_params = params.unpack() if isinstance(params, Packed) else params
            u, state = update(updates.unpack(), state, tree_params, **extra_args)
            return updates.layout.pack(u, what="updates", transformation="declare_kind",
                                       dtypes=False), state

    return GradientTransformation._configured(
        init_fn, update_fn, name="declare_kind", config={"tx": tx, "kind": kind},
        key=("declare_kind", _link_key(tx), kind), kind=kind, links=(tx,))


def to_optax(tx: Any):
    """Wraps a transformation as an optax ``GradientTransformationExtraArgs``.

    optax's own combinators (``optax.chain``, ``optax.MultiSteps``...) only forward extra
    keyword arguments such as ``value=loss`` to links of that type. When optax is installed
    every jopt transformation already is one (and needs no wrapping); this adapter is for
    other transformations, and for code that must not depend on that. The wrapper shares
    ``init`` and ``update`` with ``tx``.

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
