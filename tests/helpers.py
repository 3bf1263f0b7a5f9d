"""Shared test helpers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jopt


def tree_allclose(a, b, rtol=0.0, atol=0.0, typematch=True):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    if ta != tb:
        return False
    for x, y in zip(la, lb):
        if typematch and (np.shape(x) != np.shape(y) or jnp.asarray(x).dtype != jnp.asarray(y).dtype):
            return False
        if not np.allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol):
            return False
    return True


def tree_equal(a, b):
    """Bitwise equality of two trees (structure, shapes, dtypes and values)."""
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    if ta != tb:
        return False
    return all(
        np.shape(x) == np.shape(y)
        and jnp.asarray(x).dtype == jnp.asarray(y).dtype
        and np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
        for x, y in zip(la, lb)
    )


def strict_json(path):
    """Loads a JSON file, failing on NaN/Infinity (which are not JSON)."""
    import json

    def reject(token):
        raise AssertionError(f"{path} contains {token}, which is not strict JSON")

    with open(path, encoding="utf-8") as f:
        return json.load(f, parse_constant=reject)


def counting_step(tx):
    """A jitted ``(params, state, grads) -> (params, state)`` step of ``tx`` and the list it
    appends to each time it is traced (its length is the number of traces)."""
    traces = []

    @jax.jit
    def step(p, s, g):
        traces.append(1)
        u, s = tx.update(g, s, p)
        return jopt.apply_updates(p, u), s

    return step, traces


def tree_signature(tree):
    """(structure, [(shape, dtype)]) of a tree, for the state contract."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, [(tuple(x.shape), jnp.dtype(x.dtype)) for x in leaves]


def make_params(dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(4, 3)), dtype),
            "bias": jnp.asarray(rng.normal(size=(3,)), dtype),
        },
        "scale": jnp.asarray(rng.normal(size=()), dtype),
    }


def matrices_only(params):
    """Weight-decay mask: decay matrices, not biases or scalars."""
    return jax.tree_util.tree_map(lambda x: x.ndim > 1, params)


# Every public transformation, built with its defaults or a typical configuration.
# (id, factory, is_optimizer): optimizers include the learning-rate step and must descend.
REGISTRY = [
    ("identity", lambda: jopt.identity(), False),
    ("scale", lambda: jopt.scale(0.5), False),
    ("scale_by_learning_rate", lambda: jopt.scale_by_learning_rate(0.1), True),
    ("scale_by_learning_rate_schedule",
     lambda: jopt.scale_by_learning_rate(jopt.cosine_decay(0.1, 100)), True),
    ("scale_by_adam", lambda: jopt.scale_by_adam(), False),
    ("scale_by_adam_nesterov", lambda: jopt.scale_by_adam(nesterov=True, eps_root=1e-12), False),
    ("trace", lambda: jopt.trace(0.9), False),
    ("trace_nesterov", lambda: jopt.trace(0.9, nesterov=True), False),
    ("add_decayed_weights", lambda: jopt.add_decayed_weights(1e-2), False),
    ("add_decayed_weights_mask",
     lambda: jopt.add_decayed_weights(jopt.linear(1e-2, 0.0, 50), mask=matrices_only),
     False),
    ("clip", lambda: jopt.clip(0.5), False),
    ("clip_by_global_norm", lambda: jopt.clip_by_global_norm(1.0), False),
    ("chain", lambda: jopt.chain(jopt.clip_by_global_norm(1.0), jopt.scale_by_adam(),
                                 jopt.scale_by_learning_rate(0.05)), True),
    ("named_chain", lambda: jopt.named_chain(("clip", jopt.clip(1.0)),
                                             ("sgd", jopt.sgd(0.05, momentum=0.9))), True),
    ("sgd", lambda: jopt.sgd(0.05), True),
    ("sgd_momentum", lambda: jopt.sgd(0.05, momentum=0.9), True),
    ("sgd_nesterov", lambda: jopt.sgd(0.05, momentum=0.9, nesterov=True), True),
    ("adam", lambda: jopt.adam(0.05), True),
    ("adam_nesterov", lambda: jopt.adam(0.05, nesterov=True), True),
    ("adamw", lambda: jopt.adamw(0.05, weight_decay=1e-3), True),
    ("adam_8bit", lambda: jopt.adam_8bit(0.05, min_8bit_size=0, block_size=4), True),
    ("adamw_schedule",
     lambda: jopt.adamw(jopt.warmup_cosine_decay(0.0, 0.05, 10, 200), weight_decay=1e-3), True),
]
REGISTRY_IDS = [r[0] for r in REGISTRY]
