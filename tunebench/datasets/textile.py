"""``textile-defects``: simulated fabric textures (Megahed et al. 2025), 3 classes.

From the PyPI package ``conformal-clip-data``: 250×250 grey JPEGs of a diagonal
weave texture, 1000 nominal, 500 with a local defect (a small speckled blotch of
roughly 10 px, anywhere in the image) and 500 with a global defect (the texture's
autoregressive parameters lowered 5%: a finer, less streaky weave everywhere).

Images are decoded at 224 px, not at a small size like 64: at 64 px the local
blotch shrinks to 2–3 px and bicubic resizing smooths it into the texture, which
would make that class unlearnable for reasons that have nothing to do with the
methods compared. 224 is also what the CLIP-style towers take, so no second resize.
A fixed stratified split (RandomState(0)) holds out 100 images per class for testing.
"""

from __future__ import annotations

import numpy as np

from tunebench.datasets.base import ClassificationDataset, FileImages
from tunebench.datasets.fewshot import stratified_split
from tunebench.errors import DataError
from tunebench.registry import DATASETS

HOW_TO_INSTALL = "pip install --no-deps conformal-clip-data"
IMAGE_SIZE = 224
CLASSNAMES = (
    "defect-free fabric",
    "fabric with a small local defect",
    "fabric with a global texture defect",
)
TEMPLATES = (
    "a photo of a {}.",  # first: methods that use a single prompt take templates[0]
    "a close-up photo of a {}.",
    "a grayscale photo of a {}.",
    "an inspection image of a {}.",
)
TEST_PER_CLASS = 100


class _PackageImages(FileImages):
    """Identities relative to the package, so that split files and feature-cache keys
    survive moving or rebuilding the virtual environment."""

    def identity(self, index: int) -> str:
        path = self.paths[int(index)]
        return f"textile-defects/{path.parent.name}/{path.name}"


@DATASETS.register("textile-defects")
def textile_defects() -> ClassificationDataset:
    try:
        import conformal_clip_data as package  # data-only package: a few path helpers
    except ImportError as exc:
        raise DataError(f"conformal-clip-data is not installed: {HOW_TO_INSTALL}") from exc
    paths, labels = [], []
    folders = (package.nominal_dir(), package.local_dir(), package.global_dir())  # as CLASSNAMES
    for label, folder in enumerate(folders):
        files = sorted(folder.glob("*.jpg"))
        if not files:
            raise DataError(f"textile-defects: no images in {folder}: {HOW_TO_INSTALL}")
        paths += files
        labels += [label] * len(files)
    label_array = np.asarray(labels, dtype=np.int64)
    train, test = stratified_split(label_array, per_class=TEST_PER_CLASS, seed=0)
    return ClassificationDataset(
        name="textile-defects",
        classnames=CLASSNAMES,
        templates=TEMPLATES,
        train=_PackageImages([paths[i] for i in train], label_array[train], IMAGE_SIZE),
        test=_PackageImages([paths[i] for i in test], label_array[test], IMAGE_SIZE),
        native_size=250,
    )
