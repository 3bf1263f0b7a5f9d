"""The figures of ``jopt train`` (matplotlib's Agg canvas, never pyplot)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jopt.cli._common import fmt


def plot_run(path: str, metrics: dict[str, Any]) -> None:
    """Training loss and learning rate against step, two labelled panels."""
    # Figure + the Agg canvas, never pyplot: no global backend switch, no GUI, no state kept
    # between runs in the same process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cfg, steps = metrics["config"], metrics["steps"]
    x = np.asarray(steps["step"], np.float64)
    loss = np.asarray(steps["loss"], np.float64)
    lr = np.asarray(steps["learning_rate"], np.float64)
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_lr = fig.subplots(1, 2)
    ax_loss.plot(x, loss, lw=0.8, alpha=0.7, label="train loss (per step)")
    spe = cfg["steps_per_epoch"]
    ep = metrics["epochs"]
    ep_x = np.asarray([e["epoch"] * spe for e in ep], np.float64)
    ep_x = np.minimum(ep_x, x[-1] if x.shape[0] else 0.0)
    ax_loss.plot(ep_x, [e["val_loss"] for e in ep], "o-", ms=3, label="validation loss (per epoch)")
    best = metrics["summary"]["best_epoch"]
    if best is not None:
        ax_loss.axvline(min(best * spe, x[-1]), color="gray", ls="--", lw=0.8,
                        label=f"best epoch ({best})")
    finite = loss[np.isfinite(loss)]
    if finite.shape[0] and np.all(finite > 0):
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.set_title("Loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_lr.plot(x, lr, color="tab:green")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    s = metrics["summary"]
    _finish(fig, ax_lr, path, f"Learning rate ({cfg['schedule']})",
            f"jopt train: {cfg['dataset']}, {cfg['optimizer']}, peak lr "
            f"{cfg['learning_rate']:g} | stop: {s['stop_reason']} | test acc "
            f"{fmt(s['test_accuracy'], '.3f')}")


def _finish(fig: Any, ax_lr: Any, path: str, lr_title: str, title: str) -> None:
    """Labels the learning-rate panel, titles the figure and writes the PNG."""
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_title(lr_title)
    ax_lr.grid(alpha=0.3)
    fig.suptitle(title)
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:  # steps and epochs are whole numbers, also on short runs
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.savefig(path, dpi=110)


def plot_population(path: str, metrics: dict[str, Any]) -> None:
    """A population: training loss, validation loss and learning rate per member."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cfg, members = metrics["config"], metrics["members"]
    spe = cfg["steps_per_epoch"]
    fig = Figure(figsize=(15, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_tr, ax_val, ax_lr = fig.subplots(1, 3)
    colors = [f"C{i % 10}" for i in range(len(members))]
    all_positive = True
    for m, c in zip(members, colors):
        steps, ep, s = m["steps"], m["epochs"], m["summary"]
        x = np.asarray(steps["step"], np.float64)
        loss = np.asarray(steps["loss"], np.float64)
        lr = np.asarray(steps["learning_rate"], np.float64)
        finite = loss[np.isfinite(loss)]
        all_positive &= bool(np.all(finite > 0))
        # Raw per-step losses are noisy: draw them faint, and their per-epoch mean on top.
        ax_tr.plot(x, loss, color=c, lw=0.6, alpha=0.25)
        ax_tr.plot([e["epoch"] * spe for e in ep], [e["train_loss"] for e in ep], "-",
                   color=c, lw=1.6, label=m["label"])
        ax_val.plot([e["epoch"] for e in ep], [e["val_loss"] for e in ep], "o-", ms=3,
                    color=c, label=f"{m['label']}: {s['stop_reason']}")
        if s["best_epoch"] is not None:
            ax_val.plot([s["best_epoch"]], [s["best_val_loss"]], "*", ms=12, color=c,
                        mec="black", mew=0.6)
        if s["stop_reason"] != "max epochs reached" and ep:
            ax_val.axvline(ep[-1]["epoch"], color=c, ls=":", lw=1.0)
        ax_lr.plot(x, lr, color=c, lw=1.4, label=m["label"])
    means = [e["train_loss"] for m in members for e in m["epochs"]
             if e["train_loss"] is not None and math.isfinite(e["train_loss"])]
    for ax in (ax_tr, ax_val):
        if all_positive:
            ax.set_yscale("log")
    if all_positive and means and min(means) > 0:
        # Single batches the model fits reach tiny losses; keep the epoch means readable.
        ax_tr.set_ylim(bottom=min(means) / 10)
    for ax in (ax_tr, ax_val):
        ax.set_ylabel("cross-entropy loss")
        ax.grid(alpha=0.3)
    ax_tr.set_xlabel("step")
    ax_tr.set_title("Training loss (faint: per step; line: epoch mean)")
    ax_tr.legend(fontsize="small")
    ax_val.set_xlabel("epoch")
    ax_val.set_title("Validation loss (star: best epoch; dotted: stopped)")
    ax_val.legend(fontsize="small")
    # Peaks a decade or more apart: a log axis, or the smaller members are flat lines at 0.
    peaks = [max((v for v in m["steps"]["learning_rate"] if v is not None and v > 0),
                 default=0.0) for m in members]
    if min(peaks) > 0 and max(peaks) / min(peaks) >= 10:
        ax_lr.set_yscale("log")
        # The warm-up starts at 0 and decays end near it: show two decades below the peaks.
        ax_lr.set_ylim(bottom=min(peaks) / 100, top=max(peaks) * 2)
    else:
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    plateau = " x plateau scale" if cfg.get("reduce_on_plateau") else ""
    ax_lr.legend(fontsize="small")
    pop = metrics["population"]
    _finish(fig, ax_lr, path, f"Learning rate ({cfg['schedule']}{plateau})",
            f"jopt train --population: {cfg['dataset']}, {cfg['optimizer']}, "
            f"{len(members)} members over {pop['hyperparameter']} (one vmapped step)")
