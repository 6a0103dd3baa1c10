"""``concept:NAME``: a held-out class as a new concept for the generation track.

A concept is one class of a classification dataset that the text-to-image model was
kept from (mini-t2i's build leaves these classes out). The class's training images
in the source dataset are cut, by a fixed permutation (``PARTITION_SEED``, not a
run's seed), into three disjoint parts:

- the **reference pool** (``train``, ``REFERENCE_POOL`` images): the K reference
  images of every run are drawn from it;
- **validation** (``VALIDATION_IMAGES``): real images that selection trials score
  against; no run tunes on them;
- the rest: the only images of the class the fidelity judge may train on
  (``judge_excluded`` lists the others, ``builds/judge.py`` leaves them out).

Its test images are real examples that calibrate the metrics (how a real image of the
concept scores). The class name is what CLIP-T prompts and the fidelity judge call it;
tuning never sees it.

References for K shots and a seed are the first K of a seeded permutation of the
pool, so K = 3 is a subset of K = 5 for the same seed, and seeds differ.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from tunebench.datasets.base import ArrayImages
from tunebench.errors import ConfigError
from tunebench.registry import DATASETS

# The three-way cut of each concept's training images (see the module docstring).
REFERENCE_POOL = 100  # the largest K a run can ask for
VALIDATION_IMAGES = 100
MIN_JUDGE_IMAGES = 200  # fewer, and the judge would barely know the concept
PARTITION_SEED = 11  # any fixed number: the cut must not depend on a run's seed

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
    train: ArrayImages  # the reference pool (see the module docstring)
    validation: ArrayImages  # held-out real images for selection trials
    test: ArrayImages  # this class's test images (real-image calibration)
    native_size: int

    # What the generation task asks every dataset it runs on (SubjectDataset answers too).
    judged: ClassVar[bool] = True  # the fidelity judge knows every concept's class
    selection_metric: ClassVar[str] = "fidelity"  # the report's headline, on validation seeds
    initializer: ClassVar[None] = None  # none by default: task_config.initializers names each concept's

    def facts(self) -> dict:
        """Nothing beyond ``concept``: the concept's images are package data."""
        return {}

    def references(self, shots: int, seed: int) -> np.ndarray:
        """Indices into ``train`` of the K reference images for ``seed``."""
        if not 1 <= shots <= len(self.train):
            raise ConfigError(f"{self.name}: shots (reference images) must be 1..{len(self.train)}, got {shots}")
        return np.random.RandomState(seed).permutation(len(self.train))[:shots]


@dataclass(frozen=True)
class Partition:
    """Positions in the source dataset's ``train`` split of one concept's three parts."""

    references: np.ndarray
    validation: np.ndarray
    judge: np.ndarray


def partition(source_labels: np.ndarray, label: int, concept: str) -> Partition:
    """Cut the class's training images into reference pool, validation and judge part."""
    members = np.flatnonzero(np.asarray(source_labels) == label)
    needed = REFERENCE_POOL + VALIDATION_IMAGES + MIN_JUDGE_IMAGES
    if len(members) < needed:
        raise ConfigError(f"concept:{concept} has {len(members)} training images; {REFERENCE_POOL} references "
                          f"+ {VALIDATION_IMAGES} validation + {MIN_JUDGE_IMAGES} for the judge need {needed}: "
                          f"lower REFERENCE_POOL or VALIDATION_IMAGES in datasets/concepts.py")
    order = members[np.random.RandomState(PARTITION_SEED).permutation(len(members))]
    cut = REFERENCE_POOL + VALIDATION_IMAGES
    return Partition(references=np.sort(order[:REFERENCE_POOL]),
                     validation=np.sort(order[REFERENCE_POOL:cut]), judge=np.sort(order[cut:]))


def judge_excluded(source: str) -> np.ndarray:
    """Positions in ``source``'s train split that the judge must never train on: every
    image that can be a reference (any K, any seed) or a validation image, of every
    concept taken from ``source``."""
    from tunebench.datasets import load_dataset

    data = load_dataset(source)
    parts = [np.zeros(0, dtype=np.int64)]
    for concept, (concept_source, classname) in CONCEPTS.items():
        if concept_source == source:
            cut = partition(data.train.labels, data.classnames.index(classname), concept)
            parts += [cut.references, cut.validation]
    return np.sort(np.concatenate(parts))


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
    cut = partition(data.train.labels, label, argument)
    test_index = np.flatnonzero(data.test.labels == label)
    parts = {"train": (data.train, cut.references), "validation": (data.train, cut.validation),
             "test": (data.test, test_index)}
    splits = {split: ArrayImages(images.load(index), np.zeros(len(index), dtype=np.int64),
                                 f"concept:{argument}/{split}")
              for split, (images, index) in parts.items()}
    return ConceptDataset(name=f"concept:{argument}", concept=argument, source=source, classname=classname,
                          native_size=data.native_size, **splits)
