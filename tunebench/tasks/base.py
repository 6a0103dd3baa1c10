"""What a task receives from the runner and what it hands back."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tunebench.bench.features import FeatureCache
from tunebench.models.base import VisionLanguageBackbone


@dataclass
class TaskContext:
    backbone: VisionLanguageBackbone  # a private copy: the task may change its weights
    device: torch.device
    features: FeatureCache


@dataclass
class TaskResult:
    adapter: torch.nn.Module
    metrics: dict
    train_seconds: float
    eval_seconds: float
    feature_seconds: float
    steps: int
    images_seen: int
    extra: dict = field(default_factory=dict)
    image_input: str = "cached-features"
    # Pictures the run made (sample grids, predictions drawn on test images): name ->
    # PNG bytes. The runner stores them as results/pictures/<config_hash>-<name>.png.
    pictures: dict[str, bytes] = field(default_factory=dict)
