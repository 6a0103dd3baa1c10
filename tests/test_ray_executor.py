"""The Ray executor (``tunebench bench --executor ray``) on a local Ray, tiny data.

One local Ray instance (2 CPUs, small object store, no dashboard) serves the module;
the executor joins it instead of starting its own.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import yaml

from tunebench.bench.cli import main
from tunebench.bench.executors import (
    RAY_MISSING,
    RayOptions,
    cell_resources,
    check_devices,
    run_sweep_ray,
)
from tunebench.bench.store import REQUIRED_KEYS
from tunebench.bench.sweep import expand, load_sweep
from tunebench.bench.worker import KILL_MARKER_ENV, staging_root
from tunebench.config import RunConfig, TrainConfig
from tunebench.errors import ConfigError
from tunebench.registry import load_all

TINY_TRAIN = {"steps": 4, "batch_size": 8, "image_size": 16, "test_per_class": 6, "save_artifacts": True}


def write_sweep(path: Path, **overrides) -> Path:
    sweep = {
        "task": "fewshot-cls", "backbone": "tiny-clip", "datasets": ["tiny-shapes"],
        "methods": ["zero-shot", "linear-probe", "cones"], "shots": [1, 2], "seeds": [1],
        "train": dict(TINY_TRAIN),
    }
    sweep.update(overrides)
    path.write_text(yaml.safe_dump(sweep))
    return path


def cells_of(sweep: Path) -> list[RunConfig]:
    load_all()
    return expand(load_sweep(sweep))


def stored(results: Path) -> dict[str, dict]:
    """Every stored record by its file's hash (each file must parse: no half-written JSON)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))}


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.json"))}


def leftovers(results: Path) -> list[Path]:
    return [p for p in results.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
             logging_level="warning", log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_gives_the_same_cells_and_metrics_as_local(tmp_path, local_ray):
    sweep = write_sweep(tmp_path / "sweep.yaml")
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert main(["bench", str(sweep), "--results", str(local), "--no-report"]) == 0
    assert main(["bench", str(sweep), "--results", str(remote), "--no-report",
                 "--executor", "ray", "--ray-workers", "2"]) == 0
    by_local, by_ray = stored(local), stored(remote)
    assert set(by_ray) == set(by_local) == {c.config_hash for c in cells_of(sweep)}
    for key, expected in by_local.items():
        record = by_ray[key]
        assert set(REQUIRED_KEYS) <= set(record) and record["status"] == "ok", record["error"]
        assert record["executor"]["kind"] == "ray"
        assert record["trainable_params"] == expected["trainable_params"]
        # Deterministic methods: the same numbers (a worker uses 1 thread, the local run
        # 2, so float sums may differ in their last bits: the loss is compared loosely).
        assert record["metrics"]["top1"] == expected["metrics"]["top1"]
        # The quality curve's scores must agree too; its train_seconds are clocks, not results.
        assert _scores(record["metrics"]) == pytest.approx(_scores(expected["metrics"]), abs=1e-4)
        # The artifact came back from the worker and was written by the driver.
        assert (remote / record["artifact"]["path"]).stat().st_size == record["artifact"]["bytes"]
    assert not leftovers(remote)


def _scores(metrics: dict) -> dict:
    """Metrics with each curve point's scores flattened in and its clock left out."""
    flat = {k: v for k, v in metrics.items() if k != "curve"}
    for point in metrics.get("curve", []):
        flat.update({f"curve@{point['step']}/{k}": v for k, v in point.items() if k != "train_seconds"})
    return flat


def test_ray_brings_run_pictures_back_to_the_driver(tmp_path, local_ray):
    """A cell's pictures (here a detection run's predictions) travel like its artifact:
    the worker returns the bytes, the driver writes them before the record."""
    sweep = write_sweep(tmp_path / "sweep.yaml", task="detect", backbone="tiny-detector",
                        datasets=["tiny-det"], methods=["cones"], shots=[1],
                        train={"steps": 2, "batch_size": 4, "save_artifacts": True},
                        task_config={"test_images": 4, "pictures": 2})
    remote = tmp_path / "ray"
    assert main(["bench", str(sweep), "--results", str(remote), "--no-report",
                 "--executor", "ray", "--ray-workers", "1"]) == 0
    (record,) = stored(remote).values()
    assert record["status"] == "ok", record["error"]
    picture = remote / record["pictures"]["predictions"]
    assert picture.read_bytes()[:4] == b"\x89PNG"
    assert (remote / record["artifact"]["path"]).is_file()
    assert not leftovers(remote)


@pytest.mark.parametrize("max_retries", [1, 0])
def test_killed_worker_is_retried_then_recorded(tmp_path, local_ray, monkeypatch, max_retries):
    marker = tmp_path / "killed-once"
    monkeypatch.setenv(KILL_MARKER_ENV, str(marker))  # the first attempt SIGKILLs its worker
    sweep = write_sweep(tmp_path / "sweep.yaml", methods=["linear-probe", "cones"], shots=[1])
    cells = cells_of(sweep)
    results = tmp_path / "results"
    summary = run_sweep_ray(cells, results, options=RayOptions(workers=2, max_retries=max_retries))
    assert marker.exists()  # a worker really died mid-sweep
    records = stored(results)
    assert set(records) == {c.config_hash for c in cells}  # each cell stored once, none lost
    assert all(record["config_hash"] == key for key, record in records.items())
    assert not leftovers(results)
    # The killed attempt died inside its staging folder; the sweep's end removed it.
    staging = staging_root()
    assert staging.is_dir() and not any(staging.iterdir())
    statuses = sorted(record["status"] for record in records.values())
    if max_retries:  # the killed cell ran again on a fresh worker
        assert statuses == ["ok", "ok"] and len(summary.ok) == 2
    else:  # no retry left: stored as failed, with a one-line reason and every required key
        assert statuses == ["failed", "ok"] and len(summary.failed) == 1
        (failed,) = [r for r in records.values() if r["status"] == "failed"]
        assert set(REQUIRED_KEYS) <= set(failed)
        assert failed["error"].startswith("worker lost after 1 attempt(s)")
        assert "\n" not in failed["error"]


def test_interrupted_driver_rerun_runs_only_the_missing_cells(tmp_path, local_ray, capsys):
    sweep = write_sweep(tmp_path / "sweep.yaml")
    cells = cells_of(sweep)
    results = tmp_path / "results"
    seen: list[str] = []

    def interrupt_after_two(record: dict) -> None:
        seen.append(record["config_hash"])
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep_ray(cells, results, options=RayOptions(workers=2), on_record=interrupt_after_two)
    assert set(stored(results)) == set(seen)  # the cells still running were not stored
    before = digests(results / "runs")

    capsys.readouterr()
    assert main(["bench", str(sweep), "--results", str(results), "--no-report", "--executor", "ray"]) == 0
    assert f"{len(cells) - 2} ran, 2 already finished, 0 failed" in capsys.readouterr().out
    assert set(stored(results)) == {c.config_hash for c in cells}
    after = digests(results / "runs")
    assert {name: after[name] for name in before} == before  # finished cells untouched
    assert not leftovers(results)


def test_ray_executor_without_ray_stops_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    sweep = write_sweep(tmp_path / "sweep.yaml")
    results = tmp_path / "results"
    assert main(["bench", str(sweep), "--results", str(results), "--executor", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"tunebench: error: {RAY_MISSING}"
    assert not results.exists()


def test_ray_flags_need_the_ray_executor(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep.yaml")
    assert main(["bench", str(sweep), "--results", str(tmp_path / "r"), "--ray-workers", "3"]) == 2
    assert "need --executor ray" in capsys.readouterr().err


def test_cell_resources_follow_the_device():
    def cell(device: str) -> RunConfig:
        return RunConfig(task="fewshot-cls", dataset="tiny-shapes", method="cones",
                         backbone="tiny-clip", shots=1, seed=1, train=TrainConfig(device=device))

    assert cell_resources(cell("cpu"), cluster_has_gpu=True, cpus=1) == {"num_cpus": 1, "num_gpus": 0}
    assert cell_resources(cell("cuda"), cluster_has_gpu=True, cpus=2) == {"num_cpus": 2, "num_gpus": 1}
    # auto follows the cluster, not the driver (a head node often has no GPU).
    assert cell_resources(cell("auto"), cluster_has_gpu=True, cpus=1)["num_gpus"] == 1
    assert cell_resources(cell("auto"), cluster_has_gpu=False, cpus=1)["num_gpus"] == 0
    with pytest.raises(ConfigError, match="names a GPU index"):
        check_devices([cell("cuda:1")])
