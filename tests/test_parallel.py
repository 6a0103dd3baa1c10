"""The local parallel executor (``tunebench bench --jobs N``): worker processes, one writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tunebench.bench.cli import main
from tunebench.bench.parallel import Schedule
from tunebench.bench.store import REQUIRED_KEYS
from tunebench.bench.worker import KILL_MARKER_ENV
from tunebench.config import RunConfig, TrainConfig

TINY_TRAIN = {"steps": 4, "batch_size": 8, "image_size": 16, "test_per_class": 6, "save_artifacts": True}


def write_sweep(path: Path) -> Path:
    sweep = {
        "task": "fewshot-cls", "backbone": "tiny-clip", "datasets": ["tiny-shapes"],
        "methods": ["zero-shot", "cones", "linear-probe", "coop"], "shots": [1], "seeds": [1],
        "train": dict(TINY_TRAIN),
        "method_config": {"linear-probe": {"lr": 1e30}},  # diverges: its cell fails
    }
    path.write_text(yaml.safe_dump(sweep))
    return path


def stored(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))}


def test_two_jobs_store_what_one_job_stores(tmp_path, monkeypatch, capsys):
    """Same cells, statuses and top-1 as one cell at a time on the same thread count;
    a failing cell is stored failed, a worker killed mid-cell loses only its cell (one of
    the first two the schedule starts, zero-shot and cones), the others finish."""
    sweep = write_sweep(tmp_path / "sweep.yaml")
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert main(["bench", str(sweep), "--results", str(serial), "--no-report", "--threads", "1"]) == 2
    marker = tmp_path / "killed-once"
    monkeypatch.setenv(KILL_MARKER_ENV, str(marker))  # the first cell SIGKILLs its worker
    capsys.readouterr()
    assert main(["bench", str(sweep), "--results", str(parallel), "--no-report",
                 "--jobs", "2", "--threads", "1"]) == 2
    assert marker.exists()
    by_serial, by_parallel = stored(serial), stored(parallel)
    assert "2 ran, 0 already finished, 2 failed" in capsys.readouterr().out
    assert set(by_parallel) == set(by_serial) and len(by_serial) == 4
    assert all(r["executor"] == {"kind": "local", "jobs": 1, "concurrent_cells": 1} for r in by_serial.values())
    (killed,) = [r for r in by_parallel.values() if "worker process died" in (r["error"] or "")]
    assert killed["method"] in ("zero-shot", "cones") and by_serial[killed["config_hash"]]["status"] == "ok"
    assert "signal 9" in killed["error"] and set(REQUIRED_KEYS) <= set(killed)
    for key, expected in by_serial.items():
        record = by_parallel[key]
        assert record["executor"]["kind"] == "local" and record["executor"]["jobs"] == 2
        if record is killed:
            continue
        assert record["status"] == expected["status"], record["error"]
        if expected["status"] == "ok":
            assert record["env"]["hardware"]["torch_threads"] == expected["env"]["hardware"]["torch_threads"] == 1
            assert record["metrics"]["top1"] == expected["metrics"]["top1"]
            assert record["trainable_params"] == expected["trainable_params"]
            assert (parallel / record["artifact"]["path"]).stat().st_size == record["artifact"]["bytes"]
        else:
            assert record["method"] == "linear-probe" and "lower this method's lr" in record["error"]
    assert max(r["executor"]["concurrent_cells"] for r in by_parallel.values()) == 2
    assert not [p for p in parallel.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("flags", [["--jobs", "0"], ["--jobs", "-2"], ["--jobs", "2", "--threads", "0"],
                                   ["--executor", "ray", "--jobs", "2"]])
def test_bad_jobs_stop_before_anything_is_written(tmp_path, capsys, flags):
    sweep = write_sweep(tmp_path / "sweep.yaml")
    results = tmp_path / "results"
    assert main(["bench", str(sweep), "--results", str(results), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(("tunebench: error: --jobs", "tunebench: error: --threads")) and "\n" not in err
    assert not results.exists()


def cell(method: str, dataset: str, seed: int) -> RunConfig:
    return RunConfig(task="fewshot-cls", dataset=dataset, method=method, backbone="tiny-clip",
                     shots=1, seed=seed, train=TrainConfig(steps=4))


def test_schedule_probes_each_group_then_runs_the_longest_first():
    cells = [cell(m, d, s) for m in ("cones", "coop", "full-ft") for d in ("a", "b") for s in (1, 2)]
    schedule = Schedule(cells)
    # First one cell of each method (unknown cost), spreading over the datasets.
    probes = [schedule.take() for _ in range(3)]
    assert [c.method for c in probes] == ["cones", "coop", "full-ft"]
    assert [c.dataset for c in probes] == ["a", "b", "a"]
    for config, seconds in zip(probes, (1.0, 5.0, 20.0), strict=True):
        schedule.finished(config, seconds)
    # Then the longest group first; a running cell's dataset is avoided among equals.
    first, second = schedule.take(), schedule.take()
    assert [(c.method, c.dataset, c.seed) for c in (first, second)] == [("full-ft", "a", 2), ("full-ft", "b", 1)]
    order = [schedule.take().method for _ in range(len(schedule.pending))]
    assert order == ["full-ft", "coop", "coop", "coop", "cones", "cones", "cones"]


def test_report_says_which_times_shared_the_machine():
    from tunebench.report.build import _side_by_side_lines

    def run(executor: dict | None, threads: int = 1) -> dict:
        record = {"env": {"hardware": {"torch_threads": threads}}}
        return record if executor is None else {**record, "executor": executor}

    alone = [run(None, 2), run({"kind": "local", "jobs": 1, "concurrent_cells": 1}, 2)]
    assert _side_by_side_lines(alone) == []  # the committed records: the report stays as it was
    shared = [*alone, run({"kind": "local", "jobs": 2, "concurrent_cells": 2}),
              run({"kind": "local", "jobs": 2, "concurrent_cells": 1}),
              run({"kind": "ray", "concurrent_cells": 2})]
    (line,) = _side_by_side_lines(shared)
    assert line.startswith("- **Side by side:** 2 of 5 runs shared the machine with other cells "
                           "(1 with --jobs 2, 1 torch thread(s) per cell; 1 with ray, 2 at once, 1 torch")
