"""Few-shot image classification (CoOp's protocol): K shots per class, fixed test split.

Frozen image towers are served from the shared feature cache; a method that trains
image-tower parameters gets pixels instead and is evaluated by re-encoding the test
split with its tuned tower. Feature computation is timed apart from training.
"""

from __future__ import annotations

import torch

from tunebench.bench.config import RunConfig, method_config
from tunebench.bench.features import FeatureCache, encode_images
from tunebench.bench.measure import Stopwatch
from tunebench.bench.training import autocast_for, train_classifier
from tunebench.datasets import check_shots, fewshot_indices, load_dataset, test_indices
from tunebench.methods.base import ClassPrompts, resolve_method
from tunebench.registry import TASKS
from tunebench.tasks.base import TaskContext, TaskResult, refuse_detectors


@TASKS.register("fewshot-cls")
class FewShotClassification:
    summary = "few-shot image classification, K shots per class (CoOp protocol); metric: top-1"

    def validate(self, config: RunConfig) -> None:
        refuse_detectors(config)
        dataset = load_dataset(config.dataset)  # unknown dataset or missing data fails here, early
        method_cls = resolve_method(config.method, config.task)[0]
        method_config(method_cls, config.method_config, f"method_config.{config.method}")
        if method_cls.trains:  # K larger than a class's pool stops the sweep, not its Nth cell
            check_shots(dataset, config.shots)

    def run(self, config: RunConfig, context: TaskContext) -> TaskResult:
        dataset = load_dataset(config.dataset)
        method_cls, _ = resolve_method(config.method, config.task)
        settings = method_config(method_cls, config.method_config, f"method_config.{config.method}")
        train_cfg, device, backbone = config.train, context.device, context.backbone
        train_watch, eval_watch = Stopwatch(device), Stopwatch(device)
        classes = ClassPrompts(tuple(dataset.classnames), tuple(dataset.templates))

        with train_watch.measure():  # building the adapter (e.g. ConES's text pass) is tuning cost
            adapter = method_cls(backbone, classes, settings).to(device)
        pixels = backbone.image_tower_trains()
        cache_seconds_before = context.features.seconds_computing

        outcome = None
        if method_cls.trains:
            train_idx = fewshot_indices(dataset, config.shots, config.seed)
            labels = torch.from_numpy(dataset.train.labels[train_idx])
            if pixels:
                inputs = backbone.preprocess(dataset.train.load(train_idx), train_cfg.image_size)
            else:
                inputs = _cached(context.features, backbone, dataset, "train", train_idx, config, device)
            with train_watch.measure():
                outcome = train_classifier(
                    adapter, inputs, labels, pixels=pixels, config=train_cfg,
                    seed=config.seed, device=device, label=config.label,
                )

        test_idx = test_indices(dataset, train_cfg.test_per_class)
        test_labels = torch.from_numpy(dataset.test.labels[test_idx])
        if pixels:  # the tuned tower must encode the test split itself: evaluation cost
            with eval_watch.measure():
                test_features = encode_images(
                    backbone, dataset.test, test_idx, image_size=train_cfg.image_size,
                    device=device, batch_size=train_cfg.eval_batch_size,
                )
        else:
            test_features = _cached(context.features, backbone, dataset, "test", test_idx, config, device)
        with eval_watch.measure():
            correct = _count_correct(adapter, test_features, test_labels, config, device)

        return TaskResult(
            adapter=adapter,
            metrics={
                "top1": correct / len(test_labels),
                "num_classes": dataset.num_classes,
                "test_images": len(test_labels),
                "train_images": 0 if outcome is None else int(len(labels)),
                "final_train_loss": None if outcome is None else round(outcome.final_loss, 5),
            },
            train_seconds=train_watch.seconds,
            eval_seconds=eval_watch.seconds,
            feature_seconds=context.features.seconds_computing - cache_seconds_before,
            steps=0 if outcome is None else outcome.steps,
            images_seen=0 if outcome is None else outcome.images_seen,
            image_input="pixels" if pixels else "cached-features",
        )


def _cached(cache: FeatureCache, backbone, dataset, split, indices, config: RunConfig, device):
    source = dataset.train if split == "train" else dataset.test
    return cache.get(
        backbone, source, indices, dataset=dataset.name, split=split,
        image_size=config.train.image_size, device=device, batch_size=config.train.eval_batch_size,
    )


@torch.no_grad()
def _count_correct(adapter, features, labels, config: RunConfig, device) -> int:
    adapter.eval()
    with autocast_for(device, config.train.precision):
        classes = adapter.class_embeddings()  # once: the text side does not depend on the image
        correct = 0
        for start in range(0, len(labels), config.train.eval_batch_size):
            batch = features[start : start + config.train.eval_batch_size].to(device)
            logits = adapter.head(adapter.embed_images(batch), classes)
            correct += int((logits.argmax(-1).cpu() == labels[start : start + len(batch)]).sum())
    return correct
