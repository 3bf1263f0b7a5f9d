"""``jopt train``: one run (``--population`` runs are in ``_population``)."""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from typing import Any

import numpy as np

from jopt.cli._args import config
from jopt.cli._common import (
    CLIError,
    batches,
    finish,
    fmt,
    import_examples,
    one_line,
    write_metrics,
)
from jopt.cli._data import load_data
from jopt.cli._plots import plot_run
from jopt.cli._recipes import make_optimizer, moments_note
from jopt.cli._steps import compare_optax, make_functions, make_model, make_step, plateau_scale


class OutputFolder:
    """The run's output folder: checked before training, created when training starts, and
    removed again if nothing was written to it (a usage error found late, an interruption
    during compilation)."""

    def __init__(self, out: str | None):
        if out is None:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            base = os.path.join(os.getcwd(), "jopt-runs", f"train-{stamp}")
            path, k = base, 1
            while os.path.exists(path):  # two runs in the same second get distinct folders
                path = f"{base}-{k}"
                k += 1
        else:
            path = os.path.abspath(out)
        self.path = path
        self.created: list[str] = []
        # Fail before training, not after, if the results could not be written.
        if os.path.exists(path) and not os.path.isdir(path):
            raise CLIError(f"cannot create output folder {path}: a file is in the way")
        parent = path
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.access(parent, os.W_OK):
            raise CLIError(f"cannot create output folder {path}: {parent} is not writable")
        for name in ("metrics.json", "curves.png"):
            target = os.path.join(path, name)
            if os.path.isdir(target):
                raise CLIError(f"cannot write {target} (a folder is in the way)")

    def create(self) -> str:
        missing, p = [], self.path
        while not os.path.exists(p):
            missing.append(p)
            p = os.path.dirname(p)
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise CLIError(f"cannot create output folder {self.path}: {one_line(e)}") from None
        self.created = missing
        return self.path

    def discard_if_empty(self) -> None:
        """Removes the folders :meth:`create` made if nothing was written to them."""
        for p in self.created:  # deepest first
            try:
                os.rmdir(p)
            except OSError:
                break
        self.created = []


def train(args: argparse.Namespace) -> int:
    """Runs ``jopt train`` with parsed arguments; returns the exit status."""
    t0 = time.perf_counter()
    deps = import_examples()
    nnx, tqdm = deps["nnx"], deps["tqdm"]
    data = load_data(args, deps["sklearn"])
    cfg = config(args, data)
    folder = OutputFolder(args.out)


    import jopt

    try:
        tx = make_optimizer(jopt, cfg)
        stopper = jopt.early_stopping(mode="min", min_delta=cfg["min_delta"],
                                      patience=cfg["patience"], keep_best=True)
    except jopt.errors.JoptError as e:
        raise CLIError(one_line(e)) from None
    if args.compare == "optax":
        try:
            import optax
        except ImportError:
            raise CLIError("--compare optax needs optax: pip install optax") from None
        tx_optax, optax_apply = make_optimizer(optax, cfg), optax.apply_updates

    graphdef, init_params = make_model(nnx, data["n_features"], data["n_classes"], args.seed)
    loss_and_acc, evaluate = make_functions(nnx, graphdef)
    plateau = cfg["reduce_on_plateau"] is not None

    def lr_of(before, after):
        # The schedule's value for this update times the plateau scale it applied.
        lr = jopt.get_hyperparams(before)["learning_rate"]
        return lr * plateau_scale(jopt, after) if plateau else lr

    if cfg["population"] is not None:
        from jopt.cli._population import train_population

        return train_population(cfg, data, folder, t0, tx, stopper, init_params,
                                loss_and_acc, lr_of, tqdm)
    out_dir = folder.create()
    try:
        return _run(args, cfg, data, out_dir, t0, tx, stopper, init_params, loss_and_acc,
                    evaluate, lr_of, tqdm, plateau,
                    (tx_optax, optax_apply) if args.compare == "optax" else None)
    finally:
        folder.discard_if_empty()


def _run(args, cfg, data, out_dir, t0, tx, stopper, init_params, loss_and_acc, evaluate,
         lr_of, tqdm, plateau, optax_replay) -> int:
    import jax
    import jax.numpy as jnp

    import jopt

    step = make_step(loss_and_acc, tx, jopt.apply_updates, lr_of, with_value=plateau)
    es_update = jax.jit(stopper.update)

    params = init_params
    opt_state = tx.init(params)
    es_state = stopper.init(params)
    X_val, y_val = jnp.asarray(data["X_val"]), jnp.asarray(data["y_val"])
    X_tr, y_tr = data["X_train"], data["y_train"]
    order_rng = np.random.default_rng(args.seed)

    step_log: dict[str, list] = {"loss": [], "accuracy": [], "learning_rate": []}
    epoch_log: list[dict[str, Any]] = []
    orders: list[np.ndarray] = []
    print(f"jopt train: {data['name']} ({X_tr.shape[0]} train / {data['X_val'].shape[0]} val / "
          f"{data['X_test'].shape[0]} test, {data['n_features']} features, "
          f"{data['n_classes']} classes), {cfg['optimizer']}"
          f"{moments_note(cfg)}"
          f" + {cfg['schedule']} schedule, "
          f"peak lr {cfg['learning_rate']:g}, {cfg['epochs']} epochs x "
          f"{cfg['steps_per_epoch']} steps")
    sys.stdout.flush()
    # disable=None: the bar is drawn on a terminal only, so logs redirected to a file stay
    # one line per epoch.
    bar = tqdm(total=cfg["total_steps"], desc="train", unit="step", file=sys.stderr,
               mininterval=0.2, dynamic_ncols=True, disable=None)
    stopped = interrupted = False
    losses, accs, lrs = [], [], []
    try:
        for epoch in range(1, cfg["epochs"] + 1):
            order = order_rng.permutation(X_tr.shape[0])
            orders.append(order)
            losses, accs, lrs = [], [], []
            for idx in batches(order, cfg["batch_size"]):
                params, opt_state, loss, acc, lr = step(params, opt_state, X_tr[idx], y_tr[idx])
                # One host read per step for the live postfix; negligible for this model.
                loss, acc, lr = float(loss), float(acc), float(lr)
                losses.append(loss)
                accs.append(acc)
                lrs.append(lr)
                bar.set_postfix(loss=fmt(loss), acc=fmt(acc, ".3f"), refresh=False)
                bar.update(1)
            val_loss, val_acc = (float(v) for v in evaluate(params, X_val, y_val))
            es_state = es_update(es_state, jnp.asarray(val_loss, jnp.float32), params)
            with np.errstate(all="ignore"):  # a diverged epoch averages inf/NaN quietly
                train_loss, train_acc = float(np.mean(losses)), float(np.mean(accs))
            step_log["loss"] += losses
            step_log["accuracy"] += accs
            step_log["learning_rate"] += lrs
            epoch_log.append({"epoch": epoch, "train_loss": train_loss,
                              "train_accuracy": train_acc, "val_loss": val_loss,
                              "val_accuracy": val_acc, "learning_rate": lrs[-1]})
            bar.write(f"epoch {epoch:3d}  train_loss {fmt(train_loss)}  "
                      f"val_loss {fmt(val_loss)}  val_acc {fmt(val_acc)}  lr {lrs[-1]:.3e}")
            losses, accs, lrs = [], [], []
            if jopt.should_stop(es_state):
                stopped = True
                break
    except KeyboardInterrupt:
        # Ctrl-C: keep what was trained (the steps of the unfinished epoch included) and
        # write it out like a finished run.
        interrupted = True
        step_log["loss"] += losses
        step_log["accuracy"] += accs
        step_log["learning_rate"] += lrs
    finally:
        bar.close()

    stop_reason = ("interrupted (Ctrl-C)" if interrupted else
                   jopt.stop_reason(es_state) if stopped else "max epochs reached")
    best_step = int(es_state.best_step)
    best = jopt.best_params(es_state)  # the initial parameters if no epoch was finite
    test_loss, test_acc = (float(v) for v in evaluate(
        best, jnp.asarray(data["X_test"]), jnp.asarray(data["y_test"])))
    summary = {
        "epochs_run": len(epoch_log),
        "steps_run": len(step_log["loss"]),
        "stop_reason": stop_reason,
        "best_epoch": best_step + 1 if best_step >= 0 else None,
        "best_val_loss": float(es_state.best_value) if best_step >= 0 else None,
        "test_loss": test_loss,
        "test_accuracy": test_acc,
    }
    if plateau:
        summary["plateau_scale"] = float(plateau_scale(jopt, opt_state))

    compare = None
    if optax_replay is not None and not interrupted:
        tx_optax, optax_apply = optax_replay
        compare = compare_optax(loss_and_acc, tx_optax, optax_apply, init_params, orders,
                                X_tr, y_tr, cfg["batch_size"], step_log["loss"],
                                with_value=plateau)

    summary["wall_time_s"] = time.perf_counter() - t0
    metrics = {
        "config": cfg,
        "data": {"name": data["name"], "n_train": int(X_tr.shape[0]),
                 "n_val": int(data["X_val"].shape[0]), "n_test": int(data["X_test"].shape[0]),
                 "n_features": data["n_features"], "n_classes": data["n_classes"]},
        "steps": {"step": list(range(1, len(step_log["loss"]) + 1)), **step_log},
        "epochs": epoch_log,
        "summary": summary,
    }
    if compare is not None:
        metrics["compare"] = compare
    write_metrics(os.path.join(out_dir, "metrics.json"), metrics)
    plot_run(os.path.join(out_dir, "curves.png"), metrics)

    print("summary:")
    print(f"  epochs run:     {summary['epochs_run']} of {cfg['epochs']}")
    print(f"  stop reason:    {stop_reason}")
    if stop_reason == "non-finite metric":
        print("                  (the run diverged: try a lower --learning-rate or --clip-norm)")
    if summary["best_epoch"] is None:
        print("  best epoch:     none (no finite validation loss; initial parameters kept)")
    else:
        print(f"  best epoch:     {summary['best_epoch']} "
              f"(val loss {fmt(summary['best_val_loss'])}, parameters restored)")
    print(f"  test accuracy:  {fmt(test_acc)} (test loss {fmt(test_loss)}, "
          f"{data['X_test'].shape[0]} examples)")
    if plateau:
        print(f"  plateau scale:  {summary['plateau_scale']:g} (learning rate multiplier at "
              f"the end)")
    if compare is not None:
        # Rounding differences (clipping multiplies by one scalar factor where optax divides)
        # grow slowly through training; under 1e-5 of the initial loss is float32 noise.
        same = compare["max_rel_loss_diff"] <= 1e-5 or compare["max_scaled_loss_diff"] <= 1e-5
        verdict = "same trajectory to float32 rounding" if same else "trajectories differ"
        # Led by the difference on the scale of the initial loss: late in a run the losses
        # are small and a difference relative to them looks large for the same rounding.
        k = compare["argmax_step"]
        at = compare["optax_loss"][k - 1] if compare["optax_loss"] else float("nan")
        print(f"  optax compare:  largest loss difference "
              f"{compare['max_scaled_loss_diff']:.3g} of the initial loss over "
              f"{compare['steps']} steps ({verdict}); largest relative to the step's own "
              f"loss {compare['max_rel_loss_diff']:.3g} (step {k}, loss "
              f"{at:.3g})")
    print(f"  wall time:      {summary['wall_time_s']:.1f} s")
    return finish(out_dir, summary["steps_run"], interrupted)
