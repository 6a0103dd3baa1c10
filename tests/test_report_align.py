"""The alignment track's report section, on synthetic align run files (no torch)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.test_report import ENV, make_results
from tunebench.report.build import build_report
from tunebench.report.figures import pareto_front
from tunebench.report.sections import align as report_align

TOTAL = 1_000_000
# preset -> (trainable parameters, mean R@1 per seed). Full training is 0.60 on average.
PRESETS = {
    "zero-shot": (0, (0.01,)),
    "lit:projection": (5_000, (0.40, 0.44)),  # 0.5% trainable, 70% of full
    "lit:layernorm": (6_000, (0.50, 0.52)),  # 0.6%, 85% of full
    "lit:lilt": (40_000, (0.56, 0.58)),  # 4%, 95% of full
    "lit:lit": (800_000, (0.59, 0.60)),  # 80%, 99.2% of full
    "lit:all": (TOTAL, (0.59, 0.61)),
}


def align_record(method: str, seed: int, r1: float, *, pairs: int = 1000, backbone="b0", **extra):
    trainable = PRESETS[method][0]
    record = {
        "task": "align", "dataset": "captions", "method": method, "backbone": backbone,
        "shots": 0 if method == "zero-shot" else pairs, "seed": seed, "status": "ok", "error": None,
        "config_hash": f"align-{backbone}-{method}-{pairs}-{seed}",
        "train_seconds": 0.0 if method == "zero-shot" else 1.0 + trainable / 100_000,
        "eval_seconds": 0.2, "feature_seconds": 0.0, "trainable_params": trainable,
        "total_params": TOTAL, "peak_memory_mb": 10.0, "images_per_second": 100.0,
        "metrics": {
            "mean_r1": r1, "i2t_r1": r1 - 0.05, "t2i_r1": r1 + 0.05, "i2t_r5": 0.9, "i2t_r10": 0.95,
            "t2i_r5": 0.9, "t2i_r10": 0.95, "zeroshot/animals": 0.2, "imagenet_agreement": 1.0,
            "text_similarity_drift": 0.01,
        },
        "env": ENV, "steps": 0 if method == "zero-shot" else 50, "config": {},
    }
    record.update(extra)
    return record


def align_runs(**kwargs) -> list[dict]:
    return [
        align_record(method, seed, r1, **kwargs)
        for method, (_, scores) in PRESETS.items() for seed, r1 in enumerate(scores, start=1)
    ]


def write_runs(results: Path, runs) -> None:
    for run in runs:
        (results / "runs" / f"{run['config_hash']}.json").write_text(json.dumps(run))


@pytest.fixture(scope="module")
def cells():
    return report_align.summarise(align_runs())


def by_method(cells) -> dict[str, dict]:
    return {c["method"]: c for c in cells}


def test_cells_average_seeds(cells):
    lilt = by_method(cells)["lit:lilt"]
    assert lilt["seeds"] == (1, 2)
    assert lilt["r1"] == pytest.approx(0.57)
    assert lilt["mean_r1_std"] == pytest.approx(0.014142, abs=1e-5)
    assert lilt["trainable_percent"] == pytest.approx(4.0)


def test_smallest_preset_within_threshold_of_full_training(cells):
    group = report_align.groups_of(cells)[("b0", "captions", 1000)]
    full = report_align.full_training(group)
    assert full["method"] == "lit:all"
    pick = {p: report_align.smallest_within(group, full, p) for p in (1, 5, 10, 20, 35)}
    assert pick[1]["method"] == "lit:lit"  # 99.2% of full
    assert pick[5]["method"] == "lit:lilt"  # 95%: exactly on the 5% line counts
    assert pick[10]["method"] == "lit:lilt"
    assert pick[20]["method"] == "lit:layernorm"
    assert pick[35]["method"] == "lit:projection"
    assert report_align.smallest_within(group, full, 0.1) is None  # zero-shot never counts


def test_full_training_is_the_better_all_parameters_run_and_never_a_match():
    """With lit:all and full-ft both present, the stronger one is the reference and the
    other is not reported as the "smallest preset" that matches it (both train 100%)."""
    full_ft = [{**align_record("lit:all", seed, r1), "method": "full-ft",
                "config_hash": f"align-b0-full-ft-1000-{seed}"} for seed, r1 in ((1, 0.62), (2, 0.64))]
    runs = align_runs() + full_ft
    group = report_align.groups_of(report_align.summarise(runs))[("b0", "captions", 1000)]
    full = report_align.full_training(group)
    assert full["method"] == "full-ft"
    assert full["r1"] == pytest.approx(0.63)
    within_5 = report_align.smallest_within(group, full, 5)  # floor 0.5985: lit:lit's 0.595 misses
    assert within_5 is None
    assert report_align.smallest_within(group, full, 10)["method"] == "lit:lilt"
    assert report_align.best_under(group, full, 100.0)["method"] == "lit:lit"


def test_best_under_budget(cells):
    group = report_align.groups_of(cells)[("b0", "captions", 1000)]
    full = report_align.full_training(group)
    assert report_align.best_under(group, full, 1.0)["method"] == "lit:layernorm"
    assert report_align.best_under(group, full, 7.0)["method"] == "lit:lilt"
    assert report_align.best_under(group, full, 0.1) is None


def test_zero_shot_joins_every_group_of_its_backbone():
    runs = align_runs() + [r for r in align_runs(pairs=4000) if r["method"] != "zero-shot"]
    groups = report_align.groups_of(report_align.summarise(runs))
    assert list(groups) == [("b0", "captions", 1000), ("b0", "captions", 4000)]
    for cells in groups.values():
        assert [c["method"] for c in cells][0] == "zero-shot"


def test_no_full_training_run_means_no_headline_row(tmp_path):
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    write_runs(results, [r for r in align_runs() if r["method"] != "lit:all"])
    build_report(results)
    lines = (results / "report.md").read_text().splitlines()
    assert not any(line.startswith("### Headline") for line in lines)
    assert any("no all-parameters run" in line for line in lines)


def test_pareto_front():
    points = [(1, 40), (2, 39), (3, 50), (4, 50), (10, 60), (0.5, 10)]
    assert pareto_front(points) == [(0.5, 10), (1, 40), (3, 50), (10, 60)]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A classification store, built once alone and once with align runs added."""
    alone = make_results(tmp_path_factory.mktemp("alone"))
    build_report(alone)
    both = make_results(tmp_path_factory.mktemp("both"))
    write_runs(both, align_runs() + [r for r in align_runs(backbone="b2") if r["method"] in ("lit:lilt", "lit:all")]
               + [r for r in align_runs(pairs=4000) if r["method"] in ("lit:lilt", "lit:all")])
    files = build_report(both)
    return alone, both, files


def test_align_runs_leave_classification_outputs_unchanged(mixed):
    alone, both, _ = mixed
    assert (alone / "summary.csv").read_bytes() == (both / "summary.csv").read_bytes()
    for name in ("accuracy_vs_trainable_params.png", "accuracy_vs_train_time.png"):
        assert (alone / "figures" / name).read_bytes() == (both / "figures" / name).read_bytes()
    assert not (alone / "summary_align.csv").exists()
    assert "Alignment track" not in (alone / "report.md").read_text()


def test_align_section_and_files(mixed):
    _, both, files = mixed
    text = (both / "report.md").read_text()
    assert "## Alignment track (task `align`)" in text
    headline = next(line for line in text.splitlines() if line.startswith("| captions, b0, 1000"))
    # within 1% -> lit:lit, 5% and 10% -> lilt, 25% -> layernorm; best <= 1%: layernorm 85%
    assert headline.count("`lit:lilt` (4.0%)") == 2
    assert "`lit:lit` (80.0%)" in headline and "`lit:layernorm` (0.60%)" in headline
    assert "85% (`lit:layernorm`)" in headline and "95% (`lit:lilt`)" in headline
    assert "| lit:lilt | 4.0% | 40,000 | 57.0 ± 1.4 |" in text
    names = {p.name for p in files.figures}
    assert {"align_r1_vs_trainable.png", "align_r1_vs_train_time.png",
            "align_r1_vs_pairs.png", "align_r1_by_backbone.png"} <= names
    for name in names:
        assert f"figures/{name}" in text
    with open(both / "summary_align.csv") as f:
        rows = list(csv.DictReader(f))
    lilt = next(r for r in rows if (r["method"], r["backbone"], r["pairs"]) == ("lit:lilt", "b0", "1000"))
    assert float(lilt["mean_r1_mean"]) == pytest.approx(0.57)
    assert float(lilt["zeroshot/animals_mean"]) == pytest.approx(0.2)
    assert lilt["n_seeds"] == "2"


def test_align_run_without_retrieval_metric_is_skipped(tmp_path):
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    broken = align_record("lit:lilt", 1, 0.5)
    del broken["metrics"]["mean_r1"]
    write_runs(results, [broken, align_record("lit:all", 1, 0.6)])
    build_report(results)
    text = (results / "report.md").read_text()
    assert "metrics['mean_r1']" in text  # listed under unreadable run files
    assert "| lit:lilt |" not in text


def test_report_is_deterministic(tmp_path):
    outputs = []
    for name in ("a", "b"):
        results = tmp_path / name / "results"
        (results / "runs").mkdir(parents=True)
        write_runs(results, align_runs())
        build_report(results)
        outputs.append([(results / f).read_bytes() for f in ("report.md", "summary_align.csv",
                                                               "figures/align_r1_vs_trainable.png")])
    assert outputs[0] == outputs[1]
