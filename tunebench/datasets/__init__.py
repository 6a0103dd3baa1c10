"""Datasets by name: ``load_dataset("fashion-mnist")``, ``load_dataset("imagefolder:/data/pets")``,
``load_dataset("coop:/data/DATA/oxford_pets")``.

Importing this package registers every dataset module in ``DATASETS``; adding a
dataset means adding one module here and one import below.
"""

from __future__ import annotations

import functools

# Imported for their registrations.
from tunebench.datasets import (  # noqa: F401
    animal_mnist,
    concepts,
    coop,
    detection,
    fashion_captions,
    fashion_mnist,
    imagefolder,
    scenes,
    subject,
    synthetic,
    textile,
    tiny,
)
from tunebench.datasets.base import ClassificationDataset
from tunebench.datasets.fewshot import check_shots, fewshot_indices, test_indices
from tunebench.errors import ConfigError
from tunebench.registry import DATASETS

__all__ = ["ClassificationDataset", "check_shots", "dataset_label", "fewshot_indices", "load_dataset", "test_indices"]


@functools.cache  # lru_cache without a size bound
def load_dataset(name: str) -> ClassificationDataset:
    """The dataset registered as ``name`` (or ``prefix:argument``), built once per process."""
    entry, argument = DATASETS.resolve(name)
    if argument is not None:
        return entry(argument)
    if name.endswith(":"):  # the bare prefix matched its own entry, which needs an argument
        example = getattr(entry, "example", "/data/pets")
        raise ConfigError(f"dataset {name!r} needs a path after the colon, e.g. {name}{example}")
    return entry()


def dataset_label(name: str) -> str:
    """What reports call the dataset ``name``: the name itself, or for an entry that
    takes a path and gives it a short label (``imagefolder:``, ``coop:``), that label."""
    entry, argument = DATASETS.resolve(name)
    label = getattr(entry, "label", None)
    return name if argument is None or label is None else label(argument)
