"""The report layer's shape: modules that import alone and in one direction, method
display data declared on the classes, and sections added through the registry."""

from __future__ import annotations

import ast
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

import tunebench.report
from tests.test_report import make_results, run_record
from tunebench.display import Display, display_of
from tunebench.report import style
from tunebench.report.build import build_report
from tunebench.report.sections import SECTIONS, section

PACKAGE = Path(tunebench.report.__file__).parent
MODULES = sorted(
    "tunebench.report" + ("." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
    for p in PACKAGE.rglob("*.py")
)


def _imports(module: str) -> set[str]:
    """Every tunebench module ``module`` names in an import, at any depth of its code."""
    path = PACKAGE.joinpath(*module.split(".")[2:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # ``from .table import x``: resolve against the package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("tunebench.")}


def test_no_import_cycle_among_report_modules():
    graph = {m: {n for n in _imports(m) if n in MODULES and n != m} for m in MODULES}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for other in sorted(graph[module]):
            assert state.get(other) != "open", f"import cycle: {' -> '.join([*path, module, other])}"
            if other not in state:
                visit(other, [*path, module])
        state[module] = "done"

    for module in MODULES:
        if module not in state:
            visit(module, [])


def test_report_imports_nothing_above_it():
    """Layer 2: the report reads the store; the rest of tunebench.bench (CLI, runner) is above it."""
    allowed = {"tunebench.bench.store"}
    for module in MODULES:
        above = {n for n in _imports(module) if n.startswith("tunebench.bench")
                 and not any(n == a or n.startswith(a + ".") for a in allowed)}
        assert not above, f"{module} imports {above}"


def test_each_report_module_imports_alone_without_torch():
    code = f"""
import importlib, sys
for name in {MODULES!r}:
    for loaded in [m for m in sys.modules if m.startswith("tunebench")]:
        del sys.modules[loaded]
    importlib.import_module(name)
    assert "torch" not in sys.modules, name
"""
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- display data ----------------------------------------------------------------------


def test_every_method_and_preset_declares_its_display():
    import tunebench.genmethods.unet_attn
    import tunebench.methods.lit
    from tunebench.registry import METHODS

    for name in METHODS.names():
        assert any(display_of(getattr(cls, "display", None), "") for cls in style.method_classes(name)), name
    for module in (tunebench.methods.lit, tunebench.genmethods.unet_attn):
        cls = next(v for v in vars(module).values() if isinstance(v, type) and isinstance(
            getattr(v, "display", None), dict) and v.__module__ == module.__name__)
        for preset in module.PRESETS:
            assert display_of(cls.display, preset) is not None, (cls.__name__, preset)


@pytest.fixture
def toy_method():
    """A throw-away method registered with its own display data, removed afterwards."""
    from tunebench.methods.base import MethodAdapter
    from tunebench.registry import METHODS

    class ClipAdapter(MethodAdapter):
        display = Display(order=15, colour="#123456", marker="d")  # after linear-probe, before cones

    METHODS.register("clip-adapter")(ClipAdapter)
    style.display.cache_clear()
    yield "clip-adapter"
    METHODS._entries.pop("clip-adapter")
    style.display.cache_clear()


def _add_runs(results: Path, method: str) -> None:
    for shots in (1, 4):
        run = run_record("fashion-mnist", "cones", shots, 0, 0.7)
        run.update(method=method, config_hash=f"{method}-{shots}")
        (results / "runs" / f"{run['config_hash']}.json").write_text(json.dumps(run))


def _methods_in_order(results: Path) -> list[str]:
    with open(results / "summary.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["dataset"] == "fashion-mnist"]
    return list(dict.fromkeys(r["method"] for r in rows))


def test_a_new_method_gets_its_declared_place_and_colour(toy_method, tmp_path):
    results = make_results(tmp_path)
    _add_runs(results, toy_method)
    build_report(results)
    assert _methods_in_order(results) == ["zero-shot", toy_method, "cones", "coop"]
    assert style.style(toy_method) == ("#123456", "d")
    table = (results / "report.md").read_text().split("## fashion-mnist", 1)[1].split("##", 1)[0]
    assert [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ")][2:] == [
        "| zero-shot", f"| {toy_method}", "| cones", "| coop"]


def test_an_undeclared_method_keeps_its_place_and_colour(tmp_path):
    name = "mystery-method"
    derived = style.display(name)  # from the name's SHA-256: the same in every process and report
    assert (derived.colour, derived.marker) == ("#0072B2", "v")
    assert derived.order == pytest.approx(18.9676, abs=1e-4)  # among the declared methods, not last
    orders = []
    for folder, extra in (("a", ()), ("b", ("other-method",))):
        results = make_results(tmp_path / folder)
        for method in (name, *extra):
            _add_runs(results, method)
        build_report(results)
        orders.append([m for m in _methods_in_order(results) if m != "other-method"])
    assert orders[0] == orders[1] and name in orders[0]


# ---- sections --------------------------------------------------------------------------


@pytest.fixture
def toy_section():
    @section("toy-track", position=25, metric="score", fractions=("score",))
    def write(runs, results, options):
        if not runs:
            return [], []
        path = results / "summary_toy.csv"
        path.write_text(f"runs\n{len(runs)}\n")
        return ["## Toy track", "", f"{len(runs)} runs, mean score {sum(r['metrics']['score'] for r in runs) / len(runs):.2f}",
                ""], [path]

    yield "toy-track"
    SECTIONS._entries.pop("toy-track")


def test_a_new_track_adds_its_section(toy_section, tmp_path):
    alone = make_results(tmp_path / "alone")
    build_report(alone)
    results = make_results(tmp_path / "both")
    for seed, score in enumerate((0.4, 0.6, 1.5)):  # 1.5 is no fraction: skipped
        run = run_record("fashion-mnist", "cones", 4, seed, 0.5)
        run.update(task=toy_section, metrics={"score": score}, config_hash=f"toy-{seed}")
        (results / "runs" / f"toy-{seed}.json").write_text(json.dumps(run))
    files = build_report(results)
    text = (results / "report.md").read_text()
    assert "## Toy track\n\n2 runs, mean score 0.50\n" in text
    assert text.index("## Figures") < text.index("## Toy track") < text.index("## Failed runs")
    assert "toy-2.json: metrics['score'] = 1.5 is outside [0, 1]" in text
    assert results / "summary_toy.csv" in files.track_tables
    assert (alone / "summary.csv").read_bytes() == (results / "summary.csv").read_bytes()
