"""The base-to-new report section, on hand-made base2new run files (no torch)."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest

from tests.test_report import ENV, make_results
from tunebench.report.build import build_report
from tunebench.report.sections import base2new as report_b2n

# method -> dataset -> ((base per seed), (new per seed)); linear-probe has no new answer.
SCORES = {
    "zero-shot": {"fash": ((0.50,), (0.60,)), "anim": ((0.40,), (0.50,))},
    "linear-probe": {"fash": ((0.90, 0.92), None), "anim": ((0.80, 0.80), None)},
    "cones": {"fash": ((0.80, 0.84), (0.60, 0.64)), "anim": ((0.70, 0.70), (0.50, 0.50))},
    "cocoop": {"fash": ((0.86, 0.86), (0.66, 0.66)), "anim": ((0.74, 0.74), (0.54, 0.54))},
}
TRAIN_SECONDS = {"zero-shot": 0.0, "linear-probe": 1.0, "cones": 2.0, "cocoop": 40.0}


def b2n_record(method: str, dataset: str, seed: int, base: float, new: float | None) -> dict:
    shots = 0 if method == "zero-shot" else 16
    h = None if new is None else 2 * base * new / (base + new)
    return {
        "task": "base2new", "dataset": dataset, "method": method, "backbone": "mini",
        "shots": shots, "seed": seed, "status": "ok", "error": None,
        "config_hash": f"b2n-{method}-{dataset}-{seed}",
        "train_seconds": TRAIN_SECONDS[method], "eval_seconds": 0.5, "feature_seconds": 0.0,
        "trainable_params": 0 if method == "zero-shot" else 1000, "total_params": 100_000,
        "peak_memory_mb": 10.0, "images_per_second": None,
        "metrics": {"base": base, "new": new, "h": h, "num_classes": 10, "base_classes": 5, "new_classes": 5},
        "env": ENV, "steps": 0 if method == "zero-shot" else 100, "config": {},
    }


def b2n_runs() -> list[dict]:
    runs = []
    for method, datasets in SCORES.items():
        for dataset, (bases, news) in datasets.items():
            for i, base in enumerate(bases):
                seed = 0 if method == "zero-shot" else i + 1
                runs.append(b2n_record(method, dataset, seed, base, None if news is None else news[i]))
    return runs


def write_runs(results, runs) -> None:
    for run in runs:
        (results / "runs" / f"{run['config_hash']}.json").write_text(json.dumps(run))


def test_cells_and_averages_follow_the_literature():
    groups = report_b2n.groups_of(report_b2n.summarise(b2n_runs()))
    assert list(groups) == [("mini", 16)]  # zero-shot (0 shots) joins the trained group
    cells = {(c["method"], c["dataset"]): c for c in groups["mini", 16]}
    cones = cells["cones", "fash"]
    assert (cones["base"], cones["new"]) == (pytest.approx(0.82), pytest.approx(0.62))
    assert cones["h"] == pytest.approx(2 * 0.82 * 0.62 / 1.44)  # H of the means
    assert cells["linear-probe", "fash"]["new"] is None and cells["linear-probe", "fash"]["h"] is None
    average = {a["method"]: a for a in report_b2n.averages(groups["mini", 16])}
    assert average["cones"]["base"] == pytest.approx(0.76) and average["cones"]["new"] == pytest.approx(0.56)
    assert average["cones"]["h"] == pytest.approx(2 * 0.76 * 0.56 / 1.32)
    assert average["linear-probe"]["new"] is None
    assert list(average) == ["zero-shot", "linear-probe", "cones", "cocoop"]  # the report's method order


def test_a_method_missing_a_dataset_has_no_average():
    runs = [r for r in b2n_runs() if not (r["method"] == "cocoop" and r["dataset"] == "anim")]
    groups = report_b2n.groups_of(report_b2n.summarise(runs))
    assert "cocoop" not in {a["method"] for a in report_b2n.averages(groups["mini", 16])}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A classification store, built once alone and once with base2new runs added."""
    alone = make_results(tmp_path_factory.mktemp("alone"))
    build_report(alone)
    both = make_results(tmp_path_factory.mktemp("both"))
    write_runs(both, b2n_runs() + [{**b2n_record("cones", "fash", 9, 0.5, 0.5), "metrics": {"base": 85.0}}])
    files = build_report(both)
    return alone, both, files


def test_b2n_runs_leave_classification_outputs_unchanged(mixed):
    alone, both, _ = mixed
    assert (alone / "summary.csv").read_bytes() == (both / "summary.csv").read_bytes()
    for name in ("accuracy_vs_trainable_params.png", "accuracy_vs_train_time.png"):
        assert (alone / "figures" / name).read_bytes() == (both / "figures" / name).read_bytes()
    assert not (alone / "summary_b2n.csv").exists()
    assert "Base-to-new" not in (alone / "report.md").read_text()


def test_section_tables_figures_and_csv(mixed):
    _, both, files = mixed
    text = (both / "report.md").read_text()
    section = text[text.index("## Base-to-new generalisation"):]
    assert "### mini, 16 shots per base class" in section
    average = section[section.index("#### Average over 2 datasets"):section.index("#### anim")]
    assert "| `cones` | 76.0 | 56.0 | 64.5 | 1,000 | 2.0 | 1.0× |" in average
    assert "| `linear-probe` | 85.5 | — | — | 1,000 | 1.0 | 0.5× |" in average
    assert "| `cocoop` | 80.0 | 60.0 | 68.6 | 1,000 | 40.0 | 20.0× |" in average
    fash = section[section.index("#### fash"):]
    assert "| `cones` | 82.0 ± 2.8 | 62.0 ± 2.8 | 70.6 | 2 |" in fash
    assert "| `zero-shot` | 50.0 | 60.0 | 54.5 | 1 |" in fash
    # The record with a base accuracy in percent is skipped, not averaged.
    assert "b2n-cones-fash-9.json" in text and "outside [0, 1]" in text
    names = {p.name for p in files.figures}
    assert {"b2n_mini_16shot_base_new_h.png", "b2n_mini_16shot_new_vs_base.png"} <= names
    for name in ("b2n_mini_16shot_base_new_h.png", "b2n_mini_16shot_new_vs_base.png"):
        assert f"figures/{name}" in section
        assert (both / "figures" / name).stat().st_size > 1000
    assert both / "summary_b2n.csv" in files.track_tables
    with open(both / "summary_b2n.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8
    probe = next(r for r in rows if (r["method"], r["dataset"]) == ("linear-probe", "fash"))
    assert float(probe["base_mean"]) == pytest.approx(0.91) and probe["new_mean"] == "" and probe["h"] == ""


def test_report_is_byte_stable(mixed):
    _, both, files = mixed

    def digest():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files.paths}

    before = digest()
    assert build_report(both).paths == files.paths
    assert digest() == before
