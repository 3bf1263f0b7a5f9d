"""The benchmark program (benchmarks/run.py) runs and writes its three files.

One subprocess run on tiny sizes (the hidden ``--tiny`` flag). Nothing here asserts a
performance figure: timings on shared machines are noise; only the program's mechanics and
the shape of its output are checked.
"""

import math
import os
import pathlib
import subprocess
import sys

from helpers import strict_json

ROOT = pathlib.Path(__file__).parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OPTIMIZERS = ["sgd", "adam", "adamw", "chain", "adam8bit"]
STEP_CASES = ["big_leaf", "gpt2", "resnet50", "many_small"]




def _positive(x):
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_quick_tiny_run_writes_table_json_and_plot(tmp_path):
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["MPLBACKEND"] = "Agg"
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--tiny", "--rounds", "3",
         "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    for name in ("results.md", "results.json", "results.png"):
        assert (out / name).is_file(), name
    assert (out / "results.png").read_bytes()[:8] == PNG_MAGIC

    data = strict_json(out / "results.json")
    machine = data["machine"]
    for key in ("jax", "optax", "jopt", "device", "device_kind", "cpu_count", "date", "mode"):
        assert machine[key] not in (None, ""), key
    assert machine["mode"] == "tiny" and machine["rounds"] == 3

    rows = data["rows"]
    step_rows = {(r["case"], r["optimizer"]): r for r in rows if "times_s" in r}
    assert set(step_rows) == {(c, o) for c in STEP_CASES for o in OPTIMIZERS}
    for (case, opt), r in step_rows.items():
        where = f"{case}/{opt}"
        assert r["leaves"] >= 1 and r["params"] >= 1, where
        layouts = ({"jopt"} if case == "big_leaf" or opt == "adam8bit" else
                   {"jopt", "jopt-flat", "jopt-packed"})
        extra = {"jopt-adamw"} if (case, opt) == ("big_leaf", "chain") else set()
        assert set(r["times_s"]) == layouts | extra | {"optax", "triad"}, where
        assert set(r["ratio"]) == layouts | extra, where
        for name, times in r["times_s"].items():
            assert len(times) == 3 and all(_positive(t) for t in times), (where, name)
        for lib in layouts:
            # The reported ratio is the median of the per-round ratios.
            per_round = sorted(j / o for j, o in zip(r["times_s"][lib], r["times_s"]["optax"]))
            assert math.isclose(r["ratio"][lib], per_round[1], rel_tol=1e-9), (where, lib)
        for lib in layouts | {"optax"}:
            assert _positive(r["compile_s"][lib]), where
            assert _positive(r["step_s"][lib]), where
            assert _positive(r["triad_fraction"][lib]), where
            xla = r["xla_bytes"][lib]
            assert xla is None or _positive(xla), where
            # read params and grads, write params, read and write the state
            assert r["min_bytes"][lib] == 3 * 4 * r["params"] + 2 * r["state_bytes"][lib]
        # float32 state: sgd one buffer, adam and adamw two, in every layout and in optax.
        n_buffers = 1 if opt == "sgd" else 2
        for lib in (layouts | {"optax"}) - ({"jopt"} if opt == "adam8bit" else set()):
            assert r["state_bytes"][lib] // (4 * r["params"]) == n_buffers, (where, lib)
        if (case, opt) == ("big_leaf", "chain"):
            per_round = sorted(c / w for c, w in zip(r["times_s"]["jopt"],
                                                     r["times_s"]["jopt-adamw"]))
            assert math.isclose(r["chain_over_adamw"], per_round[1], rel_tol=1e-9)

    sweep = [r for r in rows if r["case"].startswith("compile_sweep")]
    assert [r["leaves"] for r in sweep] == [10, 30]
    for r in sweep:
        assert r["optimizer"] == "chain" and not r["skipped"]
        assert set(r["compile_ratio"]) == {"jopt", "jopt-flat", "jopt-packed"}
        for lib, times in r["compile_times_s"].items():
            assert times and all(_positive(t) for t in times), lib
            assert math.isclose(r["compile_ratio"].get(lib, 1.0),
                                r["compile_s"][lib] / r["compile_s"]["optax"])
    digits = [r for r in rows if r["case"] == "digits_8bit"]
    assert len(digits) == 1 and set(digits[0]["test_accuracy"]) == {"float32", "8bit"}
    assert all(0 <= a <= 1 for a in digits[0]["test_accuracy"].values())

    table = (out / "results.md").read_text(encoding="utf-8")
    assert table == proc.stdout[proc.stdout.index("# jopt vs optax"):][:len(table)]
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    header, body = lines[0], lines[1:]
    assert "jopt/optax step (median)" in header and "triad" in header
    n_cols = header.count("|")
    for (case, opt), r in step_rows.items():
        for lib in r["ratio"]:
            if lib == "jopt-adamw":
                continue
            matching = [ln for ln in body if ln.startswith(f"| {case} | {opt} | {lib} |")]
            assert len(matching) == 1, (case, opt, lib)
            assert matching[0].count("|") == n_cols
    # The targets of the issue are listed with what was measured.
    assert "## Targets" in table
    targets = table[table.index("## Targets"):]
    for text in ("GPT-2", "big leaf", "20 small leaves", "1000 leaves", "5000-leaf",
                 "8-bit Adam state", "8-bit moments"):
        assert text in targets, text
