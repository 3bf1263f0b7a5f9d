"""The benchmark program (benchmarks/run.py) runs and writes its three files.

One subprocess run on tiny sizes (the hidden ``--tiny`` flag). Nothing here asserts a
performance figure: timings on shared machines are noise; only the program's mechanics and
the shape of its output are checked.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OPTIMIZERS = ["sgd", "adam", "adamw", "chain"]
STEP_CASES = ["big_leaf", "gpt2", "resnet50", "many_small"]


def _strict_json(path):
    def reject(token):
        raise AssertionError(f"{path} contains {token}, which is not strict JSON")

    with open(path, encoding="utf-8") as f:
        return json.load(f, parse_constant=reject)


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

    data = _strict_json(out / "results.json")
    machine = data["machine"]
    for key in ("jax", "optax", "jopt", "device", "device_kind", "cpu_count", "date", "mode"):
        assert machine[key] not in (None, ""), key
    assert machine["mode"] == "tiny" and machine["rounds"] == 3

    rows = data["rows"]
    step_rows = {(r["case"], r["optimizer"]): r for r in rows if "ratio" in r}
    assert set(step_rows) == {(c, o) for c in STEP_CASES for o in OPTIMIZERS}
    for (case, opt), r in step_rows.items():
        where = f"{case}/{opt}"
        assert r["leaves"] >= 1 and r["params"] >= 1, where
        assert _positive(r["ratio"]), where
        assert set(r["times_s"]) == {"jopt", "optax", "triad"}, where
        for name, times in r["times_s"].items():
            assert len(times) == 3 and all(_positive(t) for t in times), (where, name)
        # The reported ratio is the median of the per-round ratios.
        per_round = sorted(j / o for j, o in zip(r["times_s"]["jopt"], r["times_s"]["optax"]))
        assert math.isclose(r["ratio"], per_round[1], rel_tol=1e-9), where
        for lib in ("jopt", "optax"):
            assert _positive(r["compile_s"][lib]), where
            assert _positive(r["step_s"][lib]), where
            assert _positive(r["triad_fraction"][lib]), where
            assert r["state_bytes"][lib] >= 4 * r["params"], where  # at least one buffer
            xla = r["xla_bytes"][lib]
            assert xla is None or _positive(xla), where
        assert r["min_bytes"] >= 5 * 4 * r["params"], where
        # Both libraries hold the same state: sgd one buffer, adam and adamw two.
        n_buffers = 1 if opt == "sgd" else 2
        for lib in ("jopt", "optax"):
            assert r["state_bytes"][lib] // (4 * r["params"]) == n_buffers, (where, lib)

    sweep = [r for r in rows if r["case"].startswith("compile_sweep")]
    assert [r["leaves"] for r in sweep] == [10, 30]
    for r in sweep:
        assert r["optimizer"] == "chain"
        assert _positive(r["compile_ratio"])
        assert all(_positive(t) for lib in ("jopt", "optax") for t in r["compile_times_s"][lib])
    assert not any("skipped" in r for r in rows)

    table = (out / "results.md").read_text(encoding="utf-8")
    assert table == proc.stdout[proc.stdout.index("# jopt vs optax"):][:len(table)]
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    header, body = lines[0], lines[1:]
    assert "jopt/optax step (median)" in header and "triad" in header
    assert len(body) == len(rows)
    n_cols = header.count("|")
    for case, opt in step_rows:
        matching = [ln for ln in body if ln.startswith(f"| {case} | {opt} |")]
        assert len(matching) == 1, (case, opt)
        assert matching[0].count("|") == n_cols
