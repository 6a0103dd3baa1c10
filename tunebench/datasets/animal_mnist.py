"""``animal-mnist``: 28×28 grey animal silhouettes, 10 classes, from the PyPI package.

The package's Python modules import tensorflow, so only its data files are read: a
gzip'd pickle of a uint8 (10000, 28, 28) array and one of int labels (1000 a class,
alphabetical). What the images look like: white filled silhouettes on black, except
zebras, which keep their stripes (grey-level texture) — hence the silhouette prompts.

There is no official split. 284 images appear twice (same class, mostly birds and
bears); the second copies are dropped so that no test image is also a training
image. Then 200 images per class are held out for testing (RandomState(0)).
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np

from tunebench.datasets.base import ArrayImages, ClassificationDataset
from tunebench.datasets.fewshot import stratified_split
from tunebench.errors import DataError
from tunebench.registry import DATASETS

HOW_TO_INSTALL = "pip install --no-deps animal-mnist"
CLASSNAMES = (
    "bear", "bird", "cat", "cow", "dog",
    "elephant", "giraffe", "horse", "sheep", "zebra",
)  # fmt: skip
TEMPLATES = (
    "a photo of a {}.",  # first: methods that use a single prompt take templates[0]
    "a silhouette of a {}.",
    "a white silhouette of a {} on a black background.",
    "a black and white picture of a {}.",
    "a low resolution picture of a {}.",
)
TEST_PER_CLASS = 200
# What a pickled numpy array refers to; anything else in the file is refused.
_NUMPY_NAMES = {"_reconstruct", "ndarray", "dtype", "scalar"}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: a pickle from a third-party package
    could otherwise run any code when loaded."""

    def find_class(self, module: str, name: str) -> object:
        if module.split(".")[0] == "numpy" and name in _NUMPY_NAMES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_pickle(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as stream:
            return np.asarray(_NumpyOnlyUnpickler(stream).load())
    except FileNotFoundError as exc:
        raise DataError(f"animal-mnist: {path} is missing: reinstall it: {HOW_TO_INSTALL}") from exc
    except (OSError, EOFError, pickle.UnpicklingError) as exc:
        raise DataError(
            f"animal-mnist: cannot read {path} ({exc}): reinstall it: {HOW_TO_INSTALL}"
        ) from exc


def data_dir() -> Path:
    # find_spec locates a top-level package without running its __init__.
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"animal-mnist is not installed: {HOW_TO_INSTALL}")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal_MNIST"


@DATASETS.register("animal-mnist")
def animal_mnist() -> ClassificationDataset:
    directory = data_dir()
    images = _load_pickle(directory / "animal_data_version_3.gz")
    labels = _load_pickle(directory / "animal_label_version_3.gz").astype(np.int64).ravel()
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError(
            f"animal-mnist: unexpected data {images.dtype} {images.shape} with {len(labels)} "
            f"labels (version changed?): {HOW_TO_INSTALL}==0.4"
        )
    # Keep the first copy of each exact duplicate (np.unique's index is the first occurrence).
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    keep = np.sort(first)
    images, labels = images[keep], labels[keep]
    train, test = stratified_split(labels, per_class=TEST_PER_CLASS, seed=0)
    return ClassificationDataset(
        name="animal-mnist",
        classnames=CLASSNAMES,
        templates=TEMPLATES,
        train=ArrayImages(images[train], labels[train], "animal-mnist/train"),
        test=ArrayImages(images[test], labels[test], "animal-mnist/test"),
        native_size=28,
    )
