"""The ``jopt`` console program.

``jopt train`` trains a small flax MLP classifier with a jopt optimizer on a scikit-learn toy
data set (or a user's ``.npz`` file), with a learning-rate schedule, gradient clipping and
early stopping on the validation loss, and writes ``metrics.json`` and ``curves.png``.
``--compare optax`` replays the same run with optax and reports how closely the per-step
losses agree. ``--population learning_rate=1e-4,1e-3,1e-2`` trains several configurations in
one compiled step (``jax.vmap`` over parameters, optimizer and early-stopping states), each
member early-stopping on its own; ``--reduce-on-plateau`` scales the learning rate down when
the training loss stops improving.

flax, scikit-learn, tqdm and matplotlib are the optional extra ``jopt[examples]``; they (and
JAX itself) are imported only when a command runs, so ``jopt --help`` stays fast and a missing
extra gives a one-line error instead of a traceback.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from typing import Any

import numpy as np

__all__ = ["main", "build_parser"]

DATASETS = ("digits", "breast_cancer", "wine")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("warmup_cosine", "constant", "linear", "exponential")
HIDDEN_SIZES = (128, 128)
MOMENTS = ("float32", "bfloat16", "8bit")
# The train/validation/test split is fixed (independent of --seed) so that runs with
# different seeds or optimizers are scored on the same held-out examples.
SPLIT_SEED = 0
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15
SGD_MOMENTUM = 0.9
DEFAULT_WARMUP_STEPS = 50
# "exponential" decays the peak learning rate to this fraction of it by the last planned step.
EXPONENTIAL_FINAL_FRACTION = 0.01
EXAMPLES_HINT = 'pip install "jopt[examples]"'
# --population NAME=V1,V2,...: the hyperparameters a population may vary (with their spellings)
# and whether 0 is allowed.
POPULATION_NAMES = {"learning_rate": "learning_rate", "learning-rate": "learning_rate",
                    "weight_decay": "weight_decay", "weight-decay": "weight_decay"}
PLATEAU_DEFAULTS = {"factor": 0.5, "patience": 3, "cooldown": 0, "min_delta": 1e-4}


class CLIError(Exception):
    """A user mistake: printed as one line ``jopt train: error: ...``, exit status 2."""


# --------------------------------------------------------------------------- argument parsing


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
            values.append(_number(float, t, positive=name == "learning_rate"))
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
    train.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw",
                       help=f"optimizer (sgd uses momentum {SGD_MOMENTUM})")
    train.add_argument("--learning-rate", type=_positive_float, default=3e-3,
                       help="peak learning rate")
    train.add_argument("--schedule", choices=SCHEDULES, default="warmup_cosine",
                       help="learning-rate schedule over the planned steps; every schedule "
                            "starts with a linear warm-up of --warmup-steps")
    train.add_argument("--warmup-steps", type=_nonneg_int, default=None,
                       help="linear warm-up from 0 to the peak learning rate, in updates "
                            f"(default: {DEFAULT_WARMUP_STEPS}, or a tenth of the planned "
                            "steps if that is less)")
    # 1e-3 rather than 1e-4: accuracy is the same, and a learning rate far too large
    # (lr * weight_decay > 2) then makes decoupled decay blow the weights up to inf/NaN, so a
    # diverging run is caught as such by early stopping instead of oscillating at huge but
    # finite losses (with 1e-4 and --learning-rate 1e4, lr * wd = 1 keeps them bounded).
    train.add_argument("--weight-decay", type=_nonneg_float, default=1e-3,
                       help="decoupled weight decay (adamw only)")
    train.add_argument("--moments", choices=MOMENTS, default="float32",
                       help="storage of the optimizer's moments: float32; bfloat16 (adam's "
                            "first moment, mu_dtype, or sgd's momentum); 8bit (adam/adamw "
                            "only: jopt.adam_8bit/adamw_8bit, both moments block-wise "
                            "quantized; not with --compare optax, which has no 8-bit Adam)")
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


def main(argv: list[str] | None = None) -> int:
    """Runs the ``jopt`` program.

    Args:
      argv: the arguments after the program name (default ``sys.argv[1:]``).

    Returns:
      The exit status: 0 on success, 2 for a usage or input error (bad option, unreadable or
      malformed data file, missing optional dependency), reported on one line on stderr.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        # argparse exits on --help (0) and on errors (2); return the status so in-process
        # callers (and tests) get it as a value.
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return _train(args)
    except CLIError as e:
        print(f"jopt train: error: {e}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------------- data


def _import_examples() -> dict[str, Any]:
    """The optional dependencies, imported lazily; a missing one is a :class:`CLIError`."""
    try:
        import matplotlib
        import sklearn.datasets
        import sklearn.model_selection
        import sklearn.preprocessing
        import tqdm
        from flax import nnx
    except ImportError as e:
        missing = getattr(e, "name", None) or "a dependency"
        raise CLIError(
            f"`jopt train` needs flax, scikit-learn, tqdm and matplotlib ({missing} is "
            f"missing): {EXAMPLES_HINT}"
        ) from None
    del matplotlib
    return {"nnx": nnx, "sklearn": sklearn, "tqdm": tqdm.tqdm}


def _load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    if not os.path.exists(path):
        raise CLIError(f"data file not found: {path}")
    if os.path.isdir(path):
        raise CLIError(f"data file is a directory: {path}")
    try:
        # allow_pickle=False: a data file is never unpickled (pickles can run code).
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        # numpy reports any non-numpy file as "pickled data"; say what the file is not.
        raise CLIError(f"{path} is not an .npz archive of numeric arrays "
                       f"(save one with numpy.savez(path, X=X, y=y)): {_one_line(e)}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CLIError(f"{path} is a single .npy array, not an .npz archive with arrays X and y")
    with archive:
        missing = [k for k in ("X", "y") if k not in archive.files]
        if missing:
            found = ", ".join(archive.files) or "none"
            raise CLIError(
                f"{path} lacks array(s) {', '.join(missing)} (it needs X and y; found: {found})"
            )
        arrays = []
        for key in ("X", "y"):
            try:
                arrays.append(archive[key])
            except ValueError as e:
                # numpy refuses object arrays when allow_pickle=False.
                raise CLIError(
                    f"array {key} in {path} is not numeric (object arrays are never unpickled): "
                    f"{_one_line(e)}"
                ) from None
            except Exception as e:  # a corrupt member: zlib, zipfile or format errors
                raise CLIError(f"cannot read array {key} in {path}: {_one_line(e)}") from None
    return arrays[0], arrays[1]


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _check_arrays(X: np.ndarray, y: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Validates ``X`` and ``y``; returns float32 features and int32 labels 0..k-1."""
    def is_real(a):
        return a.dtype.kind in "biuf"

    if not is_real(X):
        raise CLIError(f"X in {source} must be numeric (int, float or bool); got dtype {X.dtype}")
    if X.ndim != 2:
        raise CLIError(f"X in {source} must be 2-D (samples x features); got shape {X.shape}")
    if not is_real(y):
        raise CLIError(f"y in {source} must hold integer class labels; got dtype {y.dtype}")
    if y.ndim != 1:
        raise CLIError(f"y in {source} must be 1-D (one label per sample); got shape {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise CLIError(
            f"X and y in {source} have different lengths: {X.shape[0]} samples, "
            f"{y.shape[0]} labels"
        )
    if X.shape[0] == 0:
        raise CLIError(f"X in {source} has no samples (shape {X.shape})")
    if X.shape[1] == 0:
        raise CLIError(f"X in {source} has no features (shape {X.shape})")
    X = X.astype(np.float64)
    if not np.all(np.isfinite(X)):
        raise CLIError(f"X in {source} contains NaN or infinite values")
    # The features are standardised and trained in float32: values whose squares overflow
    # float64 or that overflow float32 cannot be (scale the data first).
    if np.max(np.abs(X)) > 1e150:
        raise CLIError(f"X in {source} has values too large to standardise "
                       f"(max |x| = {np.max(np.abs(X)):.3g}; scale the data first)")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise CLIError(f"y in {source} must hold integer class labels; got non-integer values")
    classes, labels = np.unique(y, return_inverse=True)
    if classes.shape[0] < 2:
        raise CLIError(f"y in {source} must contain at least 2 classes; got {classes.shape[0]}")
    if X.shape[0] < 10:
        raise CLIError(f"{source} has {X.shape[0]} samples; at least 10 are needed to split it")
    return X, labels.astype(np.int32).reshape(-1)


def load_data(args: argparse.Namespace, sklearn: Any) -> dict[str, Any]:
    """Loads, checks, splits (fixed seed) and standardises the data.

    Returns:
      A dict with ``name``, float32 ``X_train``/``X_val``/``X_test``, int32 ``y_*`` and
      ``n_classes``. Features are standardised with the training split's mean and standard
      deviation only, so nothing leaks from the held-out splits.
    """
    if args.data is not None:
        X, y = _load_npz(args.data)
        name = args.data
    else:
        loader = getattr(sklearn.datasets, f"load_{args.dataset}")
        X, y = loader(return_X_y=True)
        name = args.dataset
    X, y = _check_arrays(np.asarray(X), np.asarray(y), name)
    split = sklearn.model_selection.train_test_split
    idx = np.arange(X.shape[0])
    n_hold = VAL_FRACTION + TEST_FRACTION

    def two_way(ix, frac, labels):
        try:  # stratify when every class has enough members, else split at random
            return split(ix, test_size=frac, random_state=SPLIT_SEED, stratify=labels)
        except ValueError:
            return split(ix, test_size=frac, random_state=SPLIT_SEED)

    tr, hold = two_way(idx, n_hold, y)
    va, te = two_way(hold, TEST_FRACTION / n_hold, y[hold])
    scaler = sklearn.preprocessing.StandardScaler().fit(X[tr])
    out = {"name": name, "n_classes": int(y.max()) + 1, "n_features": int(X.shape[1])}
    for part, ix in (("train", tr), ("val", va), ("test", te)):
        out[f"X_{part}"] = scaler.transform(X[ix]).astype(np.float32)
        out[f"y_{part}"] = y[ix].astype(np.int32)
    return out


# ------------------------------------------------------------------------- optimizers


def _moments_note(cfg: dict[str, Any]) -> str:
    """`` (8bit moments)`` for the run header, empty for the default float32 moments."""
    moments = cfg.get("moments", "float32")
    return "" if moments == "float32" else f" ({moments} moments)"


def make_optimizer(lib: Any, cfg: dict[str, Any]):
    """The optimizer of a run, ``chain(clip_by_global_norm, <optimizer>(schedule))``.

    Written once against the names jopt shares with optax (``warmup_cosine_decay_schedule``,
    ``linear_schedule``, ``join_schedules``, ``adamw(..., weight_decay=)``, ...), so the same
    recipe builds the jopt run and, for ``--compare optax``, its optax replay.

    Args:
      lib: the ``jopt`` or ``optax`` module.
      cfg: the run configuration (keys of :func:`_config`).

    Returns:
      The gradient transformation.
    """
    import jax.numpy as jnp

    schedule = make_schedule(lib, cfg, cfg["learning_rate"])
    moments = cfg.get("moments", "float32")
    low: dict[str, Any] = {}
    if moments == "bfloat16":
        if cfg["optimizer"] == "sgd":
            low = {"accumulator_dtype": jnp.bfloat16}
        else:  # the first moment, as optax's mu_dtype (the second moment stays float32)
            low = {"mu_dtype": jnp.bfloat16}
    if cfg["optimizer"] == "adamw":
        if moments == "8bit":
            opt = lib.adamw_8bit(schedule, weight_decay=cfg["weight_decay"])
        else:
            opt = lib.adamw(schedule, weight_decay=cfg["weight_decay"], **low)
    elif cfg["optimizer"] == "adam":
        opt = lib.adam_8bit(schedule) if moments == "8bit" else lib.adam(schedule, **low)
    else:
        opt = lib.sgd(schedule, momentum=SGD_MOMENTUM, **low)
    links = [lib.clip_by_global_norm(cfg["clip_norm"]), opt]
    plateau = cfg.get("reduce_on_plateau")
    if plateau is not None:
        # Last link: it scales the final updates (the learning rate included) and takes one
        # decision per epoch from the mean training loss of the epoch (value=loss per step).
        common = dict(factor=plateau["factor"], patience=plateau["patience"],
                      cooldown=plateau["cooldown"], accumulation_size=cfg["steps_per_epoch"])
        if hasattr(lib, "reduce_on_plateau"):
            links.append(lib.reduce_on_plateau(min_delta=plateau["min_delta"], **common))
        else:  # optax keeps it in contrib; its atol is jopt's absolute min_delta
            links.append(lib.contrib.reduce_on_plateau(rtol=0.0, atol=plateau["min_delta"],
                                                       **common))
    return lib.chain(*links)


def make_schedule(lib: Any, cfg: dict[str, Any], lr: Any):
    """The learning-rate schedule of a run with peak ``lr`` (a number, or a traced scalar when
    a population sets one schedule per member inside ``jax.vmap``)."""
    warm, total = cfg["warmup_steps"], cfg["total_steps"]
    name = cfg["schedule"]
    if name == "warmup_cosine":
        # decay_steps counts the warm-up too, so the cosine ends on the last planned step.
        schedule = lib.warmup_cosine_decay_schedule(0.0, lr, warm, total, end_value=0.0)
    else:
        rest = total - warm
        if name == "constant":
            main = lib.constant_schedule(lr)
        elif name == "linear":
            main = lib.linear_schedule(lr, 0.0, rest)
        else:
            main = lib.exponential_decay(lr, rest, EXPONENTIAL_FINAL_FRACTION)
        schedule = main if warm == 0 else lib.join_schedules(
            [lib.linear_schedule(0.0, lr, warm), main], [warm])
    return schedule


# ------------------------------------------------------------------------------ training


def _make_model(nnx: Any, n_features: int, n_classes: int, seed: int):
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


def _make_functions(nnx: Any, graphdef: Any):
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


def _make_step(loss_and_acc, tx, apply_updates, lr_of, *, with_value=False,
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


def _batches(order: np.ndarray, batch_size: int):
    # The last batch of an epoch may be smaller: every example is used once per epoch
    # (jit compiles a second shape once).
    return [order[i:i + batch_size] for i in range(0, order.shape[0], batch_size)]


def _fmt(x: float, spec: str = ".4f") -> str:
    if not math.isfinite(x):
        return str(x)
    return format(x, spec) if abs(x) < 1e5 else format(x, ".4g")


def _output_dir(out: str | None) -> str:
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = os.path.join(os.getcwd(), "jopt-runs", f"train-{stamp}")
        path, k = base, 1
        while os.path.exists(path):  # two runs in the same second get distinct folders
            path = f"{base}-{k}"
            k += 1
    else:
        path = os.path.abspath(out)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise CLIError(f"cannot create output folder {path}: {_one_line(e)}") from None
    # Fail before training, not after, if the results could not be written.
    for name in ("metrics.json", "curves.png"):
        target = os.path.join(path, name)
        if os.path.isdir(target) or not os.access(path, os.W_OK):
            raise CLIError(f"cannot write {target} (a folder is in the way or the folder is "
                           f"not writable)")
    return path


def _config(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    n_train = data["X_train"].shape[0]
    steps_per_epoch = -(-n_train // args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = args.warmup_steps
    if warmup is None:
        # Small data sets or short runs plan few steps; the warm-up must fit inside them.
        warmup = min(DEFAULT_WARMUP_STEPS, total // 10)
    cfg = {
        "dataset": data["name"],
        "optimizer": args.optimizer,
        "learning_rate": args.learning_rate,
        "schedule": args.schedule,
        "warmup_steps": warmup,
        "weight_decay": args.weight_decay if args.optimizer == "adamw" else None,
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
    if args.moments == "8bit" and args.optimizer == "sgd":
        raise CLIError("--moments 8bit needs --optimizer adam or adamw (8-bit block-wise "
                       "moments are Adam's)")
    if args.moments == "8bit" and args.compare is not None:
        raise CLIError("--compare optax needs the same optimizer on both sides, and optax has "
                       "no 8-bit Adam; compare with --moments float32 or bfloat16")
    if args.population is not None:
        name, values = args.population
        if name == "weight_decay" and args.optimizer != "adamw":
            raise CLIError(f"--population weight_decay=... needs --optimizer adamw "
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


def _train(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    deps = _import_examples()
    nnx, tqdm = deps["nnx"], deps["tqdm"]
    data = load_data(args, deps["sklearn"])
    cfg = _config(args, data)
    out_dir = _output_dir(args.out)

    import jax
    import jax.numpy as jnp

    import jopt

    try:
        tx = make_optimizer(jopt, cfg)
        stopper = jopt.early_stopping(mode="min", min_delta=cfg["min_delta"],
                                      patience=cfg["patience"], keep_best=True)
    except jopt.errors.JoptError as e:
        raise CLIError(_one_line(e)) from None
    if args.compare == "optax":
        try:
            import optax
        except ImportError:
            raise CLIError("--compare optax needs optax: pip install optax") from None
        tx_optax, optax_apply = make_optimizer(optax, cfg), optax.apply_updates

    graphdef, init_params = _make_model(nnx, data["n_features"], data["n_classes"], args.seed)
    loss_and_acc, evaluate = _make_functions(nnx, graphdef)
    plateau = cfg["reduce_on_plateau"] is not None

    def lr_of(before, after):
        # The schedule's value for this update times the plateau scale it applied.
        lr = jopt.get_hyperparams(before)["learning_rate"]
        return lr * _plateau_scale(jopt, after) if plateau else lr

    if cfg["population"] is not None:
        return _train_population(cfg, data, out_dir, t0, tx, stopper, init_params,
                                 loss_and_acc, lr_of, tqdm)
    step = _make_step(loss_and_acc, tx, jopt.apply_updates, lr_of, with_value=plateau)
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
          f"{_moments_note(cfg)}"
          f" + {cfg['schedule']} schedule, "
          f"peak lr {cfg['learning_rate']:g}, {cfg['epochs']} epochs x "
          f"{cfg['steps_per_epoch']} steps")
    sys.stdout.flush()
    # disable=None: the bar is drawn on a terminal only, so logs redirected to a file stay
    # one line per epoch.
    bar = tqdm(total=cfg["total_steps"], desc="train", unit="step", file=sys.stderr,
               mininterval=0.2, dynamic_ncols=True, disable=None)
    stopped = False
    try:
        for epoch in range(1, cfg["epochs"] + 1):
            order = order_rng.permutation(X_tr.shape[0])
            orders.append(order)
            losses, accs, lrs = [], [], []
            for idx in _batches(order, cfg["batch_size"]):
                params, opt_state, loss, acc, lr = step(params, opt_state, X_tr[idx], y_tr[idx])
                # One host read per step for the live postfix; negligible for this model.
                loss, acc, lr = float(loss), float(acc), float(lr)
                losses.append(loss)
                accs.append(acc)
                lrs.append(lr)
                bar.set_postfix(loss=_fmt(loss), acc=_fmt(acc, ".3f"), refresh=False)
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
            bar.write(f"epoch {epoch:3d}  train_loss {_fmt(train_loss)}  "
                      f"val_loss {_fmt(val_loss)}  val_acc {_fmt(val_acc)}  lr {lrs[-1]:.3e}")
            if jopt.should_stop(es_state):
                stopped = True
                break
    finally:
        bar.close()

    stop_reason = jopt.stop_reason(es_state) if stopped else "max epochs reached"
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
        summary["plateau_scale"] = float(_plateau_scale(jopt, opt_state))

    compare = None
    if args.compare == "optax":
        compare = _compare_optax(loss_and_acc, tx_optax, optax_apply, init_params, orders,
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
    _write_metrics(os.path.join(out_dir, "metrics.json"), metrics)
    _plot(os.path.join(out_dir, "curves.png"), metrics)

    print("summary:")
    print(f"  epochs run:     {summary['epochs_run']} of {cfg['epochs']}")
    print(f"  stop reason:    {stop_reason}")
    if stop_reason == "non-finite metric":
        print("                  (the run diverged: try a lower --learning-rate or --clip-norm)")
    if summary["best_epoch"] is None:
        print("  best epoch:     none (no finite validation loss; initial parameters kept)")
    else:
        print(f"  best epoch:     {summary['best_epoch']} "
              f"(val loss {_fmt(summary['best_val_loss'])}, parameters restored)")
    print(f"  test accuracy:  {_fmt(test_acc)} (test loss {_fmt(test_loss)}, "
          f"{data['X_test'].shape[0]} examples)")
    if plateau:
        print(f"  plateau scale:  {summary['plateau_scale']:g} (learning rate multiplier at "
              f"the end)")
    if compare is not None:
        # Rounding differences (clipping multiplies by one scalar factor where optax divides)
        # grow slowly through training; under 1e-5 of the initial loss is float32 noise.
        same = compare["max_rel_loss_diff"] <= 1e-5 or compare["max_scaled_loss_diff"] <= 1e-5
        verdict = "same trajectory to float32 rounding" if same else "trajectories differ"
        print(f"  optax compare:  max relative loss difference "
              f"{compare['max_rel_loss_diff']:.3g} over {compare['steps']} steps "
              f"(at step {compare['argmax_step']}; {compare['max_scaled_loss_diff']:.3g} of "
              f"the initial loss; {verdict})")
    print(f"  wall time:      {summary['wall_time_s']:.1f} s")
    print(f"output folder: {out_dir} (metrics.json, curves.png)")
    return 0


def _plateau_scale(jopt: Any, opt_state: Any):
    """The scale of the chain's reduce-on-plateau link (batched for a population)."""
    import jax
    import jax.numpy as jnp

    def is_plateau(x):
        return isinstance(x, jopt.ReduceOnPlateauState)

    found = [x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=is_plateau)
             if is_plateau(x)]
    return found[-1].scale if found else jnp.ones([], jnp.float32)


def _member_label(name: str, value: float) -> str:
    return f"{'lr' if name == 'learning_rate' else 'wd'}={value:g}"


def _train_population(cfg, data, out_dir, t0, tx, stopper, init_params, loss_and_acc, lr_of,
                      tqdm) -> int:
    """``--population``: every member in one vmapped, jitted step; see :func:`_make_step`.

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
        raise CLIError(_one_line(e)) from None

    def stack(tree):
        return jax.tree_util.tree_map(lambda x: jnp.stack([jnp.asarray(x)] * n), tree)

    params = stack(init_params)
    es_state = stack(stopper.init(init_params))
    step = _make_step(loss_and_acc, tx, jopt.apply_updates, lr_of, with_value=plateau,
                      population=True, gate=jopt.gate_stopped)
    evaluate = jax.jit(jax.vmap(loss_and_acc, in_axes=(0, None, None)))
    es_update = jax.jit(jax.vmap(stopper.update))

    X_val, y_val = jnp.asarray(data["X_val"]), jnp.asarray(data["y_val"])
    X_tr, y_tr = data["X_train"], data["y_train"]
    order_rng = np.random.default_rng(cfg["seed"])
    labels = [_member_label(name, v) for v in values]
    logs = [{"loss": [], "accuracy": [], "learning_rate": []} for _ in range(n)]
    member_epochs: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    pop_log: dict[str, list] = {"epoch": [], "running": [], "val_loss": [], "val_accuracy": []}
    stopped = np.zeros(n, bool)
    steps_run = 0
    print(f"jopt train: {data['name']} ({X_tr.shape[0]} train / {data['X_val'].shape[0]} val / "
          f"{data['X_test'].shape[0]} test, {data['n_features']} features, "
          f"{data['n_classes']} classes), {cfg['optimizer']}"
          f"{_moments_note(cfg)}"
          f" + {cfg['schedule']} schedule, "
          f"{cfg['epochs']} epochs x {cfg['steps_per_epoch']} steps")
    print(f"population: {n} members, {name} = {', '.join(f'{v:g}' for v in values)}; one "
          f"compiled step (jax.vmap), early stopping per member")
    sys.stdout.flush()
    bar = tqdm(total=cfg["total_steps"], desc="train", unit="step", file=sys.stderr,
               mininterval=0.2, dynamic_ncols=True, disable=None)
    try:
        for epoch in range(1, cfg["epochs"] + 1):
            running = ~stopped
            order = order_rng.permutation(X_tr.shape[0])
            losses, accs, lrs = [], [], []
            for idx in _batches(order, cfg["batch_size"]):
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
                bar.set_postfix(running=f"{int(running.sum())}/{n}", min_loss=_fmt(shown),
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
                    parts.append(f"{labels[i]} {_fmt(float(val_loss[i]))}{mark}")
            stopped = now_stopped
            bar.write(f"epoch {epoch:3d}  val_loss  {'  '.join(parts)}  "
                      f"running {int((~stopped).sum())}/{n}")
            if stopped.all():
                break
    finally:
        bar.close()

    reasons = jopt.stop_reason(es_state)
    best_step = np.asarray(jax.device_get(es_state.best_step)).reshape(n)
    best_value = np.asarray(jax.device_get(es_state.best_value), np.float64).reshape(n)
    test_loss, test_acc = (np.asarray(v, np.float64) for v in jax.device_get(evaluate(
        jopt.best_params(es_state), jnp.asarray(data["X_test"]), jnp.asarray(data["y_test"]))))
    scales = (np.asarray(jax.device_get(_plateau_scale(jopt, opt_state)), np.float64).reshape(n)
              if plateau else None)
    members = []
    for i in range(n):
        summary = {
            "epochs_run": len(member_epochs[i]),
            "steps_run": len(logs[i]["loss"]),
            "stop_reason": reasons[i] if stopped[i] else "max epochs reached",
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
    _write_metrics(os.path.join(out_dir, "metrics.json"), metrics)
    _plot_population(os.path.join(out_dir, "curves.png"), metrics)

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
        bvl = "-" if s["best_val_loss"] is None else _fmt(s["best_val_loss"])
        row = (f"  {m['member']:>6}  {m['value']:>13g}  {s['epochs_run']:>6}  "
               f"{s['stop_reason']:<18}  {best:>10}  {bvl:>13}  "
               f"{_fmt(s['test_accuracy']):>8}")
        if plateau:
            row += f"  {s['plateau_scale']:>8g}"
        print(row + ("  <- best" if m["member"] == best_member else ""))
    print(f"  epochs run:     {summary['epochs_run']} of {cfg['epochs']} "
          f"({int(stopped.sum())} of {n} members stopped early)")
    print(f"  wall time:      {summary['wall_time_s']:.1f} s")
    print(f"output folder: {out_dir} (metrics.json, curves.png)")
    return 0


def _compare_optax(loss_and_acc, tx, apply_updates, init_params, orders, X, y, batch_size,
                   jopt_losses, with_value=False):
    """Replays the run with optax; returns the per-step relative loss differences."""
    import jax
    import jax.numpy as jnp

    step = _make_step(loss_and_acc, tx, apply_updates,
                      lambda before, after: jnp.zeros([], jnp.float32), with_value=with_value)
    losses = []
    # optax itself is not clean under strict dtype promotion (its bias correction computes
    # ``python_float ** int32_count``), so only this reference replay runs under standard
    # promotion; the jopt run above stays strict. The step is traced inside the context.
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        params, state = init_params, tx.init(init_params)
        for order in orders:
            for idx in _batches(order, batch_size):
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


def _jsonable(x: Any) -> Any:
    """Non-finite floats become ``null`` so the file is strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _write_metrics(path: str, metrics: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_jsonable(metrics), f, indent=1, allow_nan=False)
        f.write("\n")


def _plot(path: str, metrics: dict[str, Any]) -> None:
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
            f"{_fmt(s['test_accuracy'], '.3f')}")


def _finish(fig: Any, ax_lr: Any, path: str, lr_title: str, title: str) -> None:
    """Labels the learning-rate panel, titles the figure and writes the PNG."""
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_title(lr_title)
    ax_lr.grid(alpha=0.3)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)


def _plot_population(path: str, metrics: dict[str, Any]) -> None:
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
