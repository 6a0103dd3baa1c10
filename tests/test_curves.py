"""Quality curves: the engine's checkpoint schedule and paused clock, the curves that
classification runs store, the score helpers, and the report's curve part."""

from __future__ import annotations

import time

import pytest
import torch

from tunebench.config import RunConfig, TrainConfig
from tunebench.engine.checkpoints import Checkpoints, QualityCurve, checkpoint_steps, eval_costs
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
    train = Stopwatch(CPU)
    scores = iter([{"top1": 0.1, "other": 1}, {"top1": 0.5, "other": 2}])
    curve = QualityCurve(lambda: next(scores), ("top1",), train_clock=train)
    curve(0)
    curve(3)
    assert [p["step"] for p in curve.points] == [0, 3]
    assert [p["top1"] for p in curve.points] == [0.1, 0.5] and "other" not in curve.points[0]
    assert curve.final == {"top1": 0.5, "other": 2}


SLEEP = 0.05  # seconds each scoring of a sleeping scorer takes at least


def test_only_the_last_scoring_is_eval_seconds_the_rest_curve_eval_seconds():
    def sleepy() -> dict:
        time.sleep(SLEEP)
        return {"top1": 0.5}

    curve, other = QualityCurve(sleepy, ("top1",), train_clock=Stopwatch(CPU)), Stopwatch(CPU)
    for step in (0, 1, 2, 4, 8):
        curve(step)
    with other.measure():  # scoring outside the curve (align's knowledge probe) stays eval
        time.sleep(SLEEP)
    seconds, extra = eval_costs(other, curve)
    timed = curve.scoring_seconds
    assert len(timed) == 5 and min(timed) >= SLEEP
    assert seconds == pytest.approx(other.seconds + timed[-1])  # the probe and the final scoring
    assert seconds < 4 * SLEEP  # (all five scorings would be at least 6)
    assert set(extra) == {"curve_eval_seconds"}
    assert extra["curve_eval_seconds"] == pytest.approx(sum(timed[:-1]), abs=1e-4)
    assert extra["curve_eval_seconds"] >= 4 * SLEEP
    assert eval_costs(other, None) == (other.seconds, {})  # no curve: no key


def test_eval_seconds_is_one_scoring_for_a_trained_run_as_for_zero_shot(tmp_path, monkeypatch):
    """A trained run scores 5 times (its curve), zero-shot once: eval_seconds holds one
    scoring for both, and the trained run's 4 earlier ones are curve_eval_seconds."""
    from tunebench.bench.runner import Runner
    from tunebench.tasks.classification import FewShotClassification

    scale = 0.3  # well above the tiny model's own scoring time
    real = FewShotClassification.score

    def sleepy(self, *args, **kwargs):
        time.sleep(scale)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FewShotClassification, "score", sleepy)
    runner = Runner(tmp_path)
    trained, zero_shot = runner.run(_cell("cones")), runner.run(_cell("zero-shot"))
    assert trained["status"] == zero_shot["status"] == "ok", trained.get("traceback")
    assert len(trained["metrics"]["curve"]) == 5
    # One sleep each (all five of the trained run's scorings would be at least 5 * scale).
    assert scale <= trained["eval_seconds"] < 3 * scale and scale <= zero_shot["eval_seconds"] < 3 * scale
    assert trained["curve_eval_seconds"] >= 4 * scale
    assert "curve_eval_seconds" not in zero_shot


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


# ---- score helpers -------------------------------------------------------------------------
def test_score_at_seconds_interpolates_and_never_extrapolates():
    from tunebench.scores import score_at_seconds

    curve = [{"step": 0, "train_seconds": 1.0, "top1": 0.2}, {"step": 4, "train_seconds": 3.0, "top1": 0.6},
             {"step": 8, "train_seconds": 5.0, "top1": 0.7}]
    assert score_at_seconds(curve, 2.0, "top1") == pytest.approx(0.4)
    assert score_at_seconds(curve, 5.0, "top1") == pytest.approx(0.7)
    assert score_at_seconds(list(reversed(curve)), 4.0, "top1") == pytest.approx(0.65)
    assert score_at_seconds(curve, 5.5, "top1") is None and score_at_seconds(curve, 0.5, "top1") is None


def test_mean_curve_averages_seeds_per_checkpoint_and_skips_missing_scores():
    from tunebench.scores import mean_curve, seconds_to_threshold

    a = [{"step": 0, "train_seconds": 0.0, "ap": 0.1}, {"step": 2, "train_seconds": 2.0, "ap": 0.3}]
    b = [{"step": 0, "train_seconds": 0.0, "ap": 0.3}, {"step": 2, "train_seconds": 4.0, "ap": 0.5},
         {"step": 3, "train_seconds": 5.0, "ap": None}]
    assert mean_curve([a, b], "ap") == [{"step": 0, "train_seconds": 0.0, "ap": pytest.approx(0.2)},
                                        {"step": 2, "train_seconds": 3.0, "ap": pytest.approx(0.4)}]
    assert mean_curve([a, []], "ap") == []
    assert seconds_to_threshold(b, 0.4, "ap") == pytest.approx(2.0)  # the generalised key


# ---- the report's curve part ---------------------------------------------------------------
# (step, train s, top1): cones fast and lower, coop slow and higher; seed 2 adds 0.01.
CURVES = {"cones": [(0, 0.01, 0.50), (1, 0.25, 0.60), (2, 0.5, 0.65), (5, 1.0, 0.68), (10, 2.0, 0.70)],
          "coop": [(0, 0.01, 0.30), (1, 3.5, 0.40), (2, 7.0, 0.50), (5, 14.0, 0.70), (10, 28.4, 0.80)]}


def curve_runs() -> list[dict]:
    from tests.test_report import run_record

    runs = []
    for method, points in CURVES.items():
        for seed in (1, 2):
            curve = [{"step": s, "train_seconds": sec, "top1": round(v + 0.01 * (seed - 1), 4)}
                     for s, sec, v in points]
            runs.append(run_record("curve-data", method, 16, seed, curve[-1]["top1"],
                                   config_hash=f"curve-{method}-{seed}",
                                   metrics={"top1": curve[-1]["top1"], "num_classes": 10, "curve": curve}))
    # An older record of the same cell, without a curve: in the tables, not in the curves.
    runs.append(run_record("curve-data", "cones", 16, 3, 0.71, config_hash="curve-cones-3"))
    return runs


def test_verdicts_at_equal_steps_and_equal_time():
    from tunebench.report.curves import method_curves, verdict

    (group, methods), = method_curves(curve_runs(), "top1").items()
    assert group == ("fewshot-cls", "curve-data", "mini-clip", 16, 10)
    assert {m: v["seeds"] for m, v in methods.items()} == {"cones": 2, "coop": 2}  # seed 3 has no curve
    found = verdict(methods, "top1")
    assert found["steps_leader"] == "coop" and found["final"]["coop"] == pytest.approx(0.805)
    assert found["equal_time"] == pytest.approx(2.0)  # cones' whole run: the most both reached
    assert found["time_leader"] == "cones" and found["at_time"]["cones"] == pytest.approx(0.705)
    assert found["at_time"]["coop"] == pytest.approx(0.305 + 0.1 * 1.99 / 3.49)
    assert found["threshold"] == pytest.approx(0.9 * 0.805)
    assert found["to_threshold"]["cones"] is None  # never reaches 72.45%
    assert found["to_threshold"]["coop"] == pytest.approx(14.0 + 14.4 * (0.7245 - 0.705) / 0.1)


def test_report_renders_curves_and_skips_records_without(tmp_path):
    import hashlib

    from tests.test_report import make_results
    from tunebench.report.build import build_report

    results = make_results(tmp_path)  # the classification fixtures: no curve anywhere
    for run in curve_runs():
        (results / "runs" / f"{run['config_hash']}.json").write_text(__import__("json").dumps(run))
    files = build_report(results)
    report = files.report_md.read_text()
    assert "## Classification: verdicts at equal steps and at equal time" in report
    assert report.count("verdicts at equal steps") == 1  # fashion/animal-mnist records have no curve
    assert ("At equal steps (10), `coop` leads with 80.5% top1 (next `cones` 70.5%). At equal time (2.00 s "
            "of training, the most every method reached), `cones` leads with 70.5% top1 (next `coop` 36.2%).") in report
    assert "| `cones` | 2 | 70.5% | 70.5% | never | 2.00 |" in report
    figure = results / "figures" / "classification_vs_train_time_curve.png"
    assert figure in files.figures and figure.read_bytes()[:4] == b"\x89PNG"
    assert (results / "summary_classification_curves.csv").read_text().count("\n") == 3  # header + 2 methods

    def digest() -> dict:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files.paths}

    before = digest()
    build_report(results)
    assert digest() == before


def test_report_without_any_curve_has_no_curve_part(tmp_path):
    from tests.test_report import make_results
    from tunebench.report.build import build_report

    files = build_report(make_results(tmp_path))
    assert "verdicts at equal steps" not in files.report_md.read_text()
    assert not (tmp_path / "results" / "summary_classification_curves.csv").exists()


def assert_curve_ends_at_final(record: dict, steps: list[int], keys: tuple[str, ...]) -> None:
    """A run's quality curve: scored at ``steps``, each point holding ``keys``, the last
    point the run's final metrics, its clock within the run's train time, and the
    earlier points' scoring timed apart from the final one."""
    assert record["status"] == "ok", record.get("traceback")
    metrics = record["metrics"]
    curve = metrics["curve"]
    assert [p["step"] for p in curve] == steps
    assert set(curve[0]) == {"step", "train_seconds", *keys}
    assert {k: curve[-1][k] for k in keys} == {k: metrics[k] for k in keys}
    assert curve[-1]["train_seconds"] <= record["train_seconds"] + 1e-4
    assert record["curve_eval_seconds"] > 0 and record["eval_seconds"] > 0  # the earlier points, the last
