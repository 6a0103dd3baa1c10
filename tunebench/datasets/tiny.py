"""``tiny-shapes``: four drawn shapes at 16×16, for tests and smoke runs.

Generated in memory in milliseconds from a fixed seed, so every test runs the real
dataset code path without any file and every process sees the same pixels.
Position, size, brightness and noise vary so that the task is not solvable by
looking at one pixel, yet a tiny model learns it in a few steps.
"""

from __future__ import annotations

import numpy as np

from tunebench.datasets.base import ArrayImages, ClassificationDataset
from tunebench.registry import DATASETS

SIZE = 16
CLASSNAMES = ("circle", "square", "triangle", "cross")
TRAIN_PER_CLASS = 24
TEST_PER_CLASS = 12


def _mask(shape: str, rng: np.random.RandomState) -> np.ndarray:
    """A boolean SIZE×SIZE mask of one shape with random radius and centre (kept inside)."""
    radius = rng.uniform(3.5, 6.0)
    cy, cx = rng.uniform(radius, SIZE - radius, size=2)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5  # pixel centres
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        # A smaller half-side than the circle's radius keeps the two areas comparable.
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.8 * radius
    if shape == "triangle":  # apex up, base as wide as the shape is tall
        return (np.abs(dy) <= radius) & (np.abs(dx) <= (dy + radius) / 2)
    if shape == "cross":
        bar = 1.2
        return ((np.abs(dx) <= bar) & (np.abs(dy) <= radius)) | (
            (np.abs(dy) <= bar) & (np.abs(dx) <= radius)
        )
    raise ValueError(shape)


def _draw(count_per_class: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for label, shape in enumerate(CLASSNAMES):
        for _ in range(count_per_class):
            background, foreground = rng.uniform(0, 60), rng.uniform(160, 255)
            image = np.where(_mask(shape, rng), foreground, background)
            image = image + rng.normal(0, 12, size=image.shape)
            images.append(np.clip(np.rint(image), 0, 255).astype(np.uint8))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


@DATASETS.register("tiny-shapes")
def tiny_shapes() -> ClassificationDataset:
    rng = np.random.RandomState(0)
    train_images, train_labels = _draw(TRAIN_PER_CLASS, rng)
    test_images, test_labels = _draw(TEST_PER_CLASS, rng)
    return ClassificationDataset(
        name="tiny-shapes",
        classnames=CLASSNAMES,
        templates=("a photo of a {}.", "a drawing of a {}."),
        train=ArrayImages(train_images, train_labels, "tiny-shapes/train"),
        test=ArrayImages(test_images, test_labels, "tiny-shapes/test"),
        native_size=SIZE,
    )
