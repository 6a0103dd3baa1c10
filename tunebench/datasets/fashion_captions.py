"""``fashion-captions``: Fashion-MNIST photos with captions built from measured attributes.

Every attribute in a caption is measured from the image's own pixels, so it is true:

- object pixels are those brighter than 32 (the background is black);
- **tone**: mean object intensity; "dark" / "grey" / "bright" split at the tertiles
  of the training pool (145.9 and 184.9 on the official train set), so each word
  covers a third of the images;
- **extent**: share of the 28×28 canvas the object covers; "small" / "large" around
  the training pool's median (0.452);
- **texture**: standard deviation of the object's intensities; "plain" / "patterned"
  around the training pool's median (45.4).

Thresholds are fitted on the training pool only and applied unchanged to the test
images. A caption is one of four templates filled with "<tone>, <extent>, <texture>
<class>", e.g. "a photo of a bright, large, plain pullover.", the template drawn per
image by RandomState(0) (train) or RandomState(1) (test). The meaning id is the index
of (class, tone, extent, texture) among the 10·3·2·2 = 120 combinations, not the
wording: two captions that differ only in template mean the same thing, and
retrieval does not count finding either as a miss.

Training pool: the Fashion-MNIST training images, in file order, less the validation
pairs: a fixed 1 000 of them, 100 per class (``stratified_split``, seed
``VALIDATION_SEED``), held out so that no draw of training pairs holds one. Every
training image is captioned before the hold-out (thresholds fitted on all 60 000, the
template drawn per image), so a pool image keeps the caption it always had. Test
pairs: a fixed 1 000 test images, 100 per class (``test_indices(..., 100)``, the
subset the classification task evaluates on). Images stay 28×28 grey.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunebench.datasets.base import ArrayImages
from tunebench.datasets.fewshot import stratified_split, test_indices
from tunebench.datasets.pairs import PairDataset, PairSplit
from tunebench.registry import DATASETS

OBJECT_THRESHOLD = 32
VALIDATION_PER_CLASS = 100
VALIDATION_SEED = 7  # any fixed number: the hold-out must not depend on a run's seed
TONES = ("dark", "grey", "bright")
EXTENTS = ("small", "large")
TEXTURES = ("plain", "patterned")
TEMPLATES = (
    "a photo of a {}.",
    "a {} on a black background.",
    "a greyscale picture of a {}.",
    "a product photo of a {}.",
)
TEST_PER_CLASS = 100
CHUNK = 10_000  # images measured at a time: float64 work arrays stay ~60 MB, not ~400 MB


@dataclass(frozen=True)
class Thresholds:
    """Cut points measured on the training pool."""

    tone: tuple[float, float]  # dark | grey | bright
    extent: float  # small | large
    texture: float  # plain | patterned


def _measure_chunk(images: np.ndarray) -> np.ndarray:
    pixels = images.reshape(len(images), -1).astype(np.float64)
    mask = pixels > OBJECT_THRESHOLD
    count = np.maximum(mask.sum(1), 1)  # an all-black image counts as one dark pixel
    mean = (pixels * mask).sum(1) / count
    variance = (((pixels - mean[:, None]) ** 2) * mask).sum(1) / count
    return np.stack([mean, mask.mean(1), np.sqrt(variance)], axis=1)


def measure(images: np.ndarray) -> np.ndarray:
    """(N, 3): mean object intensity, covered share of the canvas, object intensity std."""
    if len(images) == 0:
        return np.empty((0, 3))
    return np.concatenate([_measure_chunk(images[i : i + CHUNK]) for i in range(0, len(images), CHUNK)])


def fit_thresholds(images: np.ndarray) -> Thresholds:
    tone, extent, texture = measure(images).T
    low, high = np.quantile(tone, [1 / 3, 2 / 3])
    return Thresholds((float(low), float(high)), float(np.median(extent)), float(np.median(texture)))


def attributes(images: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """(N, 3) int64 codes: tone in 0..2, extent in 0..1, texture in 0..1 (indices into the word lists)."""
    tone, extent, texture = measure(images).T
    return np.stack(
        [
            np.digitize(tone, thresholds.tone),
            (extent > thresholds.extent).astype(np.int64),
            (texture > thresholds.texture).astype(np.int64),
        ],
        axis=1,
    )


def describe(classname: str, codes: np.ndarray, template: int) -> str:
    """The caption for one image's attribute codes in one template."""
    tone, extent, texture = (int(c) for c in codes)
    words = f"{TONES[tone]}, {EXTENTS[extent]}, {TEXTURES[texture]} {classname}"
    return TEMPLATES[template].format(words)


def meaning_ids(labels: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Index of (class, tone, extent, texture) in row-major order: the same in every split."""
    labels = np.asarray(labels, dtype=np.int64)
    return ((labels * len(TONES) + codes[:, 0]) * len(EXTENTS) + codes[:, 1]) * len(TEXTURES) + codes[:, 2]


def caption_split(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    classnames: tuple[str, ...],
    thresholds: Thresholds,
    template_seed: int,
    name: str,
) -> PairSplit:
    """Measure, caption and assign meaning ids to one split's images."""
    codes = attributes(images, thresholds)
    templates = np.random.RandomState(template_seed).randint(len(TEMPLATES), size=len(images))
    captions = tuple(
        describe(classnames[label], code, template)
        for label, code, template in zip(labels, codes, templates, strict=True)
    )
    return PairSplit(ArrayImages(images, meaning_ids(labels, codes), name), captions)


@DATASETS.register("fashion-captions")
def fashion_captions() -> PairDataset:
    """Fashion-MNIST captioned with measured tone, extent and texture; 59000 + 1000 validation
    + 1000 test pairs, 28 px."""
    from tunebench.datasets import load_dataset  # the package imports this module

    source = load_dataset("fashion-mnist")
    train_images = source.train.load(np.arange(len(source.train)))
    thresholds = fit_thresholds(train_images)
    test_index = test_indices(source, TEST_PER_CLASS)
    common = dict(classnames=source.classnames, thresholds=thresholds)
    captioned = caption_split(train_images, source.train.labels, template_seed=0,
                              name="fashion-captions/train", **common)
    pool, validation = stratified_split(source.train.labels, per_class=VALIDATION_PER_CLASS, seed=VALIDATION_SEED)
    return PairDataset(
        name="fashion-captions",
        train=captioned.subset(pool, "fashion-captions/train"),
        validation=captioned.subset(validation, "fashion-captions/validation"),
        test=caption_split(source.test.load(test_index), source.test.labels[test_index],
                           template_seed=1, name="fashion-captions/test", **common),
        native_size=28,
        description="Fashion-MNIST, captions from measured tone / extent / texture",
    )
