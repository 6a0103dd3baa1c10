"""The GPU recipes on a real CLIP and CoOp's folders: they read their paths from the
environment and expand into the literature's grid, every classification method."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunebench.bench.cli import main
from tunebench.bench.sweep import load_sweep
from tunebench.errors import ConfigError
from tunebench.registry import METHODS, load_all

ROOT = Path(__file__).resolve().parents[1]
COOP_DATASETS = {"imagenet", "caltech-101", "oxford_pets", "stanford_cars", "oxford_flowers", "food-101",
                 "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"}


@pytest.mark.parametrize(("name", "task", "shots"), [
    ("bench-coop-vitb16.yaml", "fewshot-cls", [1, 2, 4, 8, 16]),
    ("bench-coop-vitb16-b2n.yaml", "base2new", [16]),
])
def test_recipe_reads_its_paths_from_the_environment(name, task, shots, monkeypatch):
    load_all()
    monkeypatch.setenv("CLIP", "/models/clip-vit-base-patch16")
    monkeypatch.setenv("DATA", "/data/DATA")
    sweep = load_sweep(ROOT / name)
    assert sweep.task == task and sweep.shots == shots and sweep.seeds == [1, 2, 3]
    assert sweep.backbone == "hf-clip:/models/clip-vit-base-patch16"
    assert {d.removeprefix("coop:/data/DATA/") for d in sweep.datasets} == COOP_DATASETS
    assert set(sweep.methods) == set(METHODS.names())  # every classification method


def test_unset_variable_is_one_line_before_anything_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("CLIP", raising=False)
    monkeypatch.setenv("DATA", "/data/DATA")
    with pytest.raises(ConfigError, match=r"uses \$\{CLIP\}, which is not set"):
        load_sweep(ROOT / "bench-coop-vitb16.yaml")
    assert main(["bench", str(ROOT / "bench-coop-vitb16.yaml"), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CLIP=/path/to/it" in err
    assert not (tmp_path / "r").exists()
