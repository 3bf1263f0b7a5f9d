"""The fixed set of runs whose results must not change when jopt's internals are rebuilt.

Each case is a public transformation (with a typical configuration), trained for 20 jitted
steps from fixed parameters and gradients in a given dtype and layout. The updates and the
state after every step are reduced to digests (SHA-256 of the raw bytes of every leaf, in
path order); the final-step arrays are kept too. ``record_bitwise_baseline.py`` wrote
``data/bitwise_baseline.json`` and ``data/bitwise_baseline.npz`` with jopt at commit 6700ee8
(the last commit before the declaration core), and ``test_bitwise.py`` recomputes every case
with the current code and compares.

Only the public API is used here, so the same file runs against the old and the new code.
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np

import jopt

STEPS = 20
DTYPES = ("float32", "bfloat16", "float16", "complex64")


def _params(dtype, seed=0):
    rng = np.random.default_rng(seed)

    def a(shape):
        x = rng.normal(size=shape)
        if dtype == "complex64":
            x = x + 1j * rng.normal(size=shape)
        return jnp.asarray(x, dtype)

    return {"dense": {"kernel": a((4, 3)), "bias": a((3,))}, "scale": a(())}


def _big_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    # 75,000 elements: two full chunks of the 8-bit CPU loop (2**15) and a partial one.
    return {"w": jnp.asarray(rng.normal(size=(300, 250)), dtype),
            "b": jnp.asarray(rng.normal(size=(10,)), dtype)}


def _matrices_only(params):
    return jax.tree_util.tree_map(lambda x: x.ndim > 1, params)


# (name, factory, real_only): the public transformations as the conformance registry built them
# at commit 6700ee8, plus storage options and the 8-bit defaults.
CASES = [
    ("identity", lambda: jopt.identity(), False),
    ("scale", lambda: jopt.scale(0.5), False),
    ("scale_by_learning_rate", lambda: jopt.scale_by_learning_rate(0.1), False),
    ("scale_by_learning_rate_schedule",
     lambda: jopt.scale_by_learning_rate(jopt.cosine_decay(0.1, 100)), False),
    ("scale_by_learning_rate_ascent",
     lambda: jopt.scale_by_learning_rate(0.1, flip_sign=False), False),
    ("scale_by_adam", lambda: jopt.scale_by_adam(), False),
    ("scale_by_adam_nesterov", lambda: jopt.scale_by_adam(nesterov=True, eps_root=1e-12), False),
    ("scale_by_adam_bf16_moments",
     lambda: jopt.scale_by_adam(mu_dtype=jnp.bfloat16, nu_dtype="bfloat16"), True),
    ("scale_by_adam_eps0", lambda: jopt.scale_by_adam(eps=0.0), False),
    ("trace", lambda: jopt.trace(0.9), False),
    ("trace_nesterov", lambda: jopt.trace(0.9, nesterov=True), False),
    ("trace_bf16", lambda: jopt.trace(0.5, accumulator_dtype="bfloat16"), True),
    ("add_decayed_weights", lambda: jopt.add_decayed_weights(1e-2), False),
    ("add_decayed_weights_mask",
     lambda: jopt.add_decayed_weights(jopt.linear(1e-2, 0.0, 50), mask=_matrices_only), False),
    ("clip", lambda: jopt.clip(0.5), False),
    ("clip_by_global_norm", lambda: jopt.clip_by_global_norm(1.0), False),
    ("chain", lambda: jopt.chain(jopt.clip_by_global_norm(1.0), jopt.scale_by_adam(),
                                 jopt.scale_by_learning_rate(0.05)), False),
    ("named_chain", lambda: jopt.named_chain(("clip", jopt.clip(1.0)),
                                             ("sgd", jopt.sgd(0.05, momentum=0.9))), False),
    ("sgd", lambda: jopt.sgd(0.05), False),
    ("sgd_momentum", lambda: jopt.sgd(0.05, momentum=0.9), False),
    ("sgd_nesterov", lambda: jopt.sgd(0.05, momentum=0.9, nesterov=True), False),
    ("adam", lambda: jopt.adam(0.05), False),
    ("adam_nesterov", lambda: jopt.adam(0.05, nesterov=True), False),
    ("adamw", lambda: jopt.adamw(0.05, weight_decay=1e-3), False),
    ("adamw_mask", lambda: jopt.adamw(0.05, weight_decay=1e-2, mask=_matrices_only), False),
    ("adam_8bit", lambda: jopt.adam_8bit(0.05, min_8bit_size=0, block_size=4), True),
    ("adamw_8bit", lambda: jopt.adamw_8bit(0.05, weight_decay=1e-2, min_8bit_size=5,
                                           block_size=4), True),
    ("adamw_schedule",
     lambda: jopt.adamw(jopt.warmup_cosine_decay(0.0, 0.05, 10, 200), weight_decay=1e-3), False),
    ("clip_adamw_chain",
     lambda: jopt.chain(jopt.clip_by_global_norm(1.0),
                        jopt.adamw(jopt.warmup_cosine_decay(0.0, 1e-2, 5, 50),
                                   weight_decay=1e-4)), False),
]
CASE_NAMES = [c[0] for c in CASES]
FACTORIES = {name: (factory, real_only) for name, factory, real_only in CASES}

# Runs on packed parameters (jopt.pack) and with jopt.flatten, float32 and bfloat16.
LAYOUT_CASES = ["scale", "scale_by_learning_rate_schedule", "scale_by_adam",
                "scale_by_adam_nesterov", "trace_nesterov", "add_decayed_weights_mask", "clip",
                "clip_by_global_norm", "sgd_momentum", "adam", "adamw_mask", "adam_8bit",
                "clip_adamw_chain"]


def runs():
    """Every (case, dtype, layout) key the baseline holds."""
    out = []
    for name, _, real_only in CASES:
        for dtype in DTYPES:
            if real_only and dtype == "complex64":
                continue
            out.append((name, dtype, "tree"))
    for name in LAYOUT_CASES:
        for dtype in ("float32", "bfloat16"):
            out.append((name, dtype, "packed"))
            out.append((name, dtype, "flatten"))
    out.append(("adam_8bit_default", "float32", "tree"))
    out.append(("adamw_8bit_default", "float32", "tree"))
    out.append(("adamw_8bit_default", "bfloat16", "tree"))
    return out


def key(name, dtype, layout):
    return f"{name}|{dtype}|{layout}"


def _factory(name):
    if name == "adam_8bit_default":
        return lambda: jopt.adam_8bit(1e-3)
    if name == "adamw_8bit_default":
        return lambda: jopt.adamw_8bit(1e-3, weight_decay=1e-2)
    return FACTORIES[name][0]


def _grads(params, step):
    rng = np.random.default_rng(1000 + step)

    def g(p):
        x = rng.normal(size=p.shape)
        if jnp.iscomplexobj(p):
            x = x + 1j * rng.normal(size=p.shape)
        return jnp.asarray(x, p.dtype)

    return jax.tree_util.tree_map(g, params)


def leaves_by_path(tree):
    """``[(path, array)]`` of a tree (packed values seen through their buffers)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path), np.asarray(leaf)) for path, leaf in flat]


def _hash(h, pairs, values=True):
    for path, arr in pairs:
        h.update(path.encode())
        h.update(str(arr.dtype).encode())
        h.update(str(arr.shape).encode())
        if values:
            h.update(np.ascontiguousarray(arr).tobytes())


def signature(pairs):
    """Digest of the paths, shapes and dtypes of ``pairs`` (the tree layout)."""
    h = hashlib.sha256()
    _hash(h, pairs, values=False)
    return h.hexdigest()[:16]


BLOB_MAX = 256  # final arrays of at most this many elements are kept


def blob(pairs):
    """The raw bytes of the small arrays in ``pairs`` (``BLOB_MAX`` elements or fewer),
    concatenated as uint8."""
    return np.concatenate([np.frombuffer(np.ascontiguousarray(a).tobytes(), np.uint8)
                           for _, a in pairs if a.size <= BLOB_MAX] or [np.zeros(0, np.uint8)])


def run(name, dtype, layout, drop=None):
    """Trains one case for STEPS jitted steps.

    Returns a dict with the final ``updates`` and ``state`` as ``[(path, array)]`` and the
    digests ``u_digest`` / ``s_digest`` of the updates and of the state after every step.
    ``drop(state) -> state``, if given, removes leaves the baseline did not have (a listed
    layout change) before anything is read from the state.
    """
    tx = _factory(name)()
    big = name.endswith("_default")
    params = (_big_params if big else _params)(dtype)
    if layout == "flatten":
        tx = jopt.flatten(tx)
    if layout == "packed":
        params = jopt.pack(params)
    state = tx.init(params)

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return jopt.apply_updates(p, u), s, u

    hu, hs = hashlib.sha256(), hashlib.sha256()
    for i in range(STEPS):
        g = _grads(params.unpack() if layout == "packed" else params, i)
        if layout == "packed":
            g = jopt.pack(g)
        params, state, updates = step(params, state, g)
        u_pairs = leaves_by_path(updates)
        s_pairs = leaves_by_path(state if drop is None else drop(state))
        _hash(hu, u_pairs)
        _hash(hs, s_pairs)
    return {"updates": u_pairs, "state": s_pairs, "u_digest": hu.hexdigest()[:16],
            "s_digest": hs.hexdigest()[:16]}


# Transformations fed the loss, the early-stopping state machine and the schedules.
VALUES = [1.0, 2.0, 3.0, 0.5, 0.7, 0.7, 0.8, 0.2, float("nan"), 0.1, 0.3, 0.3, 0.3, 0.05,
          0.04, 0.06, 0.07, 0.08, 0.01, 0.02]


def run_plateau(dtype, restore_best):
    tx = jopt.chain(jopt.adam(0.05), jopt.reduce_on_plateau(
        factor=0.5, patience=1, cooldown=1, min_scale=0.1, restore_best=restore_best,
        accumulation_size=2, min_delta=0.01))
    params = _params(dtype)
    state = tx.init(params)

    @jax.jit
    def step(p, s, g, v):
        u, s = tx.update(g, s, p, value=v)
        return jopt.apply_updates(p, u), s, u

    hu, hs = hashlib.sha256(), hashlib.sha256()
    for i, v in enumerate(VALUES):
        params, state, updates = step(params, state, _grads(params, i), jnp.float32(v))
        u_pairs, s_pairs = leaves_by_path(updates), leaves_by_path(state)
        _hash(hu, u_pairs)
        _hash(hs, s_pairs)
    return {"updates": u_pairs, "state": s_pairs, "u_digest": hu.hexdigest()[:16],
            "s_digest": hs.hexdigest()[:16]}


def run_early_stopping(mode):
    es = jopt.early_stopping(mode=mode, min_delta=0.05, min_delta_mode="rel", patience=3,
                             start_step=1, keep_best=True, divergence_threshold=100.0
                             if mode == "min" else -100.0)
    params = _params("float32")
    state = es.init(params)
    update = jax.jit(es.update)
    h = hashlib.sha256()
    for i, v in enumerate(VALUES):
        params = jax.tree_util.tree_map(lambda p, i=i: p + i, params)
        state = update(state, jnp.float32(v if mode == "min" else -v), params)
        pairs = leaves_by_path(state)
        _hash(h, pairs)
    return {"updates": [], "state": pairs, "u_digest": "", "s_digest": h.hexdigest()[:16]}


SCHEDULES = [
    ("constant", lambda: jopt.constant(0.3)),
    ("linear", lambda: jopt.linear(1.0, 0.1, 100, transition_begin=7)),
    ("cosine_decay", lambda: jopt.cosine_decay(0.5, 90, alpha=0.1, exponent=2.0)),
    ("warmup_cosine_decay", lambda: jopt.warmup_cosine_decay(0.0, 1.0, 13, 170, end_value=0.01)),
    ("exponential_decay", lambda: jopt.exponential_decay(1.0, 41, 0.5, transition_begin=5,
                                                         staircase=True, end_value=0.01)),
    ("exponential_decay_smooth", lambda: jopt.exponential_decay(2.0, 30, 0.9)),
    ("piecewise_constant", lambda: jopt.piecewise_constant([10, 50, 120], [1.0, 0.5, 0.1, 0.01])),
    ("join", lambda: jopt.join([jopt.linear(0.0, 1.0, 20), jopt.cosine_decay(1.0, 100)], [20])),
]


def run_schedule(name, jitted):
    sched = dict(SCHEDULES)[name]()
    counts = jnp.arange(0, 300, dtype=jnp.int32)
    values = jax.jit(jax.vmap(sched))(counts) if jitted else jnp.stack(
        [sched(c) for c in range(0, 300, 7)])
    pairs = [("values", np.asarray(values))]
    h = hashlib.sha256()
    _hash(h, pairs)
    return {"updates": [], "state": pairs, "u_digest": "", "s_digest": h.hexdigest()[:16]}


def extra_runs():
    """``{key: thunk}`` of the runs beyond the transformations (plateau, early stopping and
    schedules)."""
    out = {}
    for dtype in ("float32", "bfloat16"):
        for rb in (False, True):
            out[f"reduce_on_plateau{'_restore' if rb else ''}|{dtype}|tree"] = (
                lambda dtype=dtype, rb=rb: run_plateau(dtype, rb))
    for mode in ("min", "max"):
        out[f"early_stopping_{mode}|float32|-"] = lambda mode=mode: run_early_stopping(mode)
    for name, _ in SCHEDULES:
        for jitted in (False, True):
            out[f"schedule_{name}|{'jit' if jitted else 'eager'}|-"] = (
                lambda name=name, jitted=jitted: run_schedule(name, jitted))
    return out
