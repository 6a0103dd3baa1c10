"""``fashion-mnist``: Zalando's 28×28 grey clothing images, official train/t10k split.

Read from the Debian package ``dataset-fashion-mnist`` (gzip'd IDX files) so no
download happens at run time; $TUNEBENCH_FASHION_MNIST_DIR points elsewhere.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from tunebench.datasets.base import ArrayImages, ClassificationDataset
from tunebench.errors import DataError
from tunebench.registry import DATASETS

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "TUNEBENCH_FASHION_MNIST_DIR"
HOW_TO_INSTALL = f"install it: apt-get install dataset-fashion-mnist (or set {ENV_VAR})"

# Label order of the IDX files; names written as people would say them in a prompt.
CLASSNAMES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
TEMPLATES = (
    "a photo of a {}.",  # first: methods that use a single prompt take templates[0]
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of a {}, a type of clothing or accessory.",
    "a product photo of a {}.",
)


def read_idx(path: Path) -> np.ndarray:
    """A uint8 IDX file (``.gz`` or plain) as an array of the shape its header gives."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path} ({type(exc).__name__}): re-{HOW_TO_INSTALL}") from exc
    # Header: two zero bytes, a type code (0x08 = uint8), the number of dimensions,
    # then one big-endian uint32 per dimension.
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DataError(f"{path} is not a uint8 IDX file: re-{HOW_TO_INSTALL}")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: re-{HOW_TO_INSTALL}")
    return values.reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"fashion-mnist: {directory / stem}.gz not found: {HOW_TO_INSTALL}")


@DATASETS.register("fashion-mnist")
def fashion_mnist() -> ClassificationDataset:
    directory = Path(os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser()
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))
        splits[split] = ArrayImages(images, labels, f"fashion-mnist/{split}")
    return ClassificationDataset(
        name="fashion-mnist",
        classnames=CLASSNAMES,
        templates=TEMPLATES,
        train=splits["train"],
        test=splits["test"],
        native_size=28,
    )
