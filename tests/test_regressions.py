"""Regressions from the adversarial pass and the new-user trial of the declaration core.

Each test names what went wrong before its fix (all reproduced on the commit before it).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jopt
from jopt import schedules as S
from jopt.errors import (
    InvalidCallError,
    InvalidHyperparameterError,
    TreeMismatchError,
    UnknownKeyError,
)

P = {"w": jnp.ones(3)}
G = {"w": jnp.full(3, 0.5)}


# --- keys ----------------------------------------------------------------------------------


def test_a_slash_inside_a_dict_key_is_escaped_not_read_as_two_segments():
    # {"x/y": ...} and {"x": {"y": ...}} had the same canonical key: setting one set both.
    state = {"x/y": jopt.scale_by_learning_rate(0.1).init(P),
             "x": {"y": jopt.scale_by_learning_rate(0.2).init(P)}}
    keys = jopt.get_hyperparams(state).canonical()
    assert set(keys) == {"x~1y/learning_rate", "x/y/learning_rate"}
    new = jopt.get_hyperparams(jopt.set_hyperparams(state, {"x~1y/learning_rate": 0.7}))
    assert float(new["x~1y/learning_rate"]) == np.float32(0.7)
    assert float(new["x/y/learning_rate"]) == np.float32(0.2)


@pytest.mark.parametrize("name", ["a/b", ""])
def test_named_chain_refuses_names_that_break_keys(name):
    with pytest.raises(InvalidHyperparameterError, match="without '/'"):
        jopt.named_chain((name, jopt.scale(1.0)))


def test_a_partial_key_is_not_silently_matched():
    # "2/learning_rate" matched "1/2/learning_rate" by its end; inserting a link could then
    # make it name another value. Only full keys and unique short names are accepted.
    state = jopt.chain(jopt.clip_by_global_norm(1.0), jopt.adamw(1e-3)).init(P)
    with pytest.raises(UnknownKeyError, match=re.escape("got '2/learning_rate'")):
        jopt.set_hyperparams(state, {"2/learning_rate": 0.1})
    with pytest.raises(KeyError):
        jopt.get_hyperparams(state)["2/learning_rate"]


def test_unknown_key_is_a_jopt_key_error_listing_the_keys():
    # get_hyperparams(state)["lr"] raised a bare KeyError: 'lr'.
    hp = jopt.get_hyperparams(jopt.adamw(1e-3).init(P))
    with pytest.raises(UnknownKeyError) as err:
        hp["lr"]
    assert isinstance(err.value, KeyError) and "learning_rate" in str(err.value)
    assert "lr" not in hp and hp.get("lr", 5) == 5


# --- values --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [np.int64(2**31), 2**100, np.uint32(7)])
def test_integer_values_go_to_float_without_wrapping(value):
    # np.int64(2**31) wrapped to -2**31 on its way to an int32 then float32 state.
    state = jopt.set_hyperparams(jopt.sgd(0.1).init(P), learning_rate=value)
    assert float(jopt.get_hyperparams(state)["learning_rate"]) == float(np.float32(float(value)))


def test_non_scalar_hyperparameters_are_refused_when_built():
    # An array learning rate built a state that broadcast the update into another shape.
    with pytest.raises(InvalidHyperparameterError, match="a scalar or a schedule"):
        jopt.adam(jnp.array([0.1, 0.2, 0.3]))


def test_set_values_are_copies_that_survive_a_donated_step():
    lr = jnp.float32(0.3)
    state = jopt.set_hyperparams(jopt.sgd(0.1).init(P), learning_rate=lr)
    step = jax.jit(lambda s: jopt.sgd(0.1).update(G, s)[1], donate_argnums=0)
    step(state)
    assert float(lr) == np.float32(0.3)  # the caller's array was not donated with the state


def test_population_set_outside_vmap_broadcasts_numbers_and_schedules():
    tx = jopt.adam(S.linear(0.0, 1.0, 10))
    pop = jax.vmap(lambda lr: jopt.set_hyperparams(
        tx.init(P), learning_rate=S.linear(0.0, lr, 10)))(jnp.arange(1.0, 4.0))
    pop = jopt.set_hyperparams(pop, learning_rate=0.5)
    _, pop = jax.vmap(lambda s: tx.update(G, s))(pop)
    np.testing.assert_array_equal(jopt.get_hyperparams(pop)["learning_rate"], [0.5] * 3)
    pop = jopt.set_hyperparams(pop, learning_rate=S.cosine_decay(1.0, 10))
    _, pop = jax.vmap(lambda s: tx.update(G, s))(pop)
    want = float(S.cosine_decay(1.0, 10)(2))
    np.testing.assert_array_equal(jopt.get_hyperparams(pop)["learning_rate"], [want] * 3)


def test_counts_past_int32_saturate_in_schedules():
    # A Python int past int32 wrapped to a negative count (the schedule restarted).
    s = S.linear(0.0, 1.0, 10)
    assert float(s(2**40)) == 1.0 and float(s(np.int64(2**33))) == 1.0


# --- schedules are range-checked -----------------------------------------------------------


@pytest.mark.parametrize("make, name, message", [
    (lambda: jopt.adam(1e-3, b1=S.linear(0.5, 1.5, 10)), "b1", "from 0.5 to 1.5"),
    (lambda: jopt.adam(S.linear(1e-3, -1e-3, 10)), "learning_rate", "from -0.001 to 0.001"),
    (lambda: jopt.adam(1e-3, b2=S.exponential_decay(0.9, 10, 1.1)), "b2", "from 0.9 to inf"),
    (lambda: jopt.adam(S.join([S.constant(1.0), S.constant(-1.0)], [5])), "learning_rate",
     "from -1 to 1"),
    (lambda: jopt.adam(S.warmup_cosine_decay(-1.0, 1.0, 5, 10)), "learning_rate",
     "from -1 to 1"),
    (lambda: jopt.set_hyperparams(jopt.sgd(0.1).init(P), learning_rate=S.constant(-1.0)),
     "learning_rate", "from -1 to -1"),
])
def test_schedules_outside_the_range_are_refused(make, name, message):
    # b1 = linear(0.5, 1.5) built and trained with b1 = 1.5 (NaN-free but meaningless).
    with pytest.raises(InvalidHyperparameterError, match=f"{name} must be a schedule whose "
                       f"values stay .*{re.escape(message)}"):
        make()


@pytest.mark.parametrize("make", [
    lambda: jopt.adam(S.cosine_decay(1e-3, 100)),                       # ends at 0: allowed
    lambda: jopt.adam(S.exponential_decay(1e-3, 10, 0.5)),              # towards 0
    lambda: jopt.adam(1e-3, b2=S.exponential_decay(0.9, 10, 1.1, end_value=0.999)),
    lambda: jopt.adam(S.join([S.constant(-1.0), S.constant(1.0)], [0])),  # empty first piece
    lambda: jopt.adam(S.warmup_cosine_decay(-1.0, 1.0, 0, 10)),          # no warm-up
    lambda: jopt.adam(lambda count: 1e-3),                               # cannot be known
])
def test_schedules_inside_the_range_are_accepted(make):
    make()


def test_value_range_matches_the_values_taken():
    """value_range bounds what the schedule returns over many steps (and is tight here)."""
    steps = jnp.arange(0, 400)
    for s in [S.linear(0.2, -0.3, 50, 20), S.cosine_decay(2.0, 100, alpha=0.1),
              S.warmup_cosine_decay(0.1, 1.0, 10, 100, end_value=0.2),
              S.exponential_decay(1.0, 10, 0.5, end_value=0.25),
              S.piecewise_constant([10, 20], [1.0, 3.0, 2.0]),
              S.join([S.linear(0.0, 1.0, 10), S.constant(0.5)], [20])]:
        values = np.asarray(jax.vmap(s)(steps))
        lo, hi = s.value_range()
        assert lo <= values.min() + 1e-7 and values.max() <= hi + 1e-7, s
        np.testing.assert_allclose([values.min(), values.max()], [lo, hi], rtol=1e-6, atol=1e-7)


# --- equality ------------------------------------------------------------------------------


def test_a_hand_built_transformation_never_equals_a_configured_one():
    a = jopt.adam(0.1)
    hand = jopt.GradientTransformation(a.init, a.update)
    assert a != hand and hand != a and len({a, hand}) == 2


# --- inject_hyperparams --------------------------------------------------------------------


def test_inject_holds_every_numeric_argument_as_optax_does():
    # Only the arguments passed were held; writing another key was dropped without effect.
    ours = jopt.inject_hyperparams(jopt.adamw)(learning_rate=1e-3)
    theirs = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3)
    state = ours.init(P)
    assert list(state.hyperparams) == list(theirs.init(P).hyperparams)
    state.hyperparams["weight_decay"] = 0.5
    _, state = ours.update(G, state, P)
    assert float(jopt.get_hyperparams(state)["weight_decay"]) == 0.5


def test_inject_refuses_a_key_it_does_not_hold():
    tx = jopt.inject_hyperparams(jopt.sgd)(learning_rate=0.1)
    state = tx.init(P)
    state.hyperparams["lr"] = 0.5
    with pytest.raises(InvalidHyperparameterError, match=r"\['lr'\] would have no effect"):
        tx.update(G, state)


@pytest.mark.parametrize("dtype", ["int32", jnp.bfloat16, "junk"])
def test_inject_refuses_hyperparam_dtypes_that_round(dtype):
    with pytest.raises(InvalidHyperparameterError, match="float32 or float64"):
        jopt.inject_hyperparams(jopt.adam, hyperparam_dtype=dtype)


def test_inject_wrong_calls_are_type_errors_showing_the_signature():
    with pytest.raises(InvalidCallError, match=r"inject_hyperparams\(adam\).*it takes"):
        jopt.inject_hyperparams(jopt.adam)(lr=0.1)
    with pytest.raises(InvalidHyperparameterError, match="inner_factory"):
        jopt.inject_hyperparams(3)


def test_inject_of_a_foreign_factory_names_an_argument_that_reaches_nothing():
    with pytest.raises(InvalidHyperparameterError, match="lr must be the name of a hyper"):
        jopt.inject_hyperparams(lambda lr: jopt.sgd(lr))(lr=0.1).init(P)


def test_inject_passes_non_hyperparameter_arguments_through():
    state = jopt.inject_hyperparams(jopt.adam_8bit)(1e-3, block_size=256).init(P)
    assert "block_size" not in state.hyperparams and "learning_rate" in state.hyperparams


# --- calls ---------------------------------------------------------------------------------


@pytest.mark.parametrize("call", [
    lambda: jopt.adam(1e-3, betas=(0.9, 0.99)),
    lambda: S.linear(0.0, 1.0, 10, begin=3),
    lambda: jopt.early_stopping(patients=3),
    lambda: jopt.pack(P, P),
])
def test_wrong_calls_raise_invalid_call_error(call):
    # Raw Python TypeErrors (or a jopt error without the signature) before.
    with pytest.raises(InvalidCallError, match="it takes"):
        call()


# --- storage -------------------------------------------------------------------------------


def test_sgd_validates_accumulator_dtype_without_momentum():
    with pytest.raises(InvalidHyperparameterError, match="accumulator_dtype"):
        jopt.sgd(0.1, accumulator_dtype="int8")


def test_8bit_moments_of_complex_parameters_are_refused_at_init():
    # The real second moment of a complex leaf went 8-bit and failed inside update.
    params = {"z": jnp.ones(5000, jnp.complex64)}
    for tx in [jopt.adam_8bit(1e-3), jopt.adam(1e-3, nu_dtype="8bit")]:
        with pytest.raises(TreeMismatchError, match="8-bit moments cannot hold"):
            tx.init(params)


def test_meta_gradient_through_an_8bit_step_is_finite():
    # The saturation branch multiplied by inf: its derivative was NaN (0 * inf).
    params = {"w": jnp.linspace(-1.0, 1.0, 5000)}

    def run(lr):
        tx = jopt.adam_8bit(lr)
        state = tx.init(params)
        p = params
        for _ in range(3):
            g = jax.tree_util.tree_map(lambda x: 2 * x, p)
            u, state = tx.update(g, state, p)
            p = jopt.apply_updates(p, u)
        return jnp.sum(p["w"] ** 2)

    grad = jax.grad(run)(jnp.float32(1e-2))
    assert np.isfinite(float(grad)) and float(grad) < 0


def test_flatten_init_on_shape_dtype_structs_gives_abstract_buffers():
    # float() of a ShapeDtypeStruct: a raw TypeError (orbax targets are built this way).
    abstract = {"w": jax.ShapeDtypeStruct((3,), jnp.float32),
                "b": jax.ShapeDtypeStruct((), jnp.float32)}
    tx = jopt.flatten(jopt.adam(1e-3))
    shapes = tx.init(abstract)
    concrete = tx.init({"w": jnp.ones(3), "b": jnp.ones(())})
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(concrete)
    assert [(x.shape, x.dtype) for x in jax.tree_util.tree_leaves(shapes)] == [
        (x.shape, x.dtype) for x in jax.tree_util.tree_leaves(concrete)]
    assert jopt.pack(abstract).buffers[0].shape == (4,)


def _row_mean_block():
    """A per-leaf rule with a factored slot (one value per row), as Adafactor's."""
    from jopt._declare import Rule, Slot, transformation
    from jopt._registry import REGISTRY

    @transformation(kind="per_leaf", slots=[Slot("row", option="row_dtype", shape=lambda s: s[:1])])
    def scale_by_row_rms(row_dtype=None):
        def rule(g, *, row):
            row = 0.5 * row + 0.5 * jnp.mean(g * g, axis=1)
            return g / jnp.sqrt(row[:, None] + 1e-8), row.astype(row.dtype)
        return Rule(rule)

    REGISTRY.pop("scale_by_row_rms", None)  # a test block, not a public factory
    return scale_by_row_rms


def test_a_slot_of_its_own_shape_takes_dtypes_and_stochastic_rounding_not_8bit():
    # Such a slot ignored its storage option (stochastic rounding silently dropped).
    block = _row_mean_block()
    params = {"m": jnp.ones((4, 3), jnp.bfloat16)}
    state = block(row_dtype=jopt.StochasticRounding("bfloat16")).init(params)
    assert state.row["m"].shape == (4,) and state.row["m"].dtype == jnp.bfloat16
    assert block(row_dtype="float16").init(params).row["m"].dtype == jnp.float16
    with pytest.raises(InvalidHyperparameterError, match="shape of its own"):
        block(row_dtype="8bit")


def test_a_user_named_tuple_with_a_hyperparams_field_is_just_a_container():
    # Taken for an optax inject state: its values were reported and "set" without effect.
    from typing import NamedTuple

    class Mine(NamedTuple):
        hyperparams: dict
        opt: object

    state = Mine({"learning_rate": jnp.float32(9.0)}, jopt.sgd(0.1).init(P))
    hp = jopt.get_hyperparams(state)
    assert list(hp) == ["learning_rate"] and float(hp["learning_rate"]) == np.float32(0.1)
