"""A whole training loop compiled as one ``jax.lax.while_loop`` that ends on early stopping.

A population of four AdamW runs (one learning rate each) fits a small over-parameterized
regression. Every *round* takes a few optimizer steps and one early-stopping decision on the
validation loss. The loop condition reads the traceable ``es_state.stopped`` flag, so there is
no host round trip per step: the device runs until every member has stopped. Stopped members
are frozen with ``jopt.gate_stopped``, so each member ends exactly where its own run would.

The same rounds are then run from a Python loop (one jitted call per round, ``jopt.should_stop``
on the host) to show that both stop on the same round.

Run: ``python examples/while_loop_early_stopping.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jopt

LEARNING_RATES = (0.01, 0.03, 0.1, 0.3)
ROUND_STEPS = 5
MAX_ROUNDS = 200


def make_data(seed: int = 0, features: int = 24, n_train: int = 16, n_val: int = 64):
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=(features,)).astype(np.float32)

    def make(n):
        x = rng.normal(size=(n, features)).astype(np.float32)
        y = (x @ w_true + 0.5 * rng.normal(size=(n,))).astype(np.float32)
        return jnp.asarray(x), jnp.asarray(y)

    return make(n_train), make(n_val)


def mse(params, x, y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def main(verbose: bool = True) -> dict:
    (x_train, y_train), (x_val, y_val) = make_data()
    params = {"w": jnp.zeros((x_train.shape[1],), jnp.float32), "b": jnp.zeros([], jnp.float32)}
    tx = jopt.adamw(1e-3, weight_decay=1e-4)
    es = jopt.early_stopping(patience=3, keep_best=True)

    def train_round(p, s, e):
        def step(_, carry):
            p, s = carry
            u, s = tx.update(jax.grad(mse)(p, x_train, y_train), s, p)
            return jopt.apply_updates(p, u), s

        p_new, s_new = jax.lax.fori_loop(0, ROUND_STEPS, step, (p, s))
        e_new = es.update(e, mse(p_new, x_val, y_val), p_new)
        # Members stopped before this round keep their parameters and optimizer state.
        return jopt.gate_stopped(e, p_new, p), jopt.gate_stopped(e, s_new, s), e_new

    population_round = jax.vmap(train_round)

    def init():
        s0, e0 = tx.init(params), es.init(params)
        lrs = jnp.asarray(LEARNING_RATES, jnp.float32)
        return jax.vmap(lambda lr: (params, jopt.set_hyperparams(s0, learning_rate=lr), e0))(lrs)

    @jax.jit
    def train_compiled(p, s, e):
        def cond(carry):
            return ~jnp.all(carry[2].stopped) & (carry[3] < MAX_ROUNDS)

        def body(carry):
            return (*population_round(*carry[:3]), carry[3] + 1)

        return jax.lax.while_loop(cond, body, (p, s, e, jnp.int32(0)))

    p, s, e, rounds = train_compiled(*init())
    compiled = jopt.population_status(e)

    # The same rounds driven from Python.
    step = jax.jit(population_round)
    p2, s2, e2 = init()
    python_rounds = 0
    while python_rounds < MAX_ROUNDS and not np.all(jopt.should_stop(e2)):
        p2, s2, e2 = step(p2, s2, e2)
        python_rounds += 1
    python = jopt.population_status(e2)

    if verbose:
        print(f"compiled loop: {int(rounds)} rounds; Python loop: {python_rounds} rounds")
        for lr, member in zip(LEARNING_RATES, compiled):
            print(f"  lr={lr:<5} stopped after {member['calls']:3d} rounds ({member['reason']}), "
                  f"best round {member['best_step']}, best validation loss "
                  f"{member['best_value']:.4f}")
    return {
        "compiled_rounds": int(rounds),
        "python_rounds": python_rounds,
        "stopped": [m["stopped"] for m in compiled],
        "compiled_stops": [m["calls"] for m in compiled],
        "python_stops": [m["calls"] for m in python],
        "best_params": jopt.best_params(e),
    }


if __name__ == "__main__":
    main()
