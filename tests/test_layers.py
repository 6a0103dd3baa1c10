"""Layers run one way: no module imports from a layer above its own.

This table is the rule (top to bottom); a module may import from its own layer and any
layer below. Every import counts, module-level or inside a function.

- top: the CLI, runner, executors, sweep, store and lock (``bench/``) and the report
  (``report/``), which reads stored runs;
- builds: the training jobs that make tunebench's own models. A build is a job like a
  run, so it may use the tasks' and methods' scoring helpers to report what it built;
  nothing below imports it (a backbone that finds no build asks
  ``registry.build_model``);
- tasks; then the method adapters; then the training engine (optimizer, schedule,
  clipping, non-finite guard, autocast, device clock, feature cache);
- models (backbone wrappers) and datasets;
- the floor: registry, errors, paths, typed settings (``config``) and plain-Python scores.

The one exemption: ``registry.load_all`` imports every registering package, by design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tunebench

ROOT = Path(tunebench.__file__).resolve().parent
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("top", ("tunebench.bench", "tunebench.report", "tunebench.__main__")),
    ("builds", ("tunebench.builds",)),
    ("tasks", ("tunebench.tasks",)),
    ("methods", ("tunebench.methods", "tunebench.genmethods")),
    ("engine", ("tunebench.engine",)),
    ("models", ("tunebench.models", "tunebench.datasets")),
    ("floor", ("tunebench.registry", "tunebench.errors", "tunebench.paths", "tunebench.config",
               "tunebench.scores", "tunebench.display", "tunebench")),
]
EXEMPT = {("tunebench.registry", "load_all")}  # (module, function) whose imports are not checked


def layer_of(module: str) -> int:
    """Index in LAYERS (0 = top) of the longest matching package prefix."""
    best, best_length = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            # The root package names itself only: a new top-level module must be placed
            # in the table, not fall into the floor through the "tunebench." prefix.
            inside = module.startswith(prefix + ".") and prefix != "tunebench"
            if (module == prefix or inside) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported tunebench module) for every import in the file, function-level
    ones included, except inside EXEMPT functions."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (module, node.name) in EXEMPT:
            skipped.update(id(child) for child in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this package
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from tunebench.models import judge`` imports the module tunebench.models.judge
            found += [(node.lineno, f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base)
                      for alias in node.names]
    return [(line, name) for line, name in found if name == "tunebench" or name.startswith("tunebench.")]


def _is_module(name: str) -> bool:
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


SOURCES = sorted(ROOT.rglob("*.py"))


def test_every_module_has_a_layer():
    for path in SOURCES:
        layer_of(module_name(path))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_no_import_from_a_higher_layer(path):
    own = layer_of(module_name(path))
    upward = [f"line {line}: {name} ({LAYERS[layer_of(name)][0]})"
              for line, name in imports(path) if layer_of(name) < own]
    assert not upward, f"{module_name(path)} ({LAYERS[own][0]}) imports upward: " + "; ".join(upward)


def test_models_know_nothing_of_how_they_are_tuned_built_or_scored():
    forbidden = ("tunebench.methods", "tunebench.genmethods", "tunebench.tasks", "tunebench.builds",
                 "tunebench.bench", "tunebench.report", "tunebench.engine")
    for path in sorted((ROOT / "models").rglob("*.py")):
        bad = [f"line {line}: {name}" for line, name in imports(path) if name.startswith(forbidden)]
        assert not bad, f"{module_name(path)} imports " + "; ".join(bad)


def test_a_new_top_level_module_must_be_placed():
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("tunebench.something_new")


def test_the_scan_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    package = tmp_path / "tunebench" / "models"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "probe.py").write_text("def f():\n    from tunebench.tasks import detection\n"
                                      "from ..bench import runner\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path / "tunebench")
    assert {name for _, name in imports(package / "probe.py")} == {"tunebench.tasks", "tunebench.bench"}


@pytest.mark.parametrize(("backbone", "build"), [("mini-clip", "mini-clip"), ("mini-det", "mini-det")])
def test_a_backbone_without_its_build_asks_the_registry(backbone, build, monkeypatch):
    """models/ cannot import builds/: a backbone whose cache is empty (the tests' cache
    is) gets built through ``registry.build_model``, which finds the registered job."""
    from tunebench.registry import BACKBONES, BUILDS, load_all

    class Asked(Exception):
        pass

    def fake_build(force: bool = False):
        raise Asked(build)

    load_all()
    monkeypatch.setitem(BUILDS._entries, build, fake_build)
    with pytest.raises(Asked, match=build):
        BACKBONES.get(backbone)(None)
