"""Results do not change when jopt's internals are rebuilt: every public transformation (and
the plateau tracker, early stopping and every schedule) computes, bit for bit, what jopt
computed at commit 6700ee8, over 20 jitted steps in float32, bfloat16, float16 and complex64,
on trees, packed parameters and flat state (see bitwise_cases.py; the baseline is in
data/bitwise_baseline.*).

State layouts changed on purpose in two listed ways (CHANGELOG, "State layouts"); the new
states are mapped back to the recorded layout before they are compared:

* ``TraceState``, ``ScaleState``, ``ClipState`` and ``ClipByGlobalNormState`` gained a
  ``count`` (every state that holds hyperparameters holds a count, so any hyperparameter can
  be a schedule): the new leaf is left out;
* the step-count fields of schedules (``transition_steps``, ``transition_begin``,
  ``decay_steps``, ``warmup_steps``) are int32 instead of float32 (exact past ``2**24``
  steps): they are compared as float32, the values they held before.

The recorded digests are of the raw bytes, valid for the jax/jaxlib version that recorded
them (XLA's code generation may round differently in another version); on another version the
final arrays are compared to the recorded ones within a few float32 ulps instead.
"""

import json
import os
import typing

import bitwise_cases as bc
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import pytest

import jopt
from jopt.schedules import _standard

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "data", "bitwise_baseline.json")) as f:
    BASELINE = json.load(f)
ARRAYS = np.load(os.path.join(HERE, "data", "bitwise_baseline.npz"))
SAME_VERSION = (BASELINE["jax"], BASELINE["jaxlib"]) == (jax.__version__, jaxlib.__version__)

GAINED_COUNT = (jopt.TraceState, jopt.ScaleState, jopt.ClipState, jopt.ClipByGlobalNormState)
INT_STEP_FIELDS = (_standard.Linear, _standard.CosineDecay, _standard.WarmupCosineDecay,
                   _standard.ExponentialDecay)
_OLD_TYPES: dict[type, type] = {}


def _old_type(cls):
    """A NamedTuple with the fields ``cls`` had before it gained ``count``."""
    if cls not in _OLD_TYPES:
        fields = [f for f in cls._fields if f != "count"]
        _OLD_TYPES[cls] = typing.NamedTuple(cls.__name__, [(f, typing.Any) for f in fields])
    return _OLD_TYPES[cls]


def to_recorded_layout(state):
    """``state`` in the layout the baseline recorded (see the module docstring)."""

    def convert(node):
        if isinstance(node, GAINED_COUNT):
            old = _old_type(type(node))
            return old(**{f: to_recorded_layout(getattr(node, f)) for f in old._fields})
        if isinstance(node, INT_STEP_FIELDS):
            return jax.tree_util.tree_map(
                lambda x: x.astype(jnp.float32) if x.dtype == jnp.int32 else x, node)
        return node

    return jax.tree_util.tree_map(
        convert, state, is_leaf=lambda x: isinstance(x, GAINED_COUNT + INT_STEP_FIELDS))


def _compare(key, result):
    sig_u, sig_s, dig_u, dig_s = BASELINE["runs"][key]
    assert bc.signature(result["updates"]) == sig_u, f"{key}: the updates' tree changed"
    assert bc.signature(result["state"]) == sig_s, (
        f"{key}: the state's layout changed beyond the listed changes: "
        f"{[(p, a.shape, a.dtype) for p, a in result['state']]}")
    if SAME_VERSION:
        assert result["u_digest"] == dig_u, f"{key}: the updates changed"
        assert result["s_digest"] == dig_s, f"{key}: the state changed"
        # Belt and braces: the final small arrays are the recorded ones, bit for bit.
        np.testing.assert_array_equal(
            np.concatenate([bc.blob(result["updates"]), bc.blob(result["state"])]),
            ARRAYS[key])
        return
    # Another jax/jaxlib: XLA may round the last bit differently. Compare the final small
    # arrays (the recorded bytes reinterpreted with the recorded dtypes) within 8 ulps
    # relative to each array's largest magnitude.
    got = result["updates"] + result["state"]
    data = ARRAYS[key].tobytes()
    offset = 0
    for path, arr in got:
        if arr.size > bc.BLOB_MAX:
            continue
        n = arr.size * arr.dtype.itemsize
        old = np.frombuffer(data[offset:offset + n], arr.dtype).reshape(arr.shape)
        offset += n
        if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
            np.testing.assert_array_equal(arr, old, err_msg=f"{key} {path}")
            continue
        a, b = arr.astype(np.complex128 if np.iscomplexobj(arr) else np.float64), \
            old.astype(np.complex128 if np.iscomplexobj(old) else np.float64)
        scale = max(float(np.nanmax(np.abs(b))) if b.size else 0.0, 1e-30)
        eps = float(jnp.finfo(arr.dtype).eps) if arr.dtype.kind in "fc" or \
            arr.dtype.name == "bfloat16" else 1e-7
        np.testing.assert_allclose(a, b, rtol=0, atol=8 * eps * scale, err_msg=f"{key} {path}")


@pytest.mark.parametrize("name", bc.CASE_NAMES + ["adam_8bit_default", "adamw_8bit_default"])
def test_transformations_unchanged(name):
    runs = [r for r in bc.runs() if r[0] == name]
    assert runs
    for case in runs:
        _compare(bc.key(*case), bc.run(*case, drop=to_recorded_layout))


@pytest.mark.parametrize("key", sorted(bc.extra_runs()))
def test_plateau_early_stopping_and_schedules_unchanged(key):
    _compare(key, bc.extra_runs()[key]())


def test_every_recorded_run_is_checked():
    checked = {bc.key(*r) for r in bc.runs()} | set(bc.extra_runs())
    assert checked == set(BASELINE["runs"])
    assert BASELINE["commit"].startswith("6700ee8")


def test_the_comparison_can_fail():
    # A changed bit must be caught: the same run with a learning rate one ulp larger.
    key = bc.key("sgd", "float32", "tree")
    factory, real_only = bc.FACTORIES["sgd"]
    bc.FACTORIES["sgd"] = (lambda: jopt.sgd(float(np.nextafter(np.float32(0.05),
                                                                np.float32(1.0)))), real_only)
    try:
        result = bc.run("sgd", "float32", "tree", drop=to_recorded_layout)
    finally:
        bc.FACTORIES["sgd"] = (factory, real_only)
    with pytest.raises(AssertionError):
        _compare(key, result)
