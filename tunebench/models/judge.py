"""The fidelity judge: a small CNN that names the class of a 28 × 28 grey image.

It is trained by the harness on *every* class of Fashion-MNIST and Animal-MNIST (20
labels), held-out generation concepts included: it is an evaluator, never a tuning
signal, so it must know the concepts that the text-to-image model was kept from. It
never trains on an image that can be a reference (any K, any seed) or a validation
image of a concept (``datasets/concepts.py``), and its record holds its accuracy on
held-out real images of each concept. Subject fidelity is the share of generated
samples it labels as the concept.

Built once per machine and cached with its recipe and held-out test accuracy
(``tunebench build gen-judge``, ``tunebench/builds/judge.py``; it is also built on
first use, ~1 min on one core).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tunebench.errors import ConfigError
from tunebench.paths import tunebench_cache_dir
from tunebench.registry import build_model

SOURCES = ("fashion-mnist", "animal-mnist")
# "mnist20" judges the benchmark; "tiny" is the same code on a sliver of data (tests).
# Version 2: concepts' reference pools and validation images are held out of training.
RECIPES = {
    "mnist20": {"version": 2, "per_class": 2000, "steps": 1500, "batch_size": 64, "lr": 2e-3,
                "width": 24, "max_shift": 2, "test_per_class": 200, "seed": 0},
    "tiny": {"version": 2, "per_class": 40, "steps": 30, "batch_size": 32, "lr": 3e-3,
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
    return _load(name, str(build_model("gen-judge", name=name)))
