"""Early stopping as a pure state machine on arrays.

``stopper = jopt.early_stopping(mode="min", patience=5)`` builds the (static) configuration;
``state = stopper.init(params)`` the state; ``state = stopper.update(state, metric, params)``
one decision. Every transition is arithmetic on arrays (``jnp.where``), so the same code runs
eagerly, under ``jit``, ``vmap`` (a population stops member by member) and inside
``lax.scan`` / ``lax.while_loop``. It decides; the caller acts (breaks its loop, checkpoints).

Units: ``patience`` and the recorded steps count *calls to update* (usually epochs or
evaluation rounds, whatever the caller feeds it), never optimizer steps.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jopt import _plateau
from jopt._checks import check_match
from jopt._config import config_key, format_value
from jopt._tree import place_like
from jopt._validate import check_dtype_option, checked_call
from jopt.errors import HostOnlyError, InvalidHyperparameterError, TreeMismatchError


class Status(enum.IntEnum):
    """Status codes kept (as int32) in the early-stopping and plateau states; each carries a
    message. Codes are only ever appended (checkpoints store them)."""

    RUNNING = 0
    IMPROVED = 1
    STOPPED_PATIENCE = 2
    STOPPED_NON_FINITE = 3
    STOPPED_GOAL = 4
    STOPPED_DIVERGED = 5
    WARMUP = 6
    COOLDOWN = 7
    REDUCED = 8

    @property
    def message(self) -> str:
        return _MESSAGES[self]

    @property
    def stopped(self) -> bool:
        return Status.STOPPED_PATIENCE <= self <= Status.STOPPED_DIVERGED


_MESSAGES = {
    Status.RUNNING: "running: no improvement on the last update",
    Status.IMPROVED: "running: the last update improved the metric",
    Status.STOPPED_PATIENCE: "patience exhausted",
    Status.STOPPED_NON_FINITE: "non-finite metric",
    Status.STOPPED_GOAL: "goal reached (stopping_threshold)",
    Status.STOPPED_DIVERGED: "diverged (divergence_threshold)",
    Status.WARMUP: "running: warming up (before start_step)",
    Status.COOLDOWN: "running: cooling down after a reduction",
    Status.REDUCED: "running: the last update reduced the learning rate",
}


def is_stopped(status: jax.Array) -> jax.Array:
    """Traceable: whether a status code (array) means stopped."""
    return (status >= int(Status.STOPPED_PATIENCE)) & (status <= int(Status.STOPPED_DIVERGED))


class EarlyStoppingState(NamedTuple):
    """State of :func:`early_stopping`; every leaf is an array.

    Attributes:
      step: int32 scalar, calls to ``update`` while running (the stopping call included).
      best_value: float32 scalar, best metric so far (the ``baseline``, or +-inf, before).
      best_step: int32 scalar, 0-based index of the call that gave ``best_value``; -1 if none.
      wait: int32 scalar, consecutive non-improving calls.
      cooldown_count: int32 scalar, calls left in cooldown (always 0 for early stopping,
        whose action ends the run; kept so both users of the plateau core share a layout).
      status: int32 scalar, a :class:`Status` code.
      hyperparams: ``min_delta``, ``baseline``, ``stopping_threshold``,
        ``divergence_threshold`` (float32) and ``patience``, ``cooldown``, ``start_step``
        (int32): data, so they can differ per member of a vmapped population and change
        without recompiling (:func:`jopt.set_hyperparams`).
      best_params: with ``keep_best``, a copy of the parameters at ``best_step`` (same tree,
        shapes and sharding; dtype ``best_dtype`` or the parameters'); else ``None``.
    """

    step: jax.Array
    best_value: jax.Array
    best_step: jax.Array
    wait: jax.Array
    cooldown_count: jax.Array
    status: jax.Array
    hyperparams: dict[str, jax.Array]
    best_params: Any = None

    @property
    def stopped(self) -> jax.Array:
        """Whether the run has stopped, as a bool array: traceable, so usable inside ``jit``
        and as a ``lax.while_loop`` condition (batched under ``vmap``). The host-side
        :func:`should_stop` returns the same as a Python bool."""
        return is_stopped(self.status)


# The declarations travel with the state type (set_hyperparams validates against them).
EarlyStoppingState._jopt_hyperparams = {k: v for k, v in _plateau.HYPERPARAMS.items()
                                        if k != "cooldown"}
EarlyStoppingState._jopt_count = "step"

_FIELDS = ("step", "best_value", "best_step", "wait", "cooldown_count")


class EarlyStopping:
    """Configuration of an early-stopping state machine; see :func:`early_stopping`.

    Methods ``init(params=None) -> state`` and ``update(state, metric, params=None) -> state``
    are pure functions. Instances with equal configuration compare and hash equal.
    """

    def __init__(self, **config):
        self._config = config
        for k, v in config.items():
            setattr(self, k, v)
        # Equality compares the values the state stores (1e-3 and np.float32(1e-3) agree).
        stored = _plateau.hyperparams(
            self.mode, min_delta=self.min_delta, patience=self.patience,
            start_step=self.start_step, baseline=self.baseline,
            stopping_threshold=self.stopping_threshold,
            divergence_threshold=self.divergence_threshold)
        static = {k: v for k, v in config.items() if k not in stored}
        self._stored_key = (config_key(stored), config_key(static))

    def _key(self):
        return self._stored_key

    def __eq__(self, other):
        return isinstance(other, EarlyStopping) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        args = ", ".join(f"{k}={format_value(v)}" for k, v in self._config.items())
        return f"early_stopping({args})"

    def init(self, params: Any = None) -> EarlyStoppingState:
        """The initial state (nothing seen yet).

        Args:
          params: the parameters; required with ``keep_best=True`` (their copy is the
            state's ``best_params``), else ignored.

        Returns:
          An :class:`EarlyStoppingState` with status ``RUNNING``.

        Raises:
          InvalidHyperparameterError: if ``keep_best=True`` and ``params`` is None.
        """
        if self.keep_best and params is None:
            raise InvalidHyperparameterError(
                "early_stopping", "params", None,
                "given to init when keep_best=True (the best copy is made from them)",
            )
        best = None
        if self.keep_best:
            # A real copy: sharing the parameters' buffers would break buffer donation.
            best = jax.tree_util.tree_map(
                lambda p: jnp.array(p, dtype=self.best_dtype or jnp.asarray(p).dtype, copy=True),
                params,
            )
        hp = _plateau.hyperparams(
            self.mode, min_delta=self.min_delta, patience=self.patience,
            start_step=self.start_step, baseline=self.baseline,
            stopping_threshold=self.stopping_threshold,
            divergence_threshold=self.divergence_threshold,
        )
        # Stopping ends the run, so a cooldown after it has no meaning: not an option here.
        del hp["cooldown"]
        state = EarlyStoppingState(
            **_plateau.initial_fields(hp),
            status=jnp.asarray(int(Status.RUNNING), jnp.int32),
            hyperparams=hp,
            best_params=best,
        )
        return place_like(params, state) if params is not None else state

    def update(
        self, state: EarlyStoppingState, metric: Any, params: Any = None
    ) -> EarlyStoppingState:
        """One decision from one metric value.

        Args:
          state: the current state.
          metric: a real scalar (the validation loss, say); any float or int dtype.
          params: the parameters that produced ``metric``; required with ``keep_best``.

        Returns:
          The next state. Once stopped, the state no longer changes.

        Raises:
          InvalidMetricError: if ``metric`` is not a real scalar.
          TreeMismatchError: if ``params`` is missing with ``keep_best`` or does not match the
            tree given to ``init``.
        """
        if not isinstance(state, EarlyStoppingState):
            raise TreeMismatchError(
                "early_stopping", "the state is not the one init builds", "",
                "EarlyStoppingState", type(state).__name__,
            )
        metric = _plateau.as_metric("early_stopping", metric)
        if self.keep_best:
            if params is None:
                raise TreeMismatchError(
                    "early_stopping", "update needs the parameters when keep_best=True", "",
                    "params=<the parameter tree>", "None",
                )
            check_match("early_stopping", state.best_params, params,
                        expected_name="the parameters init saw", got_name="params")

        fields = {k: getattr(state, k) for k in _FIELDS}
        hp = {**_plateau.current_hyperparams(state.hyperparams, state.step),
              "cooldown": jnp.zeros([], jnp.int32)}
        new, f = _plateau.decide(self.mode, self.min_delta_mode, self.check_finite, hp, fields,
                                 metric, self.axis_name)
        # Precedence: non-finite, goal, divergence, patience (Lightning's order).
        status = jnp.select(
            [f["non_finite"], f["goal"], f["diverged"], f["plateau"], f["improved"], f["warm"]],
            [int(Status.STOPPED_NON_FINITE), int(Status.STOPPED_GOAL),
             int(Status.STOPPED_DIVERGED), int(Status.STOPPED_PATIENCE), int(Status.IMPROVED),
             int(Status.WARMUP)],
            int(Status.RUNNING),
        ).astype(jnp.int32)
        live = ~state.stopped
        take = live & f["improved"]
        new_best_params = state.best_params
        if self.keep_best:
            new_best_params = jax.tree_util.tree_map(
                lambda b, p: jnp.where(take, jnp.asarray(p).astype(b.dtype), b),
                state.best_params, params,
            )
        kept = {k: jnp.where(live, new[k], fields[k]) for k in _FIELDS}
        return EarlyStoppingState(
            **kept,
            status=jnp.where(live, status, state.status),
            hyperparams=state.hyperparams,
            best_params=new_best_params,
        )


@checked_call
def early_stopping(
    mode: str = "min",
    min_delta: float = 0.0,
    min_delta_mode: str = "abs",
    patience: int = 0,
    *,
    start_step: int = 0,
    baseline: float | None = None,
    stopping_threshold: float | None = None,
    divergence_threshold: float | None = None,
    check_finite: bool = True,
    keep_best: bool = False,
    best_dtype: Any = None,
    axis_name: Any = None,
) -> EarlyStopping:
    r"""Early stopping on a monitored metric, as a jit-able state machine.

    On each call with a metric :math:`x` (the k-th call, 0-based), with :math:`b` the best
    value so far (initially ``baseline``, else :math:`\pm\infty`):

    * calls with ``k < start_step`` are a warm-up: not tracked, no decision (a non-finite
      metric still stops the run);
    * *improvement*: :math:`x` finite and :math:`x < b - \delta` (mode ``"min"``) or
      :math:`x > b + \delta` (mode ``"max"``), with :math:`\delta` = ``min_delta``
      (``min_delta_mode="abs"``) or ``min_delta * |b|`` (``"rel"``; correct for negative
      metrics too). It records :math:`b = x` and the step, resets the wait count and (with
      ``keep_best``) copies the parameters;
    * otherwise the wait count grows by one and the run stops with "patience exhausted" when
      it reaches ``patience`` (patience ``p`` stops on exactly the ``p``-th consecutive
      non-improving call; ``p = 0`` and ``p = 1`` both stop on the first, as in Keras and
      Lightning);
    * the run also stops at once with "goal reached" when a finite :math:`x` is better than
      ``stopping_threshold``, with "diverged" when a finite :math:`x` is worse than
      ``divergence_threshold`` (strict comparisons), and with "non-finite metric" when
      :math:`x` is NaN or infinite (``check_finite``; such a value is never an improvement,
      also on the first call; with ``check_finite=False`` it is a non-improving call that
      counts towards patience).
      Precedence: non-finite, goal, divergence, patience. A goal-reaching value that also
      improves is recorded as the best.

    Once stopped, ``update`` leaves the state unchanged.

    Args:
      mode: ``"min"`` (lower is better, e.g. a loss) or ``"max"`` (e.g. an accuracy).
        Default ``"min"``.
      min_delta: smallest change that counts as an improvement, >= 0. Default 0.
      min_delta_mode: ``"abs"`` or ``"rel"`` (a fraction of ``|best|``). Default ``"abs"``.
      patience: consecutive non-improving calls that stop the run, an integer >= 0.
        Default 0 (Keras's default).
      start_step: calls ignored at the start (warm-up), an integer >= 0. Default 0.
      baseline: a value the metric must beat to count as improving; None (default) for none.
      stopping_threshold: stop as soon as the metric is better than this; default None.
      divergence_threshold: stop as soon as the metric is worse than this; default None.
      check_finite: stop on a NaN or infinite metric. Default True (with False such a
        metric simply never improves).
      keep_best: keep an on-device copy of the best parameters in the state (needs
        ``params`` in ``init`` and ``update``). Default False.
      best_dtype: storage dtype of that copy (e.g. ``"bfloat16"`` to halve its memory);
        default the parameters' dtypes.
      axis_name: a mapped axis (``pmap``/``shard_map``) over which the metric is averaged
        before deciding, so every replica takes the same decision. Default None.

    Every numeric option is data in the state (``state.hyperparams``): it can differ per
    member of a vmapped population and be changed with :func:`jopt.set_hyperparams` without
    recompiling (``+-inf`` switches a baseline or threshold off). Units: all counts are
    calls to ``update`` (epochs or evaluation rounds),
    never optimizer steps.

    Returns:
      An :class:`EarlyStopping` with ``init`` and ``update``. Read results with
      :func:`should_stop`, :func:`stop_reason`, :func:`best_params` or, inside compiled code,
      ``state.stopped``.

    Raises:
      InvalidHyperparameterError: for an unknown ``mode`` or ``min_delta_mode``, a negative
        ``min_delta``, ``patience`` or ``start_step``, a non-integer count, non-finite
        thresholds, or a ``stopping_threshold`` that is not better than
        ``divergence_threshold``.

    References:
      Prechelt, `Early Stopping - But When? <https://doi.org/10.1007/3-540-49430-8_3>`_,
      1998. Options follow Keras's ``EarlyStopping`` (``patience``, ``min_delta``,
      ``baseline``, ``start_from_epoch``) and Lightning's (``stopping_threshold``,
      ``divergence_threshold``, ``check_finite``).
    """
    name = "early_stopping"
    _plateau.validate(name, mode=mode, min_delta=min_delta, min_delta_mode=min_delta_mode,
                      patience=patience, start_step=start_step, baseline=baseline,
                      stopping_threshold=stopping_threshold,
                      divergence_threshold=divergence_threshold, check_finite=check_finite)
    if not isinstance(keep_best, (bool, np.bool_)):
        raise InvalidHyperparameterError(name, "keep_best", keep_best, "a bool")
    best_dt = check_dtype_option(name, "best_dtype", best_dtype)
    config = dict(mode=mode, min_delta=min_delta, min_delta_mode=min_delta_mode,
                  patience=int(patience), start_step=int(start_step), baseline=baseline,
                  stopping_threshold=stopping_threshold,
                  divergence_threshold=divergence_threshold, check_finite=bool(check_finite),
                  keep_best=bool(keep_best), best_dtype=best_dt, axis_name=axis_name)
    return EarlyStopping(**config)


def _status(fn: str, state: Any) -> np.ndarray:
    if not hasattr(state, "status") or not isinstance(state, tuple):
        raise TreeMismatchError(
            fn, "the argument is not an early-stopping state", "", "EarlyStoppingState",
            type(state).__name__,
        )
    if isinstance(state.status, jax.core.Tracer):
        raise HostOnlyError(
            fn, "is a host-side helper and cannot run inside jit/vmap/scan", "",
            "a concrete state (inside compiled code use state.stopped)", "a traced state",
        )
    return np.asarray(jax.device_get(state.status))


def should_stop(state: EarlyStoppingState) -> Any:
    """Host-side: whether the run has stopped.

    Reads the (replicated) status scalar, so it works in multi-process runs. Inside compiled
    code use the traceable :attr:`EarlyStoppingState.stopped` instead.

    Args:
      state: an :class:`EarlyStoppingState`, possibly batched by ``vmap``.

    Returns:
      A Python bool; a NumPy bool array (one per member) for a batched state.

    Raises:
      TreeMismatchError: if ``state`` is not an :class:`EarlyStoppingState`.
    """
    status = _status("should_stop", state)
    stopped = (status >= int(Status.STOPPED_PATIENCE)) & (status <= int(Status.STOPPED_DIVERGED))
    return bool(stopped) if stopped.ndim == 0 else stopped


def stop_reason(state: EarlyStoppingState) -> Any:
    """Host-side: the status as a message.

    Args:
      state: an :class:`EarlyStoppingState`, possibly batched by ``vmap``.

    Returns:
      ``"patience exhausted"``, ``"non-finite metric"`` or ``"running: ..."`` (see
      :class:`Status`); a list of messages (one per member) for a batched state.

    Raises:
      TreeMismatchError: if ``state`` is not an :class:`EarlyStoppingState`.
    """
    status = _status("stop_reason", state)
    if status.ndim == 0:
        return Status(int(status)).message
    return [Status(int(s)).message for s in status.reshape(-1)]


def best_params(state: EarlyStoppingState) -> Any:
    """The best parameters kept by ``keep_best=True``.

    Args:
      state: an :class:`EarlyStoppingState` built with ``keep_best=True``.

    Returns:
      The copy of the parameters from the call with the best metric (the parameters given to
      ``init`` if no finite metric was seen): same tree, shapes and sharding as the parameters,
      dtype ``best_dtype`` or the parameters'.

    Raises:
      InvalidHyperparameterError: if the state keeps no copy (``keep_best=False``).
    """
    if not isinstance(state, EarlyStoppingState) or state.best_params is None:
        raise InvalidHyperparameterError(
            "best_params", "state", "a state without a parameter copy",
            "built with early_stopping(..., keep_best=True)",
        )
    return state.best_params
