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


def _collect_registry():
    """Every public transformation, in the configurations its declaration lists (each factory
    registers itself with examples: jopt._declare.REGISTRY). (id, factory, is_optimizer):
    optimizers include the learning-rate step and must descend. Transformations whose update
    needs the loss (value=) are listed apart, in VALUE_REGISTRY."""
    from jopt._registry import REGISTRY as declared

    plain, with_value = [], []
    for name in sorted(declared):
        entry = declared[name]
        for ident, build in entry.builders(jopt):
            (with_value if entry.needs_value else plain).append((ident, build, entry.descends))
    ids = [r[0] for r in plain + with_value]
    assert len(ids) == len(set(ids)), ids
    return plain, with_value


REGISTRY, VALUE_REGISTRY = _collect_registry()
REGISTRY_IDS = [r[0] for r in REGISTRY]
