"""Construction-time checks of hyperparameters and conversion to state arrays."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jopt.errors import InvalidHyperparameterError

_F32_MAX = float(np.finfo(np.float32).max)
_I32_MAX = int(np.iinfo(np.int32).max)


def _is_concrete(value: Any) -> bool:
    return not isinstance(value, jax.core.Tracer)


def as_float(transformation: str, name: str, value: Any) -> float | None:
    """The Python float of a concrete real scalar, ``None`` for a traced one; raises otherwise."""
    if isinstance(value, (bool, np.bool_)) or value is None:
        raise InvalidHyperparameterError(transformation, name, value, "a real number")
    if not _is_concrete(value):
        return None
    if isinstance(value, (np.ndarray, jax.Array, np.generic)):
        arr = np.asarray(value)
        # jnp.issubdtype knows bfloat16 (NumPy does not count it as a number).
        if not (jnp.issubdtype(arr.dtype, jnp.integer) or jnp.issubdtype(arr.dtype, jnp.floating)):
            raise InvalidHyperparameterError(transformation, name, value, "a real number")
        arr = arr.astype(np.float64) if arr.dtype.kind == "V" or str(arr.dtype) == "bfloat16" \
            else arr
        if arr.ndim != 0:
            # Arrays of hyperparameters are checked elementwise by check_real.
            return None
        value = arr.item()
    if isinstance(value, (complex, bool)) or not isinstance(value, (int, float)):
        raise InvalidHyperparameterError(transformation, name, value, "a real number")
    try:
        return float(value)
    except OverflowError:
        raise InvalidHyperparameterError(
            transformation, name, value, "representable as a float32 number"
        ) from None


def check_real(
    transformation: str,
    name: str,
    value: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    integer: bool = False,
) -> None:
    """Raises :class:`InvalidHyperparameterError` unless ``value`` is a finite real in range.

    Arrays are checked elementwise; traced values are not checked (they are data).
    """
    if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) > 0 and _is_concrete(value):
        for v in np.asarray(value).reshape(-1):
            check_real(
                transformation, name, v.item(), lo=lo, hi=hi, lo_open=lo_open,
                hi_open=hi_open, integer=integer,
            )
        return
    x = as_float(transformation, name, value)
    if x is None:
        return
    lo_sym = "(" if lo_open else "["
    hi_sym = ")" if hi_open else "]"
    if lo is not None and hi is not None:
        requirement = f"in {lo_sym}{lo:g}, {hi:g}{hi_sym}"
    elif lo is not None:
        requirement = f"{'>' if lo_open else '>='} {lo:g}"
    elif hi is not None:
        requirement = f"{'<' if hi_open else '<='} {hi:g}"
    else:
        requirement = "a finite real number"
    if integer:
        requirement = "an integer " + requirement if requirement else "an integer"
    if not math.isfinite(x):
        raise InvalidHyperparameterError(transformation, name, value, f"finite ({requirement})")
    if abs(x) > _F32_MAX:
        raise InvalidHyperparameterError(
            transformation, name, value, f"representable as a float32 number ({requirement})"
        )
    if integer and abs(x) > _I32_MAX:
        raise InvalidHyperparameterError(
            transformation, name, value, f"an int32 number ({requirement})"
        )
    if integer and x != int(x):
        raise InvalidHyperparameterError(transformation, name, value, requirement)
    if lo is not None and (x < lo or (lo_open and x == lo)):
        raise InvalidHyperparameterError(transformation, name, value, requirement)
    if hi is not None and (x > hi or (hi_open and x == hi)):
        raise InvalidHyperparameterError(transformation, name, value, requirement)


def as_state_scalar(value: Any) -> jax.Array:
    """A hyperparameter as a state array: float32, or wider if given wider (float64)."""
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        dtype = np.dtype(value.dtype)
        if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize >= 4:
            return jnp.asarray(value)
        return jnp.asarray(value, dtype=jnp.float32)
    return jnp.asarray(value, dtype=jnp.float32)


def check_dtype_option(transformation: str, name: str, value: Any) -> np.dtype | None:
    """Validates a ``mu_dtype``-style option: ``None`` or a floating dtype."""
    if value is None:
        return None
    try:
        dtype = np.dtype(jnp.dtype(value))
    except TypeError:
        raise InvalidHyperparameterError(
            transformation, name, value, "None or a floating dtype (e.g. 'bfloat16')"
        ) from None
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise InvalidHyperparameterError(
            transformation, name, value, "None or a floating dtype (e.g. 'bfloat16')"
        )
    return dtype
