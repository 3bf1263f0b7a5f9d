"""Constants, the user-error exception and small helpers shared by the ``jopt`` program."""

from __future__ import annotations

import json
import math
from typing import Any

DATASETS = ("digits", "breast_cancer", "wine")
HIDDEN_SIZES = (128, 128)
# The train/validation/test split is fixed (independent of --seed) so that runs with
# different seeds or optimizers are scored on the same held-out examples.
SPLIT_SEED = 0
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15
DEFAULT_WARMUP_STEPS = 50
DEFAULT_WEIGHT_DECAY = 1e-3
EXAMPLES_HINT = 'pip install "jopt[examples]"'
PLATEAU_DEFAULTS = {"factor": 0.5, "patience": 3, "cooldown": 0, "min_delta": 1e-4}
# Exit status of a run interrupted with Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


class CLIError(Exception):
    """A user mistake: printed as one line ``jopt train: error: ...``, exit status 2."""


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def fmt(x: float, spec: str = ".4f") -> str:
    if not math.isfinite(x):
        return str(x)
    return format(x, spec) if abs(x) < 1e5 else format(x, ".4g")


def import_examples() -> dict[str, Any]:
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


def batches(order, batch_size: int):
    # The last batch of an epoch may be smaller: every example is used once per epoch
    # (jit compiles a second shape once).
    return [order[i:i + batch_size] for i in range(0, order.shape[0], batch_size)]


def jsonable(x: Any) -> Any:
    """Non-finite floats become ``null`` so the file is strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


def write_metrics(path: str, metrics: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(jsonable(metrics), f, indent=1, allow_nan=False)
        f.write("\n")


def finish(out_dir: str, steps_run: int, interrupted: bool) -> int:
    """Names the output folder; the exit status (130 after Ctrl-C, with what was written)."""
    import sys

    print(f"output folder: {out_dir} (metrics.json, curves.png)")
    if interrupted:
        print(f"jopt train: interrupted: wrote what was trained ({steps_run} steps) to "
              f"{out_dir}", file=sys.stderr)
        return INTERRUPTED
    return 0
