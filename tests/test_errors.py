"""User mistakes raise jopt's own errors naming the transformation, the tree path, the expected
and the given value; invalid hyperparameters raise when the transformation is built."""

import re

import jax
import jax.numpy as jnp
import pytest

import jopt
from jopt.errors import (
    InvalidHyperparameterError,
    InvalidMetricError,
    JoptError,
    TreeMismatchError,
)


def _params():
    return {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros((3,))}}


def test_error_classes_are_value_errors():
    assert issubclass(InvalidHyperparameterError, JoptError)
    assert issubclass(InvalidHyperparameterError, ValueError)
    assert issubclass(TreeMismatchError, ValueError)


@pytest.mark.parametrize(
    "build,name,arg",
    [
        (lambda: jopt.adam(-1e-3), "scale_by_learning_rate", "learning_rate"),
        (lambda: jopt.sgd(float("nan")), "scale_by_learning_rate", "learning_rate"),
        (lambda: jopt.adam(1e-3, b1=1.0), "scale_by_adam", "b1"),
        (lambda: jopt.adam(1e-3, b1=-0.1), "scale_by_adam", "b1"),
        (lambda: jopt.adamw(1e-3, b2=1.5), "scale_by_adam", "b2"),
        (lambda: jopt.scale_by_adam(eps=-1.0), "scale_by_adam", "eps"),
        (lambda: jopt.scale_by_adam(mu_dtype="int32"), "scale_by_adam", "mu_dtype"),
        (lambda: jopt.adamw(1e-3, weight_decay=-0.1), "add_decayed_weights", "weight_decay"),
        (lambda: jopt.clip_by_global_norm(-1.0), "clip_by_global_norm", "max_norm"),
        (lambda: jopt.clip(-0.5), "clip", "max_delta"),
        (lambda: jopt.sgd(0.1, momentum=1.5), "trace", "decay"),
        (lambda: jopt.sgd(0.1, nesterov=True), "sgd", "momentum"),
        (lambda: jopt.scale("a"), "scale", "step_size"),
        (lambda: jopt.scale_by_adam(nesterov="yes"), "scale_by_adam", "nesterov"),
        (lambda: jopt.cosine_decay(1.0, 0), "cosine_decay", "decay_steps"),
        (lambda: jopt.warmup_cosine_decay(0.0, 1.0, 100, 50), "warmup_cosine_decay", "decay_steps"),
        (lambda: jopt.make_schedule("cosine_decya", init_value=1.0), "make_schedule", "name"),
        (lambda: jopt.make_schedule("cosine_decay", init_value=1.0, steps=5), "cosine_decay",
         "argument name"),
        (lambda: jopt.chain(jopt.adam(1e-3), "not a transformation"), "chain", "transformation #1"),
        (lambda: jopt.early_stopping(mode="minimum"), "early_stopping", "mode"),
        (lambda: jopt.early_stopping(patience=-1), "early_stopping", "patience"),
        (lambda: jopt.early_stopping(patience=1.5), "early_stopping", "patience"),
        (lambda: jopt.early_stopping(min_delta=-0.1), "early_stopping", "min_delta"),
        (lambda: jopt.early_stopping(min_delta_mode="relative"), "early_stopping",
         "min_delta_mode"),
    ],
)
def test_invalid_hyperparameters_raise_at_build(build, name, arg):
    with pytest.raises(InvalidHyperparameterError) as info:
        build()
    msg = str(info.value)
    assert msg.startswith(f"{name}: {arg} must be"), msg
    assert info.value.transformation == name


def test_hyperparameter_message_shows_range_and_value():
    with pytest.raises(InvalidHyperparameterError, match=re.escape("b1 must be in [0, 1); got 1.0")):
        jopt.scale_by_adam(b1=1.0)
    with pytest.raises(InvalidHyperparameterError, match="one of .*cosine_decay.*warmup_cosine_decay"):
        jopt.make_schedule("cosine")
    with pytest.raises(InvalidHyperparameterError, match="one of init_value, decay_steps, alpha"):
        jopt.make_schedule("cosine_decay", init_value=1.0, steps=5)


def test_shape_mismatch_names_transformation_and_path():
    tx = jopt.adamw(1e-3)
    state = tx.init(_params())
    bad = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros((3,))}}
    with pytest.raises(TreeMismatchError) as info:
        jax.jit(tx.update)(bad, state, None)
    msg = str(info.value)
    assert msg.startswith("scale_by_adam: ")
    assert "['dense']['kernel']" in msg
    assert "expected shape (4, 3) float32" in msg and "got shape (3, 4) float32" in msg
    assert info.value.path == "['dense']['kernel']"


def test_missing_leaf_names_path():
    tx = jopt.chain(jopt.clip_by_global_norm(1.0), jopt.adam(1e-3))
    state = tx.init(_params())
    bad = {"dense": {"kernel": jnp.ones((4, 3))}}
    with pytest.raises(TreeMismatchError, match=r"scale_by_adam: .*\['dense'\]\['bias'\].*expected a leaf"):
        tx.update(bad, state)


def test_extra_leaf_names_path():
    tx = jopt.sgd(0.1, momentum=0.9)
    state = tx.init(_params())
    bad = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros((3,)), "extra": jnp.ones(2)}}
    with pytest.raises(TreeMismatchError, match=r"trace: .*\['dense'\]\['extra'\].*expected no leaf there"):
        tx.update(bad, state)


def test_params_mismatch_with_updates():
    tx = jopt.adamw(1e-3)
    state = tx.init(_params())
    bad_params = {"dense": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros((3,))}}
    grads = _params()
    with pytest.raises(TreeMismatchError, match=r"scale_by_adam: the params .*\['dense'\]\['kernel'\].*got shape \(4, 2\)"):
        tx.update(grads, state, bad_params)


def test_stateless_link_checks_params():
    tx = jopt.clip_by_global_norm(1.0)
    with pytest.raises(TreeMismatchError, match=r"clip_by_global_norm: .*\['b'\]"):
        tx.update({"a": jnp.ones(2)}, tx.init(None), {"a": jnp.ones(2), "b": jnp.ones(1)})


def test_weight_decay_needs_params():
    tx = jopt.adamw(1e-3)
    state = tx.init(_params())
    with pytest.raises(TreeMismatchError, match="add_decayed_weights: update needs the parameters"):
        tx.update(_params(), state)


def test_mask_structure_mismatch():
    tx = jopt.adamw(1e-3, mask={"dense": {"kernel": True}})
    with pytest.raises(TreeMismatchError, match=r"add_decayed_weights: the mask .*\['dense'\]\['bias'\]"):
        tx.init(_params())
    with pytest.raises(InvalidHyperparameterError, match="add_decayed_weights: mask must be"):
        jopt.adamw(1e-3, mask={"a": 1.0})


def test_wrong_state_type():
    tx = jopt.scale_by_adam()
    other = jopt.trace(0.9).init(_params())
    with pytest.raises(TreeMismatchError, match="scale_by_adam: the state is not the one .*expected ScaleByAdamState, got TraceState"):
        tx.update(_params(), other)
    chain = jopt.chain(jopt.scale_by_adam(), jopt.scale_by_learning_rate(0.1))
    with pytest.raises(TreeMismatchError, match="chain: the state .*a tuple of 2 link states"):
        chain.update(_params(), (other,))


def test_apply_updates_mismatch():
    with pytest.raises(TreeMismatchError, match=r"apply_updates: .*\['dense'\]\['bias'\].*expected shape \(3,\) float32, got shape \(2,\) float32"):
        jopt.apply_updates(_params(), {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros((2,))}})


def test_set_hyperparams_unknown_key_lists_known():
    state = jopt.adamw(1e-3).init(_params())
    with pytest.raises(InvalidHyperparameterError, match=r"key must be one of \['b1', 'b2', 'eps', 'eps_root', 'learning_rate', 'weight_decay'\]; got 'lr'"):
        jopt.set_hyperparams(state, lr=0.1)
    with pytest.raises(InvalidHyperparameterError, match="learning_rate must be >= 0; got -1"):
        jopt.set_hyperparams(state, learning_rate=-1)


def test_early_stopping_errors():
    es = jopt.early_stopping(keep_best=True)
    with pytest.raises(InvalidHyperparameterError, match="early_stopping: params must be given to init"):
        es.init()
    state = es.init(_params())
    with pytest.raises(TreeMismatchError, match="early_stopping: update needs the parameters"):
        es.update(state, 1.0)
    plain = jopt.early_stopping()
    with pytest.raises(InvalidMetricError, match=r"early_stopping: the metric must be a real scalar; got an array of shape \(3,\)"):
        plain.update(plain.init(), jnp.ones(3))
    with pytest.raises(InvalidHyperparameterError, match="best_params"):
        jopt.best_params(plain.init())


def test_errors_are_raised_at_trace_time_not_run_time():
    # The check happens while tracing: a jitted call never reaches XLA with a bad tree.
    tx = jopt.adam(1e-3)
    state = tx.init(_params())
    with pytest.raises(TreeMismatchError):
        jax.eval_shape(tx.update, {"dense": {"kernel": jnp.ones((4, 3))}}, state)


def test_set_hyperparams_rejects_what_cannot_work():
    state = jopt.chain(jopt.clip_by_global_norm(1.0), jopt.adam(1e-3)).init(_params())
    # Every numeric hyperparameter may follow a schedule (DESIGN 2): b1 and max_norm too.
    scheduled = jopt.set_hyperparams(state, b1=jopt.linear(0.0, 0.9, 2), max_norm=lambda c: 1.0)
    assert float(jopt.get_hyperparams(scheduled)["b1"]) == 0.0
    with pytest.raises(InvalidHyperparameterError, match="b1 must be in"):
        jopt.set_hyperparams(state, b1=1.5)
    with pytest.raises(InvalidHyperparameterError, match="learning_rate must be a scalar"):
        jopt.set_hyperparams(state, learning_rate=jnp.ones(3))
    for bad in ("a", None, float("nan")):
        with pytest.raises(InvalidHyperparameterError, match="eps"):
            jopt.set_hyperparams(state, eps=bad)
    es = jopt.early_stopping(patience=3).init()
    with pytest.raises(InvalidHyperparameterError, match="patience must be an integer >= 0"):
        jopt.set_hyperparams(es, patience=2.7)
    with pytest.raises(InvalidHyperparameterError, match="min_delta must be >= 0"):
        jopt.set_hyperparams(es, min_delta=-1.0)
    # Schedulable ones take schedules.
    new = jopt.set_hyperparams(state, learning_rate=jopt.linear(0.0, 1.0, 4))
    assert float(jopt.get_hyperparams(new)["learning_rate"]) == 0.0


def test_bad_metrics_and_states():
    es = jopt.early_stopping()
    for bad in ("a", None, {"a": 1.0}, 1 + 2j):
        with pytest.raises(InvalidMetricError, match="early_stopping: the metric must be a real scalar"):
            es.update(es.init(), bad)
    state = es.update(es.init(), 2**40)  # a huge Python int is a valid metric
    assert float(state.best_value) == 2.0**40
    with pytest.raises(TreeMismatchError, match="should_stop: the argument is not an early-stopping state"):
        jopt.should_stop({})
    with pytest.raises(TreeMismatchError, match="stop_reason"):
        jopt.stop_reason(None)


def test_set_hyperparams_inf_switches_thresholds_off():
    es = jopt.early_stopping(stopping_threshold=0.5, baseline=1.0)
    state = jopt.set_hyperparams(es.init(), stopping_threshold=float("-inf"), baseline=float("inf"))
    state = es.update(state, 0.1)  # would have reached the goal
    assert jopt.stop_reason(state).startswith("running: the last update improved")
    with pytest.raises(InvalidHyperparameterError, match="patience must be"):
        jopt.set_hyperparams(state, patience=float("inf"))
