"""The checks every ``update`` runs: state type, tree structure, shapes, dtypes (packed-aware).

Every check compares static information (types, tree structures, shapes, dtypes), so it runs
while tracing and costs nothing at run time; a mismatch raises :class:`TreeMismatchError`
naming the transformation, the tree path, the expected and the given value.
"""

from __future__ import annotations

from typing import Any

from jopt import _tree
from jopt._layout import Packed, check_packed_match
from jopt.errors import TreeMismatchError

PyTree = Any


def check_match(
    transformation: str,
    expected: PyTree,
    got: PyTree,
    *,
    expected_name: str,
    got_name: str,
    shapes: bool = True,
    dtypes: bool = False,
) -> None:
    """Raises :class:`TreeMismatchError` unless ``got`` matches ``expected``.

    Compares tree structure, then (optionally) leaf shapes and dtypes. When one side is a
    :class:`jopt.Packed` and the other is not (or two layouts differ), the message says so and
    names the original leaf, not two ``PyTreeDef`` s.

    Args:
      transformation: name shown in the message.
      expected: the reference tree (for example the state's first moment).
      got: the tree to check (for example the incoming updates).
      expected_name: what ``expected`` is, in words (``"the parameters init saw"``).
      got_name: what ``got`` is, in words (``"updates"``).
      shapes: compare leaf shapes.
      dtypes: compare leaf dtypes.
    """
    if (isinstance(expected, Packed) or isinstance(got, Packed)) and not (
            isinstance(expected, Packed) and isinstance(got, Packed)
            and expected.layout == got.layout):
        check_packed_match(transformation, expected, got, expected_name=expected_name,
                           got_name=got_name)
    _tree.check_structure(transformation, expected, got, expected_name=expected_name,
                          got_name=got_name, shapes=shapes, dtypes=dtypes)


def check_state_type(transformation: str, state: Any, cls: type) -> None:
    """Raises :class:`TreeMismatchError` if ``state`` is not the state ``init`` builds."""
    if not isinstance(state, cls):
        raise TreeMismatchError(
            transformation,
            "the state is not the one this transformation's init builds",
            "",
            cls.__name__,
            type(state).__name__,
        )


def check_updates(
    transformation: str, updates: PyTree, reference: PyTree | None, params: PyTree | None
) -> tuple[PyTree, PyTree | None]:
    """Checks updates against a per-parameter state tree and, if given, the parameters.

    Returns ``(updates, params)`` with Python/NumPy scalar leaves turned into JAX arrays.
    """
    if reference is not None:
        check_match(
            transformation, reference, updates,
            expected_name="the parameters init saw", got_name="updates",
        )
    if params is not None:
        check_match(
            transformation, updates, params, expected_name="the updates", got_name="params"
        )
    return _tree.as_arrays(updates), (None if params is None else _tree.as_arrays(params))


def require_params(transformation: str, params: Any, why: str = "") -> None:
    """Raises :class:`TreeMismatchError` when a transformation that reads the parameters was
    called without them."""
    if params is None:
        raise TreeMismatchError(
            transformation, "update needs the parameters" + (f" {why}" if why else ""), "",
            "params=<the parameter tree>", "None")
