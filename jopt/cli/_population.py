"""``jopt train --population``: several configurations in one vmapped, jitted step."""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

import numpy as np

from jopt.cli._common import CLIError, batches, finish, fmt, one_line, write_metrics
from jopt.cli._plots import plot_population
from jopt.cli._recipes import make_schedule, moments_note
from jopt.cli._steps import make_step, plateau_scale


def member_label(name: str, value: float) -> str:
    return f"{'lr' if name == 'learning_rate' else 'wd'}={value:g}"


def train_population(cfg, data, folder, t0, tx, stopper, init_params, loss_and_acc, lr_of,
                      tqdm) -> int:
    """``--population``: every member in one vmapped, jitted step; see
    :func:`jopt.cli._steps.make_step`.

    Member ``i`` sees exactly what the run without ``--population`` would see (same initial
    parameters, batches, schedule shape and early stopping), so its results equal that run's.
    A member whose early stopping fires is frozen with :func:`jopt.gate_stopped` (its
    parameters and optimizer state no longer change) and its logs end there; the loop ends
    when every member has stopped or the epochs run out.
    """
    import jax
    import jax.numpy as jnp

    import jopt

    name, values = cfg["population"]["name"], cfg["population"]["values"]
    n = len(values)
    plateau = cfg["reduce_on_plateau"] is not None
    opt_state0 = tx.init(init_params)

    def member_state(value):
        if name == "learning_rate":
            # A new schedule with this peak, so that every member keeps the schedule's shape.
            return jopt.set_hyperparams(opt_state0,
                                        learning_rate=make_schedule(jopt, cfg, value))
        return jopt.set_hyperparams(opt_state0, weight_decay=value)

    try:
        opt_state = jax.vmap(member_state)(jnp.asarray(values, jnp.float32))
    except jopt.errors.JoptError as e:
        raise CLIError(one_line(e)) from None

    def stack(tree):
        return jax.tree_util.tree_map(lambda x: jnp.stack([jnp.asarray(x)] * n), tree)

    params = stack(init_params)
    es_state = stack(stopper.init(init_params))
    step = make_step(loss_and_acc, tx, jopt.apply_updates, lr_of, with_value=plateau,
                      population=True, gate=jopt.gate_stopped)
    evaluate = jax.jit(jax.vmap(loss_and_acc, in_axes=(0, None, None)))
    es_update = jax.jit(jax.vmap(stopper.update))

    X_tr = data["X_train"]
    labels = [member_label(name, v) for v in values]
    print(f"jopt train: {data['name']} ({X_tr.shape[0]} train / {data['X_val'].shape[0]} val / "
          f"{data['X_test'].shape[0]} test, {data['n_features']} features, "
          f"{data['n_classes']} classes), {cfg['optimizer']}"
          f"{moments_note(cfg)}"
          f" + {cfg['schedule']} schedule, "
          f"{cfg['epochs']} epochs x {cfg['steps_per_epoch']} steps")
    print(f"population: {n} members, {name} = {', '.join(f'{v:g}' for v in values)}; one "
          f"compiled step (jax.vmap), early stopping per member")
    sys.stdout.flush()
    out_dir = folder.create()
    try:
        return _run(cfg, data, out_dir, t0, n, name, values, labels, plateau, tx, stopper,
                    params, opt_state, es_state, step, evaluate, es_update, tqdm)
    finally:
        folder.discard_if_empty()


def _run(cfg, data, out_dir, t0, n, name, values, labels, plateau, tx, stopper, params,
         opt_state, es_state, step, evaluate, es_update, tqdm) -> int:
    import jax
    import jax.numpy as jnp

    import jopt

    X_val, y_val = jnp.asarray(data["X_val"]), jnp.asarray(data["y_val"])
    X_tr, y_tr = data["X_train"], data["y_train"]
    order_rng = np.random.default_rng(cfg["seed"])
    logs = [{"loss": [], "accuracy": [], "learning_rate": []} for _ in range(n)]
    member_epochs: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    pop_log: dict[str, list] = {"epoch": [], "running": [], "val_loss": [], "val_accuracy": []}
    stopped = np.zeros(n, bool)
    steps_run = 0
    bar = tqdm(total=cfg["total_steps"], desc="train", unit="step", file=sys.stderr,
               mininterval=0.2, dynamic_ncols=True, disable=None)
    interrupted = False
    running = ~stopped
    losses, accs, lrs = [], [], []
    try:
        for epoch in range(1, cfg["epochs"] + 1):
            running = ~stopped
            order = order_rng.permutation(X_tr.shape[0])
            losses, accs, lrs = [], [], []
            for idx in batches(order, cfg["batch_size"]):
                params, opt_state, loss, acc, lr = step(params, opt_state, es_state,
                                                        X_tr[idx], y_tr[idx])
                loss, acc, lr = (np.asarray(v, np.float64) for v in jax.device_get((loss, acc,
                                                                                      lr)))
                losses.append(loss)
                accs.append(acc)
                lrs.append(lr)
                with np.errstate(all="ignore"):
                    live = loss[running]
                    shown = float(np.nanmin(live)) if np.any(np.isfinite(live)) else math.nan
                bar.set_postfix(running=f"{int(running.sum())}/{n}", min_loss=fmt(shown),
                                refresh=False)
                bar.update(1)
            steps_run += len(losses)
            val_loss, val_acc = evaluate(params, X_val, y_val)
            es_state = es_update(es_state, val_loss, params)
            val_loss, val_acc = (np.asarray(v, np.float64) for v in jax.device_get((val_loss,
                                                                                   val_acc)))
            now_stopped = np.asarray(jopt.should_stop(es_state)).reshape(n)
            L, A, R = np.stack(losses), np.stack(accs), np.stack(lrs)
            for i in np.flatnonzero(running):
                logs[i]["loss"] += L[:, i].tolist()
                logs[i]["accuracy"] += A[:, i].tolist()
                logs[i]["learning_rate"] += R[:, i].tolist()
                with np.errstate(all="ignore"):
                    train_loss, train_acc = float(np.mean(L[:, i])), float(np.mean(A[:, i]))
                member_epochs[i].append({
                    "epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                    "val_loss": float(val_loss[i]), "val_accuracy": float(val_acc[i]),
                    "learning_rate": float(R[-1, i])})
            # Every member's validation loss each epoch: a stopped member's stays the same,
            # because its parameters are frozen.
            pop_log["epoch"].append(epoch)
            pop_log["running"].append(running.tolist())
            pop_log["val_loss"].append(val_loss.tolist())
            pop_log["val_accuracy"].append(val_acc.tolist())
            parts = []
            for i in range(n):
                if not running[i]:
                    parts.append(f"{labels[i]} stopped")
                else:
                    mark = " (stops)" if now_stopped[i] else ""
                    parts.append(f"{labels[i]} {fmt(float(val_loss[i]))}{mark}")
            stopped = now_stopped
            losses, accs, lrs = [], [], []
            bar.write(f"epoch {epoch:3d}  val_loss  {'  '.join(parts)}  "
                      f"running {int((~stopped).sum())}/{n}")
            if stopped.all():
                break
    except KeyboardInterrupt:
        # Ctrl-C: keep what was trained (the steps of the unfinished epoch included).
        interrupted = True
        steps_run += len(losses)
        if losses:
            L, A, R = np.stack(losses), np.stack(accs), np.stack(lrs)
            for i in np.flatnonzero(running):
                logs[i]["loss"] += L[:, i].tolist()
                logs[i]["accuracy"] += A[:, i].tolist()
                logs[i]["learning_rate"] += R[:, i].tolist()
    finally:
        bar.close()

    reasons = jopt.stop_reason(es_state)
    best_step = np.asarray(jax.device_get(es_state.best_step)).reshape(n)
    best_value = np.asarray(jax.device_get(es_state.best_value), np.float64).reshape(n)
    test_loss, test_acc = (np.asarray(v, np.float64) for v in jax.device_get(evaluate(
        jopt.best_params(es_state), jnp.asarray(data["X_test"]), jnp.asarray(data["y_test"]))))
    scales = (np.asarray(jax.device_get(plateau_scale(jopt, opt_state)), np.float64).reshape(n)
              if plateau else None)
    members = []
    for i in range(n):
        summary = {
            "epochs_run": len(member_epochs[i]),
            "steps_run": len(logs[i]["loss"]),
            "stop_reason": reasons[i] if stopped[i] else (
                "interrupted (Ctrl-C)" if interrupted else "max epochs reached"),
            "best_epoch": int(best_step[i]) + 1 if best_step[i] >= 0 else None,
            "best_val_loss": float(best_value[i]) if best_step[i] >= 0 else None,
            "test_loss": float(test_loss[i]),
            "test_accuracy": float(test_acc[i]),
        }
        if plateau:
            summary["plateau_scale"] = float(scales[i])
        members.append({
            "member": i, "hyperparameter": name, "value": values[i], "label": labels[i],
            "steps": {"step": list(range(1, len(logs[i]["loss"]) + 1)), **logs[i]},
            "epochs": member_epochs[i], "summary": summary})
    scored = [(m["summary"]["best_val_loss"], m["member"]) for m in members
              if m["summary"]["best_val_loss"] is not None]
    best_member = min(scored)[1] if scored else None
    summary = {
        "members": n,
        "epochs_run": len(pop_log["epoch"]),
        "steps_run": steps_run,
        "stop_epochs": [m["summary"]["epochs_run"] for m in members],
        "best_member": best_member,
        "wall_time_s": time.perf_counter() - t0,
    }
    metrics = {
        "config": cfg,
        "data": {"name": data["name"], "n_train": int(X_tr.shape[0]),
                 "n_val": int(data["X_val"].shape[0]), "n_test": int(data["X_test"].shape[0]),
                 "n_features": data["n_features"], "n_classes": data["n_classes"]},
        "members": members,
        "population": {"hyperparameter": name, "values": list(values), **pop_log},
        "summary": summary,
    }
    write_metrics(os.path.join(out_dir, "metrics.json"), metrics)
    plot_population(os.path.join(out_dir, "curves.png"), metrics)

    print("members (early stopping on the validation loss; test accuracy with each member's "
          "best parameters):")
    head = (f"  {'member':>6}  {name:>13}  {'epochs':>6}  {'stop reason':<18}  "
            f"{'best epoch':>10}  {'best val loss':>13}  {'test acc':>8}")
    if plateau:
        head += f"  {'lr scale':>8}"
    print(head)
    for m in members:
        s = m["summary"]
        best = "-" if s["best_epoch"] is None else str(s["best_epoch"])
        bvl = "-" if s["best_val_loss"] is None else fmt(s["best_val_loss"])
        row = (f"  {m['member']:>6}  {m['value']:>13g}  {s['epochs_run']:>6}  "
               f"{s['stop_reason']:<18}  {best:>10}  {bvl:>13}  "
               f"{fmt(s['test_accuracy']):>8}")
        if plateau:
            row += f"  {s['plateau_scale']:>8g}"
        print(row + ("  <- best" if m["member"] == best_member else ""))
    print(f"  epochs run:     {summary['epochs_run']} of {cfg['epochs']} "
          f"({int(stopped.sum())} of {n} members stopped early)")
    print(f"  wall time:      {summary['wall_time_s']:.1f} s")
    return finish(out_dir, steps_run, interrupted)
