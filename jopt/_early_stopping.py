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

from jopt._base import safe_increment
from jopt._tree import check_match, place_like
from jopt._validate import as_state_scalar, check_dtype_option, check_real
from jopt.errors import InvalidHyperparameterError, InvalidMetricError, TreeMismatchError


class Status(enum.IntEnum):
    """Status codes kept (as int32) in :class:`EarlyStoppingState`; each carries a message.

    Codes >= ``STOPPED_PATIENCE`` mean the run has stopped. New codes are only ever appended.
    """

    RUNNING = 0
    IMPROVED = 1
    STOPPED_PATIENCE = 2
    STOPPED_NON_FINITE = 3

    @property
    def message(self) -> str:
        return _MESSAGES[self]

    @property
    def stopped(self) -> bool:
        return self >= Status.STOPPED_PATIENCE


_MESSAGES = {
    Status.RUNNING: "running: no improvement on the last update",
    Status.IMPROVED: "running: the last update improved the metric",
    Status.STOPPED_PATIENCE: "patience exhausted",
    Status.STOPPED_NON_FINITE: "non-finite metric",
}


class EarlyStoppingState(NamedTuple):
    """State of :func:`early_stopping`; every leaf is an array.

    Attributes:
      step: int32 scalar, number of metrics seen while running (calls to ``update`` before
        the stop, the stopping call included).
      best_value: float32 scalar, best metric so far (``+inf`` for mode min, ``-inf`` for max
        before the first finite metric).
      best_step: int32 scalar, 0-based index of the call that gave ``best_value``; -1 if none.
      wait: int32 scalar, consecutive non-improving calls.
      status: int32 scalar, a :class:`Status` code.
      hyperparams: ``{"min_delta": float32, "patience": int32}``: data, can differ per member
        of a vmapped population and be changed without recompiling.
      best_params: with ``keep_best``, a copy of the parameters at ``best_step`` (same tree,
        shapes and sharding; dtype ``best_dtype`` or the parameters'); else ``None``.
    """

    step: jax.Array
    best_value: jax.Array
    best_step: jax.Array
    wait: jax.Array
    status: jax.Array
    hyperparams: dict[str, jax.Array]
    best_params: Any = None

    @property
    def stopped(self) -> jax.Array:
        """Whether the run has stopped, as a bool array: traceable, so usable inside ``jit``
        and as a ``lax.while_loop`` condition (batched under ``vmap``). The host-side
        :func:`should_stop` returns the same as a Python bool."""
        return self.status >= int(Status.STOPPED_PATIENCE)


class EarlyStopping:
    """Configuration of an early-stopping state machine; see :func:`early_stopping`.

    Methods ``init(params=None) -> state`` and ``update(state, metric, params=None) -> state``
    are pure functions. Instances with equal configuration compare and hash equal.
    """

    def __init__(self, mode, min_delta, min_delta_mode, patience, keep_best, best_dtype):
        self.mode = mode
        self.min_delta = min_delta
        self.min_delta_mode = min_delta_mode
        self.patience = patience
        self.keep_best = keep_best
        self.best_dtype = best_dtype

    def _key(self):
        return (self.mode, float(self.min_delta), self.min_delta_mode, int(self.patience),
                self.keep_best, None if self.best_dtype is None else str(self.best_dtype))

    def __eq__(self, other):
        return isinstance(other, EarlyStopping) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        best = "None" if self.best_dtype is None else repr(np.dtype(self.best_dtype).name)
        return (
            f"early_stopping(mode={self.mode!r}, min_delta={self.min_delta!r}, "
            f"min_delta_mode={self.min_delta_mode!r}, patience={self.patience!r}, "
            f"keep_best={self.keep_best!r}, best_dtype={best})"
        )

    def init(self, params: Any = None) -> EarlyStoppingState:
        """The initial state (nothing seen yet).

        Args:
          params: the parameters; required with ``keep_best=True`` (their copy is the
            state's ``best_params``), else ignored.

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
            best = jax.tree_util.tree_map(
                lambda p: jnp.asarray(p).astype(self.best_dtype or jnp.asarray(p).dtype), params
            )
        inf = jnp.inf if self.mode == "min" else -jnp.inf
        state = EarlyStoppingState(
            step=jnp.zeros([], jnp.int32),
            best_value=jnp.asarray(inf, jnp.float32),
            best_step=jnp.asarray(-1, jnp.int32),
            wait=jnp.zeros([], jnp.int32),
            status=jnp.asarray(int(Status.RUNNING), jnp.int32),
            hyperparams={
                "min_delta": as_state_scalar(self.min_delta),
                "patience": jnp.asarray(self.patience, jnp.int32),
            },
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
        if not isinstance(metric, (int, float, np.generic, np.ndarray, jax.Array)) or isinstance(
                metric, (bool, np.bool_)):
            raise InvalidMetricError(
                f"early_stopping: the metric must be a real scalar; got {metric!r}."
            )
        try:
            if isinstance(metric, (int, float)):
                metric = float(metric)  # Python ints of any size compare as floats
            metric = jnp.asarray(metric)
        except (TypeError, ValueError, OverflowError):
            raise InvalidMetricError(
                f"early_stopping: the metric must be a real scalar; got {metric!r}."
            ) from None
        if metric.ndim != 0 or not (
            jnp.issubdtype(metric.dtype, jnp.floating) or jnp.issubdtype(metric.dtype, jnp.integer)
        ):
            raise InvalidMetricError(
                f"early_stopping: the metric must be a real scalar; got an array of "
                f"shape {metric.shape} and dtype {metric.dtype}."
            )
        if self.keep_best:
            if params is None:
                raise TreeMismatchError(
                    "early_stopping", "update needs the parameters when keep_best=True", "",
                    "params=<the parameter tree>", "None",
                )
            check_match("early_stopping", state.best_params, params,
                        expected_name="the parameters init saw", got_name="params")

        m = metric.astype(jnp.float32)
        hp = state.hyperparams
        stopped_before = state.stopped
        finite = jnp.isfinite(m)
        has_best = state.best_step >= 0
        best = state.best_value
        delta = hp["min_delta"].astype(jnp.float32)
        if self.min_delta_mode == "rel":
            # A margin relative to |best|; with no best yet (best = +-inf) it is not used.
            delta = delta * jnp.abs(jnp.where(has_best, best, 0.0))
        if self.mode == "min":
            beats = m < best - delta
        else:
            beats = m > best + delta
        improved = finite & (~has_best | beats)
        wait = jnp.where(improved, 0, safe_increment(state.wait))
        status = jnp.where(
            ~finite,
            int(Status.STOPPED_NON_FINITE),
            jnp.where(
                improved,
                int(Status.IMPROVED),
                jnp.where(wait >= hp["patience"], int(Status.STOPPED_PATIENCE),
                          int(Status.RUNNING)),
            ),
        ).astype(jnp.int32)

        live = ~stopped_before
        take = live & improved
        new_best_params = state.best_params
        if self.keep_best:
            new_best_params = jax.tree_util.tree_map(
                lambda b, p: jnp.where(take, jnp.asarray(p).astype(b.dtype), b),
                state.best_params, params,
            )
        return EarlyStoppingState(
            step=jnp.where(live, safe_increment(state.step), state.step),
            best_value=jnp.where(take, m, best),
            best_step=jnp.where(take, state.step, state.best_step),
            wait=jnp.where(live, wait, state.wait).astype(jnp.int32),
            status=jnp.where(live, status, state.status),
            hyperparams=hp,
            best_params=new_best_params,
        )


def early_stopping(
    mode: str = "min",
    min_delta: float = 0.0,
    min_delta_mode: str = "abs",
    patience: int = 0,
    *,
    keep_best: bool = False,
    best_dtype: Any = None,
) -> EarlyStopping:
    """Early stopping on a monitored metric, as a jit-able state machine.

    On each call with a metric :math:`x` (the k-th call, 0-based):

    * *improvement*: :math:`x` is finite and either nothing was seen yet, or
      :math:`x < b - \\delta` (mode ``"min"``) / :math:`x > b + \\delta` (mode ``"max"``),
      where :math:`b` is the best value so far and :math:`\\delta` is ``min_delta``
      (``min_delta_mode="abs"``) or ``min_delta * |b|`` (``"rel"``; correct for negative
      metrics too). An improvement records :math:`b = x`, the step, resets the wait count
      and (with ``keep_best``) copies the parameters.
    * otherwise the wait count grows by one; the run stops with reason "patience exhausted"
      when it reaches ``patience`` (so with ``patience = p`` the stop comes on exactly the
      ``p``-th consecutive non-improving call; ``p = 0`` and ``p = 1`` both stop on the first,
      as in Keras and Lightning).
    * a NaN or infinite metric is never an improvement, also on the first call, and stops the
      run at once with reason "non-finite metric".

    Once stopped, ``update`` leaves the state unchanged.

    Args:
      mode: ``"min"`` (lower is better, e.g. a loss) or ``"max"`` (e.g. an accuracy).
        Default ``"min"``.
      min_delta: smallest change that counts as an improvement, >= 0. Default 0.
      min_delta_mode: ``"abs"`` or ``"rel"`` (a fraction of ``|best|``). Default ``"abs"``.
      patience: consecutive non-improving calls that stop the run, an integer >= 0.
        Default 0 (Keras's default).
      keep_best: keep an on-device copy of the best parameters in the state (needs
        ``params`` in ``init`` and ``update``). Default False.
      best_dtype: storage dtype of that copy (e.g. ``"bfloat16"`` to halve its memory);
        default the parameters' dtypes.

    Returns:
      An :class:`EarlyStopping` with ``init`` and ``update``. Read results with
      :func:`should_stop`, :func:`stop_reason` and :func:`best_params`.

    Raises:
      InvalidHyperparameterError: for an unknown ``mode`` or ``min_delta_mode``, a negative
        ``min_delta`` or ``patience``, or a non-integer ``patience``.

    Examples:
      >>> import jopt
      >>> stopper = jopt.early_stopping(mode="min", patience=2)
      >>> state = stopper.init()
      >>> for loss in [1.0, 0.8, 0.85, 0.9, 0.7]:
      ...     state = stopper.update(state, loss)
      ...     if jopt.should_stop(state):
      ...         break
      >>> jopt.stop_reason(state), float(state.best_value), int(state.best_step)
      ('patience exhausted', 0.800000011920929, 1)

    References:
      Prechelt, `Early Stopping - But When? <https://doi.org/10.1007/3-540-49430-8_3>`_,
      1998. Semantics of ``patience``/``min_delta``/``mode`` follow Keras's ``EarlyStopping``
      and Lightning's ``EarlyStopping``.
    """
    name = "early_stopping"
    if mode not in ("min", "max"):
        raise InvalidHyperparameterError(name, "mode", mode, "'min' or 'max'")
    if min_delta_mode not in ("abs", "rel"):
        raise InvalidHyperparameterError(name, "min_delta_mode", min_delta_mode, "'abs' or 'rel'")
    check_real(name, "min_delta", min_delta, lo=0)
    check_real(name, "patience", patience, lo=0, integer=True)
    if not isinstance(keep_best, (bool, np.bool_)):
        raise InvalidHyperparameterError(name, "keep_best", keep_best, "a bool")
    best_dt = check_dtype_option(name, "best_dtype", best_dtype)
    return EarlyStopping(mode, min_delta, min_delta_mode, int(patience), bool(keep_best), best_dt)


def _status(fn: str, state: Any) -> np.ndarray:
    if not isinstance(state, EarlyStoppingState):
        raise TreeMismatchError(
            fn, "the argument is not an early-stopping state", "", "EarlyStoppingState",
            type(state).__name__,
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
    stopped = status >= int(Status.STOPPED_PATIENCE)
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
    if state.best_params is None:
        raise InvalidHyperparameterError(
            "best_params", "state", "a state without a parameter copy",
            "built with early_stopping(..., keep_best=True)",
        )
    return state.best_params
