"""The examples in jopt's docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = ["jopt._aliases", "jopt._chain", "jopt._hyperparams", "jopt._early_stopping",
           "jopt.schedules._standard", "jopt.schedules._piecewise", "jopt._scale", "jopt._clip",
           "jopt._weight_decay",
           "jopt._base", "jopt._tree", "jopt._rounding", "jopt._layout", "jopt._flatten",
           "jopt._quantize", "jopt._codecs", "jopt._inject", "jopt._declare"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_there_are_examples():
    finder = doctest.DocTestFinder()
    total = sum(len(t.examples) for name in MODULES
                for t in finder.find(importlib.import_module(name)))
    assert total >= 25
