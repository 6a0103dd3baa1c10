"""Cells that used to break or mislead (issue 11, fixes): full-ft on align, lit:projection's
text pass, method variants set in code, and divergence at the last step or at evaluation."""

from __future__ import annotations

import math

import pytest
import torch

from tunebench.bench.runner import Runner, validate_cells
from tunebench.config import RunConfig, TrainConfig, task_config
from tunebench.engine import training
from tunebench.errors import ConfigError
from tunebench.methods.base import MethodAdapter, resolve_method
from tunebench.registry import TASKS, load_all

load_all()

TINY_TRAIN = {"steps": 3, "batch_size": 4, "warmup_steps": 1, "image_size": 16, "eval_batch_size": 64}
# One tiny cell per task, as the task's own tests build them.
CELLS = {
    "fewshot-cls": {"dataset": "tiny-shapes", "backbone": "tiny-clip", "shots": 2, "task_config": {}},
    "base2new": {"dataset": "tiny-shapes", "backbone": "tiny-clip", "shots": 2, "task_config": {}},
    "detect": {"dataset": "tiny-det", "backbone": "tiny-detector", "shots": 2,
               "task_config": {"test_images": 6, "images_per_batch": 4, "pictures": 0}},
    "align": {"dataset": "tiny-scenes", "backbone": "tiny-clip", "shots": 40,
              "task_config": {"zero_shot_datasets": ["tiny-shapes"], "zero_shot_per_class": 5,
                              "knowledge_probe": False}},
}


def _cell(task: str, method: str, *, method_config: dict | None = None, **train) -> RunConfig:
    """A cell built in code, as a user would: the method name and nothing else about it."""
    cell = CELLS[task]
    trains = resolve_method(method, task)[0].trains
    return RunConfig(
        task=task, dataset=cell["dataset"], method=method, backbone=cell["backbone"],
        shots=cell["shots"] if trains else 0, seed=1 if trains else 0,
        train=TrainConfig(**{**TINY_TRAIN, **train}), method_config=dict(method_config or {}),
        task_config=task_config(TASKS.get(task), cell["task_config"], "task_config"),
    )


# ---- full-ft on align ------------------------------------------------------------------
def test_full_ft_aligns_both_towers(tmp_path):
    cell = _cell("align", "full-ft", method_config={"lr": 1e-3})
    validate_cells([cell])
    record = Runner(tmp_path).run(cell)
    assert record["status"] == "ok", record.get("traceback")
    assert record["image_input"] == "pixels"  # the image tower trains, so no cached features
    names = record["trainable_names"]
    assert any(n.startswith("backbone.image_tower.") for n in names)
    assert any(n.startswith("backbone.text_tower.") for n in names)
    assert record["trainable_params"] == record["total_params"]  # every parameter, as it claims
    assert math.isfinite(record["metrics"]["final_train_loss"])
    assert record["metrics"]["train_pairs"] == 40


# ---- lit:projection: fixed prompts encoded once -----------------------------------------
def _text_tower_calls(task: str, steps: int, tmp_path) -> tuple[int, dict]:
    """Forward calls of the text tower over one whole lit:projection cell."""
    runner = Runner(tmp_path / f"{task}-{steps}", cache_dir=tmp_path / "cache")
    cell = _cell(task, "lit:projection", steps=steps)
    pristine = runner._pristine_backbone(cell)
    calls: list[int] = []
    # A plain function: the runner deep-copies the backbone, and its hooks with it.
    handle = pristine.text_tower.register_forward_hook(lambda *args: calls.append(1))
    try:
        record = runner.run(cell)
    finally:
        handle.remove()
    assert record["status"] == "ok", record.get("traceback")
    return len(calls), record


@pytest.mark.parametrize("task", ["fewshot-cls", "detect"])
def test_lit_projection_encodes_its_prompts_once(task, tmp_path):
    few, _ = _text_tower_calls(task, 2, tmp_path)
    many, record = _text_tower_calls(task, 6, tmp_path)
    assert not any(n.startswith("backbone.text_tower.") for n in record["trainable_names"])
    assert few == many == 1  # one pass when the adapter is built, none per step or at evaluation


# ---- a variant named in code --------------------------------------------------------------
def test_variant_in_the_method_name_is_what_trains(tmp_path, tiny_backbone, tiny_classes):
    cell = _cell("fewshot-cls", "lit:bitfit")  # no preset in method_config
    validate_cells([cell])
    record = Runner(tmp_path).run(cell)
    assert record["status"] == "ok", record.get("traceback")
    lit, _ = resolve_method("lit")
    bitfit = lit(tiny_backbone, tiny_classes, lit.config_class(preset="bitfit"))
    expected = sorted(n for n, _ in bitfit.trainable_named_parameters())
    assert any(".bias" in n for n in expected)
    assert record["trainable_names"] == expected
    assert not any("adapters." in n for n in record["trainable_names"])  # lilt's would be here


def test_variant_contradicted_by_method_config_is_refused():
    cell = _cell("fewshot-cls", "lit:bitfit", method_config={"preset": "lilt"})
    with pytest.raises(ConfigError, match="sets preset='bitfit' but method_config gives 'lilt'"):
        validate_cells([cell])


# ---- divergence the per-step check cannot see -----------------------------------------------
def _nan_after_last_step(original):
    """``optimizer_step`` whose last update leaves a NaN weight (its loss was finite)."""

    def step(loss, optimizer, scheduler, params, *, grad_clip, step):
        value = original(loss, optimizer, scheduler, params, grad_clip=grad_clip, step=step)
        if step == TINY_TRAIN["steps"] - 1:
            with torch.no_grad():
                params[0].view(-1)[0] = float("nan")
        return value

    return step


@pytest.mark.parametrize(("task", "method"), [
    ("fewshot-cls", "coop"),
    ("detect", "cones"),
    ("align", "lit:projection"),
])
def test_nan_weights_after_the_last_step_fail_the_cell(task, method, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "optimizer_step", _nan_after_last_step(training.optimizer_step))
    record = Runner(tmp_path).run(_cell(task, method))
    assert record["status"] == "failed"
    assert record["error"].startswith("trainable parameters became non-finite at step 2 (the last)")
    assert "\n" not in record["error"]
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").iterdir())


@pytest.mark.parametrize("task", ["fewshot-cls", "base2new"])
def test_nan_logits_at_evaluation_fail_the_cell(task, tmp_path, monkeypatch):
    head = MethodAdapter.head

    def nan_when_scoring(self, image_embeddings, class_embeddings):
        logits = head(self, image_embeddings, class_embeddings)
        return logits if torch.is_grad_enabled() else torch.full_like(logits, float("nan"))

    monkeypatch.setattr(MethodAdapter, "head", nan_when_scoring)
    record = Runner(tmp_path).run(_cell(task, "zero-shot"))
    assert record["status"] == "failed"
    assert record["error"].startswith("evaluation produced non-finite logits")
    assert record["metrics"] == {}
