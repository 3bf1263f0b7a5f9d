"""The package's layout (DESIGN 8): imports go one way, from the contract up to the console
program, with no cycles, also through imports inside functions; no module is much over 600
lines; every public factory is found by the conformance suite; the namespaces exist."""

import ast
import importlib
import inspect
import os
import pkgutil

import pytest
from helpers import REGISTRY, VALUE_REGISTRY

import jopt
from jopt._registry import REGISTRY as DECLARED

ROOT = os.path.dirname(jopt.__file__)

# Every module of the package, lowest layer first. A module may import only modules listed
# before it (a new module must be placed here, which decides its layer).
ORDER = [
    "jopt.errors",
    "jopt._config",
    "jopt._serialization",
    "jopt._validate",
    "jopt._rounding",
    "jopt._tree",
    "jopt._registry",
    "jopt._layout",
    "jopt._quantize",
    "jopt._checks",
    "jopt.schedules._core",
    "jopt.schedules._piecewise",
    "jopt.schedules._standard",
    "jopt.schedules",
    "jopt._hyper",
    "jopt._base",
    "jopt._masks",
    "jopt._codecs",
    "jopt._declare",
    "jopt._chain",
    "jopt._flatten",
    "jopt._scale",
    "jopt._clip",
    "jopt._weight_decay",
    "jopt._aliases",
    "jopt._plateau",
    "jopt._early_stopping",
    "jopt._reduce_on_plateau",
    "jopt._hyperparams",
    "jopt._inject",
    "jopt.contrib",
    "jopt.tune",
    "jopt.parallel",
    "jopt.experimental",
    "jopt",
    "jopt.cli._common",
    "jopt.cli._recipes",
    "jopt.cli._args",
    "jopt.cli._data",
    "jopt.cli._steps",
    "jopt.cli._plots",
    "jopt.cli._population",
    "jopt.cli._train",
    "jopt.cli",
    "jopt.__main__",
]
RANK = {m: i for i, m in enumerate(ORDER)}


def _modules():
    """``{module name: file}`` for every module in the package."""
    out = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), os.path.dirname(ROOT))
            name = rel[:-3].replace(os.sep, ".")
            if name.endswith(".__init__"):
                name = name[: -len(".__init__")]
            out[name] = os.path.join(dirpath, f)
    return out


MODULES = _modules()


def _imports(path, module):
    """Every jopt module ``module`` imports, anywhere in the file (inside functions too)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # `from jopt import _tree` imports the module jopt._tree.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name.startswith("jopt"):
                found.add(name)
    found.discard(module)
    return found


def test_every_module_has_a_layer():
    assert set(MODULES) == set(ORDER), (set(MODULES) ^ set(ORDER))


@pytest.mark.parametrize("module", ORDER)
def test_imports_go_one_way(module):
    for target in _imports(MODULES[module], module):
        assert RANK[target] < RANK[module], (
            f"{module} imports {target}, which is not below it in the layering")


def test_the_layering_check_finds_an_upward_import(tmp_path):
    # The check itself can fail: an import inside a function counts.
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from jopt import _declare\n    import jopt._hyperparams\n")
    assert _imports(str(path), "jopt._tree") == {"jopt._declare", "jopt._hyperparams"}


def test_no_import_cycles():
    # Implied by the strict order; checked directly too.
    graph = {m: _imports(p, m) for m, p in MODULES.items()}
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for t in graph[m]:
            assert state.get(t) != "open", " -> ".join(stack + [m, t])
            if t not in state:
                visit(t, stack + [m])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_about_600_lines(module):
    with open(MODULES[module], encoding="utf-8") as f:
        assert sum(1 for _ in f) <= 620, module


def test_namespaces_exist():
    for name in ("schedules", "contrib", "tune", "parallel", "experimental", "errors"):
        assert inspect.ismodule(getattr(jopt, name)), name
    assert importlib.import_module("jopt.cli").main
    assert {m.name for m in pkgutil.iter_modules(jopt.cli.__path__)} >= {"_recipes", "_train"}


def _public_factories():
    """Public functions whose result is (or builds) a gradient transformation, by their
    return annotation."""
    out = []
    for name in jopt.__all__:
        obj = getattr(jopt, name)
        if inspect.isclass(obj) or inspect.ismodule(obj) or not callable(obj):
            continue
        annotation = inspect.signature(obj).return_annotation
        if "GradientTransformation" in str(annotation):
            out.append(name)
    return out


def test_every_public_factory_is_covered_by_the_conformance_suite():
    factories = _public_factories()
    assert len(factories) >= 20, factories
    covered = {r[0] for r in REGISTRY + VALUE_REGISTRY}
    for name in factories:
        assert name in DECLARED, f"{name} is public but not registered (jopt._registry)"
        ids = [i for i in covered if i == name or i.startswith(name + "_")]
        assert ids, f"{name} has no example in the conformance registry"


def test_registry_examples_build_what_they_name():
    for ident, build, _ in REGISTRY + VALUE_REGISTRY:
        tx = build()
        assert isinstance(tx, jopt.GradientTransformation), ident
        assert tx.kind is not None, ident
