"""``synthetic:N``: N classes named from ImageNet, random pixels, for timing only.

The cost-scaling study (``docs/cost.md``) needs the number of classes as an axis up to
ImageNet's 1,000 without any real image: what a step costs depends on how many class
prompts go through the text tower, not on what the pictures show. Class names are
ImageNet-1k's (timm's ``ImageNetInfo``, the first name of each synset), N of them
spread evenly over the 1,000; images are uniform noise, 32 px RGB, from a fixed seed,
``TRAIN_PER_CLASS`` and ``TEST_PER_CLASS`` per class. Scores on it mean nothing: pair it
with a ``cls-timing:*`` backbone, whose runs record no score.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from tunebench.datasets.base import ArrayImages, ClassificationDataset
from tunebench.errors import ConfigError
from tunebench.registry import DATASETS

SIZE = 32
TRAIN_PER_CLASS = 2  # enough for 1- and 2-shot cells
TEST_PER_CLASS = 1  # evaluation cost grows with the classes twice for CoCoOp: keep it at one
MAX_CLASSES = 1000
TEMPLATES = ("a photo of a {}.",)


@cache
def imagenet_names() -> tuple[str, ...]:
    """ImageNet-1k's class names in label order: the first name of each synset."""
    from timm.data import ImageNetInfo

    return tuple(d.split(",")[0].strip() for d in ImageNetInfo().label_descriptions())


def _images(count: int, rng: np.random.RandomState) -> np.ndarray:
    return rng.randint(0, 256, size=(count, SIZE, SIZE, 3), dtype=np.uint8)


@DATASETS.register("synthetic:")
def synthetic(argument: str) -> ClassificationDataset:
    """N classes (2 to 1,000) of random 32 px images named after ImageNet classes."""
    if not argument.isdigit() or not 2 <= int(argument) <= MAX_CLASSES:
        raise ConfigError(f"synthetic:{argument}: give the number of classes, 2 to {MAX_CLASSES} (synthetic:100)")
    n = int(argument)
    names = imagenet_names()
    picked = np.linspace(0, len(names) - 1, n).round().astype(int)  # spread over the hierarchy
    rng = np.random.RandomState(0)
    train_labels = np.repeat(np.arange(n), TRAIN_PER_CLASS)
    test_labels = np.repeat(np.arange(n), TEST_PER_CLASS)
    name = f"synthetic:{n}"
    train = ArrayImages(_images(len(train_labels), rng), train_labels, f"{name}/train")
    test = ArrayImages(_images(len(test_labels), rng), test_labels, f"{name}/test")
    # Its own validation split (drawn after the others, so train and test keep their
    # pixels): random images score nothing worth selecting on, but with a split of its
    # own no training image is held out, and a timing cell keeps the whole train pool.
    val = ArrayImages(_images(len(test_labels), rng), test_labels, f"{name}/val")
    return ClassificationDataset(
        name=name,
        classnames=tuple(names[i] for i in picked),
        templates=TEMPLATES,
        train=train,
        test=test,
        native_size=SIZE,
        val=val,
    )


synthetic.example = "100"
