"""The declaration helper (jopt/_declare.py): the worked example of CONTRIBUTING.md runs and
gets the whole contract from its declaration; storage codecs on any slot; kinds make packed
and flat-state layouts right (a trust-ratio rule agrees in all three); every numeric
hyperparameter may be a schedule; configuration equality compares stored values."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tree_equal, tree_signature

import jopt
from jopt._declare import Rule, Slot, transformation
from jopt._hyper import Hyper
from jopt._registry import REGISTRY
from jopt.errors import InvalidHyperparameterError, LayoutError

HERE = os.path.dirname(os.path.abspath(__file__))
standard = jax.numpy_dtype_promotion("standard")  # optax is not strict-promotion clean


def _contributing_example():
    """The code block of CONTRIBUTING.md's worked example, executed."""
    with open(os.path.join(HERE, "..", "CONTRIBUTING.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("## A worked example"):text.index("## A named optimizer")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    body = [ln for ln in code.splitlines() if ln.strip() and not ln.strip().startswith('"""')]
    namespace = {"__name__": "contributing_example"}
    try:
        exec(compile(code, "CONTRIBUTING.md", "exec"), namespace)
    finally:
        REGISTRY.pop("scale_by_lion", None)  # a tutorial, not a public factory
    return namespace["scale_by_lion"], len(body)


scale_by_lion, EXAMPLE_LINES = _contributing_example()


def _contributing_optimizer():
    """The named optimizer of CONTRIBUTING.md, built on the worked example's block."""
    with open(os.path.join(HERE, "..", "CONTRIBUTING.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("## A named optimizer"):text.index("## Wrappers")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {"__name__": "contributing_example", "scale_by_lion": scale_by_lion}
    try:
        exec(compile(code, "CONTRIBUTING.md", "exec"), namespace)
    finally:
        REGISTRY.pop("lion", None)  # a tutorial, not a public factory
    return namespace["lion"]


def _np_lion(grads, b1=0.9, b2=0.99):
    """Lion from the paper's equations (Chen et al. 2023, arXiv:2302.06675), float64."""
    m = np.zeros_like(grads[0], dtype=np.float64)
    out = []
    for g in grads:
        g = np.asarray(g, np.float64)
        out.append(np.sign(b1 * m + (1 - b1) * g))
        m = b2 * m + (1 - b2) * g
    return out, m


def test_worked_example_is_short():
    # "its whole code, no more than about 25 lines besides the docstring"
    assert EXAMPLE_LINES <= 25, EXAMPLE_LINES


def test_worked_example_matches_the_paper():
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(30)]
    tx = scale_by_lion()
    state = tx.init(jnp.zeros((3, 4)))
    step = jax.jit(tx.update)
    ref_u, ref_m = _np_lion(grads)
    for g, want in zip(grads, ref_u):
        u, state = step(jnp.asarray(g), state)
        # sign() of float32 vs float64 arithmetic: equal except where the argument is within
        # rounding of 0 (none for these draws).
        np.testing.assert_array_equal(np.asarray(u), want)
    # The momentum after 30 steps: float32 accumulation of 30 terms, 1e-6 relative.
    np.testing.assert_allclose(np.asarray(state.mu), ref_m, rtol=1e-5, atol=1e-7)


def test_named_optimizer_example_is_lion_with_decoupled_decay():
    lion = _contributing_optimizer()
    tx = lion(1e-2, weight_decay=0.1)
    assert repr(tx).startswith("lion(learning_rate=0.01")
    rng = np.random.default_rng(1)
    grads = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(5)]
    p = np.asarray(rng.normal(size=(3, 4)), np.float64)
    params = jnp.asarray(p, jnp.float32)
    state = tx.init(params)
    ref_u, _ = _np_lion(grads)
    for g, u_ref in zip(grads, ref_u):
        u, state = tx.update(jnp.asarray(g), state, params)
        params = jopt.apply_updates(params, u)
        p = p - 1e-2 * (u_ref + 0.1 * p)  # the paper's Algorithm 2, decoupled decay
    # Five float32 steps of size 1e-2: a few float32 roundings of the parameters.
    np.testing.assert_allclose(np.asarray(params), p, rtol=1e-6, atol=1e-6)


def test_worked_example_gets_the_contract():
    tx = scale_by_lion(b1=0.95)
    assert repr(tx) == "scale_by_lion(b1=0.95, b2=0.99)"
    assert tx == scale_by_lion(0.95) and hash(tx) == hash(scale_by_lion(0.95))
    # Equal when the stored values are: np.float32(0.5) and 0.5 store the same complement
    # (np.float32(0.95) does not: 1 - float32(0.95) rounds to another float32 than 1 - 0.95).
    assert scale_by_lion(np.float32(0.5)) == scale_by_lion(0.5)
    assert tx != scale_by_lion()
    state = tx.init({"w": jnp.zeros(3)})
    assert type(state).__name__ == "ScaleByLionState"
    assert type(state)._fields == ("count", "mu", "hyperparams")
    assert scale_by_lion.State is type(state)
    with pytest.raises(InvalidHyperparameterError,
                       match=re.escape("scale_by_lion: b1 must be in [0, 1]; got 1.5.")):
        scale_by_lion(b1=1.5)
    with pytest.raises(InvalidHyperparameterError, match="scale_by_lion: mu_dtype must be"):
        scale_by_lion(mu_dtype="int8")
    # Hyperparameters are data: readable, settable, schedulable, without recompiling.
    assert float(jopt.get_hyperparams(state)["b1"]) == pytest.approx(0.95)
    traces = []

    @jax.jit
    def step(g, s):
        traces.append(1)
        return tx.update(g, s)

    _, state = step({"w": jnp.ones(3)}, state)
    state = jopt.set_hyperparams(state, b2=0.5)
    _, state = step({"w": jnp.ones(3)}, state)
    assert len(traces) == 1
    with pytest.raises(jopt.errors.TreeMismatchError, match=r"scale_by_lion: .*\['w'\]"):
        tx.update({"w": jnp.ones(4)}, state)


@pytest.mark.parametrize("storage", ["bfloat16", "8bit", jopt.StochasticRounding("bfloat16")],
                         ids=["bfloat16", "8bit", "stochastic"])
def test_any_slot_in_any_codec(storage):
    # The same rule with its momentum stored three other ways: the updates follow the
    # float32 run (Lion's sign is robust to the storage error on these draws, except where
    # the interpolation is close to 0).
    rng = np.random.default_rng(1)
    params = {"w": jnp.zeros((64, 80))}
    grads = [{"w": jnp.asarray(rng.normal(size=(64, 80)), jnp.float32)} for _ in range(10)]
    ref, low = scale_by_lion(), scale_by_lion(mu_dtype=storage)
    s_ref, s_low = ref.init(params), low.init(params)
    leaf = s_low.mu["w"]
    if storage == "8bit":
        assert isinstance(leaf, jopt.QuantizedArray) and leaf.codes.dtype == jnp.uint8
    else:
        assert leaf.dtype == jnp.bfloat16
    agree = []
    for g in grads:
        u_ref, s_ref = jax.jit(ref.update)(g, s_ref)
        u_low, s_low = jax.jit(low.update)(g, s_low)
        agree.append(float(jnp.mean(u_ref["w"] == u_low["w"])))
        assert tree_signature(s_low) == tree_signature(low.init(params))
    assert min(agree) > 0.95, agree


def test_stochastic_rounding_keeps_small_increments():
    # trace(decay=1) accumulates the gradients: 1000 increments of 1e-3 onto 1.0 in bfloat16.
    # Round-to-nearest loses every one of them (1e-3 < half a bfloat16 spacing at 1); the
    # stochastically rounded slot ends near 2.0 on average.
    params = {"w": jnp.zeros(4096)}
    nearest = jopt.trace(1.0, accumulator_dtype="bfloat16")
    stoch = jopt.trace(1.0, accumulator_dtype=jopt.StochasticRounding("bfloat16", seed=3))
    s_n, s_s = nearest.init(params), stoch.init(params)
    one = {"w": jnp.ones(4096)}
    s_n = s_n._replace(trace={"w": jnp.ones(4096, jnp.bfloat16)})
    s_s = s_s._replace(trace={"w": jnp.ones(4096, jnp.bfloat16)})
    small = jax.tree_util.tree_map(lambda x: x * 1e-3, one)
    step_n, step_s = jax.jit(nearest.update), jax.jit(stoch.update)
    for _ in range(1000):
        _, s_n = step_n(small, s_n)
        _, s_s = step_s(small, s_s)
    assert float(jnp.mean(s_n.trace["w"].astype(jnp.float32))) == 1.0
    # Mean of 4096 unbiased estimates of 2.0: its standard error is below 1e-3.
    np.testing.assert_allclose(float(jnp.mean(s_s.trace["w"].astype(jnp.float32))), 2.0,
                               atol=5e-3)


def test_8bit_codec_on_scale_by_adam_equals_scale_by_adam_8bit():
    # One rule, two spellings of its storage: the numbers agree bit for bit.
    rng = np.random.default_rng(2)
    params = {"w": jnp.zeros((70, 90)), "b": jnp.zeros(90)}
    codec = jopt.Blockwise8bit(block_size=256, min_size=1000)
    a = jopt.scale_by_adam(mu_dtype=codec, nu_dtype=codec)
    b = jopt.scale_by_adam_8bit(block_size=256, min_8bit_size=1000)
    sa, sb = a.init(params), b.init(params)
    for _ in range(5):
        g = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype),
                                   params)
        ua, sa = jax.jit(a.update)(g, sa)
        ub, sb = jax.jit(b.update)(g, sb)
        assert tree_equal(ua, ub)
        assert tree_equal((sa.mu, sa.nu), (sb.mu, sb.nu))


# ------------------------------------------------------------------------- kinds and layouts


def _trust_ratio(g, *, param, mask=True):
    """A per-leaf rule: rescale each tensor's update to the norm of its parameter (LARS'
    trust ratio, You et al. 2017, arXiv:1708.03888), 1 where either norm is 0."""
    del mask
    pn, gn = jnp.linalg.norm(param), jnp.linalg.norm(g)
    ratio = jnp.where((pn > 0) & (gn > 0), pn / jnp.where(gn > 0, gn, 1), 1.0)
    return g * ratio.astype(g.dtype)


@transformation(kind="per_leaf", params=True, examples={})
def trust_ratio() -> jopt.GradientTransformation:
    """A per-leaf test rule (see _trust_ratio)."""
    return _trust_ratio


REGISTRY.pop("trust_ratio", None)


def _params():
    rng = np.random.default_rng(3)
    return {"a": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(5,)) * 10, jnp.float32),
            "c": {"d": jnp.asarray(rng.normal(size=(2, 2, 2)), jnp.float32)}}


def _run_layouts(make, steps=4):
    """``make()`` trained from the same params and gradients on the tree, with flat state
    (``jopt.flatten``) and on packed parameters; returns the three final parameter trees."""
    params = _params()
    rng = np.random.default_rng(4)
    grads = [jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype),
                                    params) for _ in range(steps)]
    out = []
    for layout in ("tree", "flatten", "packed"):
        tx = jopt.flatten(make()) if layout == "flatten" else make()
        p = jopt.pack(params) if layout == "packed" else params
        s = tx.init(p)
        for g in grads:
            g = jopt.pack(g) if layout == "packed" else g
            u, s = jax.jit(tx.update)(g, s, p)
            p = jopt.apply_updates(p, u)
        out.append(p.unpack() if layout == "packed" else p)
    return out


def test_per_leaf_rule_is_right_in_every_layout():
    tree, flat, packed = _run_layouts(
        lambda: jopt.chain(jopt.scale_by_adam(), trust_ratio(), jopt.scale_by_learning_rate(0.1)))
    # The per-leaf trust ratio sees each original leaf in all three layouts: the same
    # arithmetic on the same leaves (adam's elementwise part runs on flat buffers in two of
    # them, so XLA may round a multiply-add differently: a few float32 ulps).
    for other in (flat, packed):
        for x, y in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(other)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6)


@standard
def test_foreign_per_leaf_rule_declared_is_right_and_undeclared_is_refused():
    # optax's trust ratio inside a jopt chain: once declared per-leaf it agrees in every
    # layout; undeclared, packed values raise instead of silently computing a ratio per
    # buffer (which differed by up to 14.0 from the tree's before jopt refused it).
    def make(declared):
        link = optax.scale_by_trust_ratio()
        if declared:
            link = jopt.declare_kind(link, "per_leaf")
        return jopt.chain(jopt.scale_by_adam(), link, jopt.scale_by_learning_rate(0.1))

    tree, flat, packed = _run_layouts(lambda: make(True))
    for other in (flat, packed):
        for x, y in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(other)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6)
    with pytest.raises(LayoutError, match=r"chain: link #1 \(an optax .*declare_kind"):
        make(False).init(jopt.pack(_params()))
    with pytest.raises(LayoutError, match="flatten: link inner"):
        jopt.flatten(optax.scale_by_trust_ratio())
    # On per-leaf trees nothing changes: the undeclared chain runs as before.
    tx = make(False)
    tx.update(_params(), tx.init(_params()), _params())


@standard
def test_foreign_elementwise_rule_declared_runs_on_buffers():
    tx = jopt.chain(jopt.declare_kind(optax.scale_by_adam(), "elementwise"),
                    jopt.scale_by_learning_rate(0.1))
    state = tx.init(jopt.pack(_params()))
    assert isinstance(state[0].mu, jopt.Packed)  # a flat state, as for jopt's own adam


def test_kinds_are_declared():
    assert jopt.scale_by_adam().kind == "elementwise"
    assert jopt.scale_by_adam_8bit().kind == "per_leaf"  # 8-bit blocks never span two leaves
    assert jopt.scale_by_adam(mu_dtype="8bit").kind == "per_leaf"
    assert jopt.clip_by_global_norm(1.0).kind == "whole_tree"
    assert jopt.adamw(1e-3).kind == "combinator"
    assert trust_ratio().kind == "per_leaf"
    assert jopt.GradientTransformation(lambda p: (), lambda u, s, p=None: (u, s)).kind is None


# ------------------------------------------------------------------------- hyperparameters


def test_no_global_hyperparameter_tables():
    import jopt._hyperparams as hp

    assert not hasattr(hp, "_RANGES") and not hasattr(hp, "_SCHEDULABLE")
    decl = jopt.ScaleByAdamState._jopt_hyperparams
    assert decl["b1"] == Hyper("[0, 1)", complement=True)


@pytest.mark.parametrize("make,name,schedule", [
    (lambda s: jopt.scale_by_adam(b1=s), "b1", jopt.linear(0.0, 0.9, 10)),
    (lambda s: jopt.scale_by_adam(eps=s), "eps", jopt.exponential_decay(1e-3, 5, 0.1)),
    (lambda s: jopt.trace(s), "decay", jopt.linear(0.5, 0.9, 10)),
    (lambda s: jopt.clip(s), "max_delta", jopt.cosine_decay(1.0, 10, alpha=0.1)),
    (lambda s: jopt.clip_by_global_norm(s), "max_norm", optax.linear_schedule(2.0, 1.0, 10)),
    (lambda s: jopt.scale(s), "step_size",
     lambda count: 1.0 / (1.0 + jnp.asarray(count).astype(jnp.float32))),
], ids=["adam_b1", "adam_eps", "trace_decay", "clip", "global_norm", "scale_callable"])
def test_every_hyperparameter_may_be_a_schedule(make, name, schedule):
    tx = make(schedule)
    params = {"w": jnp.linspace(-2.0, 2.0, 6)}
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t in range(4):
        want = float(schedule(t))
        got = float(jopt.get_hyperparams(state)[name])
        np.testing.assert_allclose(got, want, rtol=1e-6)
        _, state = step(jax.tree_util.tree_map(lambda x, t=t: x * (t + 1.0), params), state,
                        params)
    # The schedule was applied: a constant transformation at the last value gives the same
    # update as the scheduled one at that step.
    last = float(schedule(4))
    const = make(last)
    c_state = jax.tree_util.tree_map(lambda x: x, const.init(params))
    if hasattr(state, "mu"):
        c_state = c_state._replace(mu=state.mu, nu=state.nu, count=state.count)
    elif hasattr(state, "trace"):
        c_state = c_state._replace(trace=state.trace, count=state.count)
    g = jax.tree_util.tree_map(lambda x: x * 5.0, params)
    u, _ = tx.update(g, state, params)
    u_c, _ = const.update(g, c_state, params)
    np.testing.assert_allclose(np.asarray(u["w"]), np.asarray(u_c["w"]), rtol=2e-6, atol=1e-7)


def test_prep_and_real_scalars_of_a_custom_rule():
    # A whole-tree rule with a prep: divide by the mean absolute update of the whole tree.
    def prep(*, updates):
        leaves = jax.tree_util.tree_leaves(updates)
        total = sum(jnp.sum(jnp.abs(x)) for x in leaves)
        return {"mean_abs": total / sum(x.size for x in leaves)}

    @transformation(kind="whole_tree", examples={})
    def scale_by_mean_abs() -> jopt.GradientTransformation:
        """Test rule."""
        return Rule(lambda g, *, mean_abs: g / mean_abs, prep=prep)

    REGISTRY.pop("scale_by_mean_abs", None)
    tx = scale_by_mean_abs()
    g = {"a": jnp.asarray([1.0, -3.0]), "b": jnp.asarray([2.0])}
    u, _ = tx.update(g, tx.init(g))
    np.testing.assert_allclose(np.asarray(u["a"]), [0.5, -1.5])
    packed = jopt.pack(g)
    u_p, _ = tx.update(packed, tx.init(packed))
    np.testing.assert_allclose(np.asarray(u_p.unpack()["a"]), [0.5, -1.5])


def test_declaration_errors_are_caught_when_declaring():
    with pytest.raises(TypeError, match="not in its signature"):
        @transformation(kind="elementwise", hyperparams={"lr": Hyper()})
        def bad(learning_rate=0.1):
            """."""
            return lambda g: g
    with pytest.raises(ValueError, match="kind"):
        transformation(kind="sideways")
    with pytest.raises(InvalidHyperparameterError, match="block_size"):
        jopt.scale_by_adam(mu_dtype=jopt.Blockwise8bit(256), nu_dtype=jopt.Blockwise8bit(512))
    with pytest.raises(InvalidHyperparameterError, match="nesterov must be a bool"):
        jopt.scale_by_adam(nesterov=1)
    assert Slot("mu").option is None


# ------------------------------------------------------------------------- equality


def test_equality_compares_stored_values():
    assert jopt.adam(1e-3) == jopt.adam(np.float32(1e-3))
    assert hash(jopt.adam(1e-3)) == hash(jopt.adam(np.float32(1e-3)))
    assert jopt.scale_by_adam(b2=0.999) == jopt.scale_by_adam(b2=np.float64(0.999))
    assert jopt.adam(1e-3) != jopt.adam(1.1e-3)
    assert jopt.early_stopping(min_delta=1e-3) == jopt.early_stopping(min_delta=np.float32(1e-3))
    assert jopt.reduce_on_plateau(factor=0.1) == jopt.reduce_on_plateau(factor=np.float32(0.1))


def test_hand_built_and_replaced_transformations_do_not_impersonate():
    tx = jopt.adam(1e-3)
    fake = jopt.GradientTransformation(tx.init, lambda u, s, p=None: (u, s), name="adam",
                                       config=tx.config)
    assert fake != tx and tx != fake
    assert repr(fake).startswith("adam(")  # a hand-built name is display only
    replaced = tx._replace(update=lambda u, s, p=None: (u, s))
    assert replaced != tx
    assert replaced.name == "adam" and replaced.config == tx.config  # kept for introspection
    assert repr(replaced).endswith("._replace(update=...)")
    same = tx._replace()
    assert same == tx and same.config == tx.config
    with pytest.raises(ValueError, match="unexpected field"):
        tx._replace(bogus=1)
