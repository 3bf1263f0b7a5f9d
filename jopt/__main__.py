"""``python -m jopt``: the ``jopt`` console program (see :mod:`jopt.cli`)."""

import sys

from jopt.cli import main

if __name__ == "__main__":
    sys.exit(main())
