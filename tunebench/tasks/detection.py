"""``detect``: few-shot open-vocabulary detection and instance segmentation (COCO AP).

A cell tunes one method on K annotated images per class (``shots``; every class,
base and novel, as in generalised few-shot detection) drawn from the dataset's
``train`` split, then scores the ``test`` split with pycocotools: bbox AP, AP50, AP75
and segm AP on novel and base classes apart.

The detector classifies regions by their cosine to the method's class embeddings
(``models/detector.py``), so the classification methods run unchanged. The task calls
two method hooks: ``class_embeddings`` and ``refine_image_embeddings`` on every region
embedding (the identity unless the method trains an image side, CLIP-Adapter-style;
its parameters then train on the cached regions like class embeddings do).

- methods that only learn class embeddings (zero-shot, cones, coop,
  textual-inversion) leave the detector frozen. Its regions are computed once per
  image into a shared cache (time kept out of train and eval, as the classification
  track keeps frozen image features out), and a training step is region
  classification: the cached proposals of the batch's images, every foreground one
  and up to three background ones per foreground, against [background; classes];
- methods that train detector or tower weights (``lit:heads``, ``full-ft``) run the
  detector on pixels every step with every detection loss (RPN, classification, box,
  mask), and are evaluated by running their tuned detector on the test images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tunebench.config import RunConfig, build_dataclass
from tunebench.datasets import load_dataset
from tunebench.datasets.detection import DetectionDataset, DetectionSplit, fewshot_images
from tunebench.engine.checkpoints import Checkpoints, QualityCurve, eval_costs, wants_curve
from tunebench.engine.measure import Stopwatch
from tunebench.engine.training import (
    Optimization,
    ShuffledBatches,
    autocast_for,
    check_finite_logits,
)
from tunebench.errors import ConfigError
from tunebench.methods.base import ClassPrompts
from tunebench.models.detector import to_image_list
from tunebench.models.mini_det import is_detection_backbone
from tunebench.paths import tunebench_cache_dir
from tunebench.registry import TASKS
from tunebench.tasks.base import TaskContext, TaskResult, method_and_settings, with_start
from tunebench.tasks.detection_draw import draw_predictions
from tunebench.tasks.detection_eval import coco_metrics, coco_results, detections
from tunebench.tasks.detection_regions import RegionCache, compute_regions

BACKGROUND_PER_OBJECT = 3  # background regions per foreground region in a cached step
# Fewer held-out images than this make AP too coarse to rank learning rates by.
MIN_VALIDATION_IMAGES = 10
# The box APs kept at each quality checkpoint (``metrics["curve"]``); novel is the headline.
CURVE_KEYS = ("novel_bbox_ap", "base_bbox_ap", "all_bbox_ap")


@dataclass
class DetectConfig:
    test_images: int | None = None  # evaluate the first N test images (null = all)
    images_per_batch: int = 16  # when computing regions or evaluating
    pictures: int = 4  # test images drawn with the run's predictions
    picture_min_score: float = 0.3

    def __post_init__(self) -> None:
        if self.test_images is not None and self.test_images < 1:
            raise ValueError("test_images must be >= 1 or null")
        if self.images_per_batch < 1 or self.pictures < 0:
            raise ValueError("images_per_batch must be >= 1 and pictures >= 0")


@TASKS.register("detect")
class Detect:
    summary = "few-shot open-vocabulary detection + instance segmentation; metric: COCO bbox/segm AP (novel, base)"
    config_class = DetectConfig
    shots_unit = "images per class"
    # The MethodAdapter hooks this task calls (see methods/base.py). Region embeddings
    # arrive through the detector's own projection, L2-normalised (that is what the
    # region cache holds), and go through the method's refine_image_embeddings.
    hooks = frozenset({"class_embeddings", "refine_image_embeddings"})
    # Higher is better; what `tunebench select` compares trials by. The report's verdict is
    # novel box AP, so a method's lr is chosen for that number; selecting on all-class AP
    # would choose for base classes the detector was built on, where methods barely
    # differ. Base AP stays in every record, so a choice that buys novel AP by losing
    # base classes shows up in the final runs.
    selection_metric = "novel_bbox_ap"
    # Adapters are built through ``tasks.base.with_start``: a cell may start from another run.
    chains = True

    def validate(self, config: RunConfig) -> None:
        dataset = load_dataset(config.dataset)
        if not isinstance(dataset, DetectionDataset):
            raise ConfigError(f"detect needs a detection dataset (det-mnist, det-textile, coco:PATH); "
                              f"{config.dataset!r} is not one")
        method_cls, _ = method_and_settings(config)  # a method that does not serve detect stops here
        if not is_detection_backbone(config.backbone):
            raise ConfigError(f"backbone {config.backbone!r} has no detector: use mini-det, or det:NAME "
                              f"for a detector on backbone NAME")
        build_dataclass(DetectConfig, config.task_config, "task_config")
        dataset.split("test")
        if config.eval_split == "validation":
            _check_validation_split(dataset)
        if method_cls.trains:
            fewshot_images(dataset.split("train"), list(range(dataset.num_classes)), config.shots, config.seed,
                           dataset.classnames)

    def run(self, config: RunConfig, context: TaskContext) -> TaskResult:
        dataset: DetectionDataset = load_dataset(config.dataset)
        settings = build_dataclass(DetectConfig, config.task_config, "task_config")
        method_cls, method_settings = method_and_settings(config)
        backbone, device, train_cfg = context.backbone, context.device, config.train
        cache = RegionCache(tunebench_cache_dir() / "regions")
        train_watch, eval_watch = Stopwatch(device), Stopwatch(device)

        with train_watch.measure():  # building the adapter (e.g. ConES's text pass) is tuning cost
            classes = ClassPrompts(dataset.classnames, dataset.templates, config.init)
            adapter = with_start(method_cls(backbone, classes, method_settings).to(device), context)
        live = backbone.image_tower_trains() or any(p.requires_grad for p in backbone.detector.parameters())

        split_name = config.eval_split
        test = dataset.split(split_name)  # the scored split: test, or validation in a selection trial
        test_positions = list(range(len(test)))
        if split_name == "test":
            test_positions = test_positions[: settings.test_images]
        # A frozen detector's scored regions come from the shared cache, fetched before
        # training so that checkpoints can score on them.
        cached_test = None if live else cache.get(backbone, dataset, split_name, test_positions, "test",
                                                  device=device, batch_size=settings.images_per_batch)
        latest: dict = {}  # the last scoring's detections, drawn in the pictures

        def score() -> dict:
            # The tuned detector must see the test images itself at every scoring: evaluation cost.
            regions = cached_test if not live else compute_regions(
                backbone, test, test_positions, "test", device=device, batch_size=settings.images_per_batch,
                desc="regions (tuned detector)")
            metrics, latest["dets"] = _score(adapter, regions, test, test_positions, dataset, train_cfg.precision,
                                            device)
            return metrics

        curve = QualityCurve(score, CURVE_KEYS, train_clock=train_watch) \
            if wants_curve(config, trains=method_cls.trains) else None
        checkpoints = None if curve is None else curve.checkpoints()

        outcome, positions = None, []
        if method_cls.trains:
            train_split = dataset.split("train")
            positions = fewshot_images(train_split, list(range(dataset.num_classes)), config.shots, config.seed,
                                       dataset.classnames)
            if live:
                with train_watch.measure():
                    outcome = _train_live(adapter, train_split, positions, config, device, checkpoints)
            else:
                regions = cache.get(backbone, dataset, "train", positions, "train", device=device,
                                    batch_size=settings.images_per_batch)
                with train_watch.measure():
                    outcome = _train_cached(adapter, regions, positions, config, device, checkpoints)

        if curve is not None:  # the end of training was scored, by the last checkpoint
            metrics = {**curve.final, "curve": curve.points}
        else:
            with eval_watch.measure():
                metrics = score()
        dets = latest["dets"]
        pictures = {}
        if settings.pictures and split_name == "test":
            shown = picture_positions(test, test_positions, settings.pictures, dataset.novel_labels)
            pictures["predictions"] = draw_predictions(
                [test.load(p) for p in shown], [dets[p] for p in shown], dataset.classnames, dataset.novel,
                min_score=settings.picture_min_score)
        metrics.update(
            **{f"{split_name}_images": len(test_positions)},
            train_images=len(positions),
            train_objects=sum(dataset.split("train").objects_in(p) for p in positions),
            final_train_loss=None if outcome is None else round(outcome["loss"], 5),
        )
        seconds, curve_costs = eval_costs(eval_watch, curve)
        return TaskResult(
            adapter=adapter, metrics=metrics,
            train_seconds=train_watch.seconds, eval_seconds=seconds,
            feature_seconds=cache.seconds_computing,
            steps=0 if outcome is None else outcome["steps"],
            images_seen=0 if outcome is None else outcome["images_seen"],
            image_input="pixels" if live else "cached-regions",
            pictures=pictures, extra=curve_costs,
        )


def _check_validation_split(dataset: DetectionDataset) -> None:
    """A selection trial needs held-out images, enough of them, and every class in them
    (a class without a ground-truth object has no AP); the images themselves are checked
    last, since that reads every train and test image."""
    if "validation" not in dataset.splits:
        raise ConfigError(f"{dataset.name} has no validation split for selection: add "
                          f"{dataset.root}/annotations/validation.json (images in neither train nor test)")
    validation = dataset.split("validation")
    if len(validation) < MIN_VALIDATION_IMAGES:
        raise ConfigError(f"{dataset.name} has {len(validation)} validation images; selection needs "
                          f">= {MIN_VALIDATION_IMAGES}: annotate more")
    held = set().union(*(validation.labels_in(p) for p in range(len(validation))))
    absent = [dataset.classnames[i] for i in range(dataset.num_classes) if i not in held]
    if absent:
        raise ConfigError(f"{dataset.name}: no validation image holds {', '.join(map(repr, absent))}; "
                          f"selection needs every class there: annotate some")
    _check_held_out(dataset, validation)


def _check_held_out(dataset: DetectionDataset, validation: DetectionSplit) -> None:
    """No validation image may also be a train or test image (same pixels, whatever its
    file name): a trial scored on images it tuned on, or on the test images, would choose
    the lr for what the final runs are then judged on."""
    seen = {name: {digest: p for p, digest in enumerate(dataset.split(name).image_hashes())}
            for name in ("train", "test")}
    for position, digest in enumerate(validation.image_hashes()):
        for name, where in seen.items():
            if digest in where:
                raise ConfigError(
                    f"{dataset.name}: validation image {_file(validation, position)} is also {name} image "
                    f"{_file(dataset.split(name), where[digest])}; selection must score held-out images: "
                    f"remove it from {dataset.root}/annotations/validation.json")


def _file(split: DetectionSplit, position: int) -> str:
    return f"{split.images[position]['file_name']} (id {split.image_id(position)})"


def _score(adapter, regions: dict, test: DetectionSplit, positions: list[int], dataset: DetectionDataset,
           precision: str, device) -> tuple[dict, dict]:
    """COCO metrics of the adapter's detections on the test images, and the detections."""
    adapter.eval()
    with torch.no_grad(), autocast_for(device, precision):
        classes = adapter.class_embeddings().float()
    check_finite_logits(classes, "class embeddings")  # every region would score NaN
    dets = {p: detections(_refined(adapter, regions[p], device, precision), classes,
                          adapter.backbone.detector, tuple(test.load(p).shape[:2]))
            for p in positions}
    metrics = coco_metrics(test, dataset, coco_results(test, dets, dataset.category_ids),
                           [test.image_id(p) for p in positions])
    return metrics, dets


@torch.no_grad()
def _refined(adapter, regions: dict, device, precision) -> dict:
    """One image's regions with the method's image side applied to their embeddings."""
    with autocast_for(device, precision):
        embeddings = adapter.refine_image_embeddings(regions["embeddings"].to(device))
    return {**regions, "embeddings": embeddings.float()}


def picture_positions(split: DetectionSplit, positions: list[int], count: int, novel: list[int]) -> list[int]:
    """The test images to draw: the first ones holding a novel-class object, since novel
    classes are what the methods differ on, topped up in order with the others."""
    novel_set = set(novel)
    return sorted(positions, key=lambda p: not (split.labels_in(p) & novel_set))[:count]  # stable


class _Batches(ShuffledBatches):
    """Image positions in reshuffled epochs, as the classification loop draws them."""

    def __init__(self, positions: list[int], batch: int, seed: int) -> None:
        super().__init__(len(positions), batch, seed)
        self.positions = np.asarray(positions)

    def next(self) -> list[int]:
        return [int(p) for p in self.positions[super().next().numpy()]]


def _train_cached(adapter, regions: dict[int, dict], positions, config: RunConfig, device,
                  checkpoints: Checkpoints | None = None) -> dict:
    """Region classification on a frozen detector's cached regions."""
    train_cfg, detector = config.train, adapter.backbone.detector
    run = Optimization.for_run(adapter.optimizer_groups(), train_cfg)
    batches = _Batches(positions, train_cfg.batch_size, config.seed)
    sampler = torch.Generator().manual_seed(config.seed + 1)
    for step in run.steps(desc=config.label, model=adapter, checkpoints=checkpoints):
        embeddings, labels = [], []
        for position in batches.next():
            region = regions[position]
            fg = torch.where(region["labels"] > 0)[0]
            bg = torch.where(region["labels"] == 0)[0]
            bg = bg[torch.randperm(len(bg), generator=sampler)[: BACKGROUND_PER_OBJECT * max(1, len(fg))]]
            keep = torch.cat([fg, bg])
            embeddings.append(region["embeddings"][keep])
            labels.append(region["labels"][keep])
        with autocast_for(device, train_cfg.precision):
            refined = adapter.refine_image_embeddings(torch.cat(embeddings).to(device))
            logits = detector.logits(refined, adapter.class_embeddings())
        run.update(F.cross_entropy(logits.float(), torch.cat(labels).to(device)), step)
    return {"steps": train_cfg.steps, "images_seen": train_cfg.steps * batches.batch, "loss": run.loss}


def _train_live(adapter, split, positions, config: RunConfig, device,
                checkpoints: Checkpoints | None = None) -> dict:
    """Every detection loss through the (partly) trainable detector, on pixels."""
    train_cfg, backbone = config.train, adapter.backbone
    run = Optimization.for_run(adapter.optimizer_groups(), train_cfg)
    batches = _Batches(positions, train_cfg.batch_size, config.seed)
    train_tower = backbone.image_tower_trains()
    targets_of = {p: split.target(p) for p in positions}
    for step in run.steps(desc=config.label, model=adapter, checkpoints=checkpoints):
        chosen = batches.next()
        images = to_image_list([backbone.pixels(split.load(p)) for p in chosen]).to(device)
        targets = [{k: torch.from_numpy(targets_of[p][k]).to(device) for k in ("boxes", "labels", "masks")}
                   for p in chosen]
        with autocast_for(device, train_cfg.precision):
            losses = backbone.detector.losses(backbone.image_tower, images, targets, adapter.class_embeddings(),
                                              train_tower=train_tower, refine=adapter.refine_image_embeddings)
        run.update(sum(v.float() for v in losses.values()), step)
    return {"steps": train_cfg.steps, "images_seen": train_cfg.steps * batches.batch, "loss": run.loss}
