"""``concept:NAME``: a held-out class as a new concept for the generation track.

A concept is one class of a classification dataset that the text-to-image model was
kept from (mini-t2i's build leaves these classes out). Its training images are the
pool the K reference images are drawn from; its test images are real examples that
calibrate the metrics (how a real image of the concept scores). The class name is
what CLIP-T prompts and the fidelity judge call it; tuning never sees it.

References for K shots and a seed are the first K of a seeded permutation, so K = 3
is a subset of K = 5 for the same seed, and seeds differ.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np

from tunebench.datasets.base import ArrayImages
from tunebench.errors import ConfigError
from tunebench.registry import DATASETS

# concept name -> (source dataset, class name there)
CONCEPTS = {
    "zebra": ("animal-mnist", "zebra"),
    "giraffe": ("animal-mnist", "giraffe"),
    "ankle-boot": ("fashion-mnist", "ankle boot"),
}


@dataclass(frozen=True)
class ConceptDataset:
    name: str  # "concept:zebra"
    concept: str  # "zebra"
    source: str  # "animal-mnist"
    classname: str  # "zebra": for CLIP-T prompts and the judge
    train: ArrayImages  # this class's training images (the reference pool)
    test: ArrayImages  # this class's test images (real-image calibration)
    native_size: int

    def references(self, shots: int, seed: int) -> np.ndarray:
        """Indices into ``train`` of the K reference images for ``seed``."""
        if not 1 <= shots <= len(self.train):
            raise ConfigError(f"{self.name}: shots (reference images) must be 1..{len(self.train)}, got {shots}")
        return np.random.RandomState(seed).permutation(len(self.train))[:shots]


@DATASETS.register("concept:")
def concept_dataset(argument: str) -> ConceptDataset:
    from tunebench.datasets import load_dataset

    if argument not in CONCEPTS:
        close = difflib.get_close_matches(argument, CONCEPTS, n=2, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown concept {argument!r}.{hint} Valid: {', '.join(sorted(CONCEPTS))}.")
    source, classname = CONCEPTS[argument]
    data = load_dataset(source)
    label = data.classnames.index(classname)
    splits = {}
    for split in ("train", "test"):
        images = getattr(data, split)
        index = np.flatnonzero(images.labels == label)
        splits[split] = ArrayImages(images.load(index), np.zeros(len(index), dtype=np.int64),
                                    f"concept:{argument}/{split}")
    return ConceptDataset(name=f"concept:{argument}", concept=argument, source=source, classname=classname,
                          native_size=data.native_size, **splits)
