"""jopt's building blocks and optimizers against independent references.

Three kinds of reference, all run for ``T = 120`` steps on the same small parameter tree
(a dict with a 6x5 matrix ``"w"`` and a length-5 vector ``"b"``) and the same fixed sequence
of random gradients (a fixed-seed NumPy RNG; each step has its own overall scale, spread
log-uniformly over [1e-2, 10], and each element a fixed scale in [0.1, 10], so moments,
clipping and norms see a wide dynamic range):

1. A float64 NumPy reference written here from the papers' update rules (not from jopt's or
   optax's code). jopt runs in float32, so these comparisons carry float32 tolerances.
2. optax 0.2.x, float32 against float32 (different operation order, so a few ulps).
3. ``torch.optim`` on CPU in float32 (torch does its bias corrections in Python float64).

Every jopt run is one ``jax.jit`` of a ``lax.scan`` over the steps (one compilation per
configuration); every step's updates and parameters are checked, and a failure names the
first bad step.

How the tolerances are read: at step ``t`` the check is, elementwise,

    |got[t] - want[t]| <= rtol * |want[t]| + atol * max|want[t]|

where the max runs over every leaf at that step, i.e. ``atol`` is relative to the update
(or parameter) scale of that step. Each constant below says why it is what it is.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import jopt

T = 120
SHAPES = {"w": (6, 5), "b": (5,)}
MASK = {"w": True, "b": False}


def mask_fn(params):
    """Decay matrices, not vectors (returns Python bools, as jopt requires)."""
    return {k: v.ndim > 1 for k, v in params.items()}


# ---------------------------------------------------------------------------------------
# Tolerances. float32's unit roundoff is u = 6e-8 (an ulp near 1 is 1.2e-7). "Measured" is
# the worst case over every configuration of that family in this file, for this data.
#
# Adam family. jopt stores b1 and b2 as their float32 complements (1 - b rounded once from
# the double value, so 1 - b2 is 0.001 to float32 precision) and computes the bias correction
# 1 - b**t in float32 from b = 1 - (1 - b), exactly as optax does (so that jopt and optax
# trajectories agree per step; see jopt._scale._one_minus_power). float32(0.999) is
# 0.99900001287, so at t = 1 the bias correction is 1.3e-5 relative below the exact 0.001:
# v_hat is 1.3e-5 too large and the first update 6.4e-6 too small; the error decays like
# b2**t / t. Besides, elements of m that nearly cancel carry an absolute error of a few
# roundoffs of the *terms*. Measured: 6.4e-6 relative at step 1, under 3e-6 after step 5.
# So rtol 2e-5 (3x) plus an absolute floor of 6e-6 x the step scale (adamw with a scheduled
# decay, where the decay term cancels most of the Adam step, needed 4.4e-6). A wrong formula (bias
# correction off by one step, eps inside/outside the root, a missing conjugate) is off by
# >= 1e-3 relative at some step.
ADAM_RTOL = 2e-5
ADAM_ATOL = 6e-6
# The early-step bias above is systematic (same sign on every element), so parameters of the
# Adam family integrate it: measured 1.5e-5 x the largest |p| for scale_by_adam without a
# learning rate (steps O(1)), 3e-6 with one. Absolute bound 4e-5 x the step's largest |p|.
ADAM_PARAM_ATOL = 4e-5
# Non-recursive blocks (clip, scale, learning rate, decayed weights, global-norm clip): one
# or two float32 roundings per element, a float32 norm for the global clip, and a float32
# cosine for the schedule, whose absolute error ~u x peak becomes ~2e-6 relative near its
# end value (peak / end = 100). rtol 2e-6 (16 ulps) and an absolute floor of 3e-7 x the step
# scale (~5 ulps of it, for g + wd p that cancels: measured need 8e-8).
ELEM_RTOL = 2e-6
ELEM_ATOL = 3e-7
# Momentum buffers (b = g + mu b) add one rounding per step with a gain up to
# 1 / (1 - mu) = 10. With rtol 2e-6 the absolute floor needed was 1.3e-7 of the step scale
# (buffer elements that cancel to near zero); 5e-7 gives ~4x.
TRACE_RTOL = 2e-6
TRACE_ATOL = 5e-7
# Parameters receive 120 float32 additions, each rounding by up to half an ulp of |p|; the
# float32 trajectory drifts from the float64 one by a random walk of such roundings.
# Measured: 1.1e-6 x the largest |p| of the step (scale_by_adam without a learning rate,
# where the steps are O(1)). Absolute bound 3e-6 x that scale, no relative part.
PARAM_RTOL = 0.0
PARAM_ATOL = 3e-6
# optax against jopt is float32 against float32: both carry the Adam errors above,
# independently, so their difference can be twice as large (measured up to 1e-5 of the step
# scale at step 2 with rtol 0; with rtol 2e-5 the absolute part needed is 2.1e-6, for adamw,
# where the decay term cancels part of the Adam step). rtol 2e-5, atol 5e-6. SGD,
# momentum and clipping are computed in the same order and agree bit for bit (measured 0).
OPTAX_RTOL = 2e-5
OPTAX_ATOL = 5e-6
# torch (compared on parameters; it does not expose the update): float32 moments, float64
# bias corrections. AdamW multiplies p by float32(1 - lr wd) = 0.99900001 instead of 0.999
# each step, a systematic 1.3e-8 relative drift per step: 1.4e-6 after 120 steps against
# the float64 reference (measured; 1.7e-6 against jopt). Absolute bound 5e-6 x the largest
# |p| of the step.
TORCH_PARAM_ATOL = 5e-6


# ---------------------------------------------------------------------------------------
# Data.


def _make_data(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    step_scale = 10.0 ** rng.uniform(-2, 1, size=T)
    params, grads = {}, {}
    for k, shape in SHAPES.items():
        elem_scale = 10.0 ** rng.uniform(-1, 1, size=shape)
        if np.issubdtype(dtype, np.complexfloating):
            p = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
            g = rng.standard_normal((T, *shape)) + 1j * rng.standard_normal((T, *shape))
        else:
            p = rng.standard_normal(shape)
            g = rng.standard_normal((T, *shape))
        g = g * elem_scale * step_scale.reshape((T,) + (1,) * len(shape))
        params[k] = p.astype(dtype)
        grads[k] = g.astype(dtype)
    return params, grads


PARAMS, GRADS = _make_data()
CPARAMS, CGRADS = _make_data(np.complex64, seed=1)


def _wide(tree):
    """Exact float64 (complex128) copy of a float32 (complex64) tree."""
    return {
        k: np.asarray(v, np.complex128 if np.iscomplexobj(v) else np.float64)
        for k, v in tree.items()
    }


def _np(tree):
    return {k: np.asarray(v) for k, v in tree.items()}


def _global_norms(grads):
    return np.sqrt(sum(
        np.sum(np.abs(np.asarray(g, np.float64)) ** 2, axis=tuple(range(1, g.ndim)))
        for g in grads.values()
    ))


# ---------------------------------------------------------------------------------------
# Runners.


def run_jopt(tx, params=PARAMS, grads=GRADS):
    """All T steps of ``tx`` in one jitted scan: (updates[t], params after step t)."""

    @jax.jit
    def run(p0, gs):
        def body(carry, g):
            p, s = carry
            u, s = tx.update(g, s, p)
            p = jopt.apply_updates(p, u)
            return (p, s), (u, p)

        _, (us, ps) = jax.lax.scan(body, (p0, tx.init(p0)), gs)
        return us, ps

    us, ps = run(params, grads)
    return _np(us), _np(ps)


def run_optax(tx, params=PARAMS, grads=GRADS):
    """Same as :func:`run_jopt` for an optax transformation.

    optax's bias corrections compute ``float ** int32`` which strict dtype promotion rejects,
    so the optax side (only) is traced under standard promotion.
    """

    @jax.jit
    def run(p0, gs):
        def body(carry, g):
            p, s = carry
            u, s = tx.update(g, s, p)
            p = optax.apply_updates(p, u)
            return (p, s), (u, p)

        _, (us, ps) = jax.lax.scan(body, (p0, tx.init(p0)), gs)
        return us, ps

    with jax.numpy_dtype_promotion("standard"):
        us, ps = run(params, grads)
    return _np(us), _np(ps)


def run_torch(make_opt, params=PARAMS, grads=GRADS, lr_fn=None):
    """Parameters after each step of a ``torch.optim`` optimizer (float32, CPU)."""
    tp = {k: torch.nn.Parameter(torch.tensor(np.array(v))) for k, v in params.items()}
    opt = make_opt(tp)
    out = {k: np.empty((T, *v.shape), np.float32) for k, v in params.items()}
    for t in range(T):
        if lr_fn is not None:
            for group in opt.param_groups:
                group["lr"] = lr_fn(t)
        for k, p in tp.items():
            p.grad = torch.tensor(np.array(grads[k][t]))
        opt.step()
        for k, p in tp.items():
            out[k][t] = p.detach().numpy()
    return out


def run_ref(ref, params=PARAMS, grads=GRADS):
    """The float64 reference: ``ref.update(g, p, t)`` with the 1-based step ``t``."""
    p = _wide(params)
    ref.init(p)
    us = {k: [] for k in p}
    ps = {k: [] for k in p}
    for t in range(1, T + 1):
        g = {k: np.asarray(v[t - 1], p[k].dtype) for k, v in grads.items()}
        u = ref.update(g, p, t)
        p = {k: p[k] + u[k] for k in p}
        for k in p:
            us[k].append(u[k])
            ps[k].append(p[k])
    return {k: np.stack(v) for k, v in us.items()}, {k: np.stack(v) for k, v in ps.items()}


# ---------------------------------------------------------------------------------------
# Per-step comparison.


def assert_steps_close(got, want, *, rtol, atol, what):
    """Elementwise at each step t: |got - want| <= rtol |want| + atol * max_tree |want[t]|."""
    assert set(got) == set(want)
    scale = np.zeros(T)
    for w in want.values():
        w = np.abs(np.asarray(w)).reshape(T, -1)
        scale = np.maximum(scale, w.max(axis=1))
    for k in want:
        g = np.asarray(got[k])
        w = np.asarray(want[k])
        assert g.shape == w.shape, (what, k, g.shape, w.shape)
        assert np.all(np.isfinite(g)), f"{what}[{k!r}]: non-finite values"
        err = np.abs(g.astype(w.dtype) - w).reshape(T, -1)
        bound = rtol * np.abs(w).reshape(T, -1) + atol * scale[:, None]
        bad = (err > bound).any(axis=1)
        if bad.any():
            t = int(np.argmax(bad))
            i = int(np.argmax(err[t] - bound[t]))
            raise AssertionError(
                f"{what}[{k!r}]: first mismatch at step {t + 1} (of {T}), element {i}: "
                f"got {g.reshape(T, -1)[t, i]!r}, want {w.reshape(T, -1)[t, i]!r}, "
                f"|err| {err[t, i]:.3g} > bound {bound[t, i]:.3g} "
                f"(rtol={rtol}, atol={atol} x step scale {scale[t]:.3g}); "
                f"{int(bad.sum())} bad steps"
            )


def assert_trajectory(got, want, *, rtol, atol, what):
    (gu, gp), (wu, wp) = got, want
    assert_steps_close(gu, wu, rtol=rtol, atol=atol, what=f"{what} updates")
    param_atol = ADAM_PARAM_ATOL if rtol == ADAM_RTOL else PARAM_ATOL
    assert_steps_close(gp, wp, rtol=PARAM_RTOL, atol=param_atol, what=f"{what} params")


# ---------------------------------------------------------------------------------------
# Closed-form schedules (float64), written from their definitions.


def ref_warmup_cosine(init, peak, warmup, total, end, exponent=1.0):
    def f(t):  # t: updates already applied (0-based)
        if t < warmup:
            return init + (peak - init) * t / warmup
        frac = min(t - warmup, total - warmup) / (total - warmup)
        return end + (peak - end) * (0.5 * (1.0 + math.cos(math.pi * frac))) ** exponent

    return f


def ref_exponential(init, steps, rate):
    return lambda t: init * rate ** (t / steps)


# ---------------------------------------------------------------------------------------
# float64 references of the building blocks (each state is per leaf; t is 1-based).


def _const(x):
    return x if callable(x) else (lambda t: x)


class RefScaleByAdam:
    """Kingma & Ba 2015, Algorithm 1, without the learning rate; NAdam first moment."""

    def __init__(self, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, nesterov=False):
        self.b1, self.b2, self.eps, self.eps_root, self.nesterov = b1, b2, eps, eps_root, nesterov

    def init(self, p):
        self.m = {k: np.zeros_like(v) for k, v in p.items()}
        self.v = {k: np.zeros(v.shape, np.float64) for k, v in p.items()}

    def direction(self, g, t):
        b1, b2 = self.b1, self.b2
        out = {}
        for k in g:
            self.m[k] = b1 * self.m[k] + (1 - b1) * g[k]
            # |g|^2 = g * conj(g): real for complex gradients.
            self.v[k] = b2 * self.v[k] + (1 - b2) * np.real(g[k] * np.conj(g[k]))
            if self.nesterov:
                m_hat = b1 * self.m[k] / (1 - b1 ** (t + 1)) + (1 - b1) * g[k] / (1 - b1**t)
            else:
                m_hat = self.m[k] / (1 - b1**t)
            v_hat = self.v[k] / (1 - b2**t)
            out[k] = m_hat / (np.sqrt(v_hat + self.eps_root) + self.eps)
        return out

    def update(self, g, p, t):
        return self.direction(g, t)


class RefRMS:
    """Bias-corrected RMS scaling (Adam with b1 = 0): g / (sqrt(v / (1 - b2^t)) + eps)."""

    def __init__(self, b2, eps):
        self.b2, self.eps = b2, eps

    def init(self, p):
        self.v = {k: np.zeros_like(v) for k, v in p.items()}

    def update(self, g, p, t):
        out = {}
        for k in g:
            self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g[k] ** 2
            out[k] = g[k] / (np.sqrt(self.v[k] / (1 - self.b2**t)) + self.eps)
        return out


class RefAdamW:
    """Loshchilov & Hutter 2019, Algorithm 2, with the lr-coupled decay of torch/optax:
    theta_t = theta_{t-1} - lr(t-1) * (m_hat / (sqrt(v_hat + eps_root) + eps)
                                        + wd(t-1) * theta_{t-1})   (decay where masked in).
    With wd = 0 this is Adam (Kingma & Ba 2015, Algorithm 1)."""

    def __init__(self, lr, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, wd=0.0, mask=None,
                 nesterov=False):
        self.lr, self.wd, self.mask = _const(lr), _const(wd), mask
        self.adam = RefScaleByAdam(b1, b2, eps, eps_root, nesterov)

    def init(self, p):
        self.adam.init(p)

    def update(self, g, p, t):
        d = self.adam.direction(g, t)
        lr, wd = self.lr(t - 1), self.wd(t - 1)
        return {
            k: -lr * (d[k] + (wd * p[k] if self.mask is None or self.mask[k] else 0.0))
            for k in g
        }


class RefTrace:
    """Heavy ball b = g + mu b (update b), or Nesterov (update g + mu b)."""

    def __init__(self, mu, nesterov=False):
        self.mu, self.nesterov = mu, nesterov

    def init(self, p):
        self.b = {k: np.zeros_like(v) for k, v in p.items()}

    def update(self, g, p, t):
        out = {}
        for k in g:
            self.b[k] = g[k] + self.mu * self.b[k]
            out[k] = g[k] + self.mu * self.b[k] if self.nesterov else self.b[k]
        return out


class RefSGD:
    """theta -= lr * (g | b | g + mu b), b = g + mu b (torch's SGD with dampening 0)."""

    def __init__(self, lr, momentum=None, nesterov=False):
        self.lr = _const(lr)
        self.trace = None if momentum is None else RefTrace(momentum, nesterov)

    def init(self, p):
        if self.trace is not None:
            self.trace.init(p)

    def update(self, g, p, t):
        d = g if self.trace is None else self.trace.update(g, p, t)
        return {k: -self.lr(t - 1) * d[k] for k in g}


class RefFn:
    """A stateless block given as ``f(g, p, t) -> u``."""

    def __init__(self, f):
        self.f = f

    def init(self, p):
        pass

    def update(self, g, p, t):
        return self.f(g, p, t)


def ref_clip(delta):
    return RefFn(lambda g, p, t: {k: np.clip(v, -delta, delta) for k, v in g.items()})


def ref_clip_by_global_norm(c):
    def f(g, p, t):
        norm = math.sqrt(sum(float(np.sum(np.abs(v) ** 2)) for v in g.values()))
        factor = c / norm if norm > c else 1.0
        return {k: v * factor for k, v in g.items()}

    return RefFn(f)


def ref_add_decayed_weights(wd, mask=None):
    wd = _const(wd)
    return RefFn(lambda g, p, t: {
        k: g[k] + (wd(t - 1) * p[k] if mask is None or mask[k] else 0.0) for k in g
    })


def ref_scale(s):
    return RefFn(lambda g, p, t: {k: s * v for k, v in g.items()})


def ref_scale_by_lr(lr):
    lr = _const(lr)
    return RefFn(lambda g, p, t: {k: -lr(t - 1) * v for k, v in g.items()})


class RefChain:
    def __init__(self, *links):
        self.links = links

    def init(self, p):
        for link in self.links:
            link.init(p)

    def update(self, g, p, t):
        for link in self.links:
            g = link.update(g, p, t)
        return g


# ---------------------------------------------------------------------------------------
# 1. jopt against the float64 references.

WCD = dict(init=0.0, peak=1e-2, warmup=10, total=100, end=1e-4)


def jopt_wcd():
    return jopt.warmup_cosine_decay(0.0, 1e-2, 10, 100, end_value=1e-4)


def optax_wcd():
    return optax.warmup_cosine_decay_schedule(0.0, 1e-2, 10, 100, end_value=1e-4)


REF_CASES = {
    # Building blocks.
    "scale_by_adam": (
        lambda: jopt.scale_by_adam(), lambda: RefScaleByAdam(), ADAM_RTOL, ADAM_ATOL),
    "scale_by_adam_nesterov": (
        lambda: jopt.scale_by_adam(nesterov=True), lambda: RefScaleByAdam(nesterov=True),
        ADAM_RTOL, ADAM_ATOL),
    "scale_by_adam_eps_root": (
        lambda: jopt.scale_by_adam(b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-4),
        lambda: RefScaleByAdam(0.8, 0.99, 1e-6, 1e-4), ADAM_RTOL, ADAM_ATOL),
    "scale_by_adam_b1_0_is_rms": (
        lambda: jopt.scale_by_adam(b1=0.0, b2=0.99, eps=1e-7),
        lambda: RefRMS(0.99, 1e-7), ADAM_RTOL, ADAM_ATOL),
    "trace": (lambda: jopt.trace(0.9), lambda: RefTrace(0.9), TRACE_RTOL, TRACE_ATOL),
    "trace_nesterov": (
        lambda: jopt.trace(0.9, nesterov=True), lambda: RefTrace(0.9, True),
        TRACE_RTOL, TRACE_ATOL),
    "clip": (lambda: jopt.clip(0.5), lambda: ref_clip(0.5), ELEM_RTOL, ELEM_ATOL),
    "clip_by_global_norm_active": (
        lambda: jopt.clip_by_global_norm(3.0), lambda: ref_clip_by_global_norm(3.0),
        ELEM_RTOL, ELEM_ATOL),
    "clip_by_global_norm_inactive": (
        lambda: jopt.clip_by_global_norm(1e4), lambda: ref_clip_by_global_norm(1e4),
        0.0, 0.0),  # never active: the updates must be the gradients, bit for bit
    "add_decayed_weights": (
        lambda: jopt.add_decayed_weights(0.05), lambda: ref_add_decayed_weights(0.05),
        ELEM_RTOL, ELEM_ATOL),
    "add_decayed_weights_mask_schedule": (
        lambda: jopt.add_decayed_weights(jopt.exponential_decay(0.1, 40, 0.5), MASK),
        lambda: ref_add_decayed_weights(ref_exponential(0.1, 40, 0.5), MASK),
        ELEM_RTOL, ELEM_ATOL),
    "scale": (lambda: jopt.scale(-0.37), lambda: ref_scale(-0.37), ELEM_RTOL, ELEM_ATOL),
    "scale_by_learning_rate_warmup_cosine": (
        lambda: jopt.scale_by_learning_rate(jopt_wcd()),
        lambda: ref_scale_by_lr(ref_warmup_cosine(**WCD)), ELEM_RTOL, ELEM_ATOL),
    # Optimizers.
    "adam": (lambda: jopt.adam(1e-2), lambda: RefAdamW(1e-2), ADAM_RTOL, ADAM_ATOL),
    "adam_nesterov_schedule": (
        lambda: jopt.adam(jopt_wcd(), nesterov=True),
        lambda: RefAdamW(ref_warmup_cosine(**WCD), nesterov=True), ADAM_RTOL, ADAM_ATOL),
    "adamw": (
        lambda: jopt.adamw(1e-2, weight_decay=0.1),
        lambda: RefAdamW(1e-2, wd=0.1), ADAM_RTOL, ADAM_ATOL),
    "adamw_mask_tree": (
        lambda: jopt.adamw(1e-2, weight_decay=0.1, mask=MASK),
        lambda: RefAdamW(1e-2, wd=0.1, mask=MASK), ADAM_RTOL, ADAM_ATOL),
    "adamw_mask_callable": (
        lambda: jopt.adamw(1e-2, weight_decay=0.1, mask=mask_fn),
        lambda: RefAdamW(1e-2, wd=0.1, mask=MASK), ADAM_RTOL, ADAM_ATOL),
    "adamw_weight_decay_schedule": (
        lambda: jopt.adamw(jopt_wcd(), weight_decay=jopt.exponential_decay(0.2, 40, 0.5),
                           mask=MASK),
        lambda: RefAdamW(ref_warmup_cosine(**WCD), wd=ref_exponential(0.2, 40, 0.5),
                         mask=MASK),
        ADAM_RTOL, ADAM_ATOL),
    "sgd": (lambda: jopt.sgd(0.05), lambda: RefSGD(0.05), ELEM_RTOL, ELEM_ATOL),
    "sgd_momentum": (
        lambda: jopt.sgd(0.05, momentum=0.9), lambda: RefSGD(0.05, 0.9),
        TRACE_RTOL, TRACE_ATOL),
    "sgd_nesterov_schedule": (
        lambda: jopt.sgd(jopt_wcd(), momentum=0.9, nesterov=True),
        lambda: RefSGD(ref_warmup_cosine(**WCD), 0.9, True), TRACE_RTOL, TRACE_ATOL),
    "chain_clip_adamw_schedule": (
        lambda: jopt.chain(jopt.clip_by_global_norm(3.0),
                           jopt.adamw(jopt_wcd(), weight_decay=0.05, mask=mask_fn)),
        lambda: RefChain(ref_clip_by_global_norm(3.0),
                         RefAdamW(ref_warmup_cosine(**WCD), wd=0.05, mask=MASK)),
        ADAM_RTOL, ADAM_ATOL),
}


@pytest.mark.parametrize("case", sorted(REF_CASES))
def test_against_float64_reference(case):
    make_tx, make_ref, rtol, atol = REF_CASES[case]
    got = run_jopt(make_tx())
    want = run_ref(make_ref())
    for k in GRADS:
        assert got[0][k].dtype == np.float32, (case, k, got[0][k].dtype)
    assert_trajectory(got, want, rtol=rtol, atol=atol, what=case)


def test_data_exercises_both_clipping_regimes():
    """The gradient sequence makes the clipping cases meaningful: each regime occurs."""
    norms = _global_norms(GRADS)
    assert (norms > 3.0).sum() >= 20 and (norms < 3.0).sum() >= 20, norms
    assert norms.max() < 1e4
    flat = np.concatenate([np.abs(g).reshape(T, -1) for g in GRADS.values()], axis=1)
    assert 0.05 < (flat > 0.5).mean() < 0.95


def test_clip_by_global_norm_inactive_is_identity():
    us, _ = run_jopt(jopt.clip_by_global_norm(1e4))
    for k in GRADS:
        np.testing.assert_array_equal(us[k], GRADS[k])


def test_clip_by_global_norm_active_steps_have_max_norm():
    us, _ = run_jopt(jopt.clip_by_global_norm(3.0))
    norms_in = _global_norms(GRADS)
    norms_out = _global_norms(us)
    active = norms_in > 3.0
    # One float32 norm, one float32 division and one multiply per element: ~4 ulps.
    np.testing.assert_allclose(norms_out[active], 3.0, rtol=5e-7)
    for k in GRADS:
        np.testing.assert_array_equal(us[k][~active], GRADS[k][~active])


def test_adam_is_chain_of_blocks_bitwise():
    """adam == chain(scale_by_adam, scale_by_learning_rate): the same program, same bits."""
    for kw in ({}, {"nesterov": True, "eps_root": 1e-6}):
        a = run_jopt(jopt.adam(jopt_wcd(), **kw))
        b = run_jopt(jopt.chain(jopt.scale_by_adam(**kw),
                                jopt.scale_by_learning_rate(jopt_wcd())))
        for k in GRADS:
            np.testing.assert_array_equal(a[0][k], b[0][k])
            np.testing.assert_array_equal(a[1][k], b[1][k])


def test_adamw_is_chain_of_blocks_bitwise():
    a = run_jopt(jopt.adamw(1e-2, weight_decay=0.1, mask=MASK))
    b = run_jopt(jopt.chain(jopt.scale_by_adam(), jopt.add_decayed_weights(0.1, MASK),
                            jopt.scale_by_learning_rate(1e-2)))
    for k in GRADS:
        np.testing.assert_array_equal(a[0][k], b[0][k])
        np.testing.assert_array_equal(a[1][k], b[1][k])


def test_adam_mask_tree_and_callable_agree_bitwise():
    a = run_jopt(jopt.adamw(1e-2, weight_decay=0.1, mask=MASK))
    b = run_jopt(jopt.adamw(1e-2, weight_decay=0.1, mask=mask_fn))
    for k in GRADS:
        np.testing.assert_array_equal(a[0][k], b[0][k])


def test_adam_complex_params():
    """complex64 params: m is complex, v uses |g|^2 = g conj(g) and is real."""
    tx = jopt.adam(1e-2)
    got = run_jopt(tx, CPARAMS, CGRADS)
    want = run_ref(RefAdamW(1e-2), CPARAMS, CGRADS)
    for k in CGRADS:
        assert got[0][k].dtype == np.complex64
        assert got[1][k].dtype == np.complex64
    assert_trajectory(got, want, rtol=ADAM_RTOL, atol=ADAM_ATOL, what="adam complex64")
    state = tx.init(CPARAMS)
    assert state[0].mu["w"].dtype == jnp.complex64
    assert state[0].nu["w"].dtype == jnp.float32


# ---------------------------------------------------------------------------------------
# 2. jopt against optax (float32 both).

_OA = (OPTAX_RTOL, OPTAX_ATOL)
_OE = (ELEM_RTOL, ELEM_ATOL)  # same order of operations as optax: measured bit-for-bit equal
OPTAX_CASES = {
    "adam": (lambda: jopt.adam(1e-2), lambda: optax.adam(1e-2), _OA),
    "adam_nesterov_eps_root": (
        lambda: jopt.adam(1e-2, b1=0.8, b2=0.99, eps_root=1e-6, nesterov=True),
        lambda: optax.adam(1e-2, b1=0.8, b2=0.99, eps_root=1e-6, nesterov=True), _OA),
    "adamw_mask_tree": (
        lambda: jopt.adamw(1e-2, weight_decay=0.1, mask=MASK),
        lambda: optax.adamw(1e-2, weight_decay=0.1, mask=MASK), _OA),
    "adamw_mask_callable": (
        lambda: jopt.adamw(1e-2, weight_decay=0.1, mask=mask_fn),
        lambda: optax.adamw(1e-2, weight_decay=0.1, mask=mask_fn), _OA),
    "sgd": (lambda: jopt.sgd(0.05), lambda: optax.sgd(0.05), _OE),
    "sgd_momentum": (
        lambda: jopt.sgd(0.05, momentum=0.9), lambda: optax.sgd(0.05, momentum=0.9), _OE),
    "sgd_nesterov": (
        lambda: jopt.sgd(0.05, momentum=0.9, nesterov=True),
        lambda: optax.sgd(0.05, momentum=0.9, nesterov=True), _OE),
    "clip_by_global_norm": (
        lambda: jopt.clip_by_global_norm(3.0), lambda: optax.clip_by_global_norm(3.0), _OE),
    "clip": (lambda: jopt.clip(0.5), lambda: optax.clip(0.5), _OE),
    "chain_clip_adamw_schedule": (
        lambda: jopt.chain(jopt.clip_by_global_norm(3.0),
                           jopt.adamw(jopt_wcd(), weight_decay=0.05, mask=MASK)),
        lambda: optax.chain(optax.clip_by_global_norm(3.0),
                            optax.adamw(optax_wcd(), weight_decay=0.05, mask=MASK)), _OA),
}


@pytest.mark.parametrize("case", sorted(OPTAX_CASES))
def test_against_optax(case):
    make_jopt, make_optax, (rtol, atol) = OPTAX_CASES[case]
    got = run_jopt(make_jopt())
    want = run_optax(make_optax())
    assert_trajectory(got, want, rtol=rtol, atol=atol, what=f"optax {case}")


def test_jopt_schedule_equals_optax_schedule_used_above():
    counts = jnp.arange(T + 1, dtype=jnp.int32)
    a = np.asarray(jax.jit(jax.vmap(jopt_wcd()))(counts))
    with jax.numpy_dtype_promotion("standard"):
        b = np.asarray(jax.jit(jax.vmap(optax_wcd()))(counts))
    # float32 both, different op order: a few ulps of the peak value.
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * 1e-2)


# ---------------------------------------------------------------------------------------
# 3. jopt against torch.optim (float32, CPU).


def _torch_groups(tp, wd):
    return [{"params": [tp["w"]], "weight_decay": wd}, {"params": [tp["b"]], "weight_decay": 0.0}]


TORCH_CASES = {
    "adam": (lambda: jopt.adam(1e-2), lambda tp: torch.optim.Adam(tp.values(), lr=1e-2), None),
    "adam_b_eps": (
        lambda: jopt.adam(3e-3, b1=0.8, b2=0.99, eps=1e-6),
        lambda tp: torch.optim.Adam(tp.values(), lr=3e-3, betas=(0.8, 0.99), eps=1e-6), None),
    "adamw": (
        lambda: jopt.adamw(1e-2, weight_decay=0.1),
        lambda tp: torch.optim.AdamW(tp.values(), lr=1e-2, weight_decay=0.1), None),
    "adamw_mask_schedule": (
        lambda: jopt.adamw(jopt_wcd(), weight_decay=0.1, mask=MASK),
        lambda tp: torch.optim.AdamW(_torch_groups(tp, 0.1), lr=0.0),
        ref_warmup_cosine(**WCD)),
    "sgd": (lambda: jopt.sgd(0.05), lambda tp: torch.optim.SGD(tp.values(), lr=0.05), None),
    "sgd_momentum": (
        lambda: jopt.sgd(0.05, momentum=0.9),
        lambda tp: torch.optim.SGD(tp.values(), lr=0.05, momentum=0.9), None),
    "sgd_nesterov": (
        lambda: jopt.sgd(0.05, momentum=0.9, nesterov=True),
        lambda tp: torch.optim.SGD(tp.values(), lr=0.05, momentum=0.9, nesterov=True), None),
}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_against_torch(case):
    make_jopt, make_torch, lr_fn = TORCH_CASES[case]
    _, got = run_jopt(make_jopt())
    want = run_torch(make_torch, lr_fn=lr_fn)
    assert_steps_close(got, want, rtol=0.0, atol=TORCH_PARAM_ATOL, what=f"torch {case} params")
