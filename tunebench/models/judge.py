"""The fidelity judge: a small CNN that names the class of a 28 × 28 grey image.

It is trained by the harness on *every* class of Fashion-MNIST and Animal-MNIST (20
labels), held-out generation concepts included: it is an evaluator, never a tuning
signal, so it must know the concepts that the text-to-image model was kept from.
Subject fidelity is the share of generated samples it labels as the concept.

Built once per machine and cached with its recipe and held-out test accuracy
(``tunebench build gen-judge``; it is also built on first use, ~1 min on one core).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tunebench.bench.progress import progress
from tunebench.errors import ConfigError
from tunebench.paths import tunebench_cache_dir
from tunebench.registry import BUILDS

SOURCES = ("fashion-mnist", "animal-mnist")
# "mnist20" judges the benchmark; "tiny" is the same code on a sliver of data (tests).
RECIPES = {
    "mnist20": {"version": 1, "per_class": 2000, "steps": 1500, "batch_size": 64, "lr": 2e-3,
                "width": 24, "max_shift": 2, "test_per_class": 200, "seed": 0},
    "tiny": {"version": 1, "per_class": 40, "steps": 30, "batch_size": 32, "lr": 3e-3,
             "width": 4, "max_shift": 2, "test_per_class": 10, "seed": 0},
}


def recipe_hash(name: str) -> str:
    return hashlib.sha256(json.dumps(RECIPES[name], sort_keys=True).encode()).hexdigest()[:12]


def built_dir(name: str) -> Path:
    return tunebench_cache_dir() / "models" / f"judge-{name}-{recipe_hash(name)}"


def judge_classes() -> list[str]:
    """The judge's labels, ``dataset/classname``, in label order."""
    from tunebench.datasets import load_dataset

    return [f"{source}/{c}" for source in SOURCES for c in load_dataset(source).classnames]


class JudgeNet(nn.Module):
    def __init__(self, width: int, classes: int) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(),
                    nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(1, w), *block(w, 2 * w))  # 28 -> 14 -> 7
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * 49, 128), nn.ReLU(), nn.Linear(128, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_judge_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N,H,W) or (N,H,W,3) of any size -> normalised (N,1,28,28)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).mean(1, keepdim=True)
    if x.shape[-1] != 28 or x.shape[-2] != 28:
        x = F.interpolate(x, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
    return (x - 0.5) / 0.5


@dataclass
class Judge:
    net: JudgeNet
    classes: list[str]
    record: dict

    def label(self, source: str, classname: str) -> int:
        key = f"{source}/{classname}"
        if key not in self.classes:
            raise ConfigError(f"the fidelity judge does not know {key!r}")
        return self.classes.index(key)

    @torch.no_grad()
    def classify(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
        self.net.eval()
        out = [self.net(to_judge_input(images[s : s + batch_size])).argmax(-1)
               for s in range(0, len(images), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def _training_data(recipe: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Balanced train subset (``per_class`` a class) and test subset, labels in judge order."""
    from tunebench.datasets import load_dataset
    from tunebench.datasets.fewshot import stratified_split

    train_x, train_y, test_x, test_y = [], [], [], []
    offset = 0
    for source in SOURCES:
        data = load_dataset(source)
        _, pick = stratified_split(data.train.labels, per_class=recipe["per_class"], seed=recipe["seed"])
        train_x.append(data.train.load(pick))
        train_y.append(data.train.labels[pick] + offset)
        _, pick = stratified_split(data.test.labels, per_class=recipe["test_per_class"], seed=0)
        test_x.append(data.test.load(pick))
        test_y.append(data.test.labels[pick] + offset)
        offset += data.num_classes
    return np.concatenate(train_x), np.concatenate(train_y), np.concatenate(test_x), np.concatenate(test_y)


def _shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random translations up to ``max_shift`` px: generated objects sit slightly off-centre."""
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2,), generator=generator).tolist()
    return pad[..., dy : dy + 28, dx : dx + 28]


def build_judge(name: str = "mnist20", force: bool = False) -> Path:
    from safetensors.torch import save_file

    from tunebench.models.mini_clip import _build_lock

    recipe = RECIPES[name]
    target = built_dir(name)
    with _build_lock(target.parent / f".{target.name}.lock"):
        if (target / "weights.safetensors").is_file() and not force:
            return target
        started = time.perf_counter()
        torch.manual_seed(recipe["seed"])
        train_x, train_y, test_x, test_y = _training_data(recipe)
        classes = judge_classes()
        net = JudgeNet(recipe["width"], len(classes))
        inputs, labels = to_judge_input(train_x), torch.from_numpy(train_y)
        optimizer = torch.optim.AdamW(net.parameters(), lr=recipe["lr"], weight_decay=1e-4)
        steps = recipe["steps"]
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe["lr"], total_steps=steps)
        generator = torch.Generator().manual_seed(recipe["seed"])
        net.train()
        for _ in progress(range(steps), desc=f"building judge {name}", unit="step", disable=steps < 100):
            index = torch.randint(0, len(labels), (recipe["batch_size"],), generator=generator)
            x = _shift(inputs[index], recipe["max_shift"], generator)
            loss = F.cross_entropy(net(x), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        judge = Judge(net.eval(), classes, {})
        predicted = judge.classify(test_x)
        per_class = {c: round(float((predicted[test_y == i] == i).mean()), 4) for i, c in enumerate(classes)}
        record = {
            "recipe": recipe, "name": name, "recipe_hash": recipe_hash(name), "classes": classes,
            "build_seconds": round(time.perf_counter() - started, 1),
            "test_accuracy": round(float((predicted == test_y).mean()), 4),
            "test_images": int(len(test_y)), "test_accuracy_per_class": per_class,
        }
        _publish(target, {k: v.contiguous() for k, v in net.state_dict().items()}, record, save_file)
        print(f"judge {name} built in {record['build_seconds']} s: held-out test accuracy "
              f"{record['test_accuracy']:.3f} over {len(classes)} classes", file=sys.stderr)
        return target


def _publish(target: Path, state: dict, record: dict, save_file) -> None:
    import os
    import shutil
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    save_file(state, str(staging / "weights.safetensors"))
    (staging / "recipe.json").write_text(json.dumps(record, indent=2) + "\n")
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)


@functools.cache
def _load(name: str, folder: str) -> Judge:
    from safetensors.torch import load_file

    record = json.loads((Path(folder) / "recipe.json").read_text())
    net = JudgeNet(RECIPES[name]["width"], len(record["classes"]))
    net.load_state_dict(load_file(str(Path(folder) / "weights.safetensors")))
    return Judge(net.eval().requires_grad_(False), record["classes"], record)


def load_judge(name: str) -> Judge:
    """The judge ``name`` (built first if this machine has none); cached per process."""
    if name not in RECIPES:
        raise ConfigError(f"unknown judge {name!r}; valid: {', '.join(sorted(RECIPES))}")
    return _load(name, str(build_judge(name)))


@BUILDS.register("gen-judge")
def build_gen_judge(force: bool = False) -> Path:
    return build_judge("mnist20", force=force)


build_gen_judge.summary = "fidelity judge for the generation track: CNN on all 20 Fashion/Animal-MNIST classes, ~1 min"
