"""The plateau core (``jopt/_plateau.py``) through its two users, ``jopt.early_stopping`` and
``jopt.reduce_on_plateau``.

* Scripted metric sequences for every option, with the status of EVERY call written out (one
  letter per call, see ``CODE``) and derived by hand in the comment next to each case from the
  semantics in the docstrings of ``jopt/_plateau.py``, ``jopt.early_stopping`` and
  ``jopt.reduce_on_plateau`` (never recorded from a run). Each sequence runs eagerly, under
  ``jax.jit``, inside ``jax.lax.scan`` and under ``jax.vmap`` as one population per static
  configuration whose members get their numeric options with ``jopt.set_hyperparams`` inside
  ``vmap``.
* A cross-check against the *documented* semantics of Keras ``EarlyStopping``, Keras
  ``ReduceLROnPlateau`` and Lightning ``EarlyStopping``: small reference functions written from
  their documentation, compared with jopt on a few dozen random sequences (fixed seeds).
* Bad input: each mistake is a jopt error with a clear message.

Indices are 0-based call indices ("step k" is the k-th call to ``update``).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jopt
from jopt import Status
from jopt.errors import InvalidHyperparameterError, InvalidMetricError, TreeMismatchError

NAN = float("nan")
INF = float("inf")

# One letter per status code, for writing expected status sequences compactly.
CODE = {
    "R": Status.RUNNING,            # tracked, not an improvement (wait grew), no action
    "I": Status.IMPROVED,
    "P": Status.STOPPED_PATIENCE,
    "N": Status.STOPPED_NON_FINITE,
    "G": Status.STOPPED_GOAL,
    "D": Status.STOPPED_DIVERGED,
    "W": Status.WARMUP,
    "C": Status.COOLDOWN,
    "X": Status.REDUCED,
}
LETTER = {int(v): k for k, v in CODE.items()}


def letters(statuses):
    return "".join(LETTER[int(s)] for s in statuses)


def first_stop(statuses):
    """0-based index of the first stopped status, or None."""
    for i, s in enumerate(statuses):
        if Status(int(s)).stopped:
            return i
    return None


def stack(trees):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


# =============================================================================================
# Early stopping: scripted sequences.
#
# (id, kwargs, metrics, expected status letters, (best_value, best_step) at the end).
# After a stop the state is frozen, so the letter repeats.

ES_CASES = [
    # --- mode, patience -------------------------------------------------------------------
    (
        # min, patience 2. 0: 1.0 < +inf -> I (best 1.0). 1: 0.9 < 1.0 -> I (best 0.9).
        # 2: 0.95 not < 0.9 -> wait 1, R. 3: 0.91 not < 0.9 -> wait 2 = patience -> P. 4 frozen.
        "min_patience2", dict(patience=2), [1.0, 0.9, 0.95, 0.91, 0.5], "IIRPP", (0.9, 1),
    ),
    (
        # max, patience 2. 0.5 I, 0.6 I; 0.6 again is not > 0.6 (strict) -> wait 1 R;
        # 0.55 -> wait 2 -> P at 3; frozen at 4 (0.9 ignored).
        "max_patience2", dict(mode="max", patience=2), [0.5, 0.6, 0.6, 0.55, 0.9], "IIRPP",
        (0.6, 1),
    ),
    (
        # patience 0: stops on the first non-improving call. 3.0 I, 2.0 I, 2.0 (equal) -> wait
        # 1 >= 0 -> P at 2.
        "patience0", dict(patience=0), [3.0, 2.0, 2.0, 1.0], "IIPP", (2.0, 1),
    ),
    (
        # patience 1 acts on the same call as 0: 3.0 I, 2.0 I, 2.5 -> wait 1 >= 1 -> P at 2.
        "patience1", dict(patience=1), [3.0, 2.0, 2.5, 1.0], "IIPP", (2.0, 1),
    ),
    (
        # patience 3, an improvement resets the wait: 5.0 I; 6.0 w1 R; 6.0 w2 R; 4.0 I (w 0);
        # 4.5 w1; 4.5 w2; 4.1 (not < 4.0) w3 -> P at 6; 7 frozen.
        "wait_resets", dict(patience=3), [5.0, 6.0, 6.0, 4.0, 4.5, 4.5, 4.1, 4.2], "IRRIRRPP",
        (4.0, 3),
    ),
    # --- min_delta, abs and rel -------------------------------------------------------------
    (
        # abs 0.1, patience 2. 1.0 I (best inf: no margin). Need < 0.9: 0.95 w1 R; 0.89 I.
        # Need < 0.79: 0.8 w1 R; 0.7 I. Need < 0.6: 0.65 w1 R; 0.61 w2 -> P at 6.
        "abs_delta_min", dict(min_delta=0.1, patience=2), [1.0, 0.95, 0.89, 0.8, 0.7, 0.65, 0.61],
        "IRIRIRP", (0.7, 4),
    ),
    (
        # abs 0.5, max, patience 2. 1.0 I; need > 1.5: 1.4 w1 R; 1.6 I; need > 2.1: 2.0 w1 R;
        # 2.05 w2 -> P at 4; frozen at 5.
        "abs_delta_max", dict(mode="max", min_delta=0.5, patience=2),
        [1.0, 1.4, 1.6, 2.0, 2.05, 3.0], "IRIRPP", (1.6, 2),
    ),
    (
        # rel 0.5, min, positive. 4.0 I; margin 0.5*4 = 2 -> need < 2.0: 1.9 I; margin 0.95 ->
        # need < 0.95: 1.0 -> w1 = patience 1 -> P at 2.
        "rel_delta_min_positive", dict(min_delta=0.5, min_delta_mode="rel", patience=1),
        [4.0, 1.9, 1.0, 0.9], "IIPP", (1.9, 1),
    ),
    (
        # rel 0.1, min, NEGATIVE metrics: the margin is 0.1*|best| and moves the bar DOWN.
        # -10 I; margin 1 -> need < -11: -10.5 w1 R (a sign-naive best*(1-0.1) = -9 would call
        # it an improvement); -11.5 I; margin 1.15 -> need < -12.65: -12.6 w1 R; -12.7 I;
        # margin 1.27 -> need < -13.97: -12.8 w1, -12.9 w2 -> P at 6.
        "rel_delta_min_negative", dict(min_delta=0.1, min_delta_mode="rel", patience=2),
        [-10.0, -10.5, -11.5, -12.6, -12.7, -12.8, -12.9], "IRIRIRP", (-12.7, 4),
    ),
    (
        # rel 0.1, max, negative metrics: need > best + 0.1*|best|. -10 I; need > -9: -9.5 w1 R;
        # -8.9 I; need > -8.01: -8.5 w1 R; -8.2 w2 -> P at 4.
        "rel_delta_max_negative", dict(mode="max", min_delta=0.1, min_delta_mode="rel",
                                       patience=2),
        [-10.0, -9.5, -8.9, -8.5, -8.2], "IRIRP", (-8.9, 2),
    ),
    (
        # rel 0.1 with a negative baseline: the first margin comes from |baseline| = 10 ->
        # need < -11: -10.5 w1 R; -11.2 I; margin 1.12 -> need < -12.32: -12.0 w1 R;
        # -12.1 w2 -> P at 3.
        "rel_delta_baseline_negative",
        dict(min_delta=0.1, min_delta_mode="rel", baseline=-10.0, patience=2),
        [-10.5, -11.2, -12.0, -12.1], "RIRP", (-11.2, 1),
    ),
    # --- start_step (warm-up) ---------------------------------------------------------------
    (
        # start_step 3, patience 1: calls 0..2 are not tracked (W; 1.0 is NOT recorded as best).
        # 3: 4.0 is the first tracked value -> I. 4: 4.5 -> w1 -> P at 4. 5 frozen.
        # (Had 1.0 been recorded, 4.0 would not improve and the stop would come at 3.)
        "warmup", dict(start_step=3, patience=1), [5.0, 1.0, 9.0, 4.0, 4.5, 3.0], "WWWIPP",
        (4.0, 3),
    ),
    (
        # Warm-up longer than the run: every call is W, nothing recorded, never stops.
        "warmup_longer_than_run", dict(start_step=10), [1.0, 2.0, 3.0, 4.0], "WWWW", (INF, -1),
    ),
    (
        # A NaN during warm-up still stops the run (only the non-finite check applies there).
        "warmup_nan_still_stops", dict(start_step=3, patience=5), [1.0, NAN, 0.5], "WNN",
        (INF, -1),
    ),
    (
        # The goal is not checked during warm-up: 0.1 and 0.2 are below 0.5 but W. 2: 0.3 is the
        # first tracked value, < 0.5 -> G, and (improving) recorded as best at step 2.
        "warmup_hides_goal", dict(start_step=2, stopping_threshold=0.5, patience=5),
        [0.1, 0.2, 0.3, 0.9], "WWGG", (0.3, 2),
    ),
    (
        # Warm-up then patience 0: W W; 7.0 first tracked -> I; 8.0 -> w1 >= 0 -> P at 3.
        "warmup_patience0", dict(start_step=2, patience=0), [5.0, 6.0, 7.0, 8.0], "WWIP",
        (7.0, 2),
    ),
    # --- baseline ---------------------------------------------------------------------------
    (
        # Baseline 2.0 never beaten, patience 4: 3.0 w1, 2.5 w2, 2.1 w3, 2.0 (equal, strict) w4
        # -> P at 3 (the run lasts `patience` calls). best stays the baseline, best_step -1.
        "baseline_never_beaten", dict(baseline=2.0, patience=4), [3.0, 2.5, 2.1, 2.0, 1.0],
        "RRRPP", (2.0, -1),
    ),
    (
        # Baseline 1.0, patience 2: 1.2 w1 R; 0.8 < 1.0 -> I; 0.9 w1; 0.85 w2 -> P at 3.
        "baseline_beaten", dict(baseline=1.0, patience=2), [1.2, 0.8, 0.9, 0.85, 0.7], "RIRPP",
        (0.8, 1),
    ),
    (
        # max, baseline 0.5, abs delta 0.1, patience 2: need > 0.6: 0.55 w1 R; 0.65 I; need >
        # 0.75: 0.7 w1 R; 0.72 w2 -> P at 3.
        "baseline_max_delta", dict(mode="max", baseline=0.5, min_delta=0.1, patience=2),
        [0.55, 0.65, 0.7, 0.72], "RIRP", (0.65, 1),
    ),
    (
        # Baseline with patience 0: the very first call does not beat it -> w1 >= 0 -> P at 0.
        # (Keras's implementation never stops on epoch 0; that is not in its documentation and
        # jopt's docstring says patience 0 acts on the first non-improving call.)
        "baseline_patience0_first_call", dict(baseline=1.0, patience=0), [1.5, 0.5], "PP",
        (1.0, -1),
    ),
    # --- stopping_threshold (goal) ----------------------------------------------------------
    (
        # goal 0.5 (strict), patience 5: 1.0 I, 0.7 I, 0.5 I (not < 0.5, no goal),
        # 0.49 < 0.5 -> G at 3, recorded as best since it also improves.
        "goal_min", dict(stopping_threshold=0.5, patience=5), [1.0, 0.7, 0.5, 0.49, 0.1],
        "IIIGG", (0.49, 3),
    ),
    (
        # Threshold reached on the very first update -> G at 0, recorded (0.2, step 0).
        "goal_first_update", dict(stopping_threshold=0.5), [0.2, 0.1], "GG", (0.2, 0),
    ),
    (
        # max, goal 0.9: 0.5 I; 0.9 not > 0.9 -> I only; 0.95 > 0.9 -> G at 2.
        "goal_max", dict(mode="max", stopping_threshold=0.9, patience=5),
        [0.5, 0.9, 0.95, 0.99], "IIGG", (0.95, 2),
    ),
    (
        # Precedence goal > patience, and a goal value that does NOT improve is not recorded:
        # abs 0.5, patience 1. 1.2 I; need < 0.7: 0.9 is not an improvement (w1 = patience)
        # AND below the goal 1.0 -> G (not P) at 1; best stays (1.2, 0).
        "goal_beats_patience", dict(min_delta=0.5, stopping_threshold=1.0, patience=1),
        [1.2, 0.9, 0.1], "IGG", (1.2, 0),
    ),
    # --- divergence_threshold ---------------------------------------------------------------
    (
        # min, divergence 10 (strict), patience 5: 5.0 I; 6.0 w1 R; 10.0 (not > 10) w2 R;
        # 10.5 > 10 -> D at 3.
        "diverge_min", dict(divergence_threshold=10.0, patience=5), [5.0, 6.0, 10.0, 10.5, 1.0],
        "IRRDD", (5.0, 0),
    ),
    (
        # max, divergence 0.1: 0.5 I; 0.2 w1; 0.1 (not < 0.1) w2; 0.05 < 0.1 -> D at 3.
        "diverge_max", dict(mode="max", divergence_threshold=0.1, patience=5),
        [0.5, 0.2, 0.1, 0.05], "IRRD", (0.5, 0),
    ),
    (
        # Precedence divergence > patience: patience 1; 1.0 I; 6.0 is both the first
        # non-improving call (w1) and > 5 -> D at 1.
        "diverge_beats_patience", dict(divergence_threshold=5.0, patience=1), [1.0, 6.0], "ID",
        (1.0, 0),
    ),
    # --- check_finite -----------------------------------------------------------------------
    (
        # NaN as the first metric: never an improvement, stops at once; nothing recorded.
        "nan_first", dict(patience=5), [NAN, 1.0], "NN", (INF, -1),
    ),
    (
        # +inf later: stops at 2 whatever the patience.
        "inf_later", dict(patience=5), [1.0, 0.9, INF, 0.1], "IINN", (0.9, 1),
    ),
    (
        # -inf in mode min would "improve"; it is non-finite -> N at 1, not recorded.
        "neg_inf_min", dict(patience=5), [1.0, -INF, 0.5], "INN", (1.0, 0),
    ),
    (
        # check_finite=False, NaN first, patience 2: NaN never improves -> w1 R; 1.0 I (best 1.0,
        # the NaN left no trace); 2.0 w1 R; NaN w2 -> P at 3.
        "nan_first_unchecked", dict(check_finite=False, patience=2), [NAN, 1.0, 2.0, NAN, 0.5],
        "RIRPP", (1.0, 1),
    ),
    (
        # check_finite=False, patience 0: a NaN first call is the first non-improving call -> P.
        "nan_first_unchecked_patience0", dict(check_finite=False, patience=0), [NAN, 1.0], "PP",
        (INF, -1),
    ),
    (
        # check_finite=False: +inf is not finite, so (per _plateau's docstring: "a *finite* x
        # past divergence_threshold") it does not diverge; it is a plain non-improving call.
        # 1.0 I; inf w1; 2.0 w2; 6.0 > 5 -> D at 3. (Lightning would report "diverged" at 1.)
        "inf_unchecked_no_divergence", dict(check_finite=False, divergence_threshold=5.0,
                                            patience=3),
        [1.0, INF, 2.0, 6.0], "IRRD", (1.0, 0),
    ),
    (
        # check_finite=False: -inf (mode min) is neither an improvement nor the goal.
        # 1.0 I; -inf w1 R; 0.5 I; -0.5 < 0 -> G at 3 (and recorded).
        "neg_inf_unchecked_no_goal", dict(check_finite=False, stopping_threshold=0.0,
                                          patience=2),
        [1.0, -INF, 0.5, -0.5], "IRIG", (-0.5, 3),
    ),
]
ES_IDS = [c[0] for c in ES_CASES]
ES_BY_ID = {c[0]: c for c in ES_CASES}


def es_run_eager(es, metrics):
    state = es.init()
    statuses = []
    for m in metrics:
        state = es.update(state, m)  # Python floats: also exercises the metric conversion
        statuses.append(int(state.status))
    return statuses, state


def es_run_jit(es, metrics):
    update = jax.jit(es.update)  # compiled once for this configuration
    state = es.init()
    statuses = []
    for m in metrics:
        state = update(state, jnp.float32(m))
        statuses.append(int(state.status))
    return statuses, state


@functools.cache
def _es_scan_fn(mode, min_delta_mode, check_finite):
    # update reads every numeric option from the state ("every numeric option is data in the
    # state"), so the scan is compiled once per static configuration (and length) and fed the
    # state built by the case's own early_stopping(...).init(); eager and jit runs above use
    # the case's own object.
    es = jopt.early_stopping(mode=mode, min_delta_mode=min_delta_mode,
                             check_finite=check_finite)

    def body(state, m):
        state = es.update(state, m)
        return state, state.status

    return jax.jit(lambda s, ms: jax.lax.scan(body, s, ms))


def es_run_scan(es, metrics):
    scan = _es_scan_fn(es.mode, es.min_delta_mode, es.check_finite)
    state, statuses = scan(es.init(), jnp.asarray(metrics, jnp.float32))
    return [int(s) for s in statuses], state


def check_es(case, statuses, best_value, best_step, step=None, stopped=None, reason=None):
    _, _, metrics, expected, (value, at) = case
    assert letters(statuses) == expected
    assert float(best_value) == np.float32(value)
    assert int(best_step) == at
    stop = first_stop(statuses)
    if step is not None:
        # step counts calls while running, the stopping call included.
        assert int(step) == (len(metrics) if stop is None else stop + 1)
    if stopped is not None:
        assert bool(stopped) == (stop is not None)
    if reason is not None:
        assert reason == Status(CODE[expected[-1]]).message


@pytest.mark.parametrize("run", ["eager", "jit", "scan"])
@pytest.mark.parametrize("case_id", ES_IDS)
def test_early_stopping_scripted(case_id, run):
    case = ES_BY_ID[case_id]
    es = jopt.early_stopping(**case[1])
    runner = {"eager": es_run_eager, "jit": es_run_jit, "scan": es_run_scan}[run]
    statuses, state = runner(es, case[2])
    check_es(case, statuses, state.best_value, state.best_step, state.step,
             jopt.should_stop(state), jopt.stop_reason(state))
    assert bool(state.stopped) == jopt.should_stop(state)


# --- vmap: one population per static configuration, numeric options set per member ---------

ES_DEFAULTS = dict(min_delta=0.0, patience=0, start_step=0, baseline=None,
                   stopping_threshold=None, divergence_threshold=None)


def _es_static(kwargs):
    return (kwargs.get("mode", "min"), kwargs.get("min_delta_mode", "abs"),
            kwargs.get("check_finite", True))


@functools.cache
def _es_population(static):
    """Runs every ES case with this static configuration as one vmapped population; returns
    {case id: (statuses, best_value, best_step, step)}."""
    mode, delta_mode, check_finite = static
    cases = [c for c in ES_CASES if _es_static(c[1]) == static]
    base = jopt.early_stopping(mode=mode, min_delta_mode=delta_mode, check_finite=check_finite)
    worst, best = (INF, -INF) if mode == "min" else (-INF, INF)
    none_as = {"baseline": worst, "stopping_threshold": best, "divergence_threshold": worst}
    hp = {}
    for key, default in ES_DEFAULTS.items():
        vals = [c[1].get(key, default) for c in cases]
        vals = [none_as[key] if v is None else v for v in vals]
        dtype = jnp.int32 if key in ("patience", "start_step") else jnp.float32
        hp[key] = jnp.asarray(vals, dtype)
    # Options set per member inside vmap (a traced value is data, not a constant).
    states = jax.vmap(lambda h: jopt.set_hyperparams(base.init(), **h))(hp)
    length = max(len(c[2]) for c in cases)
    metrics = np.zeros((len(cases), length), np.float32)
    for i, c in enumerate(cases):
        metrics[i, : len(c[2])] = c[2]
    step = jax.jit(jax.vmap(base.update))
    history = []
    for t in range(length):
        states = step(states, jnp.asarray(metrics[:, t]))
        history.append((np.asarray(states.status), np.asarray(states.best_value),
                        np.asarray(states.best_step), np.asarray(states.step)))
    out = {}
    for i, c in enumerate(cases):
        last = history[len(c[2]) - 1]  # members with shorter sequences: read at their end
        out[c[0]] = ([h[0][i] for h in history[: len(c[2])]], last[1][i], last[2][i],
                     last[3][i])
    return out


@pytest.mark.parametrize("case_id", ES_IDS)
def test_early_stopping_scripted_vmap_population(case_id):
    case = ES_BY_ID[case_id]
    statuses, best_value, best_step, step = _es_population(_es_static(case[1]))[case_id]
    check_es(case, statuses, best_value, best_step, step)


def test_set_hyperparams_baseline_takes_effect():
    # The docstring: every numeric option (baseline included) is data in the state and can be
    # changed with set_hyperparams. Baseline 1.0 set on a fresh state, patience 5:
    # 2.0 does not beat 1.0 -> wait 1, RUNNING (not IMPROVED), best stays 1.0, best_step -1.
    es = jopt.early_stopping(patience=5)
    state = jopt.set_hyperparams(es.init(), baseline=1.0)
    state = es.update(state, 2.0)
    assert jopt.stop_reason(state) == Status.RUNNING.message
    assert float(state.best_value) == 1.0 and int(state.best_step) == -1
    # The same through the constructor (the reference behaviour).
    ref = jopt.early_stopping(patience=5, baseline=1.0)
    assert int(ref.update(ref.init(), 2.0).status) == Status.RUNNING


def test_vmap_population_stops_member_by_member_with_per_member_options():
    # One metric stream, four members that differ only by data options set inside vmap.
    #   member 0: patience 1            -> 1.0 I, 0.8 I, 0.85 w1 -> P at 2.
    #   member 1: patience 3            -> waits 1, 2 at 2, 3; 0.7 I at 4; never stops.
    #   member 2: min_delta 0.25, p 1   -> 1.0 I; 0.8 not < 0.75 -> P at 1.
    #   member 3: stopping_threshold .75 (p 3) -> 0.7 < 0.75 -> G at 4.
    metrics = jnp.asarray([1.0, 0.8, 0.85, 0.9, 0.7], jnp.float32)
    es = jopt.early_stopping()
    hp = dict(patience=jnp.asarray([1, 3, 1, 3], jnp.int32),
              min_delta=jnp.asarray([0.0, 0.0, 0.25, 0.0], jnp.float32),
              stopping_threshold=jnp.asarray([-INF, -INF, -INF, 0.75], jnp.float32))
    states = jax.vmap(lambda h: jopt.set_hyperparams(es.init(), **h))(hp)

    def body(s, m):
        s = jax.vmap(es.update, in_axes=(0, None))(s, m)
        return s, s.status

    states, hist = jax.jit(lambda s: jax.lax.scan(body, s, metrics))(states)
    hist = np.asarray(hist)
    assert [letters(hist[:, i]) for i in range(4)] == ["IIPPP", "IIRRI", "IPPPP", "IIRRG"]
    assert list(jopt.should_stop(states)) == [True, False, True, True]
    assert jopt.stop_reason(states)[3] == "goal reached (stopping_threshold)"
    report = jopt.population_status(states)
    assert [r["calls"] for r in report] == [3, 5, 2, 5]
    assert [r["best_step"] for r in report] == [1, 4, 0, 4]


def test_keep_best_copies_params_at_best_step_including_goal_and_nan_first():
    params0 = {"w": jnp.full(2, -1.0, jnp.float32)}

    def p(k):
        return {"w": jnp.full(2, float(k * k), jnp.float32)}

    # Goal 0.5, patience 5: 1.0 I (p0), 0.7 I (p1), 0.8 w1, 0.4 G at 3 and improves -> p3.
    es = jopt.early_stopping(stopping_threshold=0.5, patience=5, keep_best=True)
    update = jax.jit(es.update)
    state = es.init(params0)
    for k, m in enumerate([1.0, 0.7, 0.8, 0.4, 0.1]):
        state = update(state, m, p(k))
    assert jopt.stop_reason(state).startswith("goal")
    np.testing.assert_array_equal(jopt.best_params(state)["w"], [9.0, 9.0])
    # NaN first: stop at 0, nothing improved -> the copy is still the params given to init.
    es = jopt.early_stopping(keep_best=True)
    state = es.update(es.init(params0), NAN, p(3))
    assert jopt.stop_reason(state) == "non-finite metric"
    np.testing.assert_array_equal(jopt.best_params(state)["w"], [-1.0, -1.0])


# =============================================================================================
# reduce_on_plateau: scripted sequences.
#
# (id, kwargs, values, expected status letters, expected scale after each call).
# The status of a call that does not complete an accumulation group is the previous one
# (initially RUNNING, "R"). Every call returns scale * updates (the new scale on the reducing
# call), checked too.

ROP_CASES = [
    (
        # factor 0.5, patience 2, min_delta 0. 1.0 I; 0.9 I; 0.95 w1 R; 0.92 w2 -> X (0.5), wait
        # restarts; 0.93 w1 R; 0.91 w2 -> X (0.25); 0.8 I.
        "patience2", dict(factor=0.5, patience=2, min_delta=0.0),
        [1.0, 0.9, 0.95, 0.92, 0.93, 0.91, 0.8], "IIRXRXI",
        [1, 1, 1, 0.5, 0.5, 0.25, 0.25],
    ),
    (
        # patience 1 with cooldown 2. 1.0 I; 1.1 w1 -> X (0.5), cooldown 2; 1.2 C; 1.3 C
        # (the 2 cooldown calls do not count); 1.4 w1 -> X (0.25), cooldown 2; 1.5 C;
        # 0.5 improves during cooldown -> I (last cooldown call used up); 0.6 w1 -> X (0.125).
        "patience1_cooldown2", dict(factor=0.5, patience=1, cooldown=2, min_delta=0.0),
        [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 0.5, 0.6], "IXCCXCIX",
        [1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125],
    ),
    (
        # patience 2 with cooldown 1, a flat metric, factor 0.1: 3 I; w1 R; w2 X (0.1); C;
        # w1 R; w2 X (0.01); C; w1 R.
        "patience2_cooldown1_flat", dict(factor=0.1, patience=2, cooldown=1, min_delta=0.0),
        [3.0] * 8, "IRXCRXCR", [1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01],
    ),
    (
        # patience 0, floor 0.3: 1 I; 2 X (0.5); 3 X (max(0.25, 0.3) = 0.3); 4 X (floor 0.3).
        "patience0_min_scale_floor", dict(factor=0.5, patience=0, min_scale=0.3, min_delta=0.0),
        [1.0, 2.0, 3.0, 4.0], "IXXX", [1, 0.5, 0.3, 0.3],
    ),
    (
        # Default min_delta 1e-4 (abs): 1.0 I; 0.99995 is not < 0.9999 -> w1 -> X (0.5); 0.9 I.
        "default_min_delta", dict(factor=0.5, patience=1), [1.0, 0.99995, 0.9], "IXI",
        [1, 0.5, 0.5],
    ),
    (
        # accumulation_size 3, patience 1: decisions on group MEANS.
        # calls 0,1: group incomplete -> status stays R. call 2: mean(3,1,2) = 2.0 -> I.
        # calls 3,4: I kept. call 5: mean(3.5,2,0.5) = 2.0, not < 2.0 -> w1 -> X (0.5)
        #   (its last value 0.5 or its min would have improved).
        # calls 6,7: X kept. call 8: mean(0,0,4) = 1.33 < 2 -> I (its last value 4.0 would not).
        # calls 9,10: I kept. call 11: mean 0.5 -> I.
        "accumulation3", dict(factor=0.5, patience=1, min_delta=0.0, accumulation_size=3),
        [3.0, 1.0, 2.0, 3.5, 2.0, 0.5, 0.0, 0.0, 4.0, 0.5, 0.5, 0.5], "RRIIIXXXIIII",
        [1, 1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
    ),
    (
        # accumulation_size 2 with start_step 1 (counted in decisions): call 0 incomplete (R);
        # call 1 completes decision 0, warm-up -> W (mean 9 ignored); call 2 W kept; call 3
        # decision 1 mean 4 -> I; call 4 I kept; call 5 decision 2 mean 5 -> w1 -> X (0.5).
        "accumulation2_start_step1",
        dict(factor=0.5, patience=1, min_delta=0.0, accumulation_size=2, start_step=1),
        [9.0, 9.0, 4.0, 4.0, 5.0, 5.0], "RWWIIX", [1, 1, 1, 1, 1, 0.5],
    ),
    (
        # start_step 2: 0.1, 0.1 W (ignored); 5.0 I (first tracked); 6.0 w1 -> X; 4.0 I.
        "start_step2", dict(factor=0.5, patience=1, min_delta=0.0, start_step=2),
        [0.1, 0.1, 5.0, 6.0, 4.0], "WWIXI", [1, 1, 1, 0.5, 0.5],
    ),
    (
        # Baseline 1.0 never beaten, patience 2, cooldown 1: 2.0 w1 R; 1.5 w2 -> X (0.5);
        # 1.0 (equal) C; 3.0 w1 R; 1.2 w2 -> X (0.25).
        "baseline_never_beaten",
        dict(factor=0.5, patience=2, cooldown=1, min_delta=0.0, baseline=1.0),
        [2.0, 1.5, 1.0, 3.0, 1.2], "RXCRX", [1, 0.5, 0.5, 0.5, 0.25],
    ),
    (
        # max, rel 0.1, negative values: -10 I; need > -9: -9.5 -> X (0.5); -8.9 I;
        # need > -8.01: -8.5 -> X (0.25).
        "rel_max_negative",
        dict(mode="max", factor=0.5, patience=1, min_delta=0.1, min_delta_mode="rel"),
        [-10.0, -9.5, -8.9, -8.5], "IXIX", [1, 0.5, 0.5, 0.25],
    ),
    (
        # NaN as the first value (never an improvement), patience 1: X (0.5); 1.0 I; NaN X
        # (0.25); 0.5 I.
        "nan_first", dict(factor=0.5, patience=1, min_delta=0.0), [NAN, 1.0, NAN, 0.5], "XIXI",
        [0.5, 0.5, 0.25, 0.25],
    ),
    (
        # max, abs 0.05, patience 2, cooldown 1, factor 0.2, floor 0.01 (not reached).
        # 0.5 I; need > 0.55: 0.52 w1 R; 0.6 I; need > 0.65: 0.62 w1, 0.64 w2 -> X (0.2),
        # cooldown 1; 0.7 improves in cooldown -> I; need > 0.75: 0.71 w1, 0.72 w2 -> X (0.04);
        # 0.73 C.
        "max_abs_cooldown", dict(mode="max", factor=0.2, patience=2, min_delta=0.05, cooldown=1,
                                 min_scale=0.01),
        [0.5, 0.52, 0.6, 0.62, 0.64, 0.7, 0.71, 0.72, 0.73], "IRIRXIRXC",
        [1, 1, 1, 1, 0.2, 0.2, 0.2, 0.04, 0.04],
    ),
]
ROP_IDS = [c[0] for c in ROP_CASES]
ROP_BY_ID = {c[0]: c for c in ROP_CASES}
ROP_PARAMS = {"w": jnp.zeros(2, jnp.float32)}
ROP_UPDATES = {"w": jnp.ones(2, jnp.float32)}


def rop_run_eager(tx, values):
    state = tx.init(ROP_PARAMS)
    out = []
    for v in values:
        u, state = tx.update(ROP_UPDATES, state, ROP_PARAMS, value=v)
        out.append((int(state.status), float(state.scale), np.asarray(u["w"])))
    return out, state


def rop_run_jit(tx, values):
    update = jax.jit(tx.update)
    state = tx.init(ROP_PARAMS)
    out = []
    for v in values:
        u, state = update(ROP_UPDATES, state, ROP_PARAMS, value=jnp.float32(v))
        out.append((int(state.status), float(state.scale), np.asarray(u["w"])))
    return out, state


@functools.cache
def _rop_scan_fn(mode, min_delta_mode):
    # As for _es_scan_fn: numeric options live in the state, one compile per static config.
    tx = jopt.reduce_on_plateau(mode=mode, min_delta_mode=min_delta_mode)

    def body(state, v):
        u, state = tx.update(ROP_UPDATES, state, ROP_PARAMS, value=v)
        return state, (state.status, state.scale, u["w"])

    return jax.jit(lambda s, vs: jax.lax.scan(body, s, vs))


def rop_run_scan(tx, values, kwargs):
    scan = _rop_scan_fn(*_rop_static(kwargs))
    state, (st, sc, u) = scan(tx.init(ROP_PARAMS), jnp.asarray(values, jnp.float32))
    return [(int(a), float(b), np.asarray(c)) for a, b, c in zip(st, sc, u)], state


def check_rop(case, out):
    _, _, values, expected, scales = case
    assert letters([o[0] for o in out]) == expected
    got_scales = [o[1] for o in out]
    np.testing.assert_allclose(got_scales, scales, rtol=1e-6)
    for _, scale, u in out:
        np.testing.assert_allclose(u, [scale, scale], rtol=1e-6)


@pytest.mark.parametrize("run", ["eager", "jit", "scan"])
@pytest.mark.parametrize("case_id", ROP_IDS)
def test_reduce_on_plateau_scripted(case_id, run):
    case = ROP_BY_ID[case_id]
    tx = jopt.reduce_on_plateau(**case[1])
    if run == "scan":
        out, state = rop_run_scan(tx, case[2], case[1])
    else:
        out, state = {"eager": rop_run_eager, "jit": rop_run_jit}[run](tx, case[2])
    check_rop(case, out)
    acc = case[1].get("accumulation_size", 1)
    assert int(state.step) == len(case[2]) // acc  # step counts decisions


ROP_DEFAULTS = dict(factor=0.1, patience=10, cooldown=0, min_scale=0.0, min_delta=1e-4,
                    start_step=0, baseline=None, accumulation_size=1)
ROP_INT = ("patience", "cooldown", "start_step", "accumulation_size")


def _rop_static(kwargs):
    return (kwargs.get("mode", "min"), kwargs.get("min_delta_mode", "abs"))


@functools.cache
def _rop_population(static):
    mode, delta_mode = static
    cases = [c for c in ROP_CASES if _rop_static(c[1]) == static]
    base = jopt.reduce_on_plateau(mode=mode, min_delta_mode=delta_mode)
    hp = {}
    for key, default in ROP_DEFAULTS.items():
        vals = [c[1].get(key, default) for c in cases]
        if key == "baseline":
            vals = [(INF if mode == "min" else -INF) if v is None else v for v in vals]
        hp[key] = jnp.asarray(vals, jnp.int32 if key in ROP_INT else jnp.float32)
    states = jax.vmap(lambda h: jopt.set_hyperparams(base.init(ROP_PARAMS), **h))(hp)
    length = max(len(c[2]) for c in cases)
    values = np.zeros((len(cases), length), np.float32)
    for i, c in enumerate(cases):
        values[i, : len(c[2])] = c[2]
    step = jax.jit(jax.vmap(lambda s, v: base.update(ROP_UPDATES, s, ROP_PARAMS, value=v)))
    outs = [[] for _ in cases]
    for t in range(length):
        u, states = step(states, jnp.asarray(values[:, t]))
        for i in range(len(cases)):
            outs[i].append((int(states.status[i]), float(states.scale[i]), np.asarray(u["w"][i])))
    return {c[0]: outs[i][: len(c[2])] for i, c in enumerate(cases)}


@pytest.mark.parametrize("case_id", ROP_IDS)
def test_reduce_on_plateau_scripted_vmap_population(case_id):
    case = ROP_BY_ID[case_id]
    check_rop(case, _rop_population(_rop_static(case[1]))[case_id])


# --- restore_best ---------------------------------------------------------------------------


def _p(k):
    return {"w": jnp.full(2, float(k * k), jnp.float32)}


RESTORE_VALUES = [2.0, 1.0, 1.5, 0.5, 0.7]
# factor 0.5, patience 1, min_delta 0, params p_k = k^2, updates = ones:
#   0: 2.0 I (copy p0) -> out 1 * ones.      1: 1.0 I (copy p1) -> ones.
#   2: 1.5 w1 -> reduce: out = best - params = p1 - p2 = 1 - 4 = -3 (scale 0.5 from now).
#   3: 0.5 I (copy p3) -> 0.5 * ones.        4: 0.7 w1 -> reduce: p3 - p4 = 9 - 16 = -7.
RESTORE_EXPECTED = [1.0, 1.0, -3.0, 0.5, -7.0]
RESTORE_LETTERS = "IIXIX"


@pytest.mark.parametrize("run", ["eager", "jit", "scan"])
def test_restore_best_rolls_back_on_reducing_call(run):
    tx = jopt.reduce_on_plateau(factor=0.5, patience=1, min_delta=0.0, restore_best=True)
    state = tx.init(_p(-1))
    ps = stack([_p(k) for k in range(len(RESTORE_VALUES))])
    vals = jnp.asarray(RESTORE_VALUES, jnp.float32)
    if run == "scan":
        def body(s, x):
            p, v = x
            u, s = tx.update(ROP_UPDATES, s, p, value=v)
            return s, (u["w"][0], s.status)

        state, (outs, st) = jax.jit(lambda s: jax.lax.scan(body, s, (ps, vals)))(state)
        outs, st = list(np.asarray(outs)), list(np.asarray(st))
    else:
        update = jax.jit(tx.update) if run == "jit" else tx.update
        outs, st = [], []
        for k, v in enumerate(RESTORE_VALUES):
            u, state = update(ROP_UPDATES, state, _p(k), value=v)
            outs.append(float(u["w"][0]))
            st.append(int(state.status))
    assert letters(st) == RESTORE_LETTERS
    np.testing.assert_allclose(outs, RESTORE_EXPECTED, rtol=1e-6)
    np.testing.assert_array_equal(state.best_params["w"], [9.0, 9.0])
    assert float(state.scale) == 0.25


def test_restore_best_vmap_per_member_and_nan_first():
    # Member 0 as above; member 1 patience 2: 1.5 w1, 0.5 I, 0.7 w1 -> never reduces, every
    # output is 1 * ones.
    tx = jopt.reduce_on_plateau(factor=0.5, patience=1, min_delta=0.0, restore_best=True)
    states = jax.vmap(lambda pa: jopt.set_hyperparams(tx.init(_p(-1)), patience=pa))(
        jnp.asarray([1, 2], jnp.int32))
    step = jax.jit(jax.vmap(lambda s, p, v: tx.update(ROP_UPDATES, s, p, value=v),
                            in_axes=(0, None, None)))
    outs = []
    for k, v in enumerate(RESTORE_VALUES):
        u, states = step(states, _p(k), jnp.float32(v))
        outs.append(np.asarray(u["w"][:, 0]))
    outs = np.stack(outs, axis=1)
    np.testing.assert_allclose(outs[0], RESTORE_EXPECTED, rtol=1e-6)
    np.testing.assert_allclose(outs[1], [1.0] * 5, rtol=1e-6)
    # NaN as the first value with restore_best: nothing improved, so the reducing call rolls
    # back to the parameters given to init: p(-1) - p(3) = 1 - 9 = -8.
    state = tx.init(_p(-1))
    u, state = tx.update(ROP_UPDATES, state, _p(3), value=NAN)
    assert int(state.status) == Status.REDUCED
    np.testing.assert_array_equal(u["w"], [-8.0, -8.0])


# =============================================================================================
# Cross-check against Keras's and Lightning's DOCUMENTED semantics.
#
# The reference functions below are written from the documentation of
#   keras.callbacks.EarlyStopping: "min_delta: Minimum change in the monitored quantity to
#     qualify as an improvement, i.e. an absolute change of less than min_delta, will count as
#     no improvement"; "patience: Number of epochs with no improvement after which training
#     will be stopped"; "baseline: ... training will stop if the model doesn't show improvement
#     over the baseline"; "start_from_epoch: Number of epochs to wait before starting to monitor
#     improvement".
#   keras.callbacks.ReduceLROnPlateau: "factor: ... new_lr = lr * factor"; "patience: number of
#     epochs with no improvement after which learning rate will be reduced"; "cooldown: number
#     of epochs to wait before resuming normal operation after lr has been reduced"; "min_lr:
#     lower bound on the learning rate".
#   lightning.pytorch.callbacks.EarlyStopping: min_delta "an absolute change of less than or
#     equal to min_delta, will count as no improvement"; patience "number of checks with no
#     improvement after which training will be stopped"; "check_finite: When set True, stops
#     training when the monitor becomes NaN or infinite"; "stopping_threshold: Stop training
#     immediately once the monitored quantity reaches this threshold"; "divergence_threshold:
#     Stop training as soon as the monitored quantity becomes worse than this threshold".
#
# Where jopt intentionally differs (not exercised by the random sequences, which avoid ties):
#   * Ties: jopt's improvement is strict (change > min_delta), as Lightning documents; Keras's
#     wording counts a change of exactly min_delta as an improvement.
#   * A goal-reaching value that improves is recorded as jopt's best (Lightning stops without
#     recording it); it does not change the stop step.
#   * jopt's thresholds fire only on finite values: with check_finite=False a +inf metric does
#     not "diverge" in jopt (Lightning compares it). The random sequences use NaN (which no
#     comparison passes) for the non-finite values.
#   * Keras with a baseline and min_delta > 0 keeps recording a best value that does not beat
#     the baseline; jopt's best starts at the baseline. With min_delta = 0 (used below with a
#     baseline) both rules reset the wait on exactly the same epochs.
#   * reduce_on_plateau: jopt's cooldown follows the documented meaning (the `cooldown` calls
#     after a reduction do not count towards patience); Keras's implementation already counts
#     the last cooldown epoch. At the min_lr floor Keras stops resetting wait/cooldown; the
#     learning-rate sequence (compared here) is the same either way.
#   * jopt's scale is relative: min_scale = min_lr / initial_lr (initial_lr = 1 here).
#
# Reference arithmetic is done in float32 like jopt's, so a comparison on the edge of a
# float rounding cannot flip one side only.

F32 = np.float32


def _better(mode, x, ref, delta=0.0):
    return x < ref - delta if mode == "min" else x > ref + delta


def keras_early_stopping_ref(metrics, mode, min_delta, patience, baseline, start_from_epoch):
    """Stop epoch (0-based) or None, from Keras's EarlyStopping documentation."""
    best, wait = None, 0
    for epoch, x in enumerate(metrics):
        if epoch < start_from_epoch:  # warm-up: not monitored
            continue
        improved = best is None or _better(mode, x, best, F32(min_delta))
        if improved:
            best = x
        beats_baseline = baseline is None or _better(mode, x, F32(baseline), F32(min_delta))
        if improved and beats_baseline:
            wait = 0
        else:
            wait += 1
            if wait >= patience:  # "patience epochs with no improvement"
                return epoch
    return None


def lightning_early_stopping_ref(metrics, mode, min_delta, patience, check_finite,
                                 stopping_threshold, divergence_threshold):
    """(stop index, reason) or (None, None), from Lightning's EarlyStopping documentation.
    Order of checks: finite, stopping_threshold, divergence_threshold, patience."""
    best = F32(np.inf if mode == "min" else -np.inf)
    wait = 0
    for i, x in enumerate(metrics):
        if check_finite and not np.isfinite(x):
            return i, "non-finite metric"
        if stopping_threshold is not None and _better(mode, x, F32(stopping_threshold)):
            return i, "goal reached (stopping_threshold)"
        if divergence_threshold is not None and _better(mode, F32(divergence_threshold), x):
            return i, "diverged (divergence_threshold)"
        # improvement: change strictly greater than min_delta
        if np.isfinite(best):
            improved = _better(mode, x, best, F32(min_delta))
        else:
            improved = _better(mode, x, best)
        if improved:
            best, wait = x, 0
        else:
            wait += 1
            if wait >= patience:
                return i, "patience exhausted"
    return None, None


def keras_reduce_lr_ref(values, mode, factor, patience, cooldown, min_lr, min_delta):
    """Learning rate after each epoch (initial lr 1), from Keras's ReduceLROnPlateau docs."""
    lr, best, wait, cool = F32(1.0), None, 0, 0
    out = []
    for x in values:
        improved = best is None or _better(mode, x, best, F32(min_delta))
        if improved:
            best = x
        if cool > 0:  # one of the `cooldown` epochs after a reduction: no normal operation
            cool -= 1
            wait = 0
        elif improved:
            wait = 0
        else:
            wait += 1
            if wait >= patience:
                lr = max(F32(lr * F32(factor)), F32(min_lr))
                wait, cool = 0, cooldown
        out.append(float(lr))
    return out


@functools.cache
def _es_batch_runner(mode, check_finite):
    # update reads every numeric option from the state (documented: "every numeric option is
    # data in the state"), so one compiled function per static configuration serves members
    # whose states come from differently configured early_stopping(...).init().
    es = jopt.early_stopping(mode=mode, check_finite=check_finite)

    def one(state, metrics):
        def body(s, m):
            s = es.update(s, m)
            return s, s.status

        return jax.lax.scan(body, state, metrics)[1]

    return jax.jit(jax.vmap(one))


def _es_stop_steps(stoppers, sequences, mode, check_finite):
    states = stack([s.init() for s in stoppers])
    statuses = np.asarray(_es_batch_runner(mode, check_finite)(
        states, jnp.asarray(np.stack(sequences), jnp.float32)))
    out = []
    for row in statuses:
        k = first_stop(row)
        out.append((k, None if k is None else Status(int(row[k])).message))
    return out


def _curve(rng, length, mode, noise):
    """A validation curve that falls then flattens and wanders (mode min), negated for max."""
    t = np.arange(length)
    x = 1.0 / (1.0 + 0.3 * t) + 0.02 * t * rng.uniform(0, 0.5) + noise * rng.normal(size=length)
    return (x if mode == "min" else -x).astype(np.float32)


SEEDS = range(36)


@pytest.mark.parametrize("mode", ["min", "max"])
def test_cross_check_keras_early_stopping(mode):
    stoppers, seqs, refs = [], [], []
    for seed in SEEDS:
        rng = np.random.default_rng(1000 + seed + (0 if mode == "min" else 500))
        seq = _curve(rng, 30, mode, 0.03)
        patience = int(rng.integers(0, 6))
        start = int(rng.integers(0, 4))
        baseline = None
        min_delta = float(rng.choice([0.0, 0.005, 0.02]))
        if seed % 3 == 0:  # with a baseline (min_delta 0: see the note above)
            min_delta = 0.0
            baseline = float(np.quantile(seq[:12], 0.3 if mode == "min" else 0.7))
        stoppers.append(jopt.early_stopping(mode=mode, min_delta=min_delta, patience=patience,
                                            start_step=start, baseline=baseline))
        seqs.append(seq)
        refs.append(keras_early_stopping_ref(seq, mode, min_delta, patience, baseline, start))
    got = [k for k, _ in _es_stop_steps(stoppers, seqs, mode, True)]
    assert got == refs
    stopped = sum(r is not None for r in refs)
    assert 10 <= stopped < len(refs)  # the sequences exercise both outcomes


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("check_finite", [True, False])
def test_cross_check_lightning_early_stopping(mode, check_finite):
    stoppers, seqs, refs = [], [], []
    sign = 1.0 if mode == "min" else -1.0
    for seed in SEEDS:
        rng = np.random.default_rng(2000 + seed + 100 * check_finite + (0 if mode == "min"
                                                                         else 500))
        seq = _curve(rng, 30, mode, 0.03)
        if rng.uniform() < 0.3:  # a spike (worse by a lot)
            seq[rng.integers(3, 30)] = sign * 5.0
        if rng.uniform() < 0.3:
            seq[rng.integers(0, 30)] = np.nan
        patience = int(rng.integers(0, 6))
        min_delta = float(rng.choice([0.0, 0.005, 0.02]))
        stop_at = None
        if rng.uniform() < 0.5:
            stop_at = float(np.quantile(seq[np.isfinite(seq)], 0.1 if mode == "min" else 0.9))
        diverge_at = float(sign * 2.0) if rng.uniform() < 0.5 else None
        stoppers.append(jopt.early_stopping(
            mode=mode, min_delta=min_delta, patience=patience, check_finite=check_finite,
            stopping_threshold=stop_at, divergence_threshold=diverge_at))
        seqs.append(seq)
        refs.append(lightning_early_stopping_ref(seq, mode, min_delta, patience, check_finite,
                                                 stop_at, diverge_at))
    got = _es_stop_steps(stoppers, seqs, mode, check_finite)
    assert got == refs
    reasons = {r for _, r in refs}
    assert len(reasons) >= 3  # several kinds of stop (and/or no stop) are exercised


@functools.cache
def _rop_batch_runner(mode):
    tx = jopt.reduce_on_plateau(mode=mode)  # numeric options come from each member's state

    def one(state, values):
        def body(s, v):
            _, s = tx.update(ROP_UPDATES, s, None, value=v)
            return s, s.scale

        return jax.lax.scan(body, state, values)[1]

    return jax.jit(jax.vmap(one))


@pytest.mark.parametrize("mode", ["min", "max"])
def test_cross_check_keras_reduce_lr_on_plateau(mode):
    states, seqs, refs = [], [], []
    for seed in SEEDS:
        rng = np.random.default_rng(3000 + seed + (0 if mode == "min" else 500))
        seq = _curve(rng, 40, mode, 0.02)
        factor = float(rng.choice([0.5, 0.1, 0.3]))
        patience = int(rng.integers(0, 5))
        cooldown = int(rng.integers(0, 4))
        min_lr = float(rng.choice([0.0, 0.05, 0.2]))
        min_delta = float(rng.choice([0.0, 1e-4, 0.01]))
        tx = jopt.reduce_on_plateau(factor=factor, patience=patience, cooldown=cooldown,
                                    min_scale=min_lr, mode=mode, min_delta=min_delta)
        states.append(tx.init(ROP_PARAMS))
        seqs.append(seq)
        refs.append(keras_reduce_lr_ref(seq, mode, factor, patience, cooldown, min_lr,
                                        min_delta))
    got = np.asarray(_rop_batch_runner(mode)(stack(states),
                                             jnp.asarray(np.stack(seqs), jnp.float32)))
    np.testing.assert_allclose(got, np.asarray(refs), rtol=1e-6)
    reductions = sum(len(set(r)) > 1 for r in refs)
    assert reductions >= 10


# =============================================================================================
# Bad input.


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: jopt.early_stopping(patience=-1),
         "early_stopping: patience must be an integer >= 0; got -1."),
        (lambda: jopt.reduce_on_plateau(patience=-2),
         "reduce_on_plateau: patience must be an integer >= 0; got -2."),
        (lambda: jopt.early_stopping(patience=1.5),
         "early_stopping: patience must be an integer >= 0; got 1.5."),
        (lambda: jopt.reduce_on_plateau(cooldown=-1),
         "reduce_on_plateau: cooldown must be an integer >= 0; got -1."),
        (lambda: jopt.early_stopping(start_step=-1),
         "early_stopping: start_step must be an integer >= 0; got -1."),
        (lambda: jopt.reduce_on_plateau(factor=1.0),
         "reduce_on_plateau: factor must be in (0, 1); got 1.0."),
        (lambda: jopt.reduce_on_plateau(factor=0.0),
         "reduce_on_plateau: factor must be in (0, 1); got 0.0."),
        (lambda: jopt.reduce_on_plateau(factor=1.5),
         "reduce_on_plateau: factor must be in (0, 1); got 1.5."),
        (lambda: jopt.reduce_on_plateau(factor=-0.5),
         "reduce_on_plateau: factor must be in (0, 1); got -0.5."),
        (lambda: jopt.early_stopping(min_delta=-0.1),
         "early_stopping: min_delta must be >= 0; got -0.1."),
        (lambda: jopt.reduce_on_plateau(min_delta=-1e-3),
         "reduce_on_plateau: min_delta must be >= 0; got -0.001."),
        (lambda: jopt.early_stopping(mode="avg"),
         "early_stopping: mode must be 'min' or 'max'; got 'avg'."),
        (lambda: jopt.reduce_on_plateau(mode="auto"),
         "reduce_on_plateau: mode must be 'min' or 'max'; got 'auto'."),
        (lambda: jopt.early_stopping(min_delta_mode="relative"),
         "early_stopping: min_delta_mode must be 'abs' or 'rel'; got 'relative'."),
        (lambda: jopt.reduce_on_plateau(min_scale=2.0),
         "reduce_on_plateau: min_scale must be in [0, 1]; got 2.0."),
        (lambda: jopt.reduce_on_plateau(accumulation_size=0),
         "reduce_on_plateau: accumulation_size must be an integer >= 1; got 0."),
        (lambda: jopt.early_stopping(keep_best=True).init(),
         "early_stopping: params must be given to init when keep_best=True"),
        (lambda: jopt.reduce_on_plateau(restore_best=True).init(None),
         "reduce_on_plateau: params must be given to init when restore_best=True"),
    ],
)
def test_bad_options(make, message):
    with pytest.raises(InvalidHyperparameterError) as info:
        make()
    assert message in str(info.value)


@pytest.mark.parametrize(
    "metric, detail",
    [
        (jnp.ones(2), "got an array of shape (2,) and dtype float32"),
        (np.ones((1, 1), np.float32), "got an array of shape (1, 1)"),
        ("0.5", "got '0.5'"),
        (True, "got True"),
        ([0.5], "got [0.5]"),
        (1 + 2j, "got (1+2j)"),
    ],
)
def test_metric_not_a_real_scalar(metric, detail):
    es = jopt.early_stopping()
    with pytest.raises(InvalidMetricError) as info:
        es.update(es.init(), metric)
    assert str(info.value).startswith("early_stopping: the metric must be a real scalar; ")
    assert detail in str(info.value)
    tx = jopt.reduce_on_plateau()
    with pytest.raises(InvalidMetricError, match="reduce_on_plateau: the metric must be a real "
                                                 "scalar"):
        tx.update(ROP_UPDATES, tx.init(ROP_PARAMS), ROP_PARAMS, value=metric)


def test_missing_params_or_value():
    es = jopt.early_stopping(keep_best=True)
    with pytest.raises(TreeMismatchError) as info:
        es.update(es.init(ROP_PARAMS), 1.0)
    assert "early_stopping: update needs the parameters when keep_best=True" in str(info.value)

    tx = jopt.reduce_on_plateau()
    with pytest.raises(InvalidMetricError) as info:
        tx.update(ROP_UPDATES, tx.init(ROP_PARAMS), ROP_PARAMS)
    assert "reduce_on_plateau: update needs the monitored value: update(..., value=loss)" in str(
        info.value)

    tx = jopt.reduce_on_plateau(restore_best=True)
    with pytest.raises(TreeMismatchError) as info:
        tx.update(ROP_UPDATES, tx.init(ROP_PARAMS), value=1.0)
    assert "reduce_on_plateau: update needs the parameters when restore_best=True" in str(
        info.value)
