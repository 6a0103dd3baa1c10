"""Few-shot image classification (CoOp's protocol): K shots per class, fixed test split.

Frozen image towers are served from the shared feature cache; a method that trains
image-tower parameters gets pixels instead and is evaluated by re-encoding the test
split with its tuned tower. Feature computation is timed apart from training.

``FewShotClassification`` is also the frame of base-to-new generalisation
(``tasks/base2new.py``): a subclass says which classes train (``training_classes``)
and how the test split is scored (``score``); building, training, timing and feature
caching stay here, written once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from tunebench.config import RunConfig, TrainConfig
from tunebench.datasets import ClassificationDataset, fewshot_indices, load_dataset, test_indices
from tunebench.datasets.fewshot import check_shots, check_validation_room, validation_indices
from tunebench.engine.checkpoints import Checkpoints, QualityCurve, eval_costs, wants_curve
from tunebench.engine.feature_file import FeatureRows
from tunebench.engine.features import FeatureCache, encode_rows
from tunebench.engine.measure import Stopwatch
from tunebench.engine.training import (
    Optimization,
    ShuffledBatches,
    autocast_for,
    check_finite_logits,
)
from tunebench.errors import ConfigError
from tunebench.methods.base import ClassPrompts, MethodAdapter, Scorer
from tunebench.models.base import count_parameters
from tunebench.registry import TASKS
from tunebench.tasks.base import (
    TaskContext,
    TaskResult,
    method_and_settings,
    refuse_detectors,
    with_start,
)


@dataclass(frozen=True)
class TrainingClasses:
    """The classes a method is built for and trains on."""

    pool: ClassificationDataset  # its K shots per class are drawn from pool.train
    positions: np.ndarray | None = None  # pool.train index -> dataset.train index (None: the same)

    def prompts(self, init: str) -> ClassPrompts:
        """The classes' prompts, with the sweep's start (``RunConfig.init``)."""
        return ClassPrompts(tuple(self.pool.classnames), tuple(self.pool.templates), init)


@TASKS.register("fewshot-cls")
class FewShotClassification:
    summary = "few-shot image classification, K shots per class (CoOp protocol); metric: top-1"
    # The MethodAdapter hooks this task calls (the contract, see methods/base.py): the
    # adapter's forward while training, embed_images and scorer when scoring, and what
    # their defaults call.
    hooks = frozenset({"class_embeddings", "forward", "embed_images", "refine_image_embeddings",
                       "scorer", "head", "logit_scale"})
    # The metrics kept at each quality checkpoint (``metrics["curve"]``): the headline.
    curve_keys: tuple[str, ...] = ("top1",)
    # The higher-is-better metric that lr selection reads from a validation run's metrics.
    selection_metric: ClassVar[str] = "top1"
    # Adapters are built through ``tasks.base.with_start``: a cell may start from another run.
    chains: ClassVar[bool] = True

    def training_classes(self, dataset: ClassificationDataset) -> TrainingClasses:
        return TrainingClasses(dataset)

    def score(self, adapter: MethodAdapter, features: torch.Tensor | FeatureRows, labels: torch.Tensor,
              dataset: ClassificationDataset, config: RunConfig, device: torch.device) -> dict:
        """Metrics over the test images (features in the order of ``labels``)."""
        correct = count_correct(adapter, adapter.scorer, features, labels, config, device)
        return {"top1": correct / len(labels), "num_classes": dataset.num_classes, "test_images": len(labels)}

    def validation_images(self, dataset: ClassificationDataset, classes: TrainingClasses,
                          per_class: int) -> tuple[str, np.ndarray]:
        """Where a validation run is scored: ("val" or "train", indices into that split of
        ``dataset``), the training classes' images only (see ``datasets.fewshot``)."""
        split, indices = validation_indices(dataset, per_class)
        source = dataset.val if split == "val" else dataset.train
        # The training classes are the dataset's first pool.num_classes labels in order (all
        # of them, or base2new's base half), so their labels read the same in both.
        return split, indices[source.labels[indices] < classes.pool.num_classes]

    def validation_score(self, adapter: MethodAdapter, features: torch.Tensor | FeatureRows,
                         labels: torch.Tensor, classes: TrainingClasses, config: RunConfig,
                         device: torch.device) -> dict:
        """Top-1 among the training classes over their validation images, under the key
        ``selection_metric`` names (base2new: ``base``; its new classes stay unseen)."""
        correct = count_correct(adapter, adapter.scorer, features, labels, config, device)
        return {self.selection_metric: correct / len(labels), "num_classes": classes.pool.num_classes,
                "validation_images": len(labels)}

    def validate(self, config: RunConfig) -> None:
        refuse_detectors(config)
        dataset = load_dataset(config.dataset)  # unknown dataset or missing data fails here, early
        if not isinstance(dataset, ClassificationDataset):
            raise ConfigError(f"{config.task} needs a classification dataset (e.g. fashion-mnist, "
                              f"imagefolder:PATH); {config.dataset!r} is not one")
        method_cls, _ = method_and_settings(config)
        classes = self.training_classes(dataset)
        if method_cls.trains:  # one line, before any cell:
            check_shots(classes.pool, config.shots)  # K over a class's images
            check_validation_room(classes.pool, config.shots, config.train.val_per_class)  # K + validation

    def run(self, config: RunConfig, context: TaskContext) -> TaskResult:
        dataset = load_dataset(config.dataset)
        method_cls, settings = method_and_settings(config)
        train_cfg, device, backbone = config.train, context.device, context.backbone
        train_watch, eval_watch = Stopwatch(device), Stopwatch(device)
        classes = self.training_classes(dataset)

        with train_watch.measure():  # building the adapter (e.g. ConES's text pass) is tuning cost
            adapter = with_start(method_cls(backbone, classes.prompts(config.init), settings).to(device), context)
        pixels = backbone.image_tower_trains()
        cache_seconds_before = context.features.seconds_computing

        # Selection trials are scored on validation images, final runs on the test subset.
        validating = config.eval_split == "validation"
        if validating:
            split, eval_idx = self.validation_images(dataset, classes, train_cfg.val_per_class)
        else:
            split, eval_idx = "test", test_indices(dataset, train_cfg.test_per_class)
        source = _source(dataset, split)
        eval_labels = torch.from_numpy(source.labels[eval_idx])
        # Frozen towers: evaluation features stay on disk and are scored a batch at a time
        # (see count_correct); fetched before training, so that checkpoints can score on them.
        eval_features = None if pixels else _cached(context.features, backbone, dataset, split, eval_idx,
                                                    config, device)

        def score() -> dict:
            # A tuned tower must encode the images itself at every scoring: evaluation cost.
            features = eval_features if not pixels else encode_rows(
                backbone, source, eval_idx, image_size=train_cfg.image_size,
                device=device, batch_size=train_cfg.eval_batch_size)
            if validating:
                return self.validation_score(adapter, features, eval_labels, classes, config, device)
            return self.score(adapter, features, eval_labels, dataset, config, device)

        timing_only = getattr(backbone, "timing_only", False)
        curve = QualityCurve(score, self.curve_keys, train_clock=train_watch) \
            if wants_curve(config, trains=method_cls.trains, scores=not timing_only) else None

        outcome = None
        if method_cls.trains:
            drawn = fewshot_indices(classes.pool, config.shots, config.seed,
                                    val_per_class=train_cfg.val_per_class)
            labels = torch.from_numpy(classes.pool.train.labels[drawn])
            train_idx = drawn if classes.positions is None else classes.positions[drawn]
            if pixels:
                inputs = backbone.preprocess(dataset.train.load(train_idx), train_cfg.image_size)
            else:
                inputs = _cached(context.features, backbone, dataset, "train", train_idx, config, device).tensor()
            with train_watch.measure():
                outcome = train_classifier(
                    adapter, inputs, labels, pixels=pixels, config=train_cfg,
                    seed=config.seed, device=device, label=config.label,
                    checkpoints=None if curve is None else curve.checkpoints(),
                )

        if curve is not None:  # the end of training was scored, by the last checkpoint
            metrics = {**curve.final, "curve": curve.points}
        else:
            with eval_watch.measure():
                metrics = score()
        metrics = {
            **metrics,
            "train_images": 0 if outcome is None else int(len(labels)),
            "final_train_loss": None if outcome is None else round(outcome.final_loss, 5),
        }
        if timing_only:
            metrics = timing_only_metrics(metrics, backbone)
        seconds, curve_costs = eval_costs(eval_watch, curve)

        return TaskResult(
            adapter=adapter,
            metrics=metrics,
            train_seconds=train_watch.seconds,
            eval_seconds=seconds,
            feature_seconds=context.features.seconds_computing - cache_seconds_before,
            steps=0 if outcome is None else outcome.steps,
            images_seen=0 if outcome is None else outcome.images_seen,
            image_input="pixels" if pixels else "cached-features",
            # Median seconds of one training step (the engine's clock; None: no training).
            extra={**curve_costs,
                   **({} if outcome is None else {"step_seconds": round(outcome.step_seconds, 6)})},
        )


# What a timing-only run keeps of its metrics: sizes, never a score (random weights).
TIMING_KEEPS = ("num_classes", "test_images", "train_images")


def timing_only_metrics(metrics: dict, backbone) -> dict:
    """A timing-only backbone's run (random weights, ``cls-timing:*``) records what its
    cost depends on instead of scores: the classes, the text tower's size and the token
    length every prompt is padded to. The report shows these runs as costs alone."""
    kept = {k: metrics[k] for k in TIMING_KEEPS if k in metrics}
    text = [*backbone.text_tower.parameters(), *backbone.text_projection.parameters()]
    return {**kept, "timing_only": True, "text_params": count_parameters(text),
            "text_tokens": int(backbone.text_tokens)}


@dataclass
class TrainOutcome:
    steps: int
    images_seen: int
    final_loss: float
    step_seconds: float  # median seconds per step (Optimization.median_step_seconds)


def train_classifier(
    adapter,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    pixels: bool,
    config: TrainConfig,
    seed: int,
    device: torch.device,
    label: str = "training",
    checkpoints: Checkpoints | None = None,
) -> TrainOutcome:
    """Cross-entropy training of ``adapter`` on ``inputs`` (pixels or cached features),
    scored at ``checkpoints`` along the way (see ``engine/checkpoints.py``)."""
    run = Optimization.for_run(adapter.optimizer_groups(), config)
    batches = ShuffledBatches(len(labels), config.batch_size, seed)
    for step in run.steps(desc=label, model=adapter, checkpoints=checkpoints):
        index = batches.next()
        x = inputs[index].to(device, non_blocking=True)
        y = labels[index].to(device, non_blocking=True)
        with autocast_for(device, config.precision):
            logits = adapter(x, pixels=pixels)
        run.update(F.cross_entropy(logits.float(), y), step)
    return TrainOutcome(steps=config.steps, images_seen=config.steps * batches.batch, final_loss=run.loss,
                        step_seconds=run.median_step_seconds)


def _source(dataset: ClassificationDataset, split: str):
    return {"train": dataset.train, "val": dataset.val, "test": dataset.test}[split]


def _cached(cache: FeatureCache, backbone, dataset, split, indices, config: RunConfig, device) -> FeatureRows:
    return cache.rows(
        backbone, _source(dataset, split), indices, dataset=dataset.name, split=split,
        image_size=config.train.image_size, device=device, batch_size=config.train.eval_batch_size,
    )


@torch.no_grad()
def count_correct(adapter: MethodAdapter, make_scorer: Callable[[], Scorer | None],
                  features: torch.Tensor | FeatureRows, labels: torch.Tensor, config: RunConfig,
                  device: torch.device) -> int | None:
    """Top-1 hits of the scorer ``make_scorer()`` returns over the test features; None
    when it returns none. The scorer is made once, so a text side that does not depend
    on the image is encoded once. ``features`` is sliced one evaluation batch at a time,
    so features on disk (``FeatureRows``) are read a batch at a time."""
    adapter.eval()
    with autocast_for(device, config.train.precision):
        score = make_scorer()
        if score is None:
            return None
        correct = 0
        for start in range(0, len(labels), config.train.eval_batch_size):
            batch = features[start : start + config.train.eval_batch_size].to(device)
            logits = score(adapter.embed_images(batch))
            check_finite_logits(logits)
            correct += int((logits.argmax(-1).cpu() == labels[start : start + len(batch)]).sum())
    return correct
