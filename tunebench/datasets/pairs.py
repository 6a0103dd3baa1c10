"""Image–caption pair datasets for the ``align`` task.

A pair dataset is a training pool, a validation split and a test split of (image,
caption) pairs. The validation pairs are held out of the training pool by the dataset
itself (never a row of ``train``), so no draw of training pairs, for any size or seed,
can contain one; hyper-parameter selection scores on them and final runs score on
``test``.
Each pair also carries a *meaning id*: pairs whose captions say the same thing
(identical scene description, or the same class and attributes in other words)
share it. Retrieval counts a hit when it finds any item with the query's meaning,
so that two images that no caption could tell apart are not scored as misses.

The training subset for a data size N is the first N pairs of a permutation of the
pool drawn from the run's seed: subsets are nested across N for one seed, and each
seed sees different pairs, as in the few-shot protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunebench.datasets.base import ArrayImages, ImageSource
from tunebench.errors import ConfigError


@dataclass(frozen=True)
class PairSplit:
    """Images (an ``ImageSource`` whose labels are the meaning ids) and their captions."""

    images: ImageSource
    captions: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.captions):
            raise ValueError(f"{len(self.images)} images but {len(self.captions)} captions")

    @property
    def meanings(self) -> np.ndarray:
        return self.images.labels

    def subset(self, indices: np.ndarray, name: str) -> PairSplit:
        """These rows as a split of their own (images copied, captions kept as they are)."""
        indices = np.asarray(indices, dtype=np.int64)
        images = self.images.load(indices)
        return PairSplit(ArrayImages(images, self.meanings[indices], name),
                         tuple(self.captions[i] for i in indices))

    def __len__(self) -> int:
        return len(self.captions)


@dataclass(frozen=True)
class PairDataset:
    name: str
    train: PairSplit  # the training pool: every draw of training pairs comes from here
    validation: PairSplit  # held out of the pool: selection trials score here
    test: PairSplit
    native_size: int  # pixels per side of the source images
    description: str = ""

    def split(self, name: str) -> PairSplit:
        """The split a run scores on: ``test`` or ``validation`` (``RunConfig.eval_split``)."""
        if name not in ("test", "validation"):
            raise ConfigError(f"{self.name} scores on test or validation, not {name!r}")
        return getattr(self, name)

    def train_subset(self, size: int, seed: int) -> np.ndarray:
        """Indices of ``size`` training pairs for ``seed`` (nested across sizes)."""
        if size < 1:
            raise ConfigError(f"training pairs ('shots' in the align task) must be >= 1, got {size}")
        if size > len(self.train):
            raise ConfigError(
                f"{self.name} has {len(self.train)} training pairs; asked for {size} "
                f"(lower 'shots', which counts training pairs in the align task)"
            )
        order = np.random.RandomState(seed).permutation(len(self.train))
        return np.sort(order[:size])
