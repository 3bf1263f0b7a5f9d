"""Every notebook in notebooks/ is executed, stays paired with its MyST markdown source, and is
stored without outputs."""

import pathlib

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["populations.ipynb", "quickstart.ipynb"]


# What each notebook claims in its printed output, checked on the executed notebook.
CLAIMS = {
    "quickstart": ["compiled programs before/after: 1 1",
                   "test accuracy with the best parameters: 0.9"],
    "populations": ["members stopped at different epochs: True",
                    "stopped members frozen (parameters bitwise unchanged since their stop): True",
                    "equals its solo run to float32 rounding: True",
                    "while_loop stopped before max_epochs: True",
                    "vmapped while_loop: members stopped at different epochs: True"],
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_paired_and_stripped(path):
    nb = nbformat.read(path, as_version=4)
    md = jupytext.read(path.with_suffix(".md"))
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert code == [c.source for c in md.cells if c.cell_type == "code"], (
        f"{path.name} is out of sync with {path.with_suffix('.md').name}: "
        f"run `jupytext --sync {path.with_suffix('.md')}`"
    )
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    for claim in CLAIMS[path.stem]:
        assert claim in text, claim
