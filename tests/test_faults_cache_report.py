"""Fault injection, kept as tests (issue 15): stale feature-cache entries, run records
the report must not trust, and image folders named by their absolute path."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tunebench.bench.cli import main
from tunebench.bench.store import SCHEMA_VERSION
from tunebench.datasets import load_dataset
from tunebench.datasets.base import ArrayImages
from tunebench.datasets.imagefolder import folder_label, image_folder
from tunebench.engine.features import FeatureCache
from tunebench.report.build import build_report

CPU = torch.device("cpu")
TINY_RUN = ["--backbone", "tiny-clip", "--shots", "2", "--set", "train.steps=2", "--set", "train.image_size=16",
            "--set", "train.val_per_class=1"]  # 5 images per class: 1 tested, 1 held out, 2 drawn


def write_pets(folder: Path, *, seed: int) -> list[Path]:
    """Two classes of five 12×12 noise images; ``seed`` decides every pixel."""
    rng = np.random.default_rng(seed)
    paths = []
    for name in ("cat", "dog"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(5):
            path = folder / name / f"{i}.png"
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(path)
            paths.append(path)
    return paths


def overwrite_most(paths: list[Path]) -> None:
    """Replace all but one image in place (same names, same count) with other pixels,
    and give them an mtime an hour off, so a coarse timestamp cannot hide the edit."""
    rng = np.random.default_rng(99)
    for path in paths[:-1]:
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(path)
        later = path.stat().st_mtime_ns + 3600 * 10**9
        os.utime(path, ns=(later, later))


def run_cell(folder: Path, results: Path, *extra: str) -> dict:
    code = main(["run", "--method", "cones", "--dataset", f"imagefolder:{folder}", *TINY_RUN,
                 "--results", str(results), *extra])
    assert code == 0
    (path,) = sorted((results / "runs").glob("*.json"))
    return json.loads(path.read_text())


# ---- item 2: features of edited images ------------------------------------------------


def test_images_edited_in_place_are_encoded_again(tmp_path, tiny_backbone):
    folder = tmp_path / "pets"
    paths = write_pets(folder, seed=0)
    cache = FeatureCache(tmp_path / "features")
    source = image_folder(folder, size=16).train
    rows = np.arange(len(source))
    before = cache.get(tiny_backbone, source, rows, dataset="pets", split="train", image_size=16, device=CPU)

    overwrite_most(paths)
    edited = image_folder(folder, size=16).train  # as a later process sees the folder
    after = cache.get(tiny_backbone, edited, rows, dataset="pets", split="train", image_size=16, device=CPU)

    assert cache.file_for(tiny_backbone, edited, "pets", "train", 16) != \
        cache.file_for(tiny_backbone, source, "pets", "train", 16)
    assert not torch.allclose(after, before)
    fresh = FeatureCache(tmp_path / "fresh").get(
        tiny_backbone, edited, rows, dataset="pets", split="train", image_size=16, device=CPU)
    torch.testing.assert_close(after, fresh)


def test_rerun_after_editing_images_recomputes_features(tmp_path):
    folder, results = tmp_path / "pets", tmp_path / "results"
    paths = write_pets(folder, seed=1)
    first = run_cell(folder, results)
    assert first["status"] == "ok" and first["feature_seconds"] > 0

    overwrite_most(paths)
    load_dataset.cache_clear()  # a new `tunebench` process: the folder is scanned again
    second = run_cell(folder, results, "--force")
    assert second["status"] == "ok"
    assert second["feature_seconds"] > 0  # the old cache file answered with old images before


def test_built_in_arrays_key_their_content(tiny_backbone):
    """Same name, size and shape, other pixels (a regenerated data package): another file."""
    tiny = load_dataset("tiny-shapes").train
    changed = ArrayImages(255 - tiny.images, tiny.labels, tiny.name)
    cache = FeatureCache(Path("unused"))
    assert cache.file_for(tiny_backbone, tiny, "tiny-shapes", "train", 16) != \
        cache.file_for(tiny_backbone, changed, "tiny-shapes", "train", 16)
    same = ArrayImages(tiny.images.copy(), tiny.labels, tiny.name)
    assert cache.file_for(tiny_backbone, same, "tiny-shapes", "train", 16) == \
        cache.file_for(tiny_backbone, tiny, "tiny-shapes", "train", 16)


# ---- item 7: run records the report must not trust -----------------------------------


def record(name: str, top1: float, seed: int, **changes) -> dict:
    run = {
        "task": "fewshot-cls", "dataset": "tiny-shapes", "method": "cones", "backbone": "tiny-clip",
        "shots": 2, "seed": seed, "status": "ok", "error": None, "config_hash": name,
        "train_seconds": 1.0, "eval_seconds": 0.1, "feature_seconds": 0.0, "trainable_params": 96,
        "total_params": 1000, "peak_memory_mb": 50.0, "images_per_second": 100.0,
        "metrics": {"top1": top1, "num_classes": 3}, "env": {}, "config": {},
    }
    run.update(changes)
    return run


BAD_RECORDS = {
    "future-schema": {"schema_version": 2},
    "schema-not-int": {"schema_version": "1"},
    "percent-top1": {"metrics": {"top1": 87.5, "num_classes": 3}},
    "negative-top1": {"metrics": {"top1": -0.1, "num_classes": 3}},
    "nan-top1": {"metrics": {"top1": float("nan"), "num_classes": 3}},
    "inf-loss": {"metrics": {"top1": 0.5, "final_train_loss": float("inf")}},
    "negative-trainable": {"trainable_params": -96},
    "fractional-total": {"total_params": 1000.5},
    "trainable-over-total": {"trainable_params": 5000},
    "negative-train-time": {"train_seconds": -1.0},
    "negative-eval-time": {"eval_seconds": -0.1},
    "negative-memory": {"peak_memory_mb": -5.0},
}


def test_report_skips_records_it_cannot_trust_and_names_them(tmp_path, capsys):
    runs = tmp_path / "results" / "runs"
    runs.mkdir(parents=True)
    good = [record("legacy", 0.5, 0), record("current", 0.7, 1, schema_version=SCHEMA_VERSION)]
    bad = [record(name, 0.6, 2, **changes) for name, changes in BAD_RECORDS.items()]
    for run in good + bad:
        (runs / f"{run['config_hash']}.json").write_text(json.dumps(run))

    build_report(tmp_path / "results")

    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: skipping")]
    assert sorted(line.split()[2].rstrip(":") for line in warnings) == sorted(f"{n}.json" for n in BAD_RECORDS)
    with open(tmp_path / "results" / "summary.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["n_seeds"] == "2" and float(row["top1_mean"]) == pytest.approx(0.6)  # 87.5 not averaged in
    assert "percent-top1.json: metrics['top1'] = 87.5 is outside [0, 1]" in \
        (tmp_path / "results" / "report.md").read_text()


def test_track_fractions_are_checked_by_each_track(tmp_path, capsys):
    """Recall, AP and fidelity are fractions too: a percentage there is skipped."""
    runs = tmp_path / "results" / "runs"
    runs.mkdir(parents=True)
    (runs / "good.json").write_text(json.dumps(record("good", 0.5, 0)))
    tracks = {
        "align": {"mean_r1": 0.5, "i2t_r1": 53.0},
        "detect": {"novel_bbox_ap": 0.4, "base_segm_ap50": 71.6},
        "generation": {"step_seconds": 0.1, "fidelity_per_prompt": [1.0, 87.5]},
    }
    for task, metrics in tracks.items():
        (runs / f"{task}.json").write_text(json.dumps(record(task, 0.5, 0, task=task, metrics=metrics)))
    build_report(tmp_path / "results")
    err = capsys.readouterr().err
    for task in tracks:
        assert f"warning: skipping {task}.json: metrics[" in err and "outside [0, 1]" in err
    assert not (tmp_path / "results" / "summary_align.csv").exists()


def test_new_records_carry_the_schema_version(tmp_path):
    from tunebench.bench.worker import lost_cell_record
    from tunebench.config import RunConfig

    lost = lost_cell_record(RunConfig("fewshot-cls", "tiny-shapes", "cones", "tiny-clip", 2, 0), "worker lost")
    assert lost["schema_version"] == SCHEMA_VERSION and lost["dataset_label"] == "tiny-shapes"


# ---- item 8d: an image folder's name in reports and file names -----------------------


def test_image_folder_is_named_short_in_report_and_files(tmp_path):
    deep = tmp_path / "very" / "long" / "place" / "on" / "this" / "machine"
    folder, results = deep / "pets", tmp_path / "results"
    write_pets(folder, seed=2)
    run = run_cell(folder, results)
    label = folder_label(folder)
    assert label.startswith("pets-") and len(label) == len("pets-") + 8
    assert run["dataset"] == f"imagefolder:{folder}"  # the cell's identity stays as typed
    assert run["dataset_label"] == label and run["schema_version"] == SCHEMA_VERSION

    build_report(results)
    report = (results / "report.md").read_text()
    assert f"## {label}" in report and str(deep) not in report
    assert (results / "figures" / f"fewshot_{label}.png").is_file()
    assert all("machine" not in p.name for p in (results / "figures").iterdir())
    cached = list((Path(os.environ["TUNEBENCH_CACHE_DIR"]) / "features").glob("*.features"))
    assert any(f"__{label}-" in p.name for p in cached)
    assert not any("machine" in p.name for p in cached)


def test_two_folders_with_one_name_do_not_collide(tmp_path):
    assert folder_label(tmp_path / "a" / "pets") != folder_label(tmp_path / "b" / "pets")
    assert folder_label(tmp_path / "a" / "pets") == folder_label(tmp_path / "a" / ".." / "a" / "pets")
