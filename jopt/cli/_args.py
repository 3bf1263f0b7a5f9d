"""Arguments of ``jopt train``: the parser (choices from the recipe tables) and the run
configuration built from the parsed arguments and the data."""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np

from jopt.cli._common import (
    DATASETS,
    DEFAULT_WARMUP_STEPS,
    DEFAULT_WEIGHT_DECAY,
    EXAMPLES_HINT,
    HIDDEN_SIZES,
    PLATEAU_DEFAULTS,
    SPLIT_SEED,
    CLIError,
)
from jopt.cli._recipes import (
    MOMENTS,
    OPTIMIZERS,
    POPULATION_NAMES,
    POPULATION_POSITIVE,
    SCHEDULES,
    SGD_MOMENTUM,
)

_F32_MAX = float(np.finfo(np.float32).max)


def _number(kind, text: str, *, positive: bool):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    if positive and value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    if not positive and value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _seed(text: str) -> int:
    value = _number(int, text, positive=False)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32), got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _number(int, text, positive=True)


def _nonneg_int(text: str) -> int:
    return _number(int, text, positive=False)


def _positive_float(text: str) -> float:
    return _number(float, text, positive=True)


def _nonneg_float(text: str) -> float:
    return _number(float, text, positive=False)


def _factor(text: str) -> float:
    value = _number(float, text, positive=True)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text!r}")
    return value


def _population(text: str) -> tuple[str, tuple[float, ...]]:
    """``NAME=V1,V2,...`` with NAME learning_rate or weight_decay -> (name, values)."""
    known = "learning_rate or weight_decay"
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep:
        raise argparse.ArgumentTypeError(
            f"expected NAME=V1,V2,... with NAME {known}, got {text!r}")
    if name not in POPULATION_NAMES:
        raise argparse.ArgumentTypeError(
            f"unknown hyperparameter {name!r} in {text!r} (a population varies {known})")
    name = POPULATION_NAMES[name]
    items = [t.strip() for t in rest.split(",")]
    if not rest.strip() or any(not t for t in items):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers after {name}=, got {text!r}")
    values = []
    for t in items:
        try:
            value = _number(float, t, positive=POPULATION_POSITIVE[name])
            if abs(value) > _F32_MAX:
                # Members train in float32: 1e39 would be an infinite rate.
                raise argparse.ArgumentTypeError(
                    f"must be at most {_F32_MAX:.4g} (the largest float32), got {t!r}")
            values.append(value)
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{name} value {t!r} in {text!r}: {e}") from None
    return name, tuple(values)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    # Options whose default is computed later (None here) explain it in their own help.
    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``jopt`` program (subcommand ``train``).

    Returns:
      An :class:`argparse.ArgumentParser` whose ``train`` subparser is named ``jopt train``,
      so argparse's own errors read ``jopt train: error: ...``.
    """
    parser = argparse.ArgumentParser(
        prog="jopt", description="jopt command-line tools."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = sub.add_parser(
        "train",
        prog="jopt train",
        help="train a small MLP classifier with a jopt optimizer",
        description=(
            "Train a flax MLP classifier with jopt (gradient clipping, a learning-rate "
            "schedule and early stopping on the validation loss that restores the best "
            "parameters). Writes metrics.json and curves.png to the output folder. Needs "
            f'the optional extra: {EXAMPLES_HINT}.'
        ),
        formatter_class=_HelpFormatter,
    )
    data = train.add_mutually_exclusive_group()
    data.add_argument("--dataset", choices=DATASETS, default="digits",
                      help="scikit-learn bundled data set")
    data.add_argument("--data", metavar="FILE.npz", default=None,
                      help="an .npz file with arrays X (2-D, numeric) and y (integer labels); "
                           "loaded without unpickling")
    train.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="adamw",
                       help="optimizer: " + "; ".join(
                           f"{k}: {r.help} (default learning rate {r.learning_rate:g})"
                           for k, r in OPTIMIZERS.items()))
    train.add_argument("--learning-rate", type=_positive_float, default=None,
                       help="peak learning rate (default: the optimizer's, see --optimizer)")
    train.add_argument("--schedule", choices=tuple(SCHEDULES), default="warmup_cosine",
                       help="learning-rate schedule over the planned steps: " + "; ".join(
                           f"{k}: {h}" for k, (h, _) in SCHEDULES.items())
                       + "; the warm-up lasts --warmup-steps")
    train.add_argument("--warmup-steps", type=_nonneg_int, default=None,
                       help="linear warm-up from 0 to the peak learning rate, in updates "
                            f"(default: {DEFAULT_WARMUP_STEPS}, or a tenth of the planned "
                            "steps if that is less)")
    # DEFAULT_WEIGHT_DECAY is 1e-3 rather than 1e-4: accuracy is the same, and a learning
    # rate far too large (lr * weight_decay > 2) then makes decoupled decay blow the weights
    # up to inf/NaN, so a diverging run is caught as such by early stopping instead of
    # oscillating at huge but finite losses (with 1e-4 and --learning-rate 1e4, lr * wd = 1
    # keeps them bounded).
    train.add_argument("--weight-decay", type=_nonneg_float, default=None,
                       help=f"decoupled weight decay (default {DEFAULT_WEIGHT_DECAY:g}; "
                            + ", ".join(k for k, r in OPTIMIZERS.items() if r.weight_decay)
                            + " only: an error with other optimizers)")
    train.add_argument("--moments", choices=MOMENTS, default="float32",
                       help="storage of the optimizer's moments: float32; bfloat16 (adam's "
                            "first moment, mu_dtype, or sgd's momentum); 8bit (block-wise "
                            "8-bit moments: jopt.adam_8bit/adamw_8bit, sgd's momentum with "
                            "accumulator_dtype='8bit'; not with --compare optax, which has no "
                            "8-bit storage)")
    train.add_argument("--clip-norm", type=_positive_float, default=1.0,
                       help="clip gradients to this global L2 norm")
    train.add_argument("--batch-size", type=_positive_int, default=64, help="batch size")
    train.add_argument("--epochs", type=_positive_int, default=40,
                       help="maximum number of epochs (the schedule is planned for all of them)")
    train.add_argument("--patience", type=_nonneg_int, default=8,
                       help="epochs without validation-loss improvement before stopping")
    train.add_argument("--min-delta", type=_nonneg_float, default=1e-4,
                       help="smallest validation-loss decrease that counts as an improvement")
    train.add_argument("--seed", type=_seed, default=0,
                       help="seed of the initial parameters and of the batch order")
    train.add_argument("--out", metavar="DIR", default=None,
                       help="output folder (default: jopt-runs/train-<YYYYmmdd-HHMMSS>)")
    train.add_argument("--compare", choices=("optax",), default=None,
                       help="replay the run with optax (same initial parameters, batches and "
                            "number of steps) and report the largest per-step relative loss "
                            "difference; with --reduce-on-plateau the replay uses "
                            "optax.contrib.reduce_on_plateau; not available with --population "
                            "(compare a member by running it alone)")
    train.add_argument("--population", metavar="NAME=V1,V2,...", type=_population,
                       default=None,
                       help="train one member per value of NAME (learning_rate: the peak of "
                            "the schedule; weight_decay: adamw only) in one compiled step "
                            "(jax.vmap); each member early-stops on its own validation loss "
                            "and is then frozen; training ends when all have stopped. Each "
                            "member equals the same run without --population (to float32 "
                            "rounding), e.g. "
                            "--population learning_rate=1e-4,1e-3,1e-2")
    plateau = train.add_argument_group(
        "reduce on plateau",
        "--reduce-on-plateau appends jopt.reduce_on_plateau to the chain: the mean training "
        "loss of each epoch is one decision, and after --plateau-patience epochs without an "
        "improvement of --plateau-min-delta the learning rate is multiplied by "
        "--plateau-factor (the logged learning rate includes this scale).")
    plateau.add_argument("--reduce-on-plateau", action="store_true",
                         help="reduce the learning rate when the training loss plateaus")
    plateau.add_argument("--plateau-factor", type=_factor, default=PLATEAU_DEFAULTS["factor"],
                         help="multiplier of the learning rate at each reduction, in (0, 1)")
    plateau.add_argument("--plateau-patience", type=_positive_int,
                         default=PLATEAU_DEFAULTS["patience"],
                         help="epochs without improvement before a reduction")
    plateau.add_argument("--plateau-cooldown", type=_nonneg_int,
                         default=PLATEAU_DEFAULTS["cooldown"],
                         help="epochs after a reduction that do not count towards patience")
    plateau.add_argument("--plateau-min-delta", type=_nonneg_float,
                         default=PLATEAU_DEFAULTS["min_delta"],
                         help="smallest decrease of the epoch's mean training loss that "
                              "counts as an improvement")
    return parser


def config(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    n_train = data["X_train"].shape[0]
    steps_per_epoch = -(-n_train // args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = args.warmup_steps
    if warmup is None:
        # Small data sets or short runs plan few steps; the warm-up must fit inside them.
        warmup = min(DEFAULT_WARMUP_STEPS, total // 10)
    recipe = OPTIMIZERS[args.optimizer]
    learning_rate = args.learning_rate if args.learning_rate is not None else recipe.learning_rate
    if args.weight_decay is not None and not recipe.weight_decay:
        takes = ", ".join(k for k, r in OPTIMIZERS.items() if r.weight_decay)
        raise CLIError(f"--weight-decay needs --optimizer {takes} (--optimizer "
                       f"{args.optimizer} has no weight decay; it would be ignored)")
    weight_decay = DEFAULT_WEIGHT_DECAY if args.weight_decay is None else args.weight_decay
    cfg = {
        "dataset": data["name"],
        "optimizer": args.optimizer,
        "learning_rate": learning_rate,
        "schedule": args.schedule,
        "warmup_steps": warmup,
        "weight_decay": weight_decay if recipe.weight_decay else None,
        "clip_norm": args.clip_norm,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "patience": args.patience,
        "min_delta": args.min_delta,
        "seed": args.seed,
        "hidden_sizes": list(HIDDEN_SIZES),
        "sgd_momentum": SGD_MOMENTUM if args.optimizer == "sgd" else None,
        "split_seed": SPLIT_SEED,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total,
        "compare": args.compare,
        "moments": args.moments,
        "population": None,
        "reduce_on_plateau": None,
    }
    if args.reduce_on_plateau:
        cfg["reduce_on_plateau"] = {
            "factor": args.plateau_factor, "patience": args.plateau_patience,
            "cooldown": args.plateau_cooldown, "min_delta": args.plateau_min_delta,
            "accumulation_size": steps_per_epoch}
    elif any(getattr(args, f"plateau_{k}") != v for k, v in PLATEAU_DEFAULTS.items()):
        raise CLIError("the --plateau-* options need --reduce-on-plateau")
    if args.moments not in recipe.storage:
        raise CLIError(f"--moments {args.moments} is not available for --optimizer "
                       f"{args.optimizer} (choose one of {', '.join(recipe.storage)})")
    if args.moments == "8bit" and args.compare is not None:
        raise CLIError("--compare optax needs the same optimizer on both sides, and optax has "
                       "no 8-bit storage; compare with --moments float32 or bfloat16")
    if args.population is not None:
        name, values = args.population
        if name == "weight_decay" and not recipe.weight_decay:
            takes = ", ".join(k for k, r in OPTIMIZERS.items() if r.weight_decay)
            raise CLIError(f"--population weight_decay=... needs --optimizer {takes} "
                           f"({args.optimizer} has no weight decay)")
        if args.compare is not None:
            raise CLIError("--compare optax replays a single run and cannot be combined with "
                           "--population; compare a member by running it alone (e.g. "
                           f"--{name.replace('_', '-')} {values[0]:g} --compare optax)")
        cfg["population"] = {"name": name, "values": list(values)}
    if warmup >= total:
        raise CLIError(
            f"--warmup-steps ({warmup}) must be smaller than the planned number of "
            f"steps ({total} = {args.epochs} epochs x {steps_per_epoch} steps)"
        )
    return cfg
