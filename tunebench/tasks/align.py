"""``align``: make a CLIP from two pretrained towers by contrastive tuning (the LilT study).

A run tunes what its method unfreezes (``lit`` presets, or ``full-ft``) with a
symmetric InfoNCE loss and a learnable temperature on N training pairs (N is the
cell's ``shots``), then measures:

- retrieval R@1/5/10, image→text and text→image, on the held-out test pairs;
- zero-shot top-1 on classification datasets never seen in alignment;
- knowledge kept: ImageNet top-1 agreement of the image tower on sample photos, and
  the drift of the text tower's sentence similarities (see ``knowledge.py``).

With ``eval_split: validation`` (a selection trial) retrieval is scored on the
dataset's validation pairs instead, which are held out of the training pool (no draw
of training pairs, any size or seed, holds one), and the zero-shot and knowledge
measures are skipped: they read test images, and selection reads ``mean_r1`` alone.

Costs follow the rest of tunebench: a locked image tower is served from the feature
cache; a frozen text tower (no text weight and no adapter trains) is run once over
the unique captions before the loop, and that pass counts as training time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from tunebench.config import RunConfig, build_dataclass
from tunebench.datasets import load_dataset, test_indices
from tunebench.datasets.base import ClassificationDataset
from tunebench.datasets.pairs import PairDataset
from tunebench.engine.checkpoints import Checkpoints, QualityCurve, eval_costs, wants_curve
from tunebench.engine.features import encode_images
from tunebench.engine.measure import Stopwatch
from tunebench.engine.training import Optimization, ShuffledBatches, autocast_for
from tunebench.errors import ConfigError
from tunebench.methods.base import ClassPrompts, text_side_trains
from tunebench.methods.prompts import start_embeddings
from tunebench.registry import TASKS
from tunebench.tasks.base import TaskContext, TaskResult, method_and_settings, refuse_detectors
from tunebench.tasks.contrastive import contrastive_loss, recall_at_k
from tunebench.tasks.knowledge import KnowledgeProbe

RECALL_KS = (1, 5, 10)
MAX_LOGIT_SCALE = 100.0  # CLIP's clamp on the inverse temperature
# Fewer validation pairs than this make R@1 too coarse to rank learning rates by.
MIN_VALIDATION_PAIRS = 20
# Kept at each quality checkpoint (``metrics["curve"]``), with every zero-shot score:
# the retrieval numbers the report headlines.
CURVE_KEYS = ("mean_r1", "i2t_r1", "t2i_r1")
ZERO_SHOT_PREFIX = "zeroshot/"  # metrics[f"zeroshot/{dataset}"]: zero-shot top-1 there


@dataclass
class AlignConfig:
    zero_shot_datasets: list = field(
        default_factory=lambda: ["animal-mnist", "textile-defects"],
        metadata={"help": "classification datasets never seen in alignment, scored zero-shot"},
    )
    zero_shot_per_class: int = field(default=100, metadata={"help": "test images per class for those"})
    knowledge_probe: bool = field(default=True, metadata={"help": "measure ImageNet agreement and text drift"})

    def __post_init__(self) -> None:
        if not isinstance(self.zero_shot_datasets, list):
            raise ValueError("zero_shot_datasets must be a list of dataset names")
        if self.zero_shot_per_class < 1:
            raise ValueError("zero_shot_per_class must be >= 1")


@TASKS.register("align")
class Align:
    summary = "contrastive image-text alignment; metrics: retrieval R@1/5/10, zero-shot on unseen data"
    config_class = AlignConfig
    # The sweep's `shots` axis counts training pairs here.
    shots_unit = "pairs"
    # No method hook: a run trains what the method unfroze in the towers and scores
    # through the backbone, so methods that serve align (lit, full-ft, zero-shot) say so.
    hooks = frozenset()
    # Higher is better; what `tunebench select` compares trials by (the report's headline).
    selection_metric = "mean_r1"

    def validate(self, config: RunConfig) -> None:
        refuse_detectors(config)
        dataset = load_dataset(config.dataset)
        if not isinstance(dataset, PairDataset):
            raise ConfigError(f"align needs an image-caption dataset; {config.dataset!r} is not one "
                              f"(try scenes or fashion-captions)")
        method_cls, _ = method_and_settings(config)
        settings = build_dataclass(AlignConfig, config.task_config, "task_config")
        for name in settings.zero_shot_datasets:
            if not isinstance(load_dataset(name), ClassificationDataset):
                raise ConfigError(f"task_config.zero_shot_datasets: {name!r} is not a classification dataset")
        if method_cls.trains:
            dataset.train_subset(config.shots, config.seed)  # too many pairs fails here
        if config.eval_split == "validation" and len(dataset.validation) < MIN_VALIDATION_PAIRS:
            raise ConfigError(f"{dataset.name} holds out {len(dataset.validation)} validation pairs; selection "
                              f"needs >= {MIN_VALIDATION_PAIRS}: hold out more or select on another dataset")

    def run(self, config: RunConfig, context: TaskContext) -> TaskResult:
        dataset: PairDataset = load_dataset(config.dataset)
        settings = build_dataclass(AlignConfig, config.task_config, "task_config")
        method_cls, method_settings = method_and_settings(config)
        backbone, device, train_cfg = context.backbone, context.device, config.train
        train_watch, eval_watch = Stopwatch(device), Stopwatch(device)
        cache_seconds_before = context.features.seconds_computing

        final = config.eval_split == "test"  # a selection trial reads held-out retrieval only
        probe = KnowledgeProbe(backbone, device) if settings.knowledge_probe and final else None
        with train_watch.measure():
            adapter = method_cls(backbone, ClassPrompts((), ("{}",), config.init), method_settings).to(device)
            if method_cls.trains:
                backbone.logit_scale.requires_grad_(True)  # the loss's temperature learns in every preset
        pixels = backbone.image_tower_trains()

        def score() -> dict:
            # Pixel-path presets re-encode the test images at every scoring: evaluation cost.
            metrics = _retrieval(adapter, dataset, pixels=pixels, config=config, context=context)
            for name in settings.zero_shot_datasets if final else ():  # a trial reads no test images
                metrics[f"{ZERO_SHOT_PREFIX}{name}"] = _zero_shot(
                    adapter, load_dataset(name), settings.zero_shot_per_class,
                    pixels=pixels, config=config, context=context,
                )
            return metrics

        keys = (*CURVE_KEYS, *(f"{ZERO_SHOT_PREFIX}{name}" for name in settings.zero_shot_datasets if final))
        curve = QualityCurve(score, keys, train_clock=train_watch) \
            if wants_curve(config, trains=method_cls.trains) else None

        outcome = None
        if method_cls.trains:
            index = dataset.train_subset(config.shots, config.seed)
            if pixels:
                images = backbone.preprocess(dataset.train.images.load(index), train_cfg.image_size)
            else:
                images = context.features.get(
                    backbone, dataset.train.images, index, dataset=dataset.name, split="train",
                    image_size=train_cfg.image_size, device=device, batch_size=train_cfg.eval_batch_size,
                )
            captions = [dataset.train.captions[i] for i in index]
            meanings = torch.from_numpy(dataset.train.meanings[index])
            with train_watch.measure():
                outcome = _train(adapter, images, captions, meanings, pixels=pixels, config=config, device=device,
                                 checkpoints=None if curve is None else curve.checkpoints())

        if curve is not None:  # the end of training was scored, by the last checkpoint
            metrics = {**curve.final, "curve": curve.points}
        else:
            with eval_watch.measure():
                metrics = score()
        if probe is not None:
            with eval_watch.measure():
                metrics.update(probe.after(backbone))
        metrics.update(
            train_pairs=0 if outcome is None else len(captions),
            **{f"{config.eval_split}_pairs": len(dataset.split(config.eval_split))},
            final_train_loss=None if outcome is None else round(outcome["loss"], 5),
            final_logit_scale=round(float(backbone.logit_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE)), 3),
        )
        seconds, curve_costs = eval_costs(eval_watch, curve)
        return TaskResult(
            adapter=adapter,
            metrics=metrics,
            train_seconds=train_watch.seconds,
            eval_seconds=seconds,
            feature_seconds=context.features.seconds_computing - cache_seconds_before,
            steps=0 if outcome is None else outcome["steps"],
            images_seen=0 if outcome is None else outcome["images_seen"],
            image_input="pixels" if pixels else "cached-features",
            extra={"preset": getattr(method_settings, "preset", None) if method_cls.trains else None,
                   **curve_costs},
        )


def _train(adapter, images, captions, meanings, *, pixels, config: RunConfig, device,
           checkpoints: Checkpoints | None = None) -> dict:
    backbone, train_cfg = adapter.backbone, config.train
    run = Optimization.for_run(adapter.optimizer_groups(), train_cfg)
    # A frozen text tower gives the same pooled features every step: compute them once.
    pooled = None
    if not text_side_trains(adapter):
        pooled = _pooled_captions(backbone, captions, train_cfg.eval_batch_size)

    batches = ShuffledBatches(len(captions), train_cfg.batch_size, config.seed)
    for step in run.steps(desc=config.label, model=adapter, checkpoints=checkpoints):
        index = batches.next()
        with autocast_for(device, train_cfg.precision):
            x = images[index].to(device, non_blocking=True)
            image = backbone.encode_image(x) if pixels else backbone.project_image(x)
            if pooled is not None:
                text = backbone.text_projection(pooled[index].to(device))
            else:
                text = backbone.encode_text(backbone.tokenize([captions[i] for i in index.tolist()]))
        run.update(contrastive_loss(image, text, backbone.logit_scale, meanings[index]), step)
        with torch.no_grad():
            backbone.logit_scale.clamp_(max=float(np.log(MAX_LOGIT_SCALE)))
    return {"steps": train_cfg.steps, "images_seen": train_cfg.steps * batches.batch, "loss": run.loss}


@torch.no_grad()
def _encode_unique(encode, tokenize, captions, batch_size) -> torch.Tensor:
    """``encode`` each distinct caption once (templated captions repeat a lot), then
    expand back to one row per caption."""
    unique, inverse = np.unique(np.asarray(captions, dtype=object).astype(str), return_inverse=True)
    chunks = [
        encode(tokenize(list(unique[s : s + batch_size]))).float().cpu()
        for s in range(0, len(unique), batch_size)
    ]
    return torch.cat(chunks)[torch.from_numpy(inverse.reshape(-1))]


def _pooled_captions(backbone, captions, batch_size) -> torch.Tensor:
    return _encode_unique(backbone.encode_text_pooled, backbone.tokenize, captions, batch_size)


def _encode_captions(backbone, captions, batch_size) -> torch.Tensor:
    return F.normalize(_encode_unique(backbone.encode_text, backbone.tokenize, captions, batch_size), dim=-1)


@torch.no_grad()
def _image_embeddings(adapter, source, indices, *, name, split, pixels, config, context) -> torch.Tensor:
    backbone, train_cfg, device = adapter.backbone, config.train, context.device
    if pixels:  # a tuned image tower must encode the images itself
        trunk = encode_images(backbone, source, indices, image_size=train_cfg.image_size,
                              device=device, batch_size=train_cfg.eval_batch_size)
    else:
        trunk = context.features.get(backbone, source, indices, dataset=name, split=split,
                                     image_size=train_cfg.image_size, device=device,
                                     batch_size=train_cfg.eval_batch_size)
    out = [backbone.project_image(trunk[s : s + train_cfg.eval_batch_size].to(device)).float().cpu()
           for s in range(0, len(trunk), train_cfg.eval_batch_size)]
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def _retrieval(adapter, dataset: PairDataset, *, pixels, config, context) -> dict:
    adapter.eval()
    scored = dataset.split(config.eval_split)
    indices = np.arange(len(scored))
    with autocast_for(context.device, config.train.precision):
        images = _image_embeddings(adapter, scored.images, indices, name=dataset.name, split=config.eval_split,
                                   pixels=pixels, config=config, context=context)
        texts = _encode_captions(adapter.backbone, list(scored.captions), config.train.eval_batch_size)
    similarity = images @ texts.T
    meanings = torch.from_numpy(scored.meanings)
    metrics = {}
    for direction, sim in (("i2t", similarity), ("t2i", similarity.T)):
        for k, value in recall_at_k(sim, meanings, meanings, RECALL_KS).items():
            metrics[f"{direction}_r{k}"] = round(value, 5)
    metrics["mean_r1"] = round((metrics["i2t_r1"] + metrics["t2i_r1"]) / 2, 5)
    return metrics


@torch.no_grad()
def _zero_shot(adapter, dataset: ClassificationDataset, per_class, *, pixels, config, context) -> float:
    backbone = adapter.backbone
    indices = test_indices(dataset, per_class)
    with autocast_for(context.device, config.train.precision):
        images = _image_embeddings(adapter, dataset.test, indices, name=dataset.name, split="test",
                                   pixels=pixels, config=config, context=context)
        # The sweep's start (init), as the classification tasks' zero-shot scores with.
        classes = start_embeddings(backbone, ClassPrompts(tuple(dataset.classnames), tuple(dataset.templates),
                                                          config.init))
    predicted = (images @ classes.float().cpu().T).argmax(-1).numpy()
    return round(float((predicted == dataset.test.labels[indices]).mean()), 5)
