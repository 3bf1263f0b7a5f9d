"""Exceptions raised by jopt for user mistakes.

Every exception here is raised at construction time (a bad hyperparameter) or at trace time
(a tree that does not match the one ``init`` saw). None of them costs anything at run time:
the checks compare static information (tree structures, shapes, dtypes, Python numbers).

Each message names the transformation, the tree path where the problem is (when there is
one), what was expected and what was given, so that a mistake deep inside a chain can be
found without reading a JAX traceback.

Classes
-------
``JoptError``
    Base class of everything jopt raises on purpose.
``InvalidHyperparameterError``
    A hyperparameter is outside its allowed range, of the wrong type, or an argument name is
    unknown. Also a ``ValueError``.
``TreeMismatchError``
    Gradients, parameters and optimizer state disagree in structure, shape or dtype. Also a
    ``ValueError``. Carries ``transformation``, ``path``, ``expected`` and ``got``.
``InvalidMetricError``
    Early stopping was given a metric that is not a real scalar. Also a ``ValueError``.
``MissingDependencyError``
    An optional feature needs a package that is not installed. Also an ``ImportError``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "JoptError",
    "InvalidHyperparameterError",
    "TreeMismatchError",
    "InvalidMetricError",
    "MissingDependencyError",
]


class JoptError(Exception):
    """Base class of all errors jopt raises for user mistakes."""


class InvalidHyperparameterError(JoptError, ValueError):
    """A hyperparameter is invalid: out of range, non-finite, wrong type or unknown name.

    Raised when the transformation or schedule is built, never inside ``update``.

    Attributes:
      transformation: name of the transformation or schedule being built.
      name: the hyperparameter's argument name.
      value: the value that was given.
    """

    def __init__(self, transformation: str, name: str, value: Any, requirement: str):
        self.transformation = transformation
        self.name = name
        self.value = value
        self.requirement = requirement
        super().__init__(f"{transformation}: {name} must be {requirement}; got {value!r}.")


class TreeMismatchError(JoptError, ValueError):
    """Two trees that must match (updates, state, params) do not.

    Raised at trace time by ``update`` and ``apply_updates``.

    Attributes:
      transformation: name of the transformation that found the mismatch.
      path: the tree path (as ``jax.tree_util.keystr`` writes it) of the first mismatch, or
        ``""`` for a mismatch of the whole tree.
      expected: what was expected there (structure, shape or dtype, as text).
      got: what was given there (as text).
    """

    def __init__(self, transformation: str, what: str, path: str, expected: str, got: str):
        self.transformation = transformation
        self.path = path
        self.expected = expected
        self.got = got
        where = f" at path {path}" if path else ""
        super().__init__(
            f"{transformation}: {what}{where}: expected {expected}, got {got}."
        )


class InvalidMetricError(JoptError, ValueError):
    """A metric given to early stopping is not a real scalar."""


class MissingDependencyError(JoptError, ImportError):
    """An optional feature needs a package that is not installed."""
