"""Quality curves: the engine's checkpoint schedule and paused clock, the curves that
classification runs store, the score helpers, and the report's curve part."""

from __future__ import annotations

import time

import pytest
import torch

from tunebench.config import RunConfig, TrainConfig
from tunebench.engine.checkpoints import Checkpoints, QualityCurve, checkpoint_steps
from tunebench.engine.measure import Stopwatch
from tunebench.engine.training import Optimization

CPU = torch.device("cpu")
TINY_TRAIN = {"steps": 8, "batch_size": 8, "image_size": 16, "test_per_class": 6}


# ---- engine ----------------------------------------------------------------------------
@pytest.mark.parametrize(("total", "expected"), [
    (100, (0, 12, 25, 50, 100)), (400, (0, 50, 100, 200, 400)), (8, (0, 1, 2, 4, 8)),
    (3, (0, 1, 3)), (1, (0, 1)),
])
def test_checkpoint_schedule_is_start_eighth_quarter_half_end_each_once(total, expected):
    assert checkpoint_steps(total) == expected


def _loop(total: int, evaluate, clock: Stopwatch, model: torch.nn.Module | None = None,
          updates: list | None = None) -> Optimization:
    """``total`` steps of a one-weight model under ``clock``, scored at the checkpoints;
    each update appends its step to ``updates``, and asserts ``model`` trains."""
    weight = torch.nn.Parameter(torch.zeros(1))
    run = Optimization([weight], steps=total, lr=0.1)
    with clock.measure():
        for step in run.steps(desc="test", model=model, checkpoints=Checkpoints(evaluate=evaluate, clock=clock)):
            assert model is None or model.training, f"step {step} ran in eval mode"
            run.update((weight - 1).square().sum(), step)
            if updates is not None:
                updates.append(step)
    return run


def test_engine_scores_each_checkpoint_after_that_many_updates_in_train_mode_again():
    model, updates, seen = torch.nn.Linear(1, 1), [], []

    def evaluate(step):
        model.eval()  # scoring puts the model in eval mode; training must get it back
        seen.append((step, len(updates)))

    _loop(8, evaluate, Stopwatch(CPU), model, updates)
    assert seen == [(0, 0), (1, 1), (2, 2), (4, 4), (8, 8)]  # k: scored after k updates
    assert not model.training  # the loop still ends in eval mode


def test_checkpoint_time_is_never_train_time():
    """A sleeping evaluator: 5 × 0.15 s of scoring while the train clock runs around the loop."""
    train, scoring = Stopwatch(CPU), Stopwatch(CPU)
    stamps = []

    def evaluate(step):
        with scoring.measure():
            time.sleep(0.15)
        stamps.append(train.elapsed)

    run = _loop(8, evaluate, train)
    assert len(stamps) == 5 and scoring.seconds >= 0.75
    assert train.seconds < 0.3, train.seconds  # eight tiny steps, without the 0.75 s of sleep
    assert max(run.step_times) < 0.15  # nor in the per-step timings
    assert stamps == sorted(stamps) and stamps[-1] <= train.seconds


def test_paused_outside_measure_changes_nothing():
    watch = Stopwatch(CPU)
    with watch.paused():
        time.sleep(0.01)
    assert watch.seconds == 0.0 and watch.elapsed == 0.0


def test_quality_curve_keeps_the_step_train_seconds_and_named_keys():
    train, scoring = Stopwatch(CPU), Stopwatch(CPU)
    scores = iter([{"top1": 0.1, "other": 1}, {"top1": 0.5, "other": 2}])
    curve = QualityCurve(lambda: next(scores), ("top1",), train_clock=train, eval_clock=scoring)
    curve(0)
    curve(3)
    assert [p["step"] for p in curve.points] == [0, 3]
    assert [p["top1"] for p in curve.points] == [0.1, 0.5] and "other" not in curve.points[0]
    assert curve.final == {"top1": 0.5, "other": 2}


# ---- classification runs ---------------------------------------------------------------
def _cell(method: str, task: str = "fewshot-cls", **changes) -> RunConfig:
    trains = method != "zero-shot"
    return RunConfig(task=task, dataset="tiny-shapes", method=method, backbone="tiny-clip",
                     shots=2 if trains else 0, seed=1 if trains else 0, train=TrainConfig(**TINY_TRAIN), **changes)


@pytest.mark.parametrize("method", ["cones", "coop", "full-ft"])
def test_classification_records_a_curve_ending_at_the_final_score(method, tmp_path):
    from tunebench.bench.runner import Runner

    record = Runner(tmp_path).run(_cell(method))
    assert record["status"] == "ok", record.get("traceback")
    curve = record["metrics"]["curve"]
    assert [p["step"] for p in curve] == [0, 1, 2, 4, 8]
    assert set(curve[0]) == {"step", "train_seconds", "top1"}
    assert curve[-1]["top1"] == record["metrics"]["top1"]
    seconds = [p["train_seconds"] for p in curve]
    assert seconds == sorted(seconds) and seconds[-1] <= record["train_seconds"] + 1e-4
    if method == "full-ft":  # re-encodes the test split at each of the 5 scorings: eval time
        assert record["image_input"] == "pixels" and record["eval_seconds"] > 0


def test_no_curve_without_training_or_on_validation_runs(tmp_path):
    from tunebench.bench.runner import Runner

    runner = Runner(tmp_path)
    assert "curve" not in runner.run(_cell("zero-shot"))["metrics"]
    validation = runner.run(_cell("cones", eval_split="validation"))
    assert validation["status"] == "ok" and "curve" not in validation["metrics"]


def test_base_to_new_curve_keeps_base_new_and_h(tmp_path):
    from tunebench.bench.runner import Runner

    record = Runner(tmp_path).run(_cell("coop", task="base2new"))
    assert record["status"] == "ok", record.get("traceback")
    last = record["metrics"]["curve"][-1]
    assert {k: last[k] for k in ("base", "new", "h")} == {k: record["metrics"][k] for k in ("base", "new", "h")}
