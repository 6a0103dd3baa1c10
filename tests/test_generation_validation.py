"""Generation's three-way cut of each concept and the clean judge: no image that can
be a reference or a validation image is in the judge's training set (by content), the
judge's held-out accuracy per concept is recorded and reported, and a selection trial
scores held-out material only."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from tests.test_generation import cell, one_line_error
from tunebench.bench.runner import Runner
from tunebench.builds import judge as judge_build
from tunebench.datasets import concepts, load_dataset
from tunebench.errors import ConfigError
from tunebench.models.judge import RECIPES, judge_classes, load_judge
from tunebench.registry import TASKS
from tunebench.report.sections.generation import judge_table


def hashes(images: np.ndarray) -> set[str]:
    return {hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images}


def held_out_hashes() -> set[str]:
    """Every image of every concept that can be a reference (the whole pool) or a validation image."""
    out: set[str] = set()
    for name in concepts.CONCEPTS:
        data = load_dataset(f"concept:{name}")
        out |= hashes(data.train.load(np.arange(len(data.train))))
        out |= hashes(data.validation.load(np.arange(len(data.validation))))
    return out


def test_each_concepts_images_are_cut_into_three_disjoint_parts():
    for name, (source, classname) in concepts.CONCEPTS.items():
        data = load_dataset(source)
        label = data.classnames.index(classname)
        cut = concepts.partition(data.train.labels, label, name)
        parts = [set(cut.references.tolist()), set(cut.validation.tolist()), set(cut.judge.tolist())]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert set.union(*parts) == set(np.flatnonzero(data.train.labels == label).tolist())
        assert (len(cut.references), len(cut.validation)) == (concepts.REFERENCE_POOL, concepts.VALIDATION_IMAGES)
        concept = load_dataset(f"concept:{name}")
        assert np.array_equal(concept.train.load(np.arange(len(concept.train))), data.train.load(cut.references))
        assert np.array_equal(concept.validation.load(np.arange(len(concept.validation))),
                              data.train.load(cut.validation))
        # Any K, any seed draws from the pool alone.
        assert set(concept.references(concepts.REFERENCE_POOL, seed=5).tolist()) == set(range(len(concept.train)))


@pytest.mark.parametrize("recipe", ["tiny", "mnist20"])
def test_no_reference_or_validation_image_is_in_the_judges_training_set(recipe):
    train_x, train_y, _, _ = judge_build.training_data(RECIPES[recipe])
    assert len(train_x) > 0
    assert not hashes(train_x) & held_out_hashes()
    # The judge still learns every concept, from the images left to it.
    classes = judge_classes()
    for source, classname in concepts.CONCEPTS.values():
        assert (train_y == classes.index(f"{source}/{classname}")).sum() > 0


def test_the_judge_records_its_held_out_accuracy_per_concept():
    record = load_judge("tiny").record
    assert record["recipe"]["version"] >= 2
    assert set(record["concept_accuracy"]) == set(concepts.CONCEPTS)
    for facts in record["concept_accuracy"].values():
        assert isinstance(facts["accuracy"], float) and 0.0 <= facts["accuracy"] <= 1.0
        assert facts["images"] == RECIPES["tiny"]["test_per_class"]


def test_a_selection_trial_scores_held_out_material_only(tmp_path):
    assert TASKS.get("generation").selection_metric == "fidelity"
    final = cell("cones")
    trial = dataclasses.replace(final, eval_split="validation")
    runner = Runner(tmp_path)
    records = [runner.run(c) for c in (final, trial)]
    assert all(r["status"] == "ok" for r in records), [r.get("traceback") for r in records]
    final_metrics, trial_metrics = (r["metrics"] for r in records)
    assert 0.0 <= trial_metrics["fidelity"] <= 1.0
    assert "real_fidelity" in final_metrics and "real_fidelity" not in trial_metrics  # test images stay unread
    # Other sampling seeds and other comparison images: not the final run's numbers.
    assert trial_metrics["clip_i"] != final_metrics["clip_i"]
    for metrics in (final_metrics, trial_metrics):
        assert 0.0 <= metrics["judge_accuracy"] <= 1.0 and metrics["judge"] == load_judge("tiny").record["recipe_hash"]


def test_too_small_validation_or_concept_pool_is_one_line(monkeypatch):
    from tunebench.tasks import generation

    monkeypatch.setattr(generation, "MIN_VALIDATION_IMAGES", concepts.VALIDATION_IMAGES + 1)
    one_line_error(lambda: [dataclasses.replace(cell("cones"), eval_split="validation")],
                   f"{concepts.VALIDATION_IMAGES} validation images; selection needs")
    monkeypatch.setattr(concepts, "REFERENCE_POOL", 10_000)  # datasets are cached: build it afresh
    with pytest.raises(ConfigError, match="training images; 10000 references") as error:
        concepts.concept_dataset("zebra")
    assert "\n" not in str(error.value)


def test_the_report_shows_the_judges_held_out_accuracy():
    def run(concept, accuracy):
        return {"dataset": f"concept:{concept}",
                "metrics": {"judge": "abc123", "judge_accuracy": accuracy, "judge_held_out_images": 200}}

    lines = judge_table([run("zebra", 0.9), run("giraffe", 0.75), {"dataset": "concept:zebra", "metrics": {}}])
    text = "\n".join(lines)
    assert "| zebra | 90.0 | 200 | abc123 |" in text and "| giraffe | 75.0 | 200 | abc123 |" in text
    assert judge_table([{"dataset": "concept:zebra", "metrics": {"fidelity": 0.5}}]) == []


def test_the_judge_builds_on_first_use_under_no_grad(tmp_path, monkeypatch):
    """The judge is built when first used, and its first user may be scoring under
    torch.no_grad() (mini-t2i's self-check is): the build must still train."""
    import torch

    from tunebench.builds.judge import build_judge

    monkeypatch.setenv("TUNEBENCH_CACHE_DIR", str(tmp_path))
    with torch.no_grad():
        built = build_judge("tiny")
    assert (built / "weights.safetensors").is_file()
