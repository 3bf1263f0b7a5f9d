"""Benchmarks jopt against optax: optimizer step time, compile time, bandwidth, state size.

Run ``python benchmarks/run.py`` (about 10-15 minutes on 2 CPU cores) or
``python benchmarks/run.py --quick`` (every size scaled down, under 3 minutes). Both libraries
are timed in one process, in interleaved rounds: each round runs every contender of a case
(jopt, optax, and an elementwise XLA "triad" kernel moving the same number of bytes) once, in
a shuffled order. The figures reported are medians of per-round ratios, because the machines
are shared and noisy. Results go to ``--out`` (default ``benchmarks/results/<date>-<device>``):
``results.md`` (the table, also printed), ``results.json`` (every raw timing and the machine)
and ``results.png`` (the ratios, with a line at 1.0).

What is measured, per case and optimizer:

- compile time: ``jax.jit(step, donate_argnums=(0, 1)).lower(...).compile()``, tracing
  included, timed apart from the steps;
- step time: the compiled step on donated params and state, after a warm-up, with
  ``block_until_ready``; a round times ``inner`` consecutive steps and divides;
- fraction of triad bandwidth: the minimum bytes the update must move (read params, grads and
  each per-parameter state buffer; write params and state) per second, over the triad's bytes
  per second in the same round;
- XLA's ``cost_analysis()`` bytes accessed against that minimum, and the state's bytes.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

import jopt

try:
    import optax
except ImportError:  # pragma: no cover - optax is a test dependency
    sys.exit("benchmarks/run.py needs optax: pip install -e '.[test]'")

# jopt's layouts: per-leaf parameters and state ("jopt"), per-leaf parameters with the state in
# flat buffers (jopt.flatten, "jopt-flat"), parameters packed into flat buffers (jopt.pack,
# "jopt-packed").
VARIANTS = ("jopt", "jopt-flat", "jopt-packed")
CASES = ("big_leaf", "gpt2", "resnet50", "many_small", "compile_sweep", "digits_8bit")
OPTIMIZERS = ("sgd", "adam", "adamw", "chain", "adam8bit")
F32 = 4


# ----------------------------------------------------------------------------- shapes

def _shrink(shape: tuple[int, ...], factor: int) -> tuple[int, ...]:
    """Halves the largest dimension until the size is at most ``size / factor`` (or all 1)."""
    dims = list(shape)
    target = max(1, math.prod(shape) // factor)
    while math.prod(dims) > target and max(dims) > 1:
        i = dims.index(max(dims))
        dims[i] = max(1, dims[i] // 2)
    return tuple(dims)


def gpt2_shapes() -> dict[str, tuple[int, ...]]:
    """GPT-2 small: 12 blocks of d=768, vocab 50257, context 1024 (148 leaves, ~124M)."""
    d, vocab, ctx = 768, 50257, 1024
    shapes: dict[str, tuple[int, ...]] = {"wte": (vocab, d), "wpe": (ctx, d)}
    for b in range(12):
        p = f"h{b:02d}"
        shapes |= {
            f"{p}.ln_1.scale": (d,), f"{p}.ln_1.bias": (d,),
            f"{p}.attn.c_attn.w": (d, 3 * d), f"{p}.attn.c_attn.b": (3 * d,),
            f"{p}.attn.c_proj.w": (d, d), f"{p}.attn.c_proj.b": (d,),
            f"{p}.ln_2.scale": (d,), f"{p}.ln_2.bias": (d,),
            f"{p}.mlp.c_fc.w": (d, 4 * d), f"{p}.mlp.c_fc.b": (4 * d,),
            f"{p}.mlp.c_proj.w": (4 * d, d), f"{p}.mlp.c_proj.b": (d,),
        }
    shapes |= {"ln_f.scale": (d,), "ln_f.bias": (d,)}
    return shapes


def resnet50_shapes() -> dict[str, tuple[int, ...]]:
    """ResNet-50: conv kernels (HWIO), batch-norm scales and biases, the classifier (~25.6M)."""
    shapes: dict[str, tuple[int, ...]] = {
        "stem.conv": (7, 7, 3, 64), "stem.bn.scale": (64,), "stem.bn.bias": (64,)}
    cin = 64
    for s, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for b in range(blocks):
            p = f"stage{s}.block{b}"
            convs = [(1, 1, cin, width), (3, 3, width, width), (1, 1, width, 4 * width)]
            for c, kernel in enumerate(convs):
                shapes[f"{p}.conv{c}"] = kernel
                shapes[f"{p}.bn{c}.scale"] = (kernel[-1],)
                shapes[f"{p}.bn{c}.bias"] = (kernel[-1],)
            if b == 0:
                shapes[f"{p}.proj.conv"] = (1, 1, cin, 4 * width)
                shapes[f"{p}.proj.bn.scale"] = (4 * width,)
                shapes[f"{p}.proj.bn.bias"] = (4 * width,)
            cin = 4 * width
    shapes |= {"fc.w": (2048, 1000), "fc.b": (1000,)}
    return shapes


def case_shapes(case: str, mode: str) -> dict[str, tuple[int, ...]]:
    """The parameter shapes of a timed case; ``mode`` is full, quick or tiny."""
    factor = {"full": 1, "quick": 64, "tiny": 4096}[mode]
    if case == "big_leaf":
        shapes = {"w": (1 << 24,)}  # 16.8M float32
    elif case == "gpt2":
        shapes = gpt2_shapes()
    elif case == "resnet50":
        shapes = resnet50_shapes()
    elif case == "many_small":
        n = {"full": 2000, "quick": 200, "tiny": 20}[mode]
        return {f"p{i:04d}": ({"full": 1024, "quick": 256, "tiny": 16}[mode],) for i in range(n)}
    else:
        raise ValueError(case)
    if mode == "tiny":  # a test of the program, not of the figures: a dozen leaves at most
        keys = list(shapes)
        shapes = {k: shapes[k] for k in keys[:: max(1, len(keys) // 12)]}
    return {k: _shrink(v, factor) for k, v in shapes.items()}


def sweep_sizes(mode: str) -> tuple[int, ...]:
    return {"full": (10, 100, 1000, 5000), "quick": (10, 100, 1000), "tiny": (10, 30)}[mode]


# ----------------------------------------------------------------------------- optimizers

def make_tx(lib: str, name: str) -> Any:
    """The optimizer ``name`` built by ``lib`` (optax or a jopt variant), with the same
    hyperparameters in both. ``adam8bit`` is jopt's 8-bit block-wise Adam; optax has none, so
    its optax contender is optax's float32 Adam (the same update rule)."""
    if lib == "jopt-flat":
        return jopt.flatten(make_tx("jopt", name))
    m = jopt if lib.startswith("jopt") else optax
    if name == "adam8bit":
        return jopt.adam_8bit(1e-3) if m is jopt else optax.adam(1e-3)
    if name == "sgd":
        return m.sgd(1e-2, momentum=0.9)
    if name == "adam":
        return m.adam(1e-3)
    if name == "adamw":
        return m.adamw(1e-3, weight_decay=1e-4)
    if name == "chain":
        sched = m.warmup_cosine_decay_schedule(0.0, 1e-3, 100, 10_000)
        return m.chain(m.clip_by_global_norm(1.0), m.adamw(sched, weight_decay=1e-4))
    raise ValueError(name)


def make_step(lib: str, tx: Any) -> Callable:
    apply = jopt.apply_updates if lib.startswith("jopt") else optax.apply_updates

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return apply(params, updates), state

    return step


def triad(a, b, s):
    return a + s * b


# ----------------------------------------------------------------------------- helpers

_normal = jax.jit(lambda key, shape: jax.random.normal(key, shape, jnp.float32),
                  static_argnums=1)


def random_tree(shapes: dict[str, tuple[int, ...]], seed: int, scale: float = 1.0) -> dict:
    """Fresh device buffers (never aliasing host memory, so donation always applies)."""
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    out = {}
    for i, (k, shape) in enumerate(shapes.items()):
        x = _normal(keys[i], shape)
        out[k] = x * jnp.float32(scale) if scale != 1.0 else x
    return out


def abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def tree_bytes(tree: Any) -> int:
    return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree)))


def bytes_accessed(compiled: Any) -> float | None:
    try:
        ca = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend has a cost model
        return None
    if isinstance(ca, list | tuple):
        ca = ca[0] if ca else {}
    value = (ca or {}).get("bytes accessed")
    return float(value) if value is not None else None


def timed_compile(fn: Callable, args: tuple, donate: tuple[int, ...]) -> tuple[Any, float]:
    """Traces, lowers and compiles ``fn`` for ``args`` (arrays or shapes): (compiled, seconds)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
    return compiled, time.perf_counter() - t0


_PROBES: dict[tuple[str, str], tuple[float, float]] = {}


def contenders_for(case: str, opt: str) -> tuple[str, ...]:
    """The libraries and jopt layouts timed for a case: one leaf needs no flat layout, and
    ``adam8bit`` is timed in jopt's plain layout only."""
    if case == "big_leaf" or opt == "adam8bit":
        return ("jopt", "optax")
    return VARIANTS + ("optax",)


def prepare(lib: str, tx: Any, params: Any, grads: Any) -> tuple[Any, Any]:
    """The parameters and gradients a contender is fed (packed for ``jopt-packed``)."""
    if lib == "jopt-packed":
        return jopt.pack(params), jopt.pack(grads)
    return params, grads


def predicted_compile_s(lib: str, opt: str, n_leaves: int) -> float:
    """Extrapolated compile time of one contender for ``n_leaves`` leaves.

    Compiles the optimizer on 50 and 100 small leaves and fits ``t = c * n**k`` (compile time
    can grow faster than linearly with the leaf count), so a run can skip a contender that
    would take far longer than the rest of the suite instead of hanging on it.
    """
    if (lib, opt) not in _PROBES:
        probe = []
        for n in (50, 100):
            params = {f"p{i:05d}": jnp.zeros((16,), jnp.float32) for i in range(n)}
            tx = make_tx(lib, opt)
            p, g = prepare(lib, tx, params, params)
            state = jax.eval_shape(tx.init, p)
            probe.append(timed_compile(make_step(lib, tx), (abstract(p), state, abstract(g)),
                                       (0, 1))[1])
        _PROBES[lib, opt] = (probe[0], probe[1])
    t50, t100 = _PROBES[lib, opt]
    k = min(3.0, max(1.0, math.log2(max(t100, 1e-6) / max(t50, 1e-6))))
    return t100 * (n_leaves / 100) ** k


def over_budget(lib: str, opt: str, n_leaves: int, args: argparse.Namespace) -> float | None:
    """The predicted compile time when it exceeds ``--compile-budget``, else None."""
    if args.compile_budget <= 0 or n_leaves <= 200:
        return None
    predicted = predicted_compile_s(lib, opt, n_leaves)
    return predicted if predicted > args.compile_budget else None


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


class Contender:
    """A compiled program and its live (donated, re-fed) arguments."""

    def __init__(self, compiled: Any, carry: tuple, rest: tuple):
        self.compiled, self.carry, self.rest = compiled, carry, rest

    def run(self, n: int) -> float:
        """Runs ``n`` consecutive calls; returns seconds per call."""
        jax.block_until_ready(self.carry)
        t0 = time.perf_counter()
        carry = self.carry
        for _ in range(n):
            out = self.compiled(*carry, *self.rest)
            carry = out if isinstance(out, tuple) else (out,)
        jax.block_until_ready(carry)
        dt = time.perf_counter() - t0
        self.carry = carry
        return dt / n


# ----------------------------------------------------------------------------- cases

def bench_case(case: str, opt: str, shapes: dict, args: argparse.Namespace,
               rng: random.Random) -> dict:
    """Compiles and times optax, jopt's layouts and the triad for one case and optimizer.

    Every contender runs once per round, in a shuffled order. On the big leaf, the chain row
    also times jopt's plain adamw in the same rounds (``jopt-adamw``), for the cost of the
    clipping and the schedule.
    """
    n_params = sum(math.prod(s) for s in shapes.values())
    param_bytes = n_params * F32
    grads = random_tree(shapes, seed=1, scale=1e-3)
    row: dict[str, Any] = {
        "case": case, "optimizer": opt, "leaves": len(shapes), "params": n_params,
        "compile_s": {}, "xla_bytes": {}, "state_bytes": {}, "min_bytes": {}, "skipped": {},
    }
    entries = [(lib, opt) for lib in contenders_for(case, opt)]
    if case == "big_leaf" and opt == "chain":
        entries.append(("jopt-adamw", "adamw"))
    contenders: dict[str, Contender] = {}
    for name, o in rng.sample(entries, len(entries)):  # compile order shuffled too
        lib = "jopt" if name == "jopt-adamw" else name
        predicted = over_budget(lib, o, len(shapes), args)
        if predicted is not None:
            row["skipped"][name] = predicted
            print(f"{case}/{opt}/{name}: skipped, predicted compile {predicted:.0f} s > "
                  f"budget {args.compile_budget:.0f} s", flush=True)
            continue
        tx = make_tx(lib, o)
        params, g = prepare(lib, tx, random_tree(shapes, seed=0), grads)
        state = tx.init(params)
        compiled, secs = timed_compile(make_step(lib, tx), (abstract(params), abstract(state),
                                                            abstract(g)), (0, 1))
        row["compile_s"][name] = secs
        row["xla_bytes"][name] = bytes_accessed(compiled)
        row["state_bytes"][name] = tree_bytes(state)
        # The least an update can move: read params and grads, write params, read and write
        # every state buffer of this contender.
        row["min_bytes"][name] = 3 * param_bytes + 2 * row["state_bytes"][name]
        contenders[name] = Contender(compiled, (params, state), (g,))
    # The triad moves the optax contender's minimum bytes: read a and b, write a.
    triad_bytes = row["min_bytes"]["optax"]
    n_triad = max(1, triad_bytes // (3 * F32))
    a = _normal(jax.random.key(2), (n_triad,))
    b = _normal(jax.random.key(3), (n_triad,))
    s = jnp.float32(0.5)
    compiled, secs = timed_compile(triad, (a, b, s), (0,))
    row["compile_s"]["triad"] = secs
    contenders["triad"] = Contender(compiled, (a,), (b, s))
    del a, b

    # Warm-up, then pick how many steps one timing holds from the warm-up time.
    warm = {}
    for name, c in contenders.items():
        c.run(1)
        warm[name] = c.run(2)
    inner = {name: max(1, min(args.max_inner, math.ceil(args.target_s / max(t, 1e-7))))
             for name, t in warm.items()}
    row["inner"] = inner
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name in rng.sample(sorted(contenders), len(contenders)):
            times[name].append(contenders[name].run(inner[name]))
    row["times_s"] = times
    timed = [n for n in contenders if n not in ("triad", "optax")]
    row["ratio"] = {n: median([j / o for j, o in zip(times[n], times["optax"])]) for n in timed}
    row["step_s"] = {name: median(t) for name, t in times.items()}
    # Fraction of the triad's bandwidth, per round: each contender's minimum bytes per second
    # over the triad's bytes per second.
    row["triad_fraction"] = {
        n: median([row["min_bytes"][n] / t / (triad_bytes / u)
                   for t, u in zip(times[n], times["triad"])])
        for n in contenders if n != "triad"}
    row["triad_gbps"] = triad_bytes / row["step_s"]["triad"] / 1e9
    if "jopt-adamw" in times:
        row["chain_over_adamw"] = median([c / w for c, w in zip(times["jopt"],
                                                                 times["jopt-adamw"])])
    contenders.clear()
    del grads
    gc.collect()
    return row


def sweep_prediction(name: str, n_leaves: int, previous: list[dict]) -> float | None:
    """A contender's compile time at ``n_leaves``, extrapolated from its two largest measured
    sweep points (``t = c * n**k``, ``k`` in [1, 3]); None with fewer than two."""
    points = [(r["leaves"], r["compile_s"][name]) for r in previous if name in r["compile_s"]]
    if len(points) < 2:
        return None
    (n0, t0), (n1, t1) = sorted(points)[-2:]
    k = min(3.0, max(1.0, math.log(max(t1, 1e-6) / max(t0, 1e-6)) / math.log(n1 / n0)))
    return t1 * (n_leaves / n1) ** k


def bench_sweep(n_leaves: int, args: argparse.Namespace, rng: random.Random,
                previous: list[dict]) -> dict:
    """Compile time only, for the chain optimizer on ``n_leaves`` leaves of 16 floats.

    A contender predicted (from the earlier sweep points, or from probes) to take longer than
    ``--compile-budget`` is skipped and its prediction recorded."""
    shapes = {f"p{i:05d}": (16,) for i in range(n_leaves)}
    params = {k: jnp.zeros(s, jnp.float32) for k, s in shapes.items()}
    repeats = args.sweep_repeats if n_leaves <= 100 else 1
    names = VARIANTS + ("optax",)
    row: dict[str, Any] = {"case": f"compile_sweep_{n_leaves}", "optimizer": "chain",
                           "leaves": n_leaves, "params": 16 * n_leaves, "xla_bytes": {},
                           "state_bytes": {}, "skipped": {}, "min_bytes": {}}
    compile_s: dict[str, list[float]] = {}
    for name in names:
        predicted = sweep_prediction(name, n_leaves, previous)
        if predicted is None or n_leaves <= 200 or args.compile_budget <= 0:
            predicted = over_budget(name, "chain", n_leaves, args)
        elif predicted <= args.compile_budget:
            predicted = None
        if predicted is not None:
            row["skipped"][name] = predicted
            print(f"compile_sweep_{n_leaves}/{name}: skipped, predicted compile "
                  f"{predicted:.0f} s > budget {args.compile_budget:.0f} s", flush=True)
        else:
            compile_s[name] = []
    for _ in range(repeats):
        for name in rng.sample(sorted(compile_s), len(compile_s)):
            tx = make_tx(name, "chain")
            p, g = prepare(name, tx, params, params)
            state = jax.eval_shape(tx.init, p)
            compiled, secs = timed_compile(make_step(name, tx), (abstract(p), state,
                                                                 abstract(g)), (0, 1))
            compile_s[name].append(secs)
            row["xla_bytes"][name] = bytes_accessed(compiled)
            row["state_bytes"][name] = tree_bytes(state)
            row["min_bytes"][name] = 3 * row["params"] * F32 + 2 * row["state_bytes"][name]
    row["compile_times_s"] = compile_s
    row["compile_s"] = {n: median(t) for n, t in compile_s.items()}
    # Against optax's measured compile time, or its prediction when it was skipped.
    optax_s = row["compile_s"].get("optax", row["skipped"].get("optax"))
    row["compile_ratio"] = {n: row["compile_s"][n] / optax_s for n in row["compile_s"]
                            if n != "optax"}
    return row


def bench_digits_8bit(args: argparse.Namespace) -> dict:
    """``jopt train`` on digits with float32 and with 8-bit Adam moments (same seed)."""
    import contextlib
    import io
    import tempfile

    from jopt import cli as _cli

    row: dict[str, Any] = {"case": "digits_8bit", "optimizer": "adamw", "test_accuracy": {},
                           "epochs": {}}
    extra = ["--epochs", "2"] if args.mode == "tiny" else []
    for moments in ("float32", "8bit"):
        with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
            code = _cli.main(["train", "--moments", moments, "--out", out, *extra])
            if code != 0:
                raise RuntimeError(f"jopt train --moments {moments} exited with {code}")
            with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
                summary = json.load(f)["summary"]
        row["test_accuracy"][moments] = summary["test_accuracy"]
        row["epochs"][moments] = summary["epochs_run"]
    row["accuracy_drop_points"] = 100 * (row["test_accuracy"]["float32"]
                                         - row["test_accuracy"]["8bit"])
    print(f"digits_8bit: test accuracy float32 moments {row['test_accuracy']['float32']:.4f}, "
          f"8-bit moments {row['test_accuracy']['8bit']:.4f}", flush=True)
    return row


# ----------------------------------------------------------------------------- output

def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def targets(rows: list[dict]) -> list[tuple[str, str, bool | None]]:
    """The performance targets (README, Performance), each as (target, measured, met); met
    is None when not measured or when the row has no target."""
    step = {(r["case"], r["optimizer"]): r for r in rows if "times_s" in r}
    sweep = {r["leaves"]: r for r in rows if r["case"].startswith("compile_sweep")}
    out: list[tuple[str, str, bool | None]] = []

    def ratio(case, opt, lib="jopt"):
        r = step.get((case, opt))
        return None if r is None else r["ratio"].get(lib)

    def add(target, value, ok, fmt=".3f"):
        out.append((target, "not run" if value is None else format(value, fmt),
                    None if value is None or ok is None else bool(ok(value))))

    add("chain on the GPT-2 tree: jopt/optax <= 0.40", ratio("gpt2", "chain"),
        lambda v: v <= 0.40)
    r = step.get(("big_leaf", "chain"))
    add("chain on the big leaf: jopt chain / jopt adamw <= 1.15",
        None if r is None else r.get("chain_over_adamw"), lambda v: v <= 1.15)
    for case in ("big_leaf", "gpt2"):
        for opt in ("adam", "adamw"):
            add(f"{opt} on {case}: jopt/optax <= 1.00", ratio(case, opt), lambda v: v <= 1.0)
    plain = [ratio(c, o) for (c, o) in step if o != "adam8bit"]
    plain = [v for v in plain if v is not None]
    add("every case, plain jopt: jopt/optax <= 1.05 (worst)", max(plain) if plain else None,
        lambda v: v <= 1.05)
    small = step.get(("many_small", "adam"))
    n_small = small["leaves"] if small else 2000
    for lib, bound in (("jopt-flat", 0.5), ("jopt-packed", 0.1)):
        add(f"{n_small} small leaves, adam, {lib}: jopt/optax <= {bound}",
            ratio("many_small", "adam", lib), lambda v, b=bound: v <= b)
    add(f"{n_small} small leaves, adam, jopt (per-leaf state; no target)",
        ratio("many_small", "adam", "jopt"), None)
    r1000 = sweep.get(1000)
    best = min(r1000["compile_ratio"].values()) if r1000 and r1000["compile_ratio"] else None
    add("compile at 1000 leaves (chain): best jopt layout / optax <= 0.1", best,
        lambda v: v <= 0.1)
    for layout in ("jopt", "jopt-flat"):
        add(f"compile at 1000 leaves (chain), {layout} / optax (no target)",
            None if r1000 is None else r1000["compile_ratio"].get(layout), None)
    r5000 = sweep.get(5000)
    add("5000-leaf chain compiles in < 30 s (jopt-packed, s)",
        None if r5000 is None else r5000["compile_s"].get("jopt-packed"),
        lambda v: v < 30, ".2f")
    r8 = step.get(("gpt2", "adam8bit")) or step.get(("big_leaf", "adam8bit"))
    add("8-bit Adam state / float32 Adam state <= 0.3",
        None if r8 is None else r8["state_bytes"]["jopt"] / r8["state_bytes"]["optax"],
        lambda v: v <= 0.3)
    d = next((r for r in rows if r["case"] == "digits_8bit"), None)
    add("jopt train digits, 8-bit moments: accuracy drop <= 1 point",
        None if d is None else d["accuracy_drop_points"], lambda v: v <= 1.0, ".2f")
    return out


def markdown_table(rows: list[dict], info: dict) -> str:
    head = (
        "| case | optimizer | jopt layout | leaves | params | compile jopt (s) "
        "| compile optax (s) | step jopt (ms) | step optax (ms) "
        "| **jopt/optax step (median)** | jopt / triad BW | optax / triad BW "
        "| XLA bytes / min, jopt | XLA bytes / min, optax | state MB jopt | state MB optax |")
    lines = [
        f"# jopt vs optax — {info['device_kind']}, {info['date']}",
        "",
        f"jax {info['jax']}, optax {info['optax']}, jopt {info['jopt']}, "
        f"{info['cpu_count']} CPUs, mode {info['mode']}, {info['rounds']} rounds. "
        "Ratios are medians of per-round ratios (< 1: jopt faster). Layouts: `jopt` per-leaf "
        "parameters and state, `jopt-flat` per-leaf parameters with the state in flat buffers "
        "(`jopt.flatten`), `jopt-packed` parameters packed into flat buffers (`jopt.pack`). "
        "BW: fraction of the bandwidth of an `a + s*b` kernel, each contender moving its own "
        "minimum bytes (params and grads read, params written, state read and written), timed "
        "in the same rounds. XLA bytes: `cost_analysis()` bytes accessed over that minimum. "
        "Compile sweep rows: the ratio is of compile times. `adam8bit`: jopt's 8-bit Adam "
        "against optax's float32 Adam."
        + ("" if info.get("complete", True) else " **Incomplete run: rows so far.**")
        + ("" if info["mode"] == "full" else
           f" **Mode {info['mode']}: sizes scaled down, so per-call overheads dominate; the "
           "figures are not comparable with the targets, which are for full sizes.**"),
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    width = head.count("|") - 1
    for r in rows:
        if r["case"] == "digits_8bit":
            continue
        for n in [v for v in VARIANTS if v in r["compile_s"] or v in r["skipped"]]:
            if n not in r["compile_s"]:
                cells = [r["case"], r["optimizer"], n, str(r["leaves"]), f"{r['params']:,}",
                         f"skipped: predicted compile {r['skipped'][n]:.0f} s"]
                lines.append("| " + " | ".join(cells + [""] * (width - len(cells))) + " |")
                continue
            step = r.get("step_s", {})
            tf = r.get("triad_fraction", {})
            ratio = r["ratio"][n] if "ratio" in r else r["compile_ratio"].get(n)
            xb = {k: r["xla_bytes"][k] / r["min_bytes"][k] for k in (n, "optax")
                  if r["xla_bytes"].get(k) is not None}
            optax_compile = r["compile_s"].get("optax")
            optax_cell = (f"{optax_compile:.2f}" if optax_compile is not None else
                          f"skipped (predicted {r['skipped'].get('optax', 0):.0f})")
            st = r["state_bytes"]
            lines.append(
                f"| {r['case']} | {r['optimizer']} | {n} | {r['leaves']} | {r['params']:,} "
                f"| {r['compile_s'][n]:.2f} | {optax_cell} "
                f"| {_fmt(step.get(n) and step[n] * 1e3, '.3f')} "
                f"| {_fmt(step.get('optax') and step['optax'] * 1e3, '.3f')} "
                f"| **{_fmt(ratio, '.3f')}** | {_fmt(tf.get(n), '.2f')} "
                f"| {_fmt(tf.get('optax'), '.2f')} "
                f"| {_fmt(xb.get(n), '.2f')} | {_fmt(xb.get('optax'), '.2f')} "
                f"| {st[n] / 1e6:.2f} | {_fmt(st.get('optax') and st['optax'] / 1e6, '.2f')} |")
    d = next((r for r in rows if r["case"] == "digits_8bit"), None)
    if d is not None:
        lines += ["", "`jopt train` on digits (defaults, seed 0): test accuracy with float32 "
                  f"moments {d['test_accuracy']['float32']:.4f} ({d['epochs']['float32']} "
                  f"epochs), with 8-bit moments {d['test_accuracy']['8bit']:.4f} "
                  f"({d['epochs']['8bit']} epochs)."]
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for target, value, ok in targets(rows):
        lines.append(f"| {target} | {value} | {'—' if ok is None else 'yes' if ok else 'no'} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step_rows = [r for r in rows if "times_s" in r]
    sweep_rows = [r for r in rows if "compile_ratio" in r]
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5), width_ratios=[3, 1])
    for ax, rs, key, title in (
            (axes[0], step_rows, "times_s", "step time, jopt / optax (per round)"),
            (axes[1], sweep_rows, "compile_times_s", "compile time, jopt / optax")):
        labels: list[str] = []
        for r in rs:
            t = r[key]
            for k, n in enumerate(v for v in VARIANTS if v in t):
                if "optax" in t:
                    per_round = [j / o for j, o in zip(t[n], t["optax"])]
                else:  # optax skipped: against its predicted compile time
                    per_round = [j / r["skipped"]["optax"] for j in t[n]]
                x = len(labels)
                ax.scatter([x] * len(per_round), per_round, s=8, alpha=0.4, color="gray")
                ax.scatter([x], [median(per_round)], marker="_", s=300, color=f"C{k}")
                labels.append(f"{r['case']} {r['optimizer']}\n{n}")
        ax.axhline(1.0, color="red", lw=1)
        ax.set_yscale("log")
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("ratio (< 1: jopt faster), log scale")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(rows: list[dict], info: dict, out: str, final: bool) -> str:
    """Writes results.md and results.json (after every row, so an interrupted run keeps what
    it measured; ``info["complete"]`` says whether the run finished) and, at the end, the
    plot. Returns the markdown table."""
    info["complete"] = final
    table = markdown_table(rows, info)
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(table)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"machine": info, "rows": rows}, f, indent=1, allow_nan=False)
    if final:
        plot(rows, os.path.join(out, "results.png"))
    return table


def default_out(info: dict) -> str:
    kind = re.sub(r"[^A-Za-z0-9_.-]+", "-", info["device_kind"]).strip("-").lower() or "device"
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, "results", f"{info['date']}-{kind}")


# ----------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="scale every size down (< 3 min)")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # for the tests
    p.add_argument("--out", help="output folder (default benchmarks/results/<date>-<device>)")
    p.add_argument("--rounds", type=int, help="interleaved rounds per case (default 15, quick 9)")
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), metavar="CASE",
                   help=f"cases to run (default all): {', '.join(CASES)}")
    p.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS),
                   metavar="OPT", help=f"optimizers (default all): {', '.join(OPTIMIZERS)}")
    p.add_argument("--compile-budget", type=float,
                   help="skip a case whose compile time, extrapolated from 50 and 100 leaves, "
                        "exceeds this many seconds (default 60; 0: never skip)")
    p.add_argument("--seed", type=int, default=0, help="seed of the round order")
    args = p.parse_args(argv)
    args.mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    if args.rounds is None:
        args.rounds = {"full": 15, "quick": 9, "tiny": 3}[args.mode]
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    if args.compile_budget is None:
        args.compile_budget = {"full": 60.0, "quick": 60.0, "tiny": 0.0}[args.mode]
    # Seconds one timing aims at (several steps when a step is short), and at most this many.
    args.target_s = {"full": 0.05, "quick": 0.02, "tiny": 0.001}[args.mode]
    args.max_inner = {"full": 200, "quick": 100, "tiny": 5}[args.mode]
    args.sweep_repeats = {"full": 3, "quick": 3, "tiny": 1}[args.mode]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    dev = jax.devices()[0]
    info = {
        "date": datetime.date.today().isoformat(),
        "datetime": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "jax": jax.__version__, "jaxlib": jaxlib.__version__,
        "optax": optax.__version__, "jopt": jopt.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "backend": jax.default_backend(), "device": str(dev), "device_kind": dev.device_kind,
        "device_count": jax.device_count(), "cpu_count": os.cpu_count(),
        "mode": args.mode, "rounds": args.rounds, "cases": args.cases,
        "optimizers": args.optimizers, "seed": args.seed,
    }
    out = args.out or default_out(info)
    os.makedirs(out, exist_ok=True)
    rng = random.Random(args.seed)
    rows: list[dict] = []
    for case in args.cases:
        if case == "compile_sweep":
            done: list[dict] = []
            for n in sweep_sizes(args.mode):
                row = bench_sweep(n, args, rng, done)
                done.append(row)
                rows.append(row)
                print(f"{row['case']}: compile " + ", ".join(
                    f"{k} {v:.2f}s" for k, v in row["compile_s"].items()), flush=True)
                write_outputs(rows, info, out, final=False)
            continue
        if case == "digits_8bit":
            rows.append(bench_digits_8bit(args))
            write_outputs(rows, info, out, final=False)
            continue
        shapes = case_shapes(case, args.mode)
        for opt in args.optimizers:
            row = bench_case(case, opt, shapes, args, rng)
            rows.append(row)
            print(f"{case}/{opt}: jopt/optax " + ", ".join(
                f"{k} {v:.3f}" for k, v in row["ratio"].items()) +
                f" (optax {row['step_s']['optax'] * 1e3:.3f} ms)", flush=True)
            write_outputs(rows, info, out, final=False)
    info["wall_s"] = time.perf_counter() - t_start
    print()
    print(write_outputs(rows, info, out, final=True))
    print(f"wrote {out}/results.md, results.json, results.png ({info['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
