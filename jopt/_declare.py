"""Declaring transformations: a rule for one array becomes a whole transformation.

A building block is a factory decorated with :func:`transformation`, which declares its
hyperparameters (:class:`jopt._hyper.Hyper`), its per-parameter buffers (:class:`Slot`) and
its kind; the factory's body checks its structural options and returns the :class:`Rule`:
the update for one array in its compute dtype, and optionally a per-step preparation of
scalars. The decorator builds everything else, once for every transformation:

* validation of every hyperparameter when the transformation is built, with jopt's errors;
* the state type (``count``, the slots, ``hyperparams``), its ``init`` (slots in their dtype
  or storage codec, on the parameters' devices) and the checks of ``update`` (state type, tree
  structure, shapes, with the tree path in the message);
* the step: schedules evaluated at the count, complements expanded, the preparation run, the
  rule lifted to the tree (or to packed buffers, or to the tree view of packed parameters,
  by kind), slots decoded and encoded by their codec, the count saturating;
* ``repr`` and equality (by the values the state stores), and an entry in the registry the
  conformance tests are collected from.

Named optimizers (``adamw``) are short chains of blocks under :func:`optimizer`, which names
and configures them from their own signature. Hand-written wrappers and combinators register
with :func:`jopt._registry.register` and use the same pieces (checks, placement,
configuration keys).

See ``CONTRIBUTING.md`` for a worked example.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jopt import _codecs, _registry, _tree
from jopt._base import KINDS, EmptyState, GradientTransformation, fresh
from jopt._checks import check_state_type, check_updates, require_params
from jopt._config import config_key
from jopt._hyper import Hyper, current
from jopt._layout import Packed
from jopt._masks import check_mask_option, resolve_mask
from jopt._quantize import QuantizedArray
from jopt._validate import bind
from jopt.errors import InvalidHyperparameterError, TreeMismatchError

__all__ = ["Slot", "Rule", "transformation", "optimizer"]


@dataclasses.dataclass(frozen=True)
class Slot:
    """A per-parameter buffer of a transformation (a moment, a momentum trace).

    Attributes:
      name: the state field (``"mu"``).
      option: the factory argument that sets its storage: ``None`` (default), a floating
        dtype, ``"8bit"`` or a codec (``jopt.Blockwise8bit``, ``jopt.StochasticRounding``).
      fallback: another such argument used when ``option`` is ``None`` (``nu_dtype`` falls
        back to ``mu_dtype``).
      real: holds a real quantity (``|g|**2``) also for complex parameters.
      nonnegative: never negative (a second moment): 8-bit storage uses the unsigned map,
        which resolves twice as finely.
      shape: for per-leaf rules whose buffer is not parameter-shaped (factored moments): a
        function from the parameter's shape to the buffer's. Default: the parameter's shape.
      doc: one line for the state type's docstring.
    """

    name: str
    option: str | None = None
    fallback: str | None = None
    real: bool = False
    nonnegative: bool = False
    shape: Callable[[tuple[int, ...]], tuple[int, ...]] | None = None
    doc: str = ""


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a factory's body returns: the rule for one array and its per-step preparation.

    Attributes:
      fn: ``fn(g, *, <slots>, <scalars>, [param], [mask]) -> u`` or ``(u, *new_slots)`` (in
        slot order). ``g`` and the slots arrive in the compute dtype (at least float32;
        complex stays complex; a ``real`` slot in its real counterpart), every floating
        scalar the function names (a hyperparameter, ``one_minus_<name>`` of a complement
        one, or an output of ``prep``) cast to that dtype. ``param`` is the parameter leaf
        (declare ``params=True``), ``mask`` a leaf's mask (declare ``mask=``): ``True`` or,
        for a packed buffer of masked and unmasked leaves, a boolean array. An elementwise
        rule may see a flat buffer of many leaves (packed mode); a per-leaf rule always sees
        one original leaf.
      prep: ``prep(*, <hyperparameters>, count, [updates], [params], [extra_args]) -> dict``
        of per-step scalars (bias corrections, a global norm); ``count`` is the number of
        updates before this one, ``updates``/``params`` the whole trees (whole-tree kinds).
      storage: storage per slot name, overriding the slot's option (variants such as 8-bit
        Adam fix their codecs here).
      real: names of scalars the rule uses in real arithmetic (with a ``real`` slot, or
        compared with magnitudes): they arrive in the real counterpart of the compute dtype
        (float32 for a complex64 parameter) instead of the compute dtype itself.
    """

    fn: Callable[..., Any]
    prep: Callable[..., dict[str, Any]] | None = None
    storage: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    real: tuple[str, ...] = ()


# ------------------------------------------------------------------ optax inject detection


def _built_by_optax_inject() -> bool:
    """Whether this factory call comes from inside ``optax.inject_hyperparams`` (its ``init``
    or ``update`` builds the inner transformation anew with the current values, and expects
    those to be used)."""
    frame = sys._getframe(2)
    for _ in range(40):
        if frame is None:
            return False
        code = frame.f_code
        if (code.co_name in ("init_fn", "update_fn") and "inner_factory" in code.co_freevars
                and str(frame.f_globals.get("__name__", "")).startswith("optax")):
            return True
        frame = frame.f_back
    return False


def with_plain_arrays(update: Callable, updates: Any, state: Any, params: Any,
                      extra_args: Mapping[str, Any]) -> tuple[Any, Any]:
    """Runs ``update`` on updates and parameters with flax ``nnx.Variable`` s unwrapped, and
    returns the updates in the variables they came in. jopt states hold plain arrays (``init``
    unwraps the parameters), whether the variables reach ``update`` (a training loop over
    ``nnx.split`` states) or not (``nnx.Optimizer``, which unwraps them itself)."""
    if not (_tree.has_variables(updates) or _tree.has_variables(params)):
        return update(updates, state, params, **extra_args)
    u, s = update(_tree.unwrap_variables(updates), state, _tree.unwrap_variables(params),
                  **extra_args)
    return _tree.rewrap_variables(updates, u), s


# --------------------------------------------------------------------------- state types


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _state_type(name: str, module: str, slots: Sequence[Slot], hyperparams: Mapping[str, Hyper],
                factory_name: str) -> type:
    fields = ["count"] + [s.name for s in slots] + ["hyperparams"]
    cls = NamedTuple(name, [(f, Any) for f in fields])
    cls.__module__ = module
    lines = [f"State of :func:`jopt.{factory_name}`.", "", "Attributes:",
             "  count: int32 scalar, the number of updates applied (saturates at 2**31 - 1); "
             "schedules are evaluated at it."]
    for s in slots:
        shape = "the parameters' tree" + ("" if s.shape is None else
                                            " (one buffer per leaf, of its own shape)")
        storage = f"``{s.option}``" if s.option else "its codec"
        lines.append(f"  {s.name}: {s.doc or 'per-parameter buffer'}; {shape}, stored as "
                     f"{storage} says (default: the parameter's dtype promoted to at least "
                     f"float32{', real' if s.real else ''}).")
    if hyperparams:
        names = ", ".join(f"``{n}``" for n in hyperparams)
        lines.append(f"  hyperparams: {names}: float32 arrays (or wider if given wider), "
                     "complements (``OneMinus``) for values close to 1, or schedules.")
    cls.__doc__ = "\n".join(lines)
    cls._jopt_hyperparams = dict(hyperparams)
    cls._jopt_count = "count"
    return cls


# ----------------------------------------------------------------------------- the lift


def _names_of(fn: Callable) -> tuple[set[str], bool]:
    """The keyword names ``fn`` accepts, and whether it takes ``**kwargs``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set(), True
    names = {p.name for p in params if p.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                  inspect.Parameter.POSITIONAL_OR_KEYWORD)}
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


@dataclasses.dataclass(frozen=True)
class Declaration:
    """Everything :func:`transformation` knows about a factory (static)."""

    name: str
    kind: str
    hyperparams: Mapping[str, Hyper]
    slots: tuple[Slot, ...]
    params: bool
    mask: str | None
    state: type | None


class _Transformation:
    """One built transformation: its stored hyperparameters, rule and slot storage."""

    def __init__(self, decl: Declaration, stored: dict[str, Any], rule: Rule,
                 storage: tuple, config_mask: Any, injected: bool):
        self.decl = decl
        self.stored = stored
        self.rule = rule
        self.storage = storage
        self.mask = config_mask
        self.injected = injected
        self.fn_names, self.fn_any = _names_of(rule.fn)
        self.prep_names, self.prep_any = _names_of(rule.prep) if rule.prep else (set(), False)
        whole = any(_codecs.whole_tensor(s) for s in storage)
        self.per_leaf = decl.kind == "per_leaf" or whole
        self.call = _codecs.RuleCall(self._call_rule)

    # --- init
    def init(self, params):
        decl = self.decl
        params = _tree.unwrap_variables(params)
        if decl.state is None:
            return EmptyState()
        if self.per_leaf and isinstance(params, Packed):
            params = params.unpack()
        if self.mask is not None:
            resolve_mask(decl.name, self.mask, params)
        slots = {}
        for slot, spec in zip(decl.slots, self.storage):
            slots[slot.name] = self._init_slot(slot, spec, params)
        return decl.state(count=_tree.zero_count(), **slots, hyperparams=fresh(self.stored))

    def _init_slot(self, slot: Slot, spec: Any, params: Any) -> Any:
        name = self.decl.name

        def one(path, p):
            if slot.shape is not None:
                # A buffer of its own shape (factored moments): plain or stochastically
                # rounded storage of that shape (8-bit storage is refused when declared).
                p = jax.ShapeDtypeStruct(tuple(slot.shape(_tree.shape_of(p))), _tree.dtype_of(p))
            return _codecs.init_leaf(name, spec, p, real=slot.real, nonnegative=slot.nonnegative,
                                     path=jax.tree_util.keystr(path))

        return jax.tree_util.tree_map_with_path(one, params)

    # --- update
    def update(self, updates, state, params=None, **extra_args):
        return with_plain_arrays(self._update, updates, state, params, extra_args)

    def _update(self, updates, state, params=None, **extra_args):
        decl = self.decl
        check_state_type(decl.name, state, decl.state or EmptyState)
        if decl.params:
            require_params(decl.name, params)
        if self.per_leaf and isinstance(updates, Packed):
            # Per-leaf rules (and 8-bit slots, whose blocks never span two tensors) run on the
            # original leaves: the state is per leaf, the updates are packed back.
            tree_params = params.unpack() if isinstance(params, Packed) else params
            u, new_state = self._update(updates.unpack(), state, tree_params, **extra_args)
            return updates.layout.pack(u, what="updates", transformation=decl.name,
                                       dtypes=False), new_state
        if decl.state is None:
            updates, params = check_updates(decl.name, updates, None, params)
            return self._apply(updates, state, params, extra_args, count=None)[0], state
        reference = self._reference(state)
        updates, params = check_updates(decl.name, updates, reference, params)
        count = state.count
        new_updates, new_slots = self._apply(updates, state, params, extra_args, count)
        return new_updates, state._replace(count=_tree.safe_increment(count), **new_slots)

    def _reference(self, state):
        """The parameters' shapes and dtypes as ``init`` saw them, from the first
        parameter-shaped slot (a quantized leaf keeps them as static data)."""
        for slot in self.decl.slots:
            tree = getattr(state, slot.name)
            if slot.shape is None:
                return jax.tree_util.tree_map(
                    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype)
                    if isinstance(m, QuantizedArray) else m,
                    tree, is_leaf=lambda m: isinstance(m, QuantizedArray))
        return None

    def _scalars(self, state, count, updates, params, extra_args):
        decl = self.decl
        stored = (self.stored if (self.injected or decl.state is None)
                  else state.hyperparams)
        hp = current(decl.hyperparams, stored, count, complements=True)
        if self.rule.prep is not None:
            avail = dict(hp)
            avail.update(count=count, updates=updates, params=params, extra_args=extra_args)
            kw = {k: v for k, v in avail.items() if self.prep_any or k in self.prep_names}
            hp.update(self.rule.prep(**kw))
        return hp

    def _apply(self, updates, state, params, extra_args, count):
        decl = self.decl
        scalars = self._scalars(state, count, updates, params, extra_args)
        treedef = jax.tree_util.tree_structure(updates)
        g_leaves = treedef.flatten_up_to(updates)
        slot_leaves = [treedef.flatten_up_to(getattr(state, s.name)) for s in decl.slots]
        p_leaves = treedef.flatten_up_to(params) if decl.params else [None] * len(g_leaves)
        masks = resolve_mask(decl.name, self.mask, params if params is not None else updates)
        m_leaves = treedef.flatten_up_to(masks) if masks is not None else [True] * len(g_leaves)
        # The scalars the rule names, cast once per compute dtype (not once per leaf).
        wanted = {k: jnp.asarray(v) for k, v in scalars.items()
                  if (self.fn_any or k in self.fn_names) and v is not None}
        cast: dict[Any, dict[str, Any]] = {}

        def scalars_for(ct, rt):
            if ct not in cast:
                cast[ct] = {k: _tree.cast_scalar(v, rt if k in self.rule.real else ct)
                            if jnp.issubdtype(v.dtype, jnp.inexact) else v
                            for k, v in wanted.items()}
            return dict(cast[ct])

        out_u, out_slots = [], [[] for _ in decl.slots]
        for i, (g, p, m) in enumerate(zip(g_leaves, p_leaves, m_leaves)):
            olds = [leaves[i] for leaves in slot_leaves]
            if m is False:
                out_u.append(g)
                for k, old in enumerate(olds):
                    out_slots[k].append(old)
                continue
            u, news = self._leaf(i, g, olds, p, m, scalars_for, count)
            out_u.append(u)
            for k, new in enumerate(news):
                out_slots[k].append(new)
        new_slots = {s.name: treedef.unflatten(v) for s, v in zip(decl.slots, out_slots)}
        return treedef.unflatten(out_u), new_slots

    def _call_rule(self, g, values, param, kw):
        """The rule on arrays already in the compute dtype: ``(u, new slot values)``."""
        decl = self.decl
        args = {s.name: v for s, v in zip(decl.slots, values)}
        if decl.params:
            args["param"] = param
        for k, v in kw.items():
            if k == "mask" or self.fn_any or k in self.fn_names:
                args[k] = v
        out = self.rule.fn(g, **args)
        if not decl.slots:
            return out, ()
        return out[0], tuple(out[1:])

    def _leaf(self, index, g, olds, p, mask, scalars_for, count):
        decl = self.decl
        ct = _tree.compute_dtype(g.dtype)
        rt = _tree.real_dtype(ct)
        kw = scalars_for(ct, rt)
        g_ = g.astype(ct)
        p_ = None if p is None else p.astype(ct)
        pass_mask = mask is not True and "mask" in self.fn_names
        if pass_mask:
            kw["mask"] = mask
        dtypes = [rt if s.real else ct for s in decl.slots]
        if any(isinstance(old, QuantizedArray) for old in olds):
            if jnp.issubdtype(g.dtype, jnp.complexfloating):
                q = next(old for old in olds if isinstance(old, QuantizedArray))
                raise TreeMismatchError(
                    decl.name, "the updates have the wrong dtype for the 8-bit moments", "",
                    f"a real dtype (the quantized moment of {_tree.describe(q)})",
                    _tree.describe(g))
            u, news = _codecs.quantized_leaf_step(self.call, g_, tuple(olds), tuple(dtypes),
                                                  p_, kw)
        else:
            values = tuple(_codecs.decode(old, d) for old, d in zip(olds, dtypes))
            u, news = self._call_rule(g_, values, p_, kw)
        encoded = []
        for k, (spec, old, new) in enumerate(zip(self.storage, olds, news)):
            if isinstance(new, QuantizedArray):
                encoded.append(new)
                continue
            key = (_codecs.stochastic_key(spec, _tree.safe_increment(count), k, index)
                   if _codecs.random_bits(spec) else None)
            new = _codecs.encode(spec, new, old, key)
            if mask is not True and not pass_mask:
                new = jnp.where(mask, new, old)
            encoded.append(new)
        u = u.astype(g.dtype)
        if mask is not True and not pass_mask:
            u = jnp.where(mask, u, g)
        return u, encoded


# ------------------------------------------------------------------------- the decorators


def _bind(name: str, sig: inspect.Signature, args: tuple, kwargs: dict
          ) -> inspect.BoundArguments:
    """A factory's arguments bound to its signature, defaults applied; a wrong call raises
    :class:`jopt.errors.InvalidCallError` naming the factory and showing its signature."""
    return bind(name, sig, args, kwargs)


def _bool_options(name: str, sig: inspect.Signature, bound: inspect.BoundArguments) -> None:
    for arg, p in sig.parameters.items():
        if isinstance(p.default, bool) and arg in bound.arguments:
            value = bound.arguments[arg]
            if not isinstance(value, (bool, np.bool_)):
                raise InvalidHyperparameterError(name, arg, value, "a bool")


def _display(sig: inspect.Signature, arguments: Mapping[str, Any], always: set[str],
             normalized: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments ``repr`` shows: the hyperparameters (and required arguments) always,
    the others when they differ from their default (storage options normalized)."""
    out = {}
    for arg, p in sig.parameters.items():
        if arg not in arguments:
            continue
        value = arguments[arg]
        required = p.default is inspect.Parameter.empty
        if arg in always or required:
            out[arg] = value
            continue
        same = value is p.default
        if not same:
            try:
                same = bool(config_key(value) == config_key(p.default))
            except Exception:  # noqa: BLE001 - incomparable values are shown
                same = False
        if not same:
            out[arg] = normalized.get(arg, value)
    return out


def transformation(*, kind: str, hyperparams: Mapping[str, Hyper] | None = None,
                   slots: Sequence[Slot] = (), params: bool = False, mask: str | None = None,
                   state: str | None = None, examples: Mapping[str, Any] | None = None,
                   descends: bool = False) -> Callable:
    """Declares a building block; see the module docstring and ``CONTRIBUTING.md``.

    Args:
      kind: ``"elementwise"`` (the rule treats every element alike: it runs on packed
        buffers as they are), ``"per_leaf"`` (it needs whole tensors: on packed parameters it
        runs on each original leaf, with a per-leaf state) or ``"whole_tree"`` (its ``prep``
        reduces over the whole update tree, with reductions that do not depend on the
        layout, then an elementwise rule applies).
      hyperparams: ``{argument name: Hyper}``, in the order they are validated and stored.
      slots: the per-parameter buffers, in the order the rule receives and returns them.
      params: the rule reads the parameters (``update`` then requires them).
      mask: the factory argument that selects leaves (a tree of bools or a callable), or
        ``None``. Leaves where it is False pass through unchanged.
      state: the state type's name (default: the factory's name in CamelCase + ``State``).
      examples: configurations for the conformance tests (``{id: kwargs}``); default: the
        factory with its defaults.
      descends: the transformation applies the learning rate (it must descend by itself).
    """
    if kind not in KINDS[:3]:
        raise ValueError(f"kind must be one of {KINDS[:3]}, got {kind!r}")
    hyperparams = dict(hyperparams or {})
    slots = tuple(slots)

    def wrap(factory):
        name = factory.__name__
        sig = inspect.signature(factory)
        missing = [n for n in list(hyperparams) + [s.option for s in slots if s.option]
                   + ([mask] if mask else []) if n not in sig.parameters]
        if missing:
            raise TypeError(f"{name}: declared arguments {missing} are not in its signature")
        has_state = bool(hyperparams or slots)
        state_cls = _state_type(state or _camel(name) + "State", factory.__module__, slots,
                                hyperparams, name) if has_state else None
        decl = Declaration(name, kind, hyperparams, slots, params, mask, state_cls)
        qualname = f"{factory.__module__}.{factory.__qualname__}"

        @functools.wraps(factory)
        def build(*args, **kwargs):
            bound = _bind(name, sig, args, kwargs)
            arguments = bound.arguments
            stored = {h: decl.hyperparams[h].store(name, h, arguments[h]) for h in hyperparams}
            _bool_options(name, sig, bound)
            if mask is not None:
                check_mask_option(name, mask, arguments[mask])
            options = {}
            for slot in slots:
                for opt in (slot.option, slot.fallback):
                    if opt and opt not in options:
                        options[opt] = _codecs.resolve(name, opt, arguments[opt])
            rule = factory(*bound.args, **bound.kwargs)
            if not isinstance(rule, Rule):
                rule = Rule(rule)
            storage = []
            for slot in slots:
                if slot.name in rule.storage:
                    spec = rule.storage[slot.name]
                else:
                    spec = options.get(slot.option) if slot.option else None
                    if spec is None and slot.fallback:
                        spec = options.get(slot.fallback)
                storage.append(spec)
            for slot, spec in zip(slots, storage):
                if slot.shape is not None and isinstance(spec, _codecs.Blockwise8bit):
                    raise InvalidHyperparameterError(
                        name, slot.option or f"storage of {slot.name}", spec,
                        f"a dtype or jopt.StochasticRounding: the {slot.name} buffer has a "
                        "shape of its own, not the parameter's, and 8-bit blocks follow the "
                        "parameter")
            blocks = {s.block_size for s in storage if isinstance(s, _codecs.Blockwise8bit)}
            if len(blocks) > 1:
                raise InvalidHyperparameterError(
                    name, "block_size", sorted(blocks),
                    "the same for every 8-bit slot of one transformation")
            built = _Transformation(decl, stored, rule, tuple(storage),
                                    arguments[mask] if mask else None,
                                    _built_by_optax_inject())
            config = _display(sig, arguments, set(hyperparams), options)
            key = (qualname, tuple(
                (a, config_key(stored[a]) if a in stored else config_key(options.get(a, v)))
                for a, v in arguments.items()))
            effective = "per_leaf" if built.per_leaf else kind
            tx = GradientTransformation._configured(built.init, built.update, name=name,
                                                    config=config, key=key, kind=effective)
            tx._declaration = decl
            return tx

        build.State = state_cls
        build.declaration = decl
        _registry.add(name, build, examples, descends, False)
        return build

    return wrap


def _link_hyperparams(tx: Any) -> set[str]:
    """The hyperparameter names declared by ``tx`` and its links, recursively."""
    names: set[str] = set()
    decl = getattr(tx, "_declaration", None)
    if decl is not None:
        names |= set(decl.hyperparams)
    for link in getattr(tx, "_links", ()):
        names |= _link_hyperparams(link)
    return names


def optimizer(*, examples: Mapping[str, Any] | None = None, descends: bool = True,
              renames: Mapping[str, str] | None = None) -> Callable:
    """Names and configures a named optimizer whose body returns a chain of blocks.

    The arguments that feed a hyperparameter of one of its links are always shown by
    ``repr``; the others when they differ from their default. Equality is the chain's (the
    values its links store). ``renames`` maps an argument to the hyperparameter it sets when
    the names differ (``sgd``'s ``momentum`` is ``trace``'s ``decay``).
    """

    def wrap(fn):
        name = fn.__name__
        sig = inspect.signature(fn)
        qualname = f"{fn.__module__}.{fn.__qualname__}"

        @functools.wraps(fn)
        def build(*args, **kwargs):
            bound = _bind(name, sig, args, kwargs)
            tx = fn(*bound.args, **bound.kwargs)
            hp_names = _link_hyperparams(tx) | set((renames or {}).keys())
            config = _display(sig, bound.arguments, hp_names, {})
            return GradientTransformation._configured(
                tx.init, tx.update, name=name, config=config, key=(qualname, tx._jopt_key()),
                kind="combinator", links=(tx,))

        build.renames = dict(renames or {})
        _registry.add(name, build, examples, descends, False)
        return build

    return wrap
