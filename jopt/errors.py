"""Exceptions raised by jopt for user mistakes.

Every exception here is raised at construction time (a bad hyperparameter) or at trace time
(a tree that does not match the one ``init`` saw). None of them costs anything at run time:
the checks compare static information (tree structures, shapes, dtypes, Python numbers).

Each message names the transformation, the tree path where the problem is (when there is
one), what was expected and what was given, so that a mistake deep inside a chain can be
found without reading a JAX traceback.

Hierarchy
---------
``JoptError``
    Base class of everything jopt raises on purpose.
``InvalidArgumentError`` (``JoptError``, ``ValueError``)
    Base class of the errors for arguments a function cannot accept.
``InvalidHyperparameterError`` (``InvalidArgumentError``)
    A hyperparameter is outside its allowed range, of the wrong type, or an argument name is
    unknown. Carries ``transformation``, ``name``, ``value`` and ``requirement``.
``InvalidCallError`` (``InvalidHyperparameterError``, ``TypeError``)
    A factory was called with arguments it does not take (an unknown keyword, too many
    positional arguments): the message shows its signature.
``AmbiguousKeyError`` (``InvalidHyperparameterError``, ``KeyError``)
    A short hyperparameter name (``"learning_rate"``) names several links of a state; the
    message lists the full keys to choose from.
``UnknownKeyError`` (``InvalidHyperparameterError``, ``KeyError``)
    A key names no hyperparameter of a state; the message lists the keys there are.
``TreeMismatchError`` (``InvalidArgumentError``)
    Gradients, parameters and optimizer state disagree in structure, shape or dtype. Carries
    ``transformation``, ``path``, ``expected`` and ``got``.
``LayoutError`` (``InvalidArgumentError``)
    Packed or flat-state layouts used in a way that cannot be right: a transformation of
    unknown kind given packed values, a per-leaf option where a flat buffer is all there is.
``PackedMismatchError`` (``TreeMismatchError``, ``LayoutError``)
    A packed value and a per-leaf tree (or two packed layouts) where one layout is needed.
``HostOnlyError`` (``TreeMismatchError``)
    A host-side helper (``should_stop``, ``stop_reason``, ...) was called inside ``jit``,
    ``vmap`` or a ``lax`` loop, where its argument is traced. (A ``TreeMismatchError`` too,
    as in jopt 0.1.)
``InvalidMetricError`` (``InvalidArgumentError``)
    Early stopping or a plateau tracker was given a metric that is not a real scalar.
``MissingDependencyError`` (``JoptError``, ``ImportError``)
    An optional feature needs a package that is not installed.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "JoptError",
    "InvalidArgumentError",
    "InvalidHyperparameterError",
    "InvalidCallError",
    "AmbiguousKeyError",
    "UnknownKeyError",
    "TreeMismatchError",
    "LayoutError",
    "PackedMismatchError",
    "HostOnlyError",
    "InvalidMetricError",
    "MissingDependencyError",
]


class JoptError(Exception):
    """Base class of all errors jopt raises for user mistakes."""


class InvalidArgumentError(JoptError, ValueError):
    """Base class of the errors for an argument a jopt function cannot accept."""


class InvalidHyperparameterError(InvalidArgumentError):
    """A hyperparameter is invalid: out of range, non-finite, wrong type or unknown name.

    Raised when the transformation or schedule is built (or by ``set_hyperparams``), never
    inside ``update``.

    Attributes:
      transformation: name of the transformation or schedule being built.
      name: the hyperparameter's argument name.
      value: the value that was given.
      requirement: what was expected, in words.
    """

    def __init__(self, transformation: str, name: str, value: Any, requirement: str):
        self.transformation = transformation
        self.name = name
        self.value = value
        self.requirement = requirement
        super().__init__(f"{transformation}: {name} must be {requirement}; got {value!r}.")


class InvalidCallError(InvalidHyperparameterError, TypeError):
    """A jopt function was called with arguments it does not take (also a ``TypeError``, as
    Python raises for a wrong call)."""

    def __init__(self, function: str, signature: str, reason: str):
        super().__init__(function, "arguments", _Text(reason), f"those of {function}{signature}")
        self.message = f"{function}: {reason}; it takes {function}{signature}."

    def __str__(self) -> str:
        return self.message


class _Text(str):
    """Shown as is in a message (``repr`` without quotes)."""

    def __repr__(self) -> str:
        return str(self)


class AmbiguousKeyError(InvalidHyperparameterError, KeyError):
    """A short hyperparameter name matches several entries of a state.

    Attributes:
      candidates: the full keys (link paths) the name could mean.
    """

    def __init__(self, transformation: str, key: str, candidates: list[str]):
        self.candidates = list(candidates)
        super().__init__(transformation, "key", key, "unambiguous")
        self.message = (
            f"{transformation}: key {key!r} is ambiguous: it names {len(self.candidates)} "
            f"hyperparameters ({', '.join(repr(c) for c in self.candidates)}); use one of "
            "these full keys.")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class UnknownKeyError(InvalidHyperparameterError, KeyError):
    """A key names no hyperparameter of a state (``get_hyperparams(state)["lr"]``).

    Attributes:
      keys: the keys the state has.
    """

    def __init__(self, transformation: str, key: Any, keys: list[str]):
        self.keys = list(keys)
        super().__init__(transformation, "key", key, f"one of {self.keys or '(none)'}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class TreeMismatchError(InvalidArgumentError):
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


class LayoutError(InvalidArgumentError):
    """A packed (``jopt.pack``) or flat-state (``jopt.flatten``) layout used where it cannot
    give the per-leaf results of the tree: a link whose kind is unknown (a transformation
    from another library) given flat buffers, for example. The message says how to declare
    the link's kind (``jopt.declare_kind``)."""


class PackedMismatchError(TreeMismatchError, LayoutError):
    """A packed value where a per-leaf tree is needed, or the reverse, or two packed values
    with different layouts."""


class HostOnlyError(TreeMismatchError):
    """A host-side helper was called on traced values (inside ``jit``, ``vmap`` or a ``lax``
    loop); inside compiled code use the traceable field the message names instead."""


class InvalidMetricError(InvalidArgumentError):
    """A metric given to early stopping or a plateau tracker is not a real scalar."""


class MissingDependencyError(JoptError, ImportError):
    """An optional feature needs a package that is not installed."""
