"""The detection track's report section, on synthetic detect run files (no torch)."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest

from tests.test_report import ENV, make_results
from tunebench.report.build import build_report
from tunebench.report.sections import detect as report_detect

TOTAL = 30_000_000
# method -> (trainable, train seconds, novel box AP per (shots, seed))
METHODS = {
    "zero-shot": (0, 0.1, {(0, 0): 0.05}),
    "cones": (5_120, 0.5, {(1, 1): 0.20, (1, 2): 0.22, (5, 1): 0.30, (5, 2): 0.34}),
    "coop": (1_536, 10.0, {(1, 1): 0.15, (1, 2): 0.17, (5, 1): 0.25, (5, 2): 0.27}),
    "textual-inversion": (7_680, 8.0, {(1, 1): 0.18, (1, 2): 0.18, (5, 1): 0.28, (5, 2): 0.30}),
    "full-ft": (TOTAL, 60.0, {(1, 1): 0.10, (1, 2): 0.12, (5, 1): 0.40, (5, 2): 0.42}),
}


def detect_record(method: str, shots: int, seed: int, ap: float) -> dict:
    trainable, seconds, _ = METHODS[method]
    key = f"detect-{method}-{shots}-{seed}"
    return {
        "task": "detect", "dataset": "det-toy", "method": method, "backbone": "mini-det",
        "shots": shots, "seed": seed, "status": "ok", "error": None, "config_hash": key,
        "train_seconds": seconds, "eval_seconds": 2.0, "feature_seconds": 0.0,
        "trainable_params": trainable, "total_params": TOTAL, "peak_memory_mb": 10.0,
        "images_per_second": 10.0, "env": ENV, "steps": 50, "config": {},
        "metrics": {"novel_bbox_ap": ap, "novel_bbox_ap50": min(1.0, 2 * ap), "novel_bbox_ap75": ap / 2,
                    "novel_segm_ap": ap * 0.9, "base_bbox_ap": 0.5, "base_segm_ap": 0.45,
                    "test_images": 100},
        "pictures": {"predictions": f"pictures/{key}-predictions.png"},
    }


def detect_runs() -> list[dict]:
    return [detect_record(m, shots, seed, ap)
            for m, (_, _, aps) in METHODS.items() for (shots, seed), ap in aps.items()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    results = make_results(tmp_path_factory.mktemp("detect-report"))
    for run in detect_runs():
        (results / "runs" / f"{run['config_hash']}.json").write_text(json.dumps(run))
    files = build_report(results)
    return results, files


def test_cells_average_seeds():
    cells = {(c["method"], c["shots"]): c for c in report_detect.summarise(detect_runs())}
    cones = cells["cones", 5]
    assert cones["seeds"] == (1, 2)
    assert cones["novel_bbox_ap_mean"] == pytest.approx(0.32)
    assert cones["novel_bbox_ap_std"] == pytest.approx(0.028284, abs=1e-5)
    assert cells["zero-shot", 0]["pictures"] == ((0, "pictures/detect-zero-shot-0-0-predictions.png"),)


def test_section_tables_ratios_and_pictures(built):
    results, files = built
    text = (results / "report.md").read_text()
    section = text[text.index("## Detection track"):]
    assert "| `cones` | — | 21.0 ± 1.4 | 32.0 ± 2.8 | 2 |" in section
    assert "| `zero-shot` | 5.0 | — | — | 1 |" in section
    # cones vs coop at 5 shots: +5.0 points, coop 20x slower.
    assert "| 5 | `coop` | 32.0 ± 2.8 | 26.0 ± 1.4 | +6.0 | 20.0× |" in section
    assert "| 1 | `textual-inversion` | 21.0 ± 1.4 | 18.0 ± 0.0 | +3.0 | 16.0× |" in section
    assert "![full-ft](pictures/detect-full-ft-5-1-predictions.png)" in section
    for name in ("detect_ap_vs_trainable_params.png", "detect_ap_vs_train_time.png", "detect_ap_vs_shots.png"):
        assert (results / "figures" / name).stat().st_size > 1000
        assert f"figures/{name}" in section
    assert results / "summary_detect.csv" in files.track_tables
    with open(results / "summary_detect.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 9 and {r["method"] for r in rows} == set(METHODS)


def test_report_is_byte_stable(built):
    results, files = built

    def digest():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files.paths}

    before = digest()
    again = build_report(results)
    assert again.paths == files.paths
    assert digest() == before
