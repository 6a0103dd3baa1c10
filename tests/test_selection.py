"""lr selection on validation data (issue 11): the split, the sweep block, ``tunebench select``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tunebench.bench.cli import main
from tunebench.bench.runner import Runner, SweepSummary
from tunebench.bench.selection import choose, plan_selection, run_selection, selection_store
from tunebench.bench.sweep import expand, load_sweep
from tunebench.config import RunConfig, TrainConfig
from tunebench.datasets import fewshot_indices, load_dataset
from tunebench.datasets.class_split import split_base_new
from tunebench.datasets.fewshot import held_out_for_validation, validation_indices
from tunebench.errors import ConfigError
from tunebench.registry import TASKS, load_all

VAL = 6  # tiny-shapes has 24 training images per class: 6 held out leave 18 to draw from
TINY_TRAIN = {"steps": 3, "batch_size": 8, "image_size": 16, "test_per_class": 4, "val_per_class": VAL,
              "save_artifacts": False}


def write_sweep(path: Path, **overrides) -> Path:
    sweep = {"task": "fewshot-cls", "backbone": "tiny-clip", "datasets": ["tiny-shapes"],
             "methods": ["zero-shot", "cones", "linear-probe"], "shots": [1, 2], "seeds": [1],
             "train": dict(TINY_TRAIN), "selection": {"lr_factors": [0.5, 2]}}
    sweep.update(overrides)
    path.write_text(yaml.safe_dump(sweep))
    return path


def records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def files(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- the validation split ------------------------------------------------------------


@pytest.mark.parametrize("shots", [1, 4, 18])
def test_validation_images_are_in_no_kshot_draw(tmp_path, shots):
    tiny = load_dataset("tiny-shapes")
    split, validation = validation_indices(tiny, VAL)
    assert split == "train"
    assert np.bincount(tiny.train.labels[validation]).tolist() == [VAL] * 4
    for seed in range(6):
        drawn = fewshot_indices(tiny, shots, seed, cache_dir=tmp_path, val_per_class=VAL)
        assert len(drawn) == 4 * shots
        assert np.intersect1d(drawn, validation).size == 0, (shots, seed)
    # 18 shots take every image that is not held out: the held-out ones are all that is left.
    if shots == 18:
        assert np.array_equal(np.setdiff1d(np.arange(len(tiny.train)), drawn), validation)


def test_the_held_out_images_do_not_move_with_the_cell():
    tiny = load_dataset("tiny-shapes")
    first = held_out_for_validation(tiny, VAL)
    assert np.array_equal(first, held_out_for_validation(tiny, VAL))
    assert np.array_equal(first, held_out_for_validation(load_dataset("tiny-shapes"), VAL))


def test_base2new_validation_is_base_classes_and_disjoint_from_base_draws(tmp_path):
    tiny = load_dataset("tiny-shapes")
    task = TASKS.get("base2new")()
    classes = task.training_classes(tiny)
    split, validation = task.validation_images(tiny, classes, VAL)
    assert split == "train"
    assert set(tiny.train.labels[validation]) == {0, 1}  # the base half only
    base = split_base_new(tiny).base
    for seed in (1, 2, 3):
        drawn = base.train.positions[fewshot_indices(base, 5, seed, cache_dir=tmp_path, val_per_class=VAL)]
        assert np.intersect1d(drawn, validation).size == 0


def test_a_class_too_small_for_shots_and_validation_is_one_line():
    load_all()
    cell = RunConfig(task="fewshot-cls", dataset="tiny-shapes", method="cones", backbone="tiny-clip",
                     shots=16, seed=1, train=TrainConfig(val_per_class=10))
    with pytest.raises(ConfigError, match=r"24 training images, fewer than 16 shots \+ 10 held out") as caught:
        TASKS.get("fewshot-cls")().validate(cell)
    assert "\n" not in str(caught.value) and "val_per_class to at most 8" in str(caught.value)


@pytest.mark.parametrize("method", ["cones", "full-ft"])  # cached features; pixels through the tuned tower
def test_a_validation_run_never_reads_test_images(tmp_path, monkeypatch, method):
    import tunebench.tasks.classification as classification

    def refuse(*args, **kwargs):
        raise AssertionError("a validation run asked for test images")

    monkeypatch.setattr(classification, "test_indices", refuse)
    dataset = load_dataset("tiny-shapes")
    monkeypatch.setattr(dataset.test, "load", refuse)
    config = RunConfig(task="fewshot-cls", dataset="tiny-shapes", method=method, backbone="tiny-clip",
                       shots=2, seed=1, train=TrainConfig(**TINY_TRAIN), eval_split="validation")
    record = Runner(tmp_path / "results").run(config)
    assert record["status"] == "ok", record["error"]
    assert record["eval_split"] == "validation"
    assert record["metrics"]["validation_images"] == 4 * VAL
    assert 0.0 <= record["metrics"]["top1"] <= 1.0
    assert "test_images" not in record["metrics"]


# ---- the rule -------------------------------------------------------------------------


def test_max_rule_takes_the_best_score_and_a_tie_goes_to_the_smaller_lr():
    grid = [1e-3, 3e-3, 1e-2, 3e-2]
    assert choose(grid, [0.2, 0.5, 0.4, 0.1], "max") == 1
    assert choose(grid, [0.2, 0.5, 0.5, 0.1], "max") == 1  # tie: the smaller lr
    assert choose(grid, [None, 0.3, None, 0.6], "max") == 3  # a failed trial never wins


def test_selection_picks_the_argmax_of_the_stored_trials(tmp_path):
    """A stub executor stores fake validation scores: the choice is their argmax."""
    load_all()
    sweep = load_sweep(write_sweep(tmp_path / "sweep.yaml", selection={"lr_factors": [0.316, 1, 3.16, 10]}))
    plan = plan_selection(sweep)
    fake = {0.316: 0.40, 1: 0.55, 3.16: 0.70, 10: 0.65}
    store = selection_store(tmp_path / "results")

    def execute(cells, folder):
        assert Path(folder) == store.results_dir
        summary = SweepSummary()
        for cell in cells:
            cls_default = {"cones": 5e-3, "linear-probe": 1e-2}[cell.method]
            factor = min(fake, key=lambda f: abs(cell.method_config["lr"] - cls_default * f))
            store.write({"task": cell.task, "dataset": cell.dataset, "method": cell.method,
                         "backbone": cell.backbone, "shots": cell.shots, "seed": cell.seed, "status": "ok",
                         "error": None, "config_hash": cell.config_hash, "train_seconds": 0, "eval_seconds": 0,
                         "trainable_params": 1, "total_params": 1, "peak_memory_mb": 0,
                         "images_per_second": None, "metrics": {"top1": fake[factor]}, "env": {}})
            summary.ok.append(cell.config_hash)
        return summary

    choices = run_selection(plan, tmp_path / "results", execute)
    assert choices[("tiny-clip", "tiny-shapes", "cones")]["chosen"] == pytest.approx(5e-3 * 3.16)
    assert choices[("tiny-clip", "tiny-shapes", "linear-probe")]["chosen"] == pytest.approx(1e-2 * 3.16)
    assert {key[2] for key in choices} == {"cones", "linear-probe"}  # zero-shot trains nothing: not selected
    [written] = [r for r in records(store.results_dir / "choices") if r["method"] == "cones"]
    assert written["scores"] == [0.40, 0.55, 0.70, 0.65] and written["split"] == "validation"
    assert written["pilot"] == {"shots": 2, "seed": 1}  # defaults: the largest shots, the first seed


# ---- the commands ---------------------------------------------------------------------


def test_select_stores_trials_apart_and_a_rerun_retrains_nothing(tmp_path, capsys):
    """Trials run through bench's executors (here 2 worker processes); a rerun, in-process, reads them all."""
    results = tmp_path / "results"
    sweep = write_sweep(tmp_path / "sweep.yaml")
    assert main(["select", str(sweep), "--results", str(results), "--jobs", "2", "--threads", "1"]) == 0
    trials = records(results / "selection" / "runs")
    assert len(trials) == 2 * 2  # cones and linear-probe, two lrs each, at the pilot cell
    assert all(t["eval_split"] == "validation" and t["status"] == "ok" and t["shots"] == 2 for t in trials)
    assert records(results / "runs") == []  # the report's runs never see a trial
    assert len(list((results / "selection" / "choices").glob("*.json"))) == 2

    before = files(results / "selection" / "runs")
    capsys.readouterr()
    assert main(["select", str(sweep), "--results", str(results)]) == 0
    assert "0 trial(s) ran, 4 already finished" in capsys.readouterr().out
    assert files(results / "selection" / "runs") == before


def test_bench_runs_selection_first_and_final_records_carry_it(tmp_path, capsys):
    results = tmp_path / "results"
    sweep = write_sweep(tmp_path / "sweep.yaml")
    assert main(["bench", str(sweep), "--results", str(results), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "selection: 4 trial(s) ran" in out and "time: selection" in out
    finals = records(results / "runs")
    assert len(finals) == 1 + 2 * 2
    assert all(r["eval_split"] == "test" for r in finals)
    trials = records(results / "selection" / "runs")
    for record in finals:
        if record["method"] == "zero-shot":
            assert record["selection"] is None
            continue
        chosen = record["selection"]
        assert chosen["split"] == "validation" and chosen["rule"] == "max" and chosen["metric"] == "top1"
        assert chosen["pilot"] == {"shots": 2, "seed": 1} and len(chosen["grid"]) == 2
        assert record["config"]["method_config"]["lr"] == chosen["chosen"]
        mine = [t for t in trials if t["method"] == record["method"]]
        best = max(t["metrics"]["top1"] for t in mine)
        assert chosen["score"] == best
    # --dry-run lists the trials, and the final cells now that their lrs are chosen.
    assert main(["bench", str(sweep), "--results", str(results), "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert listing.count("selection trial:") == 4 and "(finished)" in listing and "5 cells" in listing


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"selection": {"lr_factors": []}}, "selection.lr_factors is empty"),
        ({"selection": {"lr_factors": [1, 0]}}, "must all be > 0"),
        ({"selection": {"lr_factors": [1, -2]}}, "must all be > 0"),
        ({"selection": {"rule": "median"}}, "selection.rule must be one of max"),
        ({"selection": {"pilot": {"shots": 16}}}, "selection.pilot.shots is 16, which the sweep does not run"),
        ({"method_config": {"cones": {"lr": 0.01}}}, "method_config.cones sets lr"),
        ({"train": {**TINY_TRAIN, "val_per_class": 23}}, "held out for validation"),
        ({"selection": {"pilot": {"dataset": "fashion-mnist"}}}, "selection.pilot.dataset is 'fashion-mnist'"),
    ],
    ids=["empty-grid", "zero-factor", "negative-factor", "unknown-rule", "pilot-shots", "lr-set", "class-too-small",
         "pilot-dataset"],
)
@pytest.mark.parametrize("command", ["select", "bench"])
def test_bad_selection_input_is_one_line_and_writes_nothing(tmp_path, capsys, overrides, message, command):
    results = tmp_path / "results"
    sweep = write_sweep(tmp_path / "sweep.yaml", **overrides)
    assert main([command, str(sweep), "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not results.exists()


def test_a_task_without_a_selection_metric_is_refused(tmp_path, capsys, monkeypatch):
    load_all()
    monkeypatch.setattr(TASKS.get("fewshot-cls"), "selection_metric", None)
    results = tmp_path / "results"
    assert main(["bench", str(write_sweep(tmp_path / "sweep.yaml")), "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert "task fewshot-cls has no validation split to select on yet" in err and "\n" not in err
    assert not results.exists()


def test_select_needs_a_selection_block(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep.yaml", selection=None)
    assert main(["select", str(sweep), "--results", str(tmp_path / "results")]) == 2
    assert "has no selection: block" in capsys.readouterr().err


def test_a_bare_selection_block_takes_the_defaults(tmp_path):
    load_all()
    plan = plan_selection(load_sweep(write_sweep(tmp_path / "sweep.yaml", selection={})))
    assert plan.spec.lr_factors == [0.316, 1, 3.16, 10] and plan.spec.rule == "max"
    assert plan.spec.pilot == {"shots": 2, "seed": 1}
    for cells in plan.trials.values():
        assert all(c.eval_split == "validation" and not c.train.save_artifacts for c in cells)


def test_a_pilot_dataset_makes_one_choice_per_method_that_every_dataset_uses(tmp_path):
    """pilot.dataset: the trials run on that dataset alone, and every dataset's final cells
    take its choice (and record it, pilot included)."""
    load_all()
    sweep = load_sweep(write_sweep(tmp_path / "sweep.yaml", datasets=["tiny-shapes", "synthetic:3"],
                                   selection={"lr_factors": [0.5, 2], "pilot": {"dataset": "tiny-shapes"}}))
    plan = plan_selection(sweep)
    assert {key[1] for key in plan.trials} == {"tiny-shapes"}
    assert len(plan.cells) == 2 * 2  # cones and linear-probe, 2 lrs each
    choices = {key: {"chosen": cells[1].method_config["lr"], "pilot": sweep.selection_spec.pilot}
               for key, cells in plan.trials.items()}
    finals = [c for c in expand(sweep, choices) if c.method == "cones"]
    assert {c.dataset for c in finals} == {"tiny-shapes", "synthetic:3"}
    assert {c.method_config["lr"] for c in finals} == {plan.trials[("tiny-clip", "tiny-shapes", "cones")][1]
                                                       .method_config["lr"]}
    assert all(c.selection["pilot"]["dataset"] == "tiny-shapes" for c in finals)


def test_a_pilot_dataset_reads_environment_variables_as_datasets_do(tmp_path, monkeypatch):
    """``${NAME}`` in pilot.dataset expands like ``datasets``: else a pilot naming one of the
    sweep's own datasets would be refused as one the sweep does not run."""
    load_all()
    monkeypatch.setenv("PILOT_SET", "tiny-shapes")
    sweep = load_sweep(write_sweep(tmp_path / "sweep.yaml", datasets=["tiny-shapes", "synthetic:3"],
                                   selection={"pilot": {"dataset": "${PILOT_SET}"}}))
    assert sweep.selection_spec.pilot["dataset"] == "tiny-shapes"
    assert {key[1] for key in plan_selection(sweep).trials} == {"tiny-shapes"}
    monkeypatch.delenv("PILOT_SET")
    with pytest.raises(ConfigError, match="uses \\$\\{PILOT_SET\\}, which is not set"):
        load_sweep(tmp_path / "sweep.yaml")
