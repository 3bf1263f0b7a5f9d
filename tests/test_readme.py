"""The README's example runs as written and prints what its comment says."""

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).parent.parent / "README.md"


def test_readme_example_runs():
    text = README.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 16
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    loss, lr = (float(x) for x in out.stdout.split())
    assert loss < 1e-3 and abs(lr - 5.4e-3) < 1e-4


def test_readme_test_command_is_what_ci_runs():
    text = README.read_text()
    commands = [line for line in text.splitlines() if "pytest" in line and line.startswith("python3")]
    assert len(commands) == 1
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[0] in ci.splitlines()


def test_readme_hyperparameter_snippet_runs_after_the_example():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    code = blocks[0] + "\n" + blocks[1] + (
        "\nprint(jopt.get_hyperparams(states)['learning_rate'].shape, train._cache_size())\n"
        "print(bool(jnp.all(jnp.isfinite(jax.vmap(loss)(members)))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    # The population trains in one compiled step (no recompiles), as the comments say.
    assert out.stdout.splitlines()[-3:] == ["(8,)", "(8,) 1", "True"]


def test_readme_packed_snippet_runs_after_the_example():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    snippet = next(b for b in blocks if "jopt.pack(params)" in b)
    out = subprocess.run([sys.executable, "-c", blocks[0] + "\n" + snippet], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    expected = snippet.strip().splitlines()[-1].lstrip("# ")
    assert out.stdout.splitlines()[-1] == expected
