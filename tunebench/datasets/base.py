"""What a classification dataset gives the runner.

A dataset is class names, prompt templates and two image sources (train pool and
test), plus a validation source where the data ships one (CoOp's split files do).
Images are handed out as uint8 arrays so that the backbone decides the resolution and
normalisation; decoding is lazy so that an image folder of any size costs nothing
until its images are needed.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from tunebench.errors import DataError


class ImageSource(ABC):
    """Labelled images, addressable by index."""

    labels: np.ndarray  # int64, shape (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @abstractmethod
    def load(self, indices: np.ndarray) -> np.ndarray:
        """uint8 images for ``indices``: (n, H, W) grey or (n, H, W, 3) RGB, all one size."""

    @abstractmethod
    def identity(self, index: int) -> str:
        """A stable name for one image (used in few-shot split files and error messages)."""

    @property
    @abstractmethod
    def content_key(self) -> str:
        """A digest that changes whenever any image's pixels may have changed (part of
        every feature-cache key); computed once per source object."""


class ArrayImages(ImageSource):
    """Images already in memory (the MNIST-style packages ship them as arrays)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, name: str) -> None:
        if images.dtype != np.uint8:
            raise DataError(f"{name}: images must be uint8, got {images.dtype}")
        if len(images) != len(labels):
            raise DataError(f"{name}: {len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.name = name

    def load(self, indices: np.ndarray) -> np.ndarray:
        return self.images[np.asarray(indices, dtype=np.int64)]

    def identity(self, index: int) -> str:
        return f"{self.name}[{index}]"

    @cached_property
    def content_key(self) -> str:
        # The arrays are package data, but a reinstalled or regenerated package may hold
        # other images under the same name and shape; hashing their bytes costs ~30 ms
        # for the 47 MB of Fashion-MNIST, so there is no reason to trust a version string.
        digest = hashlib.sha256(f"{self.images.dtype}{self.images.shape}".encode())
        digest.update(np.ascontiguousarray(self.images).data)
        return digest.hexdigest()[:16]


class FileImages(ImageSource):
    """Image files decoded on demand to RGB at a fixed size (``size`` × ``size``)."""

    def __init__(self, paths: list[Path], labels: np.ndarray, size: int) -> None:
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.size = size

    def load(self, indices: np.ndarray) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        out = np.empty((len(indices), self.size, self.size, 3), dtype=np.uint8)
        for row, index in enumerate(np.asarray(indices, dtype=np.int64)):
            path = self.paths[int(index)]
            try:
                with Image.open(path) as image:
                    image = image.convert("RGB").resize((self.size, self.size), Image.BICUBIC)
                    out[row] = np.asarray(image)
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise DataError(
                    f"cannot read image {path} ({type(exc).__name__}): remove or replace the file"
                ) from exc
        return out

    def identity(self, index: int) -> str:
        return str(self.paths[int(index)])

    @cached_property
    def content_key(self) -> str:
        # Path, size and mtime (ns) of every file rather than a hash of its bytes: one
        # stat per file takes well under a second for 50,000 images, where reading them
        # all would cost minutes before the first cached feature could be served. Saving,
        # copying or converting a file in place changes its mtime; only a same-size
        # rewrite that also restores the old mtime would go unnoticed.
        digest = hashlib.sha256(f"decoded at {self.size}px;".encode())
        for path in self.paths:
            try:
                stat = path.stat()
            except OSError as exc:
                raise DataError(
                    f"cannot read image {path} ({type(exc).__name__}): remove or replace the file"
                ) from exc
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns};".encode())
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ClassificationDataset:
    """Class names, prompt templates (each with one ``{}``), a train pool and a fixed test split.

    ``val`` is a published validation split kept apart from both, for choosing
    hyper-parameters without looking at the test split; None where the data has none.
    """

    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    train: ImageSource
    test: ImageSource
    native_size: int  # pixels per side of the source images
    val: ImageSource | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def prompts(self, classname: str) -> list[str]:
        return [t.format(classname) for t in self.templates]
