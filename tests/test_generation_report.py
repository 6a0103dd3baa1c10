"""The generation-track report section on hand-made run records: numbers, headline, stability."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_report import ENV, make_results
from tunebench.report.build import build_report
from tunebench.report.sections import generation as report_gen

PNG = b"\x89PNG\r\n\x1a\n"
# (step seconds, conditioning seconds, seconds to threshold per seed, fidelity per seed)
METHODS = {
    "cones": (0.10, 0.0001, (20.0, 30.0), (0.8, 0.9)),
    "textual-inversion": (0.20, 0.09, (40.0, 60.0), (0.7, 0.9)),
    "lit": (0.12, 0.0001, (10.0, None), (0.6, 0.4)),
    "full-ft": (0.30, 0.0001, (None, None), (0.2, 0.3)),
}


def gen_record(method: str, seed: int, *, concept="zebra", shots=3, backbone="mini-t2i", timing_only=False,
               step=None, conditioning=None) -> dict:
    step_s, cond_s, reached, fidelity = METHODS[method]
    step_s = step if step is not None else step_s
    cond_s = conditioning if conditioning is not None else cond_s
    metrics = {"concept": concept, "initializer": "horse", "timing_only": timing_only,
               "step_seconds": step_s, "conditioning_seconds": cond_s,
               "text_encoder_params": 22_000_000, "unet_params": 1_600_000}
    if not timing_only:
        threshold_s = reached[seed - 1]
        metrics.update(
            fidelity=fidelity[seed - 1], clip_i=0.8, clip_t=0.2 + 0.01 * seed, diversity=0.1,
            fidelity_threshold=0.5, seconds_to_threshold=threshold_s,
            real_fidelity=0.95, real_clip_i=0.85, real_clip_t=0.25,
            curve=[{"step": 0, "train_seconds": 1.0, "fidelity": 0.0},
                   {"step": 100, "train_seconds": 100 * step_s, "fidelity": fidelity[seed - 1]}],
        )
    key = f"gen-{backbone}-{concept}-{method}-{shots}-{seed}".replace(":", "_")
    return {
        "task": "generation", "dataset": f"concept:{concept}", "method": method, "backbone": backbone,
        "shots": shots, "seed": seed, "status": "ok", "error": None, "config_hash": key,
        "train_seconds": 100 * step_s + 1.0, "eval_seconds": 5.0, "feature_seconds": 0.0,
        "trainable_params": {"cones": 384, "textual-inversion": 384, "lit": 50_000}.get(method, 1_600_000),
        "total_params": 24_000_000, "peak_memory_mb": 10.0, "images_per_second": 80.0,
        "metrics": metrics, "env": ENV, "steps": 100, "config": {},
        "pictures": {} if timing_only else {"samples": f"pictures/{key}-samples.png"},
    }


def gen_runs() -> list[dict]:
    runs = [gen_record(m, s) for m in METHODS for s in (1, 2)]
    runs += [gen_record(m, 1, backbone="t2i-timing:bertbase-large", timing_only=True,
                        step=0.5 if m == "cones" else 1.0, conditioning=0.45) for m in ("cones", "textual-inversion")]
    return runs


def write(results: Path, runs) -> None:
    for run in runs:
        (results / "runs" / f"{run['config_hash']}.json").write_text(json.dumps(run))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    results = make_results(tmp_path_factory.mktemp("gen"))
    write(results, gen_runs())
    return results, build_report(results)


def test_cells_and_headline_numbers():
    cells = report_gen.summarise(gen_runs())
    comps = report_gen.comparisons(cells)
    assert len(comps) == 1  # timing-only runs are no quality comparison
    comp = comps[0]
    assert comp["threshold_ratio"] == pytest.approx(25.0 / 50.0)  # mean 25 s vs mean 50 s
    assert comp["step_ratio"] == pytest.approx(0.5)
    levels = comp["levels"]
    assert [v for v, _ in levels] == [0.7, 0.9]
    assert [r for _, r in levels] == pytest.approx([8.875 / 20.0, 10.0 / 20.0])
    lit = next(c for c in cells if c["method"] == "lit" and not c["timing_only"])
    assert lit["reached"] == 1 and report_gen.threshold_cell(lit) == "10.0 (1/2)"
    full = next(c for c in cells if c["method"] == "full-ft")
    assert report_gen.threshold_cell(full) == "never (0/2)"


def test_share_rows_predict_the_ratio():
    rows = {r["backbone"]: r for r in report_gen.share_rows(report_gen.summarise(gen_runs()))}
    mini = rows["mini-t2i"]
    assert mini["ratio"] == pytest.approx(0.5) and mini["share"] == pytest.approx(0.45)
    wide = rows["t2i-timing:bertbase-large"]
    assert wide["timing_only"] and wide["ratio"] == pytest.approx(0.5) and wide["share"] == pytest.approx(0.45)


def test_section_in_report(built):
    results, files = built
    text = (results / "report.md").read_text()
    assert "## Generation track (task `generation`)" in text
    # Equal level per seed: 0.7 (seed 1: ConES reaches it at 8.875 s, TI at 20 s) and 0.9
    # (10 s vs 20 s): geometric mean of 0.44375 and 0.5.
    assert "**At equal fidelity ConES takes 0.47× textual inversion's training time**" in text
    assert "Time to the fixed threshold, fidelity ≥ 0.50: ConES takes 0.50×" in text
    assert "t2i-timing:bertbase-large (timing only)" in text
    assert "[grid](pictures/gen-mini-t2i-zebra-cones-3-1-samples.png)" in text
    assert "Real held-out zebra images score fidelity 95.0%" in text
    assert "## Alignment track" not in text  # no align runs here: no align section
    rows = list(csv.DictReader((results / "summary_gen.csv").open()))
    cones = next(r for r in rows if r["method"] == "cones" and r["backbone"] == "mini-t2i")
    assert float(cones["fidelity_mean"]) == pytest.approx(0.85) and cones["reached_threshold"] == "2"
    timing = next(r for r in rows if r["timing_only"] == "1" and r["method"] == "cones")
    assert timing["fidelity_mean"] == ""
    for name in ("gen_fidelity_vs_train_time.png", "gen_step_ratio_vs_text_share.png"):
        assert (results / "figures" / name).read_bytes()[:8] == PNG
    assert results / "summary_gen.csv" in files.track_tables


def test_report_with_generation_runs_is_byte_stable(tmp_path):
    def digests(results: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(results.rglob("*")) if p.is_file() and "runs" not in p.parts}

    results = make_results(tmp_path)
    write(results, gen_runs())
    build_report(results)
    first = digests(results)
    build_report(results)
    assert digests(results) == first


def test_report_gen_does_not_import_torch():
    code = "import sys, tunebench.report.sections.generation; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
