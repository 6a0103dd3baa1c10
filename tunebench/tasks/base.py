"""What a task receives from the runner and what it hands back."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tunebench.config import method_config
from tunebench.engine.features import FeatureCache
from tunebench.methods.base import check_init, merge_variant
from tunebench.models.base import VisionLanguageBackbone


@dataclass
class TaskContext:
    backbone: VisionLanguageBackbone  # a private copy: the task may change its weights
    device: torch.device
    features: FeatureCache
    # A chained cell's start (``init_from``): the tensors its source run hands on (the
    # source method's ``chain_tensors`` of that run's artifact), loaded by the runner.
    start: dict[str, torch.Tensor] | None = None


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


def refuse_detectors(config) -> None:
    """Tasks that score whole images cannot use a detection backbone (it has no image
    projection): say so before any cell runs."""
    from tunebench.errors import ConfigError
    from tunebench.models.mini_det import is_detection_backbone

    if is_detection_backbone(config.backbone):
        raise ConfigError(f"backbone {config.backbone!r} is a detector: it runs the detect task; "
                          f"use its CLIP (e.g. mini-clip) for {config.task}")


def method_and_settings(config) -> tuple[type, object]:
    """The cell's method class and its typed settings, the variant after the colon
    included (``lit:bitfit`` trains bitfit's set even when method_config omits the
    preset). Every task reads its method through here, never ``config.method_config`` alone,
    so a start the method cannot express (``init``, e.g. coop with ensemble) is refused
    here, by the task's validate, before anything runs."""
    method_cls, values = merge_variant(config.method, config.task, config.method_config)
    check_init(method_cls, config.init, config.method)
    return method_cls, method_config(method_cls, values, f"method_config.{config.method}")


def with_start(adapter, context: TaskContext):
    """``adapter``, started from its cell's source run when the cell is chained
    (``context.start``; see bench/chain.py). A task that builds its adapters through here
    can run chained cells, and says so with ``chains = True``; call it inside the train
    clock, as what the start computes (a text pass) is tuning cost."""
    if context.start is not None:
        adapter.start_from(context.start)
    return adapter
