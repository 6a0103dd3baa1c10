"""Base-to-new class splits (CoCoOp's protocol) and the images of a subset of classes.

Classes are taken in label order: the first ⌈n/2⌉ are *base*, the rest *new*, each
half relabelled from 0. Methods train on the base half only, drawing their K shots
from ``BaseNewSplit.base`` with the same draw code and seeds as every other few-shot
run; since the base labels keep their order, those draws pick the very images that
the same seed picks for those classes in ``fewshot-cls``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from tunebench.datasets.base import ClassificationDataset, ImageSource
from tunebench.errors import DataError


class SubsetImages(ImageSource):
    """Some images of another source (``positions`` into it), with new labels."""

    def __init__(self, source: ImageSource, positions: np.ndarray, labels: np.ndarray) -> None:
        self.source = source
        self.positions = np.asarray(positions, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)

    def load(self, indices: np.ndarray) -> np.ndarray:
        return self.source.load(self.positions[np.asarray(indices, dtype=np.int64)])

    def identity(self, index: int) -> str:
        return self.source.identity(int(self.positions[int(index)]))

    @cached_property
    def content_key(self) -> str:
        digest = hashlib.sha256(self.source.content_key.encode())
        digest.update(np.ascontiguousarray(self.positions).data)
        return digest.hexdigest()[:16]


def class_subset(dataset: ClassificationDataset, classes: range, name: str) -> ClassificationDataset:
    """The images of ``classes`` (a contiguous label range), relabelled from 0."""
    def part(source: ImageSource) -> SubsetImages:
        positions = np.flatnonzero((source.labels >= classes.start) & (source.labels < classes.stop))
        return SubsetImages(source, positions, source.labels[positions] - classes.start)

    return ClassificationDataset(
        name=name, classnames=tuple(dataset.classnames[c] for c in classes), templates=dataset.templates,
        train=part(dataset.train), test=part(dataset.test), native_size=dataset.native_size,
        # The published validation list goes along, so that the subset holds no train images out.
        val=None if dataset.val is None else part(dataset.val),
    )


@dataclass(frozen=True)
class BaseNewSplit:
    dataset: ClassificationDataset
    num_base: int

    @cached_property
    def base(self) -> ClassificationDataset:
        return class_subset(self.dataset, range(self.num_base), f"{self.dataset.name}.base")

    @cached_property
    def new(self) -> ClassificationDataset:
        return class_subset(self.dataset, range(self.num_base, self.dataset.num_classes), f"{self.dataset.name}.new")


def split_base_new(dataset: ClassificationDataset) -> BaseNewSplit:
    """First ⌈n/2⌉ classes base, the rest new; a one-line DataError under 2 classes."""
    if dataset.num_classes < 2:
        raise DataError(f"{dataset.name} has {dataset.num_classes} class(es): base-to-new needs at least 2 "
                        "(the first half base, the rest new); use fewshot-cls for it")
    return BaseNewSplit(dataset, math.ceil(dataset.num_classes / 2))
