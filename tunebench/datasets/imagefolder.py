"""``imagefolder:PATH``: your own images, one folder per class.

Two layouts are accepted:

    PATH/<class>/*.jpg                 split 80/20 per class (RandomState(0))
    PATH/train/<class>/*.jpg  and  PATH/test/<class>/*.jpg   used as given

Only files directly inside a class folder with an image extension count; hidden
entries are ignored. Class names are the folder names with ``_`` and ``-`` turned
into spaces, since they end up in prompts. Images are decoded lazily at 224 px,
the resolution CLIP-style towers are trained at, so a folder of any size costs
nothing until it is used and the backbone rarely resizes again; call
``image_folder(path, size=...)`` from Python for another size.

The dataset is called ``<folder name>-<8 hex of its resolved path>`` (``pets-3f2a9c1b``)
in report headings, figure and cache file names: short, and distinct for two folders
called ``pets`` in different places.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from tunebench.datasets.base import ClassificationDataset, FileImages
from tunebench.datasets.fewshot import stratified_split
from tunebench.errors import DataError
from tunebench.registry import DATASETS

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
DEFAULT_SIZE = 224
TEST_FRACTION = 0.2
TEMPLATES = (
    "a photo of a {}.",  # first: methods that use a single prompt take templates[0]
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a cropped photo of a {}.",
    "an image of a {}.",
)


def _class_folders(root: Path) -> list[Path]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root} has no class folders: put each class's images in {root}/<class>/")
    return folders


def _images(folder: Path) -> list[Path]:
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )  # fmt: skip
    if not files:
        raise DataError(
            f"class folder {folder} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}): "
            "add some or remove the folder"
        )
    return files


def _scan(root: Path, folder_names: list[str]) -> tuple[list[Path], np.ndarray]:
    """Files and labels under ``root``, labelled by position in ``folder_names``."""
    paths: list[Path] = []
    labels: list[int] = []
    for folder in _class_folders(root):
        if folder.name not in folder_names:
            raise DataError(
                f"{folder} is a class that {root.parent}/train/ lacks: "
                f"add {root.parent}/train/{folder.name}/ or remove it"
            )
        files = _images(folder)
        paths += files
        labels += [folder_names.index(folder.name)] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


def folder_label(path: str | Path) -> str:
    """``pets-3f2a9c1b``: the folder's name plus a fingerprint of where it is."""
    root = Path(path).expanduser().resolve()
    fingerprint = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    return f"{root.name or 'root'}-{fingerprint}"


def _check_classes(root: Path, folder_names: list[str], test_labels: np.ndarray, *, split_given: bool) -> None:
    """Two or more classes and some test images: otherwise top-1 means nothing (one
    class scores 1.0) or cannot be computed. A test split given as folders may leave
    classes out; only the automatic split can come out empty (one image per class)."""
    if len(folder_names) < 2:
        where = f"{root}/train/" if split_given else f"{root}/"
        raise DataError(f"{root} has one class ({folder_names[0]}): a classifier needs at least two; "
                        f"add another class folder in {where}")
    if len(test_labels) == 0:
        raise DataError(f"{root}: the automatic 80/20 split leaves no test images (class(es) "
                        f"{', '.join(folder_names)} have one image each; a class needs 2 to be split): "
                        "add images, or give train/ and test/ folders")


@DATASETS.register("imagefolder:")
def image_folder(path: str | Path, size: int = DEFAULT_SIZE) -> ClassificationDataset:
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist: check the path after 'imagefolder:'")
    train_root, test_root = root / "train", root / "test"
    if train_root.is_dir() != test_root.is_dir():
        raise DataError(
            f"{root} has only one of train/ and test/: add the other, "
            "or put class folders directly in it for an automatic 80/20 split"
        )
    if train_root.is_dir():
        folder_names = [p.name for p in _class_folders(train_root)]
        train_paths, train_labels = _scan(train_root, folder_names)
        test_paths, test_labels = _scan(test_root, folder_names)
    else:
        folder_names = [p.name for p in _class_folders(root)]
        paths, labels = _scan(root, folder_names)
        train, test = stratified_split(labels, fraction=TEST_FRACTION, seed=0)
        train_paths, train_labels = [paths[i] for i in train], labels[train]
        test_paths, test_labels = [paths[i] for i in test], labels[test]
    _check_classes(root, folder_names, test_labels, split_given=train_root.is_dir())
    # "golden_retriever" -> "golden retriever": the names are read by the text tower.
    classnames = tuple(" ".join(re.split(r"[\s_-]+", name)).strip() for name in folder_names)
    return ClassificationDataset(
        name=folder_label(root),
        classnames=classnames,
        templates=TEMPLATES,
        train=FileImages(train_paths, train_labels, size),
        test=FileImages(test_paths, test_labels, size),
        # Files in a folder may differ in size; this is the size they are decoded at.
        native_size=size,
    )


# How `dataset_label` names an ``imagefolder:PATH`` cell without scanning the folder.
image_folder.label = folder_label
