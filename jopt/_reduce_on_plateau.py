"""``reduce_on_plateau``: scale updates down when a monitored value stops improving, and the
population helpers ``gate_stopped`` / ``population_status``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jopt import _plateau, _tree
from jopt._base import GradientTransformation, fresh
from jopt._checks import check_match, check_state_type, check_updates
from jopt._config import config_key
from jopt._declare import with_plain_arrays
from jopt._early_stopping import Status, _status, is_stopped
from jopt._registry import register
from jopt._tree import safe_increment
from jopt.errors import InvalidHyperparameterError, InvalidMetricError, TreeMismatchError

_FIELDS = ("step", "best_value", "best_step", "wait", "cooldown_count")


class ReduceOnPlateauState(NamedTuple):
    """State of :func:`reduce_on_plateau`; every leaf is an array.

    Attributes:
      step, best_value, best_step, wait, cooldown_count, status: the plateau tracker (see
        :class:`jopt.EarlyStoppingState`); ``step`` counts *decisions*, i.e. groups of
        ``accumulation_size`` calls.
      scale: float32 scalar, the current factor applied to the updates (starts at 1).
      acc_sum: float32 scalar, sum of the values of the group being accumulated.
      acc_count: int32 scalar, number of values in that group.
      hyperparams: ``factor``, ``min_scale``, ``min_delta``, ``baseline`` (float32) and
        ``patience``, ``cooldown``, ``start_step``, ``accumulation_size`` (int32).
      best_params: with ``restore_best``, the parameters at the best value; else ``None``.
    """

    step: jax.Array
    best_value: jax.Array
    best_step: jax.Array
    wait: jax.Array
    cooldown_count: jax.Array
    status: jax.Array
    scale: jax.Array
    acc_sum: jax.Array
    acc_count: jax.Array
    hyperparams: dict[str, jax.Array]
    best_params: Any = None


ReduceOnPlateauState._jopt_hyperparams = {
    **{k: v for k, v in _plateau.HYPERPARAMS.items()
       if k not in ("stopping_threshold", "divergence_threshold")},
    **_plateau.EXTRA}
ReduceOnPlateauState._jopt_count = "step"


@register(examples={
    "": lambda jopt: jopt.chain(jopt.adam(0.05), jopt.reduce_on_plateau(patience=1)),
    "restore_best": lambda jopt: jopt.chain(jopt.adam(0.05), jopt.reduce_on_plateau(
        patience=1, restore_best=True))}, descends=True, needs_value=True)
def reduce_on_plateau(
    factor: float = 0.1,
    patience: int = 10,
    cooldown: int = 0,
    min_scale: float = 0.0,
    *,
    mode: str = "min",
    min_delta: float = 1e-4,
    min_delta_mode: str = "abs",
    accumulation_size: int = 1,
    start_step: int = 0,
    baseline: float | None = None,
    restore_best: bool = False,
    axis_name: Any = None,
) -> GradientTransformation:
    """Multiplies updates by a scale that drops by ``factor`` when the monitored value plateaus.

    ``update(updates, state, params=None, *, value)`` takes the monitored value (usually the
    loss) through the extra argument ``value``, as optax's combinators and :func:`jopt.chain`
    pass it. Values are averaged over groups of ``accumulation_size`` calls; each full group is
    one decision of the plateau core (see :func:`jopt.early_stopping` for ``mode``,
    ``min_delta``, ``min_delta_mode``, ``start_step`` and ``baseline``, which mean the same
    here). When ``patience`` consecutive decisions bring no improvement (outside the
    ``cooldown`` decisions that follow a reduction):

    .. math::
       s \\leftarrow \\max(s \\cdot \\text{factor}, \\text{min\\_scale}),

    the wait count restarts and a cooldown begins. Every call returns ``s * updates`` with the
    current scale (the new one on the reducing call). A non-finite value never improves.

    With ``restore_best=True`` the state keeps a copy of the parameters at the best value
    (``params`` must be passed), and the reducing call returns ``best_params - params``
    instead, which rolls the parameters back to the best copy when applied (up to the
    rounding of ``params + (best_params - params)`` in the updates' dtype; for a bitwise
    roll-back, replace the parameters by ``state.best_params`` yourself). Then this
    transformation must be the *last* link of a chain (after the learning rate), so that the
    roll-back is applied as computed.

    Args:
      factor: multiplier of the scale at each reduction, in (0, 1). Default 0.1.
      patience: non-improving decisions before a reduction, integer >= 0. Default 10.
      cooldown: decisions after a reduction that do not count towards patience, >= 0.
        Default 0.
      min_scale: lower bound of the scale, in [0, 1]. Default 0.
      mode: ``"min"`` or ``"max"``. Default ``"min"``.
      min_delta: improvement margin, >= 0. Default 1e-4 (Keras's).
      min_delta_mode: ``"abs"`` or ``"rel"``. Default ``"abs"``.
      accumulation_size: calls averaged into one decision, integer >= 1. Default 1.
      start_step: decisions ignored at the start, >= 0. Default 0.
      baseline: a value that must be beaten to count as improving. Default None.
      restore_best: roll back to the best parameters on each reduction. Default False.
      axis_name: mapped axis over which the value is averaged before deciding. Default None.

    Every numeric option is data in the state (``get_hyperparams`` / ``set_hyperparams``).
    Units: ``patience``, ``cooldown`` and ``start_step`` count decisions (groups of
    ``accumulation_size`` calls).

    Returns:
      A :class:`GradientTransformation` with state :class:`ReduceOnPlateauState`.

    Raises:
      InvalidHyperparameterError: for ``factor`` outside (0, 1), ``min_scale`` outside
        [0, 1], negative counts, ``accumulation_size < 1``, an unknown mode.
      InvalidMetricError: in ``update``, if ``value`` is missing or not a real scalar.
      TreeMismatchError: in ``update``, if ``restore_best`` and ``params`` is missing.

    References:
      Keras ``ReduceLROnPlateau`` and PyTorch ``ReduceLROnPlateau`` (factor, patience,
      cooldown, min_lr), optax ``contrib.reduce_on_plateau`` (accumulation_size, min_scale).
    """
    name = "reduce_on_plateau"
    _plateau.validate(name, mode=mode, min_delta=min_delta, min_delta_mode=min_delta_mode,
                      patience=patience, cooldown=cooldown, start_step=start_step,
                      baseline=baseline)
    for key, value in (("factor", factor), ("min_scale", min_scale),
                       ("accumulation_size", accumulation_size)):
        _plateau.EXTRA[key].check(name, key, value)
    if not isinstance(restore_best, (bool, np.bool_)):
        raise InvalidHyperparameterError(name, "restore_best", restore_best, "a bool")
    core_hp = _plateau.hyperparams(mode, min_delta=min_delta, patience=patience,
                                   cooldown=cooldown, start_step=start_step, baseline=baseline)
    # Thresholds are early stopping's business: fixed at +-inf here, not stored.
    fixed = {k: core_hp.pop(k) for k in ("stopping_threshold", "divergence_threshold")}
    hp0 = {"factor": _plateau.EXTRA["factor"].store(name, "factor", factor),
           "min_scale": _plateau.EXTRA["min_scale"].store(name, "min_scale", min_scale),
           **core_hp, "accumulation_size": _plateau.EXTRA["accumulation_size"].store(
               name, "accumulation_size", accumulation_size)}

    def init_fn(params):
        params = _tree.unwrap_variables(params)
        if restore_best and params is None:
            raise InvalidHyperparameterError(
                name, "params", None, "given to init when restore_best=True")
        # A real copy: sharing the parameters' buffers would break buffer donation.
        best = (jax.tree_util.tree_map(lambda p: jnp.array(p, copy=True), params)
                if restore_best else None)
        return ReduceOnPlateauState(
            **_plateau.initial_fields(hp0),
            status=jnp.asarray(int(Status.RUNNING), jnp.int32),
            scale=jnp.ones([], jnp.float32),
            acc_sum=jnp.zeros([], jnp.float32),
            acc_count=jnp.zeros([], jnp.int32),
            hyperparams=fresh(hp0),
            best_params=best,
        )

    def update_fn(updates, state, params=None, **extra_args):
        check_state_type(name, state, ReduceOnPlateauState)
        return with_plain_arrays(plain_update, updates, state, params, extra_args)

    def plain_update(updates, state, params=None, *, value=None, **extra_args):
        del extra_args
        if value is None:
            raise InvalidMetricError(
                f"{name}: update needs the monitored value: update(..., value=loss). (Inside "
                "a combinator of another library that drops extra arguments, wrap this "
                "transformation with jopt.to_optax(...), or use jopt.chain.)")
        metric = _plateau.as_metric(name, value).astype(jnp.float32)
        if restore_best:
            if params is None:
                raise TreeMismatchError(name, "update needs the parameters when "
                                        "restore_best=True", "", "params=<the parameter tree>",
                                        "None")
            check_match(name, state.best_params, params,
                        expected_name="the parameters init saw", got_name="params")
        updates, params = check_updates(name, updates, None, params)
        hp = _plateau.current_hyperparams(state.hyperparams, state.step)
        acc_sum = state.acc_sum + metric
        acc_count = safe_increment(state.acc_count)
        ready = acc_count >= hp["accumulation_size"]
        mean = acc_sum / jnp.maximum(acc_count, 1).astype(jnp.float32)
        fields = {k: getattr(state, k) for k in _FIELDS}
        new, f = _plateau.decide(mode, min_delta_mode, False, {**hp, **fixed}, fields, mean,
                                 axis_name)
        reduce = ready & f["plateau"]
        new["wait"] = jnp.where(reduce, 0, new["wait"])
        status = jnp.select(
            [reduce, f["improved"], f["cooling"], f["warm"]],
            [int(Status.REDUCED), int(Status.IMPROVED), int(Status.COOLDOWN),
             int(Status.WARMUP)], int(Status.RUNNING)).astype(jnp.int32)
        kept = {k: jnp.where(ready, new[k], fields[k]) for k in _FIELDS}
        f32 = jnp.float32
        scale = jnp.where(
            reduce,
            jnp.maximum(state.scale * hp["factor"].astype(f32), hp["min_scale"].astype(f32)),
            state.scale)
        take = ready & f["improved"]
        best = state.best_params
        if restore_best:
            best = jax.tree_util.tree_map(
                lambda b, p: jnp.where(take, p.astype(b.dtype), b), state.best_params, params)

        def out(u, b=None, p=None):
            ct = _tree.compute_dtype(u.dtype)
            scaled = (u.astype(ct) * scale.astype(ct)).astype(u.dtype)
            if b is None:
                return scaled
            back = (b.astype(ct) - p.astype(ct)).astype(u.dtype)
            return jnp.where(reduce, back, scaled)

        if restore_best:
            new_updates = jax.tree_util.tree_map(out, updates, best, params)
        else:
            new_updates = jax.tree_util.tree_map(out, updates)
        return new_updates, ReduceOnPlateauState(
            **kept,
            status=jnp.where(ready, status, state.status),
            scale=scale,
            acc_sum=jnp.where(ready, 0.0, acc_sum),
            acc_count=jnp.where(ready, 0, acc_count).astype(jnp.int32),
            hyperparams=state.hyperparams,
            best_params=best,
        )

    config = dict(factor=factor, patience=patience, cooldown=cooldown, min_scale=min_scale,
                  mode=mode, min_delta=min_delta, min_delta_mode=min_delta_mode,
                  accumulation_size=accumulation_size, start_step=start_step, baseline=baseline,
                  restore_best=bool(restore_best))
    if axis_name is not None:
        config["axis_name"] = axis_name
    static = (mode, min_delta_mode, bool(restore_best), config_key(axis_name))
    return GradientTransformation._configured(
        init_fn, update_fn, name=name, config=config, key=(name, config_key(hp0), static),
        kind="whole_tree")


def gate_stopped(stopper_state: Any, new: Any, old: Any) -> Any:
    """Freezes stopped members of a population: ``old`` where stopped, ``new`` where running.

    Use it on the parameters and the optimizer state after each step of a vmapped population,
    so that a member whose early stopping has fired no longer changes (bitwise)::

        params = jopt.gate_stopped(es_state, new_params, params)
        opt_state = jopt.gate_stopped(es_state, new_opt_state, opt_state)

    Works inside ``vmap`` (a scalar status per member) and outside it on batched trees (the
    status has the leading population axis of every leaf).

    Args:
      stopper_state: an :class:`jopt.EarlyStoppingState` (batched or not).
      new: the tree after the step.
      old: the tree before the step (same structure, shapes and dtypes).

    Returns:
      A tree like ``new``.

    Raises:
      TreeMismatchError: if ``new`` and ``old`` differ in structure or shape.
    """
    if not hasattr(stopper_state, "status") or not isinstance(stopper_state, tuple):
        raise TreeMismatchError("gate_stopped", "the first argument is not an early-stopping "
                                "state", "", "EarlyStoppingState", type(stopper_state).__name__)
    check_match("gate_stopped", old, new, expected_name="the old tree", got_name="new tree")
    stopped = is_stopped(stopper_state.status)
    for path, leaf in jax.tree_util.tree_flatten_with_path(new)[0]:
        if tuple(jnp.shape(leaf))[:stopped.ndim] != tuple(stopped.shape):
            raise TreeMismatchError(
                "gate_stopped", "a leaf does not have the population axes of the state",
                jax.tree_util.keystr(path), f"leading shape {tuple(stopped.shape)}",
                f"shape {tuple(jnp.shape(leaf))}")

    def pick(n, o):
        s = stopped.reshape(stopped.shape + (1,) * (jnp.ndim(n) - stopped.ndim))
        return jnp.where(s, o, n)

    return jax.tree_util.tree_map(pick, new, old)


def population_status(stopper_state: Any) -> list[dict[str, Any]]:
    """Host-side report of a batched early-stopping state, one dict per member.

    Args:
      stopper_state: an :class:`jopt.EarlyStoppingState` with a leading population axis.

    Returns:
      A list of ``{"member", "stopped", "reason", "calls", "best_step", "best_value"}``;
      ``calls`` is the number of ``update`` calls the member took part in.

    Raises:
      TreeMismatchError: if the state is not an early-stopping state.
    """
    status = _status("population_status", stopper_state).reshape(-1)
    steps = np.asarray(jax.device_get(stopper_state.step)).reshape(-1)
    best_step = np.asarray(jax.device_get(stopper_state.best_step)).reshape(-1)
    best_value = np.asarray(jax.device_get(stopper_state.best_value)).reshape(-1)
    return [
        {"member": i, "stopped": Status(int(s)).stopped, "reason": Status(int(s)).message,
         "calls": int(steps[i]), "best_step": int(best_step[i]),
         "best_value": float(best_value[i])}
        for i, s in enumerate(status)
    ]
