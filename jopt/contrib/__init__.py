"""Newer algorithms, promoted to :mod:`jopt` when they are stable (empty so far).

Each lives in a module of its own (``jopt/contrib/_name.py``), is declared like any jopt
transformation (``CONTRIBUTING.md``) and is found by the conformance suite by itself.
"""

__all__: list[str] = []
