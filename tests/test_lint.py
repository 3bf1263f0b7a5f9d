"""The code passes the project's ruff configuration (pyproject.toml)."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parent.parent


def test_ruff_check_passes():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "jopt", "tests", "benchmarks", "examples"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
