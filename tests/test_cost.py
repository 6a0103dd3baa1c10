"""Cost at scale (docs/cost.md): the timing backbones and dataset, the engine's step
clock, the slope fit and the report section that claims timing-only runs."""

from __future__ import annotations

import math

import pytest

from tunebench.config import RunConfig, TrainConfig
from tunebench.errors import ConfigError
from tunebench.registry import BACKBONES, load_all
from tunebench.report.sections import Options, cost

load_all()
TRAIN = TrainConfig(steps=3, batch_size=4, warmup_steps=1, image_size=32, test_per_class=1, save_artifacts=False)


def test_synthetic_dataset_names_imagenet_classes():
    from tunebench.datasets import load_dataset

    data = load_dataset("synthetic:5")
    assert data.num_classes == 5 and data.classnames[0] == "tench" and data.classnames[-1] == "toilet tissue"
    assert len(data.train) == 5 * 2 and len(data.test) == 5 and data.train.load([0]).shape == (1, 32, 32, 3)
    with pytest.raises(ConfigError, match="number of classes"):
        load_dataset("synthetic:1001")


def test_timing_backbone_names_and_prompt_length():
    assert cost.tower_of("cls-timing:bertbase-ctx32") == "bertbase"
    with pytest.raises(ConfigError, match="TOWER"):
        BACKBONES.resolve("cls-timing:gpt9")[0]("gpt9")
    model = BACKBONES.resolve("cls-timing:tiny-ctx8")[0]("tiny-ctx8")
    assert model.timing_only and model.text_tokens == 8
    assert model.tokenize(["a photo of a dog.", "x"]).input_ids.shape == (2, 8)  # padded to exactly 8
    builder, _ = BACKBONES.resolve("cls-timing:tiny")
    with pytest.raises(ConfigError, match="fewshot-cls cells only"):
        builder.check(RunConfig(task="align", dataset="x", method="lit", backbone="cls-timing:tiny", shots=1, seed=1))


def test_one_timing_cell_runs_and_reports_costs_only(tmp_path):
    from tunebench.bench.runner import Runner
    from tunebench.report.build import build_report

    config = RunConfig(task="fewshot-cls", dataset="synthetic:3", method="coop", backbone="cls-timing:tiny-ctx8",
                       shots=2, seed=1, train=TRAIN)
    record = Runner(tmp_path, cache_dir=tmp_path / "cache").run(config)
    assert record["status"] == "ok", record.get("traceback")
    metrics = record["metrics"]
    assert metrics["timing_only"] is True and "top1" not in metrics  # no score from random weights
    assert metrics["num_classes"] == 3 and metrics["text_tokens"] == 8 and metrics["text_params"] > 0
    assert 0 < record["step_seconds"] <= record["train_seconds"]

    build_report(tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "## Cost at scale" in report and "Top-1" not in report  # claimed by the cost section alone
    assert (tmp_path / "summary_cost.csv").read_text().count("\n") == 2
    assert (tmp_path / "summary.csv").read_text().count("\n") == 1  # classification: header only


def test_engine_records_median_step_time():
    import torch

    from tunebench.engine.training import Optimization

    weight = torch.nn.Parameter(torch.ones(2))
    run = Optimization([weight], steps=4, lr=0.1)
    for step in run.steps(desc="test"):
        run.update((weight**2).sum(), step)
    assert len(run.step_times) == 4 and run.median_step_seconds > 0


def test_log_slope():
    assert cost.log_slope([10, 100, 1000], [0.2, 2.0, 20.0]) == pytest.approx(1.0)
    assert cost.log_slope([10, 100, 1000], [0.5, 0.5, 0.5]) == pytest.approx(0.0, abs=1e-12)
    assert cost.log_slope([10, 100], [1.0, math.sqrt(10) * 1.0]) == pytest.approx(0.5)
    assert cost.log_slope([100, 100], [1.0, 2.0]) is None
    assert cost.log_slope([10, 100], [1.0, None]) is None


def _record(method, classes, step, *, tower="minilm", params=22_600_000, tokens=16):
    return {"task": "fewshot-cls", "method": method, "backbone": f"cls-timing:{tower}", "seed": 1,
            "step_seconds": step, "eval_seconds": 0.5, "train_seconds": 3.0, "peak_memory_mb": 900.0,
            "peak_memory_increase_mb": 100.0 + classes / 10, "trainable_params": 10,
            "metrics": {"timing_only": True, "num_classes": classes, "text_params": params, "text_tokens": tokens}}


def test_section_renders_axes_slopes_and_figures(tmp_path):
    runs = [_record("cones", n, 0.01) for n in (10, 100, 1000)]
    runs += [_record("coop", n, 0.002 * n) for n in (10, 100, 1000)]
    runs += [_record("zero-shot", n, None) for n in (10, 100, 1000)]
    runs += [_record("coop", 100, 1.0, tower="bertbase", params=109_000_000)]
    lines, files = cost.write(runs, tmp_path, Options())
    text = "\n".join(lines)
    assert "**By number of classes** (minilm tower, 16 tokens per prompt)" in text
    assert "| coop | 0.02 / 0.5 / 101 | 0.2 / 0.5 / 110 | 2.00 / 0.5 / 200 | 1.00 |" in text
    assert "| cones | 0.01 / 0.5 / 101 | 0.01 / 0.5 / 110 | 0.01 / 0.5 / 200 | 0.00 |" in text
    assert "| zero-shot | — / 0.5 / 101 | — / 0.5 / 110 | — / 0.5 / 200 | — |" in text
    assert "**By text tower** (100 classes, 16 tokens per prompt)" in text and "bertbase (109.0M)" in text
    assert "By tokens per prompt" not in text  # one length only: no such axis
    assert "cones 0.00, coop 1.00" in text
    assert sorted(p.name for p in files) == ["cost_step_vs_classes.png", "cost_step_vs_text_params.png",
                                             "summary_cost.csv"]


def test_section_absent_without_cost_runs(tmp_path):
    assert cost.write([], tmp_path, Options()) == ([], [])
    assert not cost.is_cost_run({"task": "fewshot-cls", "metrics": {"top1": 0.5}})
    assert not cost.is_cost_run({"task": "generation", "metrics": {"timing_only": True}})  # generation's own
    assert not list(tmp_path.iterdir())


def test_sweep_files_validate():
    from pathlib import Path

    from tunebench.bench.runner import validate_cells
    from tunebench.bench.sweep import expand, load_sweep

    root = Path(__file__).resolve().parents[1]
    files = sorted(root.glob("bench-cost*.yaml"))
    assert len(files) == 5
    for path in files:
        cells = expand(load_sweep(path))
        assert all(c.backbone.startswith("cls-timing:") and c.dataset.startswith("synthetic:") for c in cells)
        validate_cells(cells)  # names, shots and backbone forms, before anything is built
