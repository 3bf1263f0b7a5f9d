"""The model, the jitted training step and the optax replay of ``jopt train``."""

from __future__ import annotations

from typing import Any

import numpy as np

from jopt.cli._common import HIDDEN_SIZES, batches


def make_model(nnx: Any, n_features: int, n_classes: int, seed: int):
    """A ReLU MLP split into its graph definition and its parameters (a pytree)."""

    class MLP(nnx.Module):
        def __init__(self, sizes, rngs):
            self.layers = nnx.List(
                [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])]
            )

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = nnx.relu(layer(x))
            return self.layers[-1](x)

    model = MLP((n_features, *HIDDEN_SIZES, n_classes), nnx.Rngs(seed))
    return nnx.split(model, nnx.Param)


def make_functions(nnx: Any, graphdef: Any):
    """Pure loss/accuracy and evaluation functions of ``(params, x, y)``."""
    import jax
    import jax.numpy as jnp

    def loss_and_acc(params, x, y):
        logits = nnx.merge(graphdef, params)(x)
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]
        acc = jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))
        return jnp.mean(nll), acc

    return loss_and_acc, jax.jit(loss_and_acc)


def make_step(loss_and_acc, tx, apply_updates, lr_of, *, with_value=False,
               population=False, gate=None):
    """A jitted train step ``(params, opt_state, x, y) -> (params, opt_state, loss, acc, lr)``.

    ``lr_of(state_before, state_after)`` gives the learning rate this update used: the
    schedule read from the state *before* the update (times the plateau scale of the state
    after it, which is the scale the update applied). ``with_value`` passes the loss to the
    chain as ``value=`` (for reduce-on-plateau).

    With ``population=True`` the step is ``jax.vmap``-ed over the members' parameters,
    optimizer states and early-stopping states (the batch is shared), as
    ``(params, opt_state, es_state, x, y)``, and ``gate(es_state, new, old)`` (that is,
    :func:`jopt.gate_stopped`) keeps stopped members frozen.
    """
    import jax

    grad_fn = jax.value_and_grad(loss_and_acc, has_aux=True)

    def member(params, opt_state, x, y):
        (loss, acc), grads = grad_fn(params, x, y)
        extra = {"value": loss} if with_value else {}
        updates, new_state = tx.update(grads, opt_state, params, **extra)
        lr = lr_of(opt_state, new_state)
        return apply_updates(params, updates), new_state, loss, acc, lr

    if not population:
        return jax.jit(member)

    def gated(params, opt_state, es_state, x, y):
        new_params, new_state, loss, acc, lr = member(params, opt_state, x, y)
        return (gate(es_state, new_params, params), gate(es_state, new_state, opt_state),
                loss, acc, lr)

    return jax.jit(jax.vmap(gated, in_axes=(0, 0, 0, None, None)))


def plateau_scale(jopt: Any, opt_state: Any):
    """The scale of the chain's reduce-on-plateau link (batched for a population)."""
    import jax
    import jax.numpy as jnp

    def is_plateau(x):
        return isinstance(x, jopt.ReduceOnPlateauState)

    found = [x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=is_plateau)
             if is_plateau(x)]
    return found[-1].scale if found else jnp.ones([], jnp.float32)


def compare_optax(loss_and_acc, tx, apply_updates, init_params, orders, X, y, batch_size,
                   jopt_losses, with_value=False):
    """Replays the run with optax; returns the per-step relative loss differences."""
    import jax
    import jax.numpy as jnp

    step = make_step(loss_and_acc, tx, apply_updates,
                      lambda before, after: jnp.zeros([], jnp.float32), with_value=with_value)
    losses = []
    # optax itself is not clean under strict dtype promotion (its bias correction computes
    # ``python_float ** int32_count``), so only this reference replay runs under standard
    # promotion; the jopt run above stays strict. The step is traced inside the context.
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        params, state = init_params, tx.init(init_params)
        for order in orders:
            for idx in batches(order, batch_size):
                params, state, loss, _, _ = step(params, state, X[idx], y[idx])
                losses.append(float(loss))
    a = np.asarray(jopt_losses, np.float64)
    b = np.asarray(losses, np.float64)
    with np.errstate(all="ignore"):
        diff = np.abs(a - b)
        rel = diff / np.maximum(np.abs(b), np.finfo(np.float32).tiny)
        # float32 rounding of a loss is relative to the loss, but a loss near 0 (a batch the
        # model already fits) is a difference of tiny numbers: also report the difference
        # relative to the run's loss scale (its first finite loss).
        finite = b[np.isfinite(b)]
        scale = float(np.abs(finite[0])) if finite.shape[0] else 1.0
        scaled = np.where(np.isfinite(diff), diff / max(scale, np.finfo(np.float32).tiny), 0.0)
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & (a == b)
    rel = np.where(both_nan | same_inf, 0.0, np.where(np.isnan(rel), np.inf, rel))
    k = int(np.argmax(rel)) if rel.shape[0] else 0
    worst = float(rel[k]) if rel.shape[0] else 0.0
    return {"library": "optax", "steps": int(b.shape[0]), "max_rel_loss_diff": worst,
            "argmax_step": k + 1, "optax_loss": losses, "rel_loss_diff": rel.tolist(),
            "max_scaled_loss_diff": float(np.max(scaled)) if scaled.shape[0] else 0.0,
            "loss_scale": scale}
