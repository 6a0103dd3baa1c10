"""Build the fidelity judge (``tunebench/models/judge.py`` defines and loads it): a small
CNN trained on every class of Fashion-MNIST and Animal-MNIST, minus every image of a
generation concept that can be a reference or a validation image.

The judge scores what methods learnt from references: had it trained on those very
images, a method that copies its references would be rewarded for the judge's
memory, not for learning the concept. So the candidates are cut by position
(``concepts.judge_excluded``) and, in case a source dataset holds the same picture
twice, by the sha256 of each image's bytes.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tunebench.builds.base import build_lock, write_build
from tunebench.datasets import load_dataset
from tunebench.datasets.concepts import CONCEPTS, judge_excluded
from tunebench.datasets.fewshot import stratified_split
from tunebench.engine.training import Optimization
from tunebench.models.judge import (
    RECIPES,
    SOURCES,
    Judge,
    JudgeNet,
    built_dir,
    judge_classes,
    recipe_hash,
    to_judge_input,
)
from tunebench.registry import BUILDS


def image_hashes(images: np.ndarray) -> list[str]:
    """sha256 of each image's bytes: what "the same image" means for the judge's hold-out."""
    return [hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images]


def judge_candidates(source: str) -> np.ndarray:
    """Positions in ``source``'s train split the judge may train on."""
    data = load_dataset(source)
    excluded = judge_excluded(source)
    banned = set(image_hashes(data.train.load(excluded)))
    rest = np.setdiff1d(np.arange(len(data.train)), excluded)
    return rest[[h not in banned for h in image_hashes(data.train.load(rest))]]


def training_data(recipe: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Balanced train subset (``per_class`` a class, concepts' references and validation
    images left out) and test subset, labels in judge order."""
    train_x, train_y, test_x, test_y = [], [], [], []
    offset = 0
    for source in SOURCES:
        data = load_dataset(source)
        candidates = judge_candidates(source)
        _, chosen = stratified_split(data.train.labels[candidates], per_class=recipe["per_class"],
                                     seed=recipe["seed"])
        pick = candidates[chosen]
        train_x.append(data.train.load(pick))
        train_y.append(data.train.labels[pick] + offset)
        _, pick = stratified_split(data.test.labels, per_class=recipe["test_per_class"], seed=0)
        test_x.append(data.test.load(pick))
        test_y.append(data.test.labels[pick] + offset)
        offset += data.num_classes
    return np.concatenate(train_x), np.concatenate(train_y), np.concatenate(test_x), np.concatenate(test_y)


def _concept_accuracy(classes: list[str], per_class: dict[str, float], test_y: np.ndarray) -> dict:
    """{concept: {accuracy, images}} on the judge's held-out test images of its class."""
    out = {}
    for concept, (source, classname) in CONCEPTS.items():
        key = f"{source}/{classname}"
        out[concept] = {"accuracy": per_class[key], "images": int((test_y == classes.index(key)).sum())}
    return out


def _shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random translations up to ``max_shift`` px: generated objects sit slightly off-centre."""
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2,), generator=generator).tolist()
    return pad[..., dy : dy + 28, dx : dx + 28]


# A build trains, whatever context asks for it: the judge is built on first use, and its
# first user may be scoring under torch.no_grad() (mini-t2i's self-check, a generation
# run's evaluation), where training would fail for want of gradients.
@torch.enable_grad()
def build_judge(name: str = "mnist20", force: bool = False) -> Path:
    recipe = RECIPES[name]
    target = built_dir(name)
    with build_lock(target.parent / f".{target.name}.lock"):
        if (target / "weights.safetensors").is_file() and not force:
            return target
        started = time.perf_counter()
        torch.manual_seed(recipe["seed"])
        train_x, train_y, test_x, test_y = training_data(recipe)
        classes = judge_classes()
        net = JudgeNet(recipe["width"], len(classes))
        inputs, labels = to_judge_input(train_x), torch.from_numpy(train_y)
        steps = recipe["steps"]
        run = Optimization(net.parameters(), steps=steps, schedule="one-cycle", lr=recipe["lr"], weight_decay=1e-4)
        generator = torch.Generator().manual_seed(recipe["seed"])
        net.train()
        for step in run.steps(desc=f"building judge {name}", inner=False, disable=steps < 100):
            index = torch.randint(0, len(labels), (recipe["batch_size"],), generator=generator)
            x = _shift(inputs[index], recipe["max_shift"], generator)
            run.update(F.cross_entropy(net(x), labels[index]), step)
        judge = Judge(net.eval(), classes, {})
        predicted = judge.classify(test_x)
        per_class = {c: round(float((predicted[test_y == i] == i).mean()), 4) for i, c in enumerate(classes)}
        record = {
            "recipe": recipe, "name": name, "recipe_hash": recipe_hash(name), "classes": classes,
            "build_seconds": round(time.perf_counter() - started, 1),
            "test_accuracy": round(float((predicted == test_y).mean()), 4),
            "test_images": int(len(test_y)), "test_accuracy_per_class": per_class,
            "train_images": int(len(train_y)),
            # The number the report shows beside fidelity: how often the judge names a
            # real, never-trained-on image of each concept correctly.
            "concept_accuracy": _concept_accuracy(classes, per_class, test_y),
        }
        write_build(target, {k: v.contiguous() for k, v in net.state_dict().items()}, record)
        print(f"judge {name} built in {record['build_seconds']} s: held-out test accuracy "
              f"{record['test_accuracy']:.3f} over {len(classes)} classes", file=sys.stderr)
        return target


@BUILDS.register("gen-judge")
def build_gen_judge(force: bool = False, *, name: str = "mnist20") -> Path:
    """The judge ``name`` (``mnist20`` judges the benchmark; ``load_judge`` asks for others)."""
    return build_judge(name, force=force)


build_gen_judge.summary = ("fidelity judge for the generation track: CNN on all 20 Fashion/Animal-MNIST classes "
                             "(concept references and validation images held out), ~1 min")
