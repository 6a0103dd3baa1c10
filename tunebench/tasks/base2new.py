"""``base2new``: base-to-new generalisation (CoCoOp's protocol) for few-shot classification.

Classes in label order: the first ⌈n/2⌉ are *base*, the rest *new*, each half
relabelled from 0 (``datasets/class_split.py``). A method is built for the base
classes and trains K shots per base class, drawn with the same code and seeds as
``fewshot-cls``. It is then scored twice on ``fewshot-cls``'s test images: the base
classes' images among the base classes, and the new classes' images among the new
classes, which the method meets only by name through ``new_class_scorer`` (each
method's docstring says what it does there). Metrics: ``base``, ``new`` and their
harmonic mean ``h``; a method without an answer for unseen classes (linear-probe)
stores ``new`` and ``h`` as None. Building the new classes' scorer (e.g. encoding
their prompts) is evaluation time.
"""

from __future__ import annotations

import torch

from tunebench.config import RunConfig
from tunebench.datasets import ClassificationDataset, load_dataset
from tunebench.datasets.class_split import split_base_new
from tunebench.engine.feature_file import FeatureRows
from tunebench.errors import DataError
from tunebench.methods.base import ClassPrompts, MethodAdapter
from tunebench.registry import TASKS
from tunebench.scores import harmonic_mean
from tunebench.tasks.classification import FewShotClassification, TrainingClasses, count_correct


@TASKS.register("base2new")
class BaseToNew(FewShotClassification):
    summary = ("base-to-new generalisation (CoCoOp protocol): train K shots on the first half of the "
               "classes, score base and unseen new classes; metrics: base, new, H")
    hooks = FewShotClassification.hooks | {"new_class_scorer"}  # the new half: by name alone
    curve_keys = ("base", "new", "h")
    # Selection scores base-class validation images only: the new classes stay unseen.
    selection_metric = "base"
    # Chaining (init_from) is left to fewshot-cls, detect and generation: ConES's embeddings
    # exist for the base half only, and the base-to-new report has no chained rows.
    chains = False

    def validate(self, config: RunConfig) -> None:
        super().validate(config)
        split = split_base_new(load_dataset(config.dataset))
        for half in (split.base, split.new):
            if len(half.test) == 0:
                raise DataError(f"{half.name}: no test images in classes {', '.join(half.classnames)}: "
                                "base-to-new scores both halves, so each needs test images")

    def training_classes(self, dataset: ClassificationDataset) -> TrainingClasses:
        base = split_base_new(dataset).base  # fewer than 2 classes: one line, from validate
        return TrainingClasses(base, base.train.positions)

    def score(self, adapter: MethodAdapter, features: torch.Tensor | FeatureRows, labels: torch.Tensor,
              dataset: ClassificationDataset, config: RunConfig, device: torch.device) -> dict:
        split = split_base_new(dataset)
        is_base = labels < split.num_base
        base_hits = count_correct(adapter, adapter.scorer, features[is_base], labels[is_base], config, device)
        new_classes = ClassPrompts(split.new.classnames, split.new.templates, config.init)
        new_hits = count_correct(adapter, lambda: adapter.new_class_scorer(new_classes), features[~is_base],
                                 labels[~is_base] - split.num_base, config, device)
        base = base_hits / int(is_base.sum())
        new = None if new_hits is None else new_hits / int((~is_base).sum())
        return {
            "base": base, "new": new, "h": harmonic_mean(base, new),
            "num_classes": dataset.num_classes, "base_classes": split.num_base,
            "new_classes": dataset.num_classes - split.num_base,
            "base_test_images": int(is_base.sum()), "new_test_images": int((~is_base).sum()),
        }
