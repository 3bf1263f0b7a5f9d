"""``python -m jopt``: the ``jopt`` console program (see :mod:`jopt._cli`)."""

import sys

from jopt._cli import main

if __name__ == "__main__":
    sys.exit(main())
