"""jopt transformations work wherever optax ones do, and optax ones work inside jopt chains."""

import os
import subprocess
import sys
import textwrap

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state
from helpers import make_params, tree_allclose

import jopt


def _grads(params, seed):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)


class NeedsValue:
    """A minimal third-party transformation that requires ``value=`` (like a line search)."""

    def init(self, params):
        del params
        return jnp.zeros([], jnp.float32)

    def update(self, updates, state, params=None, *, value, **extra_args):
        del params, extra_args
        return jax.tree_util.tree_map(lambda u: u * value, updates), state + value


# optax's own code mixes int32 counters and float32 values, which strict dtype promotion
# (on for the whole suite, see conftest.py) rejects. Tests that run optax code switch to
# standard promotion around it; jopt code elsewhere stays under strict promotion.
standard = jax.numpy_dtype_promotion("standard")


@standard
def test_jopt_chain_accepts_optax_links():
    tx = jopt.chain(optax.clip_by_global_norm(1.0), jopt.scale_by_adam(), optax.scale(-0.1))
    ref = optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(), optax.scale(-0.1))
    params = make_params()
    s, r = tx.init(params), ref.init(params)
    for i in range(10):
        g = _grads(params, i)
        u, s = tx.update(g, s, params, value=jnp.float32(1.0))  # optax links never see value=
        v, r = ref.update(g, r, params)
        # optax computes (1 - b2) in float64 but the bias correction 1 - b2**t in float32;
        # the two disagree by 1.3e-5 relative, i.e. ~7e-6 in the update. jopt uses the same
        # float32 b2 in both, so its first step is exactly g/|g| like the float64 reference.
        assert tree_allclose(u, v, rtol=2e-5, atol=1e-8)


def test_jopt_chain_forwards_extra_args():
    tx = jopt.chain(jopt.clip_by_global_norm(1.0), NeedsValue())
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    u, state = tx.update({"w": jnp.full(3, 0.1)}, state, params, value=jnp.float32(2.0))
    np.testing.assert_allclose(np.asarray(u["w"]), 0.2, rtol=1e-6)
    assert float(state[1]) == 2.0


def test_to_optax_lets_optax_chain_pass_value():
    otx = optax.chain(optax.scale(1.0), jopt.to_optax(jopt.chain(NeedsValue(), jopt.sgd(1.0))))
    params = {"w": jnp.ones(3)}
    state = otx.init(params)
    u, _ = otx.update({"w": jnp.full(3, 0.5)}, state, params, value=jnp.float32(3.0))
    np.testing.assert_allclose(np.asarray(u["w"]), -1.5, rtol=1e-6)
    assert isinstance(jopt.to_optax(jopt.adam(1e-3)), optax.GradientTransformationExtraArgs)


@standard
def test_jopt_inside_optax_combinators():
    # optax.chain, optax.MultiSteps (gradient accumulation) and optax.masked take jopt links.
    params = make_params()
    tx = optax.MultiSteps(jopt.adamw(1e-2), every_k_schedule=2)
    ref = optax.MultiSteps(optax.adamw(1e-2, weight_decay=1e-4), every_k_schedule=2)
    s, r = tx.init(params), ref.init(params)
    for i in range(6):
        g = _grads(params, i)
        u, s = tx.update(g, s, params)
        v, r = ref.update(g, r, params)
        assert tree_allclose(u, v, rtol=1e-5, atol=1e-8)


def test_flax_nnx_optimizer():
    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(4, 8, rngs=rngs)
            self.l2 = nnx.Linear(8, 1, rngs=rngs)

        def __call__(self, x):
            return self.l2(jax.nn.relu(self.l1(x)))

    x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 4)), jnp.float32)
    y = jnp.sum(x, axis=1, keepdims=True)

    def run(tx):
        model = MLP(nnx.Rngs(0))
        opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

        @nnx.jit
        def step(model, opt):
            loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
            opt.update(model, grads)
            return loss

        return [float(step(model, opt)) for _ in range(30)], opt

    losses, opt = run(jopt.chain(jopt.clip_by_global_norm(1.0), jopt.adamw(1e-2)))
    with standard:
        ref, _ = run(optax.chain(optax.clip_by_global_norm(1.0),
                                 optax.adamw(1e-2, weight_decay=1e-4)))
    assert losses[-1] < 0.5 * losses[0]
    np.testing.assert_allclose(losses, ref, rtol=1e-4)
    # The learning rate is readable from the optimizer held by flax.
    assert float(jopt.get_hyperparams(opt.opt_state)["learning_rate"]) == np.float32(1e-2)


def test_flax_train_state():
    params = {"w": jnp.ones((3,))}
    state = train_state.TrainState.create(apply_fn=None, params=params, tx=jopt.adam(0.1))
    state = state.apply_gradients(grads={"w": jnp.ones((3,))})
    np.testing.assert_allclose(np.asarray(state.params["w"]), 0.9, rtol=1e-6)
    assert flax.__version__


class NamedValueOnly:
    """A link that names ``value`` but takes no **kwargs."""

    def init(self, params):
        del params
        return jnp.zeros([], jnp.float32)

    def update(self, updates, state, params=None, value=None):
        del params
        return jax.tree_util.tree_map(lambda u: u * value, updates), state


def test_chain_passes_named_extra_args_to_links_without_kwargs():
    tx = jopt.chain(jopt.scale(1.0), NamedValueOnly())
    params = {"w": jnp.ones(2)}
    u, _ = tx.update(params, tx.init(params), params, value=jnp.float32(4.0), other=1)
    np.testing.assert_allclose(np.asarray(u["w"]), 4.0)


@standard
def test_optax_spellings_and_positional_order():
    # Code written for optax reads the same with jopt: schedule names and argument order.
    assert jopt.adamw(1e-3, 0.9, 0.999, 1e-8, 0.0, None, 1e-2) == jopt.adamw(1e-3, weight_decay=1e-2)
    assert jopt.adam(1e-3, 0.9, 0.999, 1e-8, 0.0, "bfloat16") == jopt.adam(1e-3, mu_dtype="bfloat16")
    pairs = [
        (jopt.linear_schedule(1.0, 0.0, 10), optax.linear_schedule(1.0, 0.0, 10)),
        (jopt.cosine_decay_schedule(1.0, 10, 0.1), optax.cosine_decay_schedule(1.0, 10, 0.1)),
        (jopt.warmup_cosine_decay_schedule(0.0, 1.0, 5, 20),
         optax.warmup_cosine_decay_schedule(0.0, 1.0, 5, 20)),
        (jopt.constant_schedule(0.3), optax.constant_schedule(0.3)),
        (jopt.piecewise_constant_schedule(1.0, {5: 0.1, 10: 0.5}),
         optax.piecewise_constant_schedule(1.0, {5: 0.1, 10: 0.5})),
        (jopt.join_schedules([jopt.constant_schedule(1.0), jopt.linear_schedule(1.0, 0.0, 5)], [3]),
         optax.join_schedules([optax.constant_schedule(1.0), optax.linear_schedule(1.0, 0.0, 5)], [3])),
    ]
    for ours, theirs in pairs:
        for t in range(25):
            # Eagerly both evaluate the same float32 arithmetic (see jopt._schedules._ramp).
            np.testing.assert_allclose(float(ours(t)), float(theirs(t)), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# flax nnx.Optimizer with schedules, 8-bit moments and flat state; optax combinators.


class _MLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(64, 72, rngs=rngs)  # 4608 weights: quantized by 8-bit Adam
        self.l2 = nnx.Linear(72, 1, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x)))


def _nnx_run(tx, steps=4, jit=True):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 64)), jnp.float32)
    y = jnp.sum(x, axis=1, keepdims=True)
    model = _MLP(nnx.Rngs(0))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    def step(model, opt):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        opt.update(model, grads)
        return loss, jopt.get_hyperparams(opt.opt_state)["learning_rate"]

    step = nnx.jit(step) if jit else step
    out = [step(model, opt) for _ in range(steps)]
    return [float(loss) for loss, _ in out], [float(lr) for _, lr in out], opt


@pytest.mark.parametrize("jit", [True, False], ids=["nnx_jit", "eager"])
def test_nnx_optimizer_with_a_schedule_reads_the_learning_rate(jit):
    # get_hyperparams on opt.opt_state (a tree of nnx variables) raised a raw TypeError from
    # the schedule's ramp, eagerly and under nnx.jit.
    sched = jopt.warmup_cosine_decay(0.0, 1e-2, 2, 10)
    losses, lrs, opt = _nnx_run(jopt.chain(jopt.clip_by_global_norm(1.0), jopt.adamw(sched)),
                                jit=jit)
    # Read inside the step, after the update: the value the next update will use.
    np.testing.assert_allclose(lrs, [float(sched(t)) for t in range(1, 5)], rtol=1e-6)
    np.testing.assert_allclose(float(jopt.get_hyperparams(opt.opt_state)["learning_rate"]),
                               float(sched(4)), rtol=1e-6)
    assert losses[-1] < losses[0]
    # set_hyperparams keeps the variables, and the next update uses the new value.
    opt.opt_state = jopt.set_hyperparams(opt.opt_state, learning_rate=0.0)
    assert any(isinstance(v, nnx.Variable) for v in jax.tree_util.tree_leaves(
        opt.opt_state, is_leaf=lambda v: isinstance(v, nnx.Variable)))
    assert float(jopt.get_hyperparams(opt.opt_state)["learning_rate"]) == 0.0


@pytest.mark.parametrize("make", [
    lambda: jopt.adam_8bit(1e-2),
    lambda: jopt.flatten(jopt.adamw(1e-2)),
    lambda: jopt.chain(jopt.clip_by_global_norm(1.0),
                       jopt.adamw(1e-2, mu_dtype=jopt.StochasticRounding("bfloat16"))),
], ids=["adam_8bit", "flatten", "stochastic_rounding"])
def test_nnx_optimizer_with_8bit_and_flat_state(make):
    # adam_8bit failed on the second update (['kernel']['absmax']) and flatten on the first
    # (['bias'].value): init saw nnx variables, update plain arrays.
    losses, _, opt = _nnx_run(make(), steps=5)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert jopt.get_hyperparams(opt.opt_state)["learning_rate"] == np.float32(1e-2)


def test_optax_chain_passes_value_to_jopt_links():
    # jopt transformations are optax GradientTransformationExtraArgs when optax is installed,
    # so optax's combinators pass value= to them (this raised "update needs the monitored
    # value" although value= was passed).
    params = {"w": jnp.ones(3)}
    tx = optax.chain(jopt.adam(1e-2), jopt.reduce_on_plateau(patience=0, factor=0.5))
    assert isinstance(jopt.adam(1e-2), optax.GradientTransformationExtraArgs)
    state = tx.init(params)
    for v in (1.0, 2.0, 3.0):
        _, state = tx.update(params, state, params, value=jnp.float32(v))
    assert float(state[1].scale) == 0.25
    # A combinator that drops extra arguments: the error names the way out.
    dropping = optax.GradientTransformation(tx.init, lambda u, s, p=None: tx.update(u, s, p))
    with pytest.raises(jopt.errors.InvalidMetricError, match="jopt.to_optax"):
        dropping.update(params, state, params)


def test_jopt_works_without_optax():
    # optax is an optional dependency: with it missing, jopt imports, trains, and to_optax
    # says what is needed.
    code = (
        "import sys; sys.modules['optax'] = None\n"
        "import jax.numpy as jnp, jopt\n"
        "tx = jopt.chain(jopt.clip_by_global_norm(1.0), jopt.adam(0.1))\n"
        "p = {'w': jnp.ones(3)}; s = tx.init(p)\n"
        "u, s = tx.update(p, s, p)\n"
        "assert type(tx).__mro__[1].__name__ == '_TransformationFields'\n"
        "try:\n    jopt.to_optax(tx)\nexcept jopt.errors.MissingDependencyError as e:\n"
        "    print('missing:', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "missing: to_optax needs optax" in r.stdout


@pytest.mark.parametrize("flax_first", [True, False], ids=["flax_first", "jopt_first"])
def test_flax_serialization_knows_jopt_types_in_either_import_order(flax_first):
    """jopt registers its node types with flax.serialization without importing flax: at
    once when flax is loaded, else when it is (an import hook that then removes itself)."""
    pytest.importorskip("flax")
    code = textwrap.dedent(f"""
        import sys
        if {flax_first}:
            import flax.serialization
        import jax.numpy as jnp, jopt
        assert ("flax" in sys.modules) == {flax_first}, "jopt imported flax"
        from flax import serialization
        tx = jopt.adamw(jopt.linear(0.0, 1e-3, 10))
        state = tx.init({{"w": jnp.ones(3)}})
        back = serialization.from_bytes(state, serialization.to_bytes(state))
        import jax, numpy as np
        assert jax.tree.structure(back) == jax.tree.structure(state)
        assert all(np.array_equal(a, b) for a, b in
                   zip(jax.tree.leaves(back), jax.tree.leaves(state)))
        assert not any(type(f).__module__ == "jopt._serialization" for f in sys.meta_path)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
