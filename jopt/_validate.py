"""Construction-time checks of hyperparameters and conversion to state arrays."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jopt.errors import InvalidCallError, InvalidHyperparameterError

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


def describe_range(
    *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
    hi_open: bool = False, integer: bool = False,
) -> str:
    """A range in words: ``"in [0, 1)"``, ``">= 0"``, ``"an integer >= 1"``."""
    lo_sym = "(" if lo_open else "["
    hi_sym = ")" if hi_open else "]"
    if lo is not None and hi is not None:
        requirement = f"in {lo_sym}{lo:g}, {hi:g}{hi_sym}"
    elif lo is not None:
        requirement = f"{'>' if lo_open else '>='} {lo:g}"
    elif hi is not None:
        requirement = f"{'<' if hi_open else '<='} {hi:g}"
    else:
        return "an integer" if integer else "a finite real number"
    return "an integer " + requirement if integer else requirement


def in_range(
    x: float, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
    hi_open: bool = False, integer: bool = False,
) -> bool:
    """Whether the number ``x`` lies in the range (integrality is not checked)."""
    del integer
    if lo is not None and (x < lo or (lo_open and x == lo)):
        return False
    return not (hi is not None and (x > hi or (hi_open and x == hi)))


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
    requirement = describe_range(lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open,
                                 integer=integer)
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
    if not in_range(x, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open):
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


def bind(function: str, signature: inspect.Signature, args: tuple, kwargs: dict
         ) -> inspect.BoundArguments:
    """``args`` and ``kwargs`` bound to ``signature`` (defaults applied), or
    :class:`InvalidCallError` showing the signature."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as e:
        raise InvalidCallError(function, _plain(signature), str(e)) from None
    bound.apply_defaults()
    return bound


def checked_call(fn: Callable) -> Callable:
    """Wraps a public function so that a call with arguments it does not take raises
    :class:`InvalidCallError` (a ``TypeError``) naming it and showing its signature."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        bind(fn.__name__, signature, args, kwargs)
        return fn(*args, **kwargs)

    return call


def _plain(signature: inspect.Signature) -> str:
    """``(learning_rate, b1=0.9, *, nesterov=False)``: a signature without annotations."""
    params = [p.replace(annotation=inspect.Parameter.empty)
              for p in signature.parameters.values()]
    return str(signature.replace(parameters=params, return_annotation=inspect.Signature.empty))
