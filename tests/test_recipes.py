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


@pytest.mark.parametrize(("prefix", "task", "shots"), [
    ("bench-coop-vitb16", "fewshot-cls", [1, 2, 4, 8, 16]),
    ("bench-coop-vitb16-b2n", "base2new", [16]),
])
def test_recipe_reads_its_paths_from_the_environment(prefix, task, shots, monkeypatch):
    load_all()
    monkeypatch.setenv("CLIP", "/models/clip-vit-base-patch16")
    monkeypatch.setenv("DATA", "/data/DATA")
    main_part, cocoop_part = load_sweep(ROOT / f"{prefix}.yaml"), load_sweep(ROOT / f"{prefix}-cocoop.yaml")
    for sweep in (main_part, cocoop_part):
        assert sweep.task == task and sweep.shots == shots and sweep.seeds == [1, 2, 3]
        assert sweep.backbone == "hf-clip:/models/clip-vit-base-patch16"
        assert {d.removeprefix("coop:/data/DATA/") for d in sweep.datasets} == COOP_DATASETS
    assert set(main_part.methods) | set(cocoop_part.methods) == set(METHODS.names_for("fewshot-cls"))  # every method
    assert cocoop_part.methods == ["cocoop"]
    # cocoop differs in batch size only: it sees as many training images, warm-up share alike.
    main_train, cocoop_train = main_part.train, cocoop_part.train
    assert cocoop_train["batch_size"] == 1
    assert cocoop_train["steps"] == main_train["steps"] * main_train["batch_size"]
    assert cocoop_train["warmup_steps"] / cocoop_train["steps"] == main_train["warmup_steps"] / main_train["steps"]
    same = {k: v for k, v in main_train.items() if k not in ("steps", "batch_size", "warmup_steps")}
    assert same == {k: cocoop_train[k] for k in same}


def test_unset_variable_is_one_line_before_anything_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("CLIP", raising=False)
    monkeypatch.setenv("DATA", "/data/DATA")
    with pytest.raises(ConfigError, match=r"uses \$\{CLIP\}, which is not set"):
        load_sweep(ROOT / "bench-coop-vitb16.yaml")
    assert main(["bench", str(ROOT / "bench-coop-vitb16.yaml"), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CLIP=/path/to/it" in err
    assert not (tmp_path / "r").exists()
