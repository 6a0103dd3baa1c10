"""The report step, on synthetic run files (fast: no torch, no training)."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunebench.errors import TunebenchError
from tunebench.report.build import build_report
from tunebench.report.table import count as human_count

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ENV = {
    "commit": "0123456789abcdef0123",
    "dirty": False,
    "python": "3.11.2",
    "versions": {"torch": "2.4.0", "numpy": "2.1.0"},
    "hardware": {"device": "cpu", "cpu": "Test CPU", "cpu_count": 4},
}
# Hand-chosen cell: cones on fashion-mnist, 4 shots -> 82.0 ± 2.0 (sample std).
CONES_FASHION_4 = (0.80, 0.82, 0.84)


def run_record(dataset: str, method: str, shots: int, seed: int, top1: float, **extra) -> dict:
    train_seconds = {"zero-shot": 0.0, "cones": 2.0, "coop": 28.4}[method]
    trainable = {"zero-shot": 0, "cones": 5_120, "coop": 2_048}[method]
    record = {
        "task": "fewshot-cls", "dataset": dataset, "method": method, "backbone": "mini-clip",
        "shots": shots, "seed": seed, "status": "ok", "error": None,
        "config_hash": f"{dataset}-{method}-{shots}-{seed}",
        "train_seconds": train_seconds, "eval_seconds": 0.5, "feature_seconds": 0.0,
        "trainable_params": trainable, "total_params": 1_000_000, "peak_memory_mb": 100.0,
        "images_per_second": 1000.0, "metrics": {"top1": top1, "num_classes": 10},
        "env": ENV, "steps": 10, "config": {},
    }
    record.update(extra)
    return record


def synthetic_runs() -> list[dict]:
    runs = []
    for dataset in ("fashion-mnist", "animal-mnist"):
        runs.append(run_record(dataset, "zero-shot", 0, 0, 0.55))
        for shots in (1, 4):
            for seed in (0, 1, 2):
                cones = CONES_FASHION_4[seed] if (dataset, shots) == ("fashion-mnist", 4) else 0.6 + 0.01 * seed
                runs.append(run_record(dataset, "cones", shots, seed, cones))
                if (dataset, shots, seed) == ("fashion-mnist", 1, 2):
                    continue  # this coop cell fails below
                runs.append(run_record(dataset, "coop", shots, seed, 0.5 + 0.1 * shots / 4 + 0.01 * seed))
    failed = run_record(
        "fashion-mnist", "coop", 1, 2, 0.0,
        status="failed", error="NonFiniteLoss: loss became nan at step 3\nTraceback ...",
        metrics={}, train_seconds=None,
    )
    return [*runs, failed]


def make_results(root: Path) -> Path:
    runs_dir = root / "results" / "runs"
    runs_dir.mkdir(parents=True)
    for run in synthetic_runs():
        (runs_dir / f"{run['config_hash']}.json").write_text(json.dumps(run))
    (runs_dir / "corrupt.json").write_text("{not json")
    (runs_dir / "partial.json").write_text(json.dumps({"task": "fewshot-cls"}))
    return root / "results"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    results = make_results(tmp_path_factory.mktemp("report"))
    return results, build_report(results)


def summary_rows(results: Path) -> list[dict]:
    with open(results / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_summary_rows_and_hand_computed_cell(built) -> None:
    results, _ = built
    rows = summary_rows(results)
    # 2 datasets x (zero-shot + 2 methods x 2 shot counts)
    assert len(rows) == 10
    assert [(r["dataset"], r["method"], r["shots"]) for r in rows[:5]] == [
        ("animal-mnist", "zero-shot", "0"), ("animal-mnist", "cones", "1"),
        ("animal-mnist", "cones", "4"), ("animal-mnist", "coop", "1"), ("animal-mnist", "coop", "4"),
    ]
    (cell,) = [r for r in rows if (r["dataset"], r["method"], r["shots"]) == ("fashion-mnist", "cones", "4")]
    assert cell["n_seeds"] == "3" and cell["seeds"] == "0;1;2"
    assert float(cell["top1_mean"]) == pytest.approx(0.82)
    assert float(cell["top1_std"]) == pytest.approx(0.02)  # sample std, ddof=1
    assert float(cell["trainable_percent"]) == pytest.approx(0.512)
    (zero,) = [r for r in rows if (r["dataset"], r["method"]) == ("fashion-mnist", "zero-shot")]
    assert zero["n_seeds"] == "1" and float(zero["top1_std"]) == 0.0


def test_failed_run_listed_and_excluded(built) -> None:
    results, _ = built
    (coop,) = [
        r for r in summary_rows(results)
        if (r["dataset"], r["method"], r["shots"]) == ("fashion-mnist", "coop", "1")
    ]
    assert coop["n_seeds"] == "2" and coop["seeds"] == "0;1"
    report = (results / "report.md").read_text()
    assert "## Failed runs" in report
    assert "| coop | fashion-mnist | 1 | 2 | NonFiniteLoss: loss became nan at step 3 |" in report
    assert "Traceback" not in report
    assert "corrupt.json" in report and "partial.json" in report


def test_report_tables(built) -> None:
    report = (built[0] / "report.md").read_text()
    assert "82.0 ± 2.0" in report
    assert "| zero-shot | 55.0 |" in report  # single seed: no ±
    assert "5.1K" in report and "0.51%" in report
    assert "sample standard deviation" in report
    assert "Test CPU" in report and "torch 2.4.0" in report
    relative = report.split("## Training time relative to cones", 1)[1].split("##", 1)[0]
    assert "| fashion-mnist | 4 | 2.0 | 14.2× |" in relative
    zero = report.split("## Zero-shot vs chance", 1)[1].split("##", 1)[0]
    assert "| fashion-mnist | 55.0 | 10 | 10.0 | 5.5× |" in zero
    assert "](figures/accuracy_vs_trainable_params.png)" in report
    assert "](figures/fewshot_fashion-mnist.png)" in report


def test_figures_are_pngs(built) -> None:
    results, files = built
    names = sorted(p.name for p in files.figures)
    assert names == [
        "accuracy_vs_train_time.png", "accuracy_vs_trainable_params.png",
        "fewshot_animal-mnist.png", "fewshot_fashion-mnist.png",
    ]
    for path in files.figures:
        assert path.parent == results / "figures"
        assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert set(files.paths) == {results / "summary.csv", results / "report.md", *files.figures}
    assert files.track_tables == ()  # no track runs: no track CSVs


def test_rebuild_is_byte_identical(tmp_path: Path) -> None:
    def digests(results: Path) -> dict[str, str]:
        files = build_report(results)
        return {p.relative_to(results).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files.paths}

    first = digests(make_results(tmp_path / "a"))
    assert digests(tmp_path / "a" / "results") == first
    assert digests(make_results(tmp_path / "b")) == first  # another folder, same inputs


def test_missing_reference_skips_relative_table(tmp_path: Path) -> None:
    results = make_results(tmp_path)
    build_report(results, reference_method="lit")
    assert "No lit runs to compare with; table skipped." in (results / "report.md").read_text()


def test_empty_runs_dir_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    with pytest.raises(TunebenchError, match="tunebench bench") as info:
        build_report(tmp_path)
    assert "\n" not in str(info.value)


def test_only_corrupt_files_is_a_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "bad.json").write_text("[")
    with pytest.raises(TunebenchError, match="make bench"):
        build_report(tmp_path)
    assert "bad.json" in capsys.readouterr().err


def test_human_count() -> None:
    assert [human_count(n) for n in (0, 512, 5_120, 23_200_000, 1_300_000_000)] == [
        "0", "512", "5.1K", "23.2M", "1.3B",
    ]


def test_report_does_not_import_torch() -> None:
    code = "import sys, tunebench.report.build; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fairness_on_the_record_counts_starts_selections_and_older_runs(tmp_path: Path) -> None:
    """The report says, per task, which start the runs shared, how many had their lr chosen
    on validation data, and how many predate the protocol (no init in their config)."""
    runs_dir = tmp_path / "results" / "runs"
    runs_dir.mkdir(parents=True)
    chosen = {"grid": [1e-3, 3e-3], "scores": [0.5, 0.6], "chosen": 3e-3, "score": 0.6, "split": "validation"}
    runs = [run_record("fashion-mnist", "zero-shot", 0, 0, 0.5, config={"init": "single"}),
            run_record("fashion-mnist", "cones", 1, 1, 0.6, config={"init": "single"}, selection=chosen),
            run_record("fashion-mnist", "cones", 1, 2, 0.6, config={})]  # made before the protocol
    for run in runs:
        run["config_hash"] += "-" + str(len(run["config"]))
        (runs_dir / f"{run['config_hash']}.json").write_text(json.dumps(run))
    text = build_report(tmp_path / "results").report_md.read_text()
    assert "| fewshot-cls | 3 | single | 1 | 1 |" in text
    assert "1 run(s) predate that protocol" in text


def test_a_cell_counts_once_protocol_runs_supersede_older_ones_and_the_newest_wins(tmp_path: Path) -> None:
    """Two records of one cell never both count: a run under the fair protocol replaces one
    made before it, and of two protocol runs (another lr choice) the newest counts."""
    runs_dir = tmp_path / "results" / "runs"
    runs_dir.mkdir(parents=True)
    protocol = {"init": "single", "train": {"steps": 10}}
    runs = [run_record("fashion-mnist", "cones", 1, 1, 0.10, config={"train": {"steps": 10}}),  # before
            run_record("fashion-mnist", "cones", 1, 1, 0.50, config=protocol, finished_at="2026-01-01T00:00:00"),
            run_record("fashion-mnist", "cones", 1, 1, 0.70, config=protocol, finished_at="2026-02-01T00:00:00"),
            run_record("fashion-mnist", "cones", 1, 2, 0.90, config=protocol, finished_at="2026-01-01T00:00:00")]
    for index, run in enumerate(runs):
        run["config_hash"] = f"h{index}"
        (runs_dir / f"h{index}.json").write_text(json.dumps(run))
    build_report(tmp_path / "results")
    [row] = [r for r in summary_rows(tmp_path / "results") if r["method"] == "cones"]
    assert row["n_seeds"] == "2" and float(row["top1_mean"]) == pytest.approx(0.8)  # seeds 1 (0.70) and 2
    text = (tmp_path / "results" / "report.md").read_text()
    assert "h0: made before the fair protocol" in text and "h1: an older run of the same cell" in text
