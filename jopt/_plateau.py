"""The plateau-tracking core shared by early stopping and ``reduce_on_plateau``.

One call of :func:`decide` takes one metric value and the tracker's fields and returns the
next fields plus what happened (improved, plateau reached, goal reached, diverged,
non-finite). Everything is ``jnp.where`` arithmetic on arrays, so it runs eagerly, under
``jit``, ``vmap`` (each member with its own numbers) and inside ``lax`` loops.

Semantics, for the k-th call (0-based) with metric ``x``:

* *precision*: the metric is compared in float32 (a float64 value beyond float32's range
  counts as non-finite).
* *warm-up*: calls with ``k < start_step`` are not tracked (no best, no wait, no decision);
  only the non-finite check applies to them.
* *non-finite*: with ``check_finite``, a NaN or infinite ``x`` is flagged (early stopping stops
  with its own reason). A non-finite value is never an improvement, also on the first call.
* *improvement*: ``x`` is finite and beats the best so far by more than the margin:
  ``x < best - delta`` (mode min) or ``x > best + delta`` (mode max), with
  ``delta = min_delta`` (``min_delta_mode="abs"``) or ``min_delta * |best|`` (``"rel"``, right
  for negative metrics). Before any value is seen the bar is the ``baseline`` if one is set
  (finite), so a baseline must be beaten to count; an infinite baseline means none.
* *cooldown*: the ``cooldown`` calls after an action (a learning-rate reduction) do not count
  towards patience (the wait stays 0); improvements are still recorded.
* *plateau*: otherwise the wait grows by one, and the action fires when it reaches
  ``patience`` (patience ``p`` acts on the ``p``-th consecutive non-improving call; 0 and 1 both
  act on the first, as in Keras and Lightning).
* *goal* / *divergence*: a finite ``x`` past ``stopping_threshold`` (better than it) or past
  ``divergence_threshold`` (worse than it) is flagged at once (strict comparisons, as in
  Lightning). Infinite thresholds (the defaults) never fire, whatever their sign.

Units: ``patience``, ``cooldown`` and ``start_step`` count calls (epochs, evaluation rounds or
accumulated groups: whatever feeds the tracker), never optimizer steps unless it is fed every
step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jopt._hyper import Hyper, current, value_now
from jopt._tree import safe_increment
from jopt.errors import InvalidHyperparameterError, InvalidMetricError

MODES = ("min", "max")
DELTA_MODES = ("abs", "rel")

# The tracker's numeric options, declared once for both users of the core (their state types
# carry them, so set_hyperparams validates a new value against them).
HYPERPARAMS = {
    "min_delta": Hyper(">= 0"),
    "patience": Hyper(">= 0", integer=True),
    "cooldown": Hyper(">= 0", integer=True),
    "start_step": Hyper(">= 0", integer=True),
    # +-inf switches a baseline or threshold off.
    "baseline": Hyper(off_at_infinity=True, optional=True),
    "stopping_threshold": Hyper(off_at_infinity=True, optional=True),
    "divergence_threshold": Hyper(off_at_infinity=True, optional=True),
}
# reduce_on_plateau's own options.
EXTRA = {
    "factor": Hyper("(0, 1)"),
    "min_scale": Hyper("[0, 1]"),
    "accumulation_size": Hyper(">= 1", integer=True),
}


def validate(name: str, *, mode, min_delta, min_delta_mode, patience, cooldown=0,
             start_step=0, baseline=None, stopping_threshold=None, divergence_threshold=None,
             check_finite=True) -> None:
    """Construction-time checks of the plateau options (raises InvalidHyperparameterError)."""
    if mode not in MODES:
        raise InvalidHyperparameterError(name, "mode", mode, "'min' or 'max'")
    if min_delta_mode not in DELTA_MODES:
        raise InvalidHyperparameterError(name, "min_delta_mode", min_delta_mode, "'abs' or 'rel'")
    for key, value in (("min_delta", min_delta), ("patience", patience),
                       ("cooldown", cooldown), ("start_step", start_step)):
        HYPERPARAMS[key].check(name, key, value)
    for key, value in (("baseline", baseline), ("stopping_threshold", stopping_threshold),
                       ("divergence_threshold", divergence_threshold)):
        if value is not None:
            # Finite values at build time (None, not +-inf, means "none" there).
            Hyper().check(name, key, value)
    if not isinstance(check_finite, (bool, np.bool_)):
        raise InvalidHyperparameterError(name, "check_finite", check_finite, "a bool")
    if stopping_threshold is not None and divergence_threshold is not None:
        better = (stopping_threshold < divergence_threshold if mode == "min"
                  else stopping_threshold > divergence_threshold)
        if not better:
            raise InvalidHyperparameterError(
                name, "stopping_threshold", stopping_threshold,
                f"better than divergence_threshold={divergence_threshold!r} for mode {mode!r}",
            )


def hyperparams(mode: str, *, min_delta, patience, cooldown=0, start_step=0, baseline=None,
                stopping_threshold=None, divergence_threshold=None) -> dict[str, jax.Array]:
    """The tracker's numeric options as state arrays (``None`` thresholds become +-inf); any
    of them may be a schedule of the tracker's step."""
    worst = np.inf if mode == "min" else -np.inf
    best = -worst
    values = {
        "min_delta": min_delta, "patience": patience, "cooldown": cooldown,
        "start_step": start_step, "baseline": worst if baseline is None else baseline,
        "stopping_threshold": best if stopping_threshold is None else stopping_threshold,
        "divergence_threshold": worst if divergence_threshold is None else divergence_threshold,
    }
    return {k: HYPERPARAMS[k].store("plateau", k, v) for k, v in values.items()}


def current_hyperparams(stored: dict[str, Any], step: jax.Array) -> dict[str, jax.Array]:
    """The options one decision uses: schedules evaluated at the tracker's step."""
    return current({**HYPERPARAMS, **EXTRA}, stored, step)


def initial_fields(hp: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Tracker fields before any call."""
    return {
        "step": jnp.zeros([], jnp.int32),
        # A copy: the same buffer twice in one state could not be donated.
        "best_value": jnp.array(value_now(hp["baseline"], jnp.zeros([], jnp.int32)),
                                dtype=jnp.float32, copy=True),
        "best_step": jnp.asarray(-1, jnp.int32),
        "wait": jnp.zeros([], jnp.int32),
        "cooldown_count": jnp.zeros([], jnp.int32),
    }


def as_metric(name: str, metric: Any) -> jax.Array:
    """The metric as a real scalar array; raises InvalidMetricError otherwise."""
    if not isinstance(metric, (int, float, np.generic, np.ndarray, jax.Array)) or isinstance(
            metric, (bool, np.bool_)):
        raise InvalidMetricError(f"{name}: the metric must be a real scalar; got {metric!r}.")
    try:
        if isinstance(metric, (int, float)):
            metric = float(metric)  # Python ints of any size compare as floats
        metric = jnp.asarray(metric)
    except (TypeError, ValueError, OverflowError):
        raise InvalidMetricError(
            f"{name}: the metric must be a real scalar; got {metric!r}.") from None
    if metric.ndim != 0 or not (
        jnp.issubdtype(metric.dtype, jnp.floating) or jnp.issubdtype(metric.dtype, jnp.integer)
    ):
        raise InvalidMetricError(
            f"{name}: the metric must be a real scalar; got an array of shape {metric.shape} "
            f"and dtype {metric.dtype}."
        )
    return metric


def decide(mode: str, min_delta_mode: str, check_finite: bool, hp: dict[str, jax.Array],
           fields: dict[str, jax.Array], metric: jax.Array, axis_name: Any = None):
    """One tracker step.

    Args:
      mode, min_delta_mode, check_finite: the static options.
      hp: the numeric options (see :func:`hyperparams`).
      fields: ``step``, ``best_value``, ``best_step``, ``wait``, ``cooldown_count``.
      metric: a real scalar.
      axis_name: if given, the metric is averaged over this mapped axis first, so every
        replica takes the same decision.

    Returns:
      ``(new_fields, flags)``; flags are bool scalars ``warm``, ``improved``, ``plateau``
      (patience reached outside cooldown), ``non_finite`` (only with ``check_finite``),
      ``goal``, ``diverged``, ``cooling`` (this call was in cooldown).
    """
    m = metric.astype(jnp.float32)
    if axis_name is not None:
        m = jax.lax.pmean(m, axis_name)
    k = fields["step"]
    warm = k < hp["start_step"]
    finite = jnp.isfinite(m)
    # Before any improvement the bar is the baseline held in the options, so a baseline set
    # with set_hyperparams after init (or per member of a population) takes effect.
    f32 = jnp.float32
    best = jnp.where(fields["best_step"] < 0, hp["baseline"].astype(f32),
                     fields["best_value"].astype(f32))
    # An infinite bar (no value seen and no baseline, or a baseline set to +-inf) is no bar:
    # any finite value improves. Infinite thresholds likewise never fire, whatever their sign.
    has_bar = jnp.isfinite(best)
    delta = hp["min_delta"].astype(f32)
    if min_delta_mode == "rel":
        delta = delta * jnp.abs(jnp.where(has_bar, best, 0.0))
    stop_at = hp["stopping_threshold"].astype(f32)
    diverge_at = hp["divergence_threshold"].astype(f32)
    if mode == "min":
        beats = jnp.where(has_bar, m < best - delta, True)
        goal = m < stop_at
        diverged = m > diverge_at
    else:
        beats = jnp.where(has_bar, m > best + delta, True)
        goal = m > stop_at
        diverged = m < diverge_at
    goal = goal & jnp.isfinite(stop_at)
    diverged = diverged & jnp.isfinite(diverge_at)
    tracked = ~warm
    improved = tracked & finite & beats
    cooling = tracked & (fields["cooldown_count"] > 0)
    counts = tracked & ~improved & ~cooling
    wait = jnp.where(improved | cooling, 0, jnp.where(counts, safe_increment(fields["wait"]),
                                                      fields["wait"]))
    plateau = counts & (wait >= hp["patience"])
    cooldown_count = jnp.where(
        plateau, hp["cooldown"],
        jnp.where(cooling, fields["cooldown_count"] - 1, fields["cooldown_count"]))
    new = {
        "step": safe_increment(k),
        "best_value": jnp.where(improved, m, best),
        "best_step": jnp.where(improved, k, fields["best_step"]),
        "wait": wait.astype(jnp.int32),
        "cooldown_count": cooldown_count.astype(jnp.int32),
    }
    flags = {
        "warm": warm,
        "improved": improved,
        "plateau": plateau,
        "non_finite": (~finite) if check_finite else jnp.zeros([], bool),
        "goal": tracked & finite & goal,
        "diverged": tracked & finite & diverged,
        "cooling": cooling,
    }
    return new, flags
