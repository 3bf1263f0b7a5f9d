"""The ``jopt`` console program (``jopt train``; also ``python -m jopt``).

``jopt train`` trains a small flax MLP classifier with a jopt optimizer on a scikit-learn toy
data set (or a user's ``.npz`` file), with a learning-rate schedule, gradient clipping and
early stopping on the validation loss, and writes ``metrics.json`` and ``curves.png``.
``--compare optax`` replays the same run with optax and reports how closely the per-step
losses agree. ``--population learning_rate=1e-4,1e-3,1e-2`` trains several configurations in
one compiled step (``jax.vmap`` over parameters, optimizer and early-stopping states), each
member early-stopping on its own; ``--reduce-on-plateau`` scales the learning rate down when
the training loss stops improving. The optimizers, schedules and population axes it offers
are tables in ``jopt.cli._recipes``.

flax, scikit-learn, tqdm and matplotlib are the optional extra ``jopt[examples]``; they are
imported only when a command runs, so a missing extra gives a one-line error instead of a
traceback.
"""

from __future__ import annotations

import sys

from jopt.cli._args import build_parser
from jopt.cli._common import INTERRUPTED, CLIError

__all__ = ["main", "build_parser"]


def main(argv: list[str] | None = None) -> int:
    """Runs the ``jopt`` program.

    Args:
      argv: the arguments after the program name (default ``sys.argv[1:]``).

    Returns:
      The exit status: 0 on success, 2 for a usage or input error (bad option, unreadable or
      malformed data file, missing optional dependency), reported on one line on stderr, and
      130 when interrupted with Ctrl-C (what was trained so far is written out first).
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
    from jopt.cli._train import train

    try:
        return train(args)
    except CLIError as e:
        print(f"jopt train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Before training started (loading data, compiling): nothing to write.
        print("jopt train: interrupted before training started; nothing was written",
              file=sys.stderr)
        return INTERRUPTED
