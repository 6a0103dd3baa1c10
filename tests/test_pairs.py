"""Image–caption pair datasets: captions are true to the pixels, ids follow meanings."""

from __future__ import annotations

import numpy as np
import pytest

from tunebench.datasets import load_dataset
from tunebench.datasets.fashion_captions import (
    TEMPLATES,
    Thresholds,
    attributes,
    describe,
    fit_thresholds,
    meaning_ids,
)
from tunebench.datasets.fashion_mnist import CLASSNAMES as FASHION_CLASSES
from tunebench.datasets.fashion_mnist import DEFAULT_DIR as FASHION_DIR
from tunebench.datasets.scenes import (
    BACKGROUND_LEVELS,
    COLOURS,
    SHAPES,
    Layout,
    SceneObject,
    caption,
    draw_scene,
    generate_scenes,
    parse_caption,
    shape_alpha,
)
from tunebench.errors import ConfigError

needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "t10k-labels-idx1-ubyte.gz").exists(),
    reason="apt-get install dataset-fashion-mnist",
)


def colours_in(region: np.ndarray) -> set[str]:
    """Names of the palette colours that some pixel of ``region`` has exactly."""
    return {name for name, rgb in COLOURS.items() if np.all(region == rgb, axis=-1).any()}


def assert_ids_follow_captions(captions: tuple[str, ...], ids: np.ndarray) -> None:
    """Equal ids exactly when captions are equal: caption -> id is one-to-one."""
    pairs = set(zip(captions, ids.tolist(), strict=True))
    assert len(pairs) == len(set(captions)) == len(set(ids.tolist()))


# ---- scenes: grammar ----------------------------------------------------------------


def test_scene_caption_is_canonical():
    red = SceneObject("circle", "red", "large", 0)
    blue = SceneObject("square", "blue", "small", 4)
    expected = "a large red circle at the top left and a small blue square in the center"
    assert caption([blue, red]) == caption([red, blue]) == expected  # reading order, not list order
    assert caption([blue]) == "a small blue square in the center"
    white = SceneObject("cross", "white", "small", 8)
    assert caption([white, blue, red]) == (
        "a large red circle at the top left, a small blue square in the center "
        "and a small white cross at the bottom right"
    )
    twins = [SceneObject("square", "blue", "small", 3), SceneObject("square", "blue", "small", 5)]
    assert caption(twins) == "a small blue square on the left and a small blue square on the right"


def test_scene_caption_parses_back_and_rejects_the_impossible():
    objects = [SceneObject("triangle", "purple", "large", 2), SceneObject("cross", "green", "small", 7)]
    text = caption(objects)
    assert parse_caption(text) == objects
    for bad in ("a small blue square", "a small blue square in the center and", text.upper()):
        with pytest.raises(ValueError, match="canonical"):
            parse_caption(bad)
    with pytest.raises(ValueError, match="one object per cell"):
        caption([objects[0], SceneObject("circle", "red", "small", 2)])
    with pytest.raises(ValueError, match="unknown"):
        SceneObject("hexagon", "red", "small", 0)


# ---- scenes: pixels -----------------------------------------------------------------


@pytest.mark.parametrize("size", [16, 64])
@pytest.mark.parametrize("shape", SHAPES)
def test_scene_pixels_show_what_the_caption_says(shape, size):
    objects = [SceneObject(shape, "yellow", "large", 5), SceneObject(shape, "purple", "small", 6)]
    layout = Layout.for_size(size)
    image, boxes = draw_scene(objects, size, np.random.RandomState(0))
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    outside = np.ones((size, size), dtype=bool)
    for obj, (top, left, extent) in zip(objects, boxes, strict=True):
        assert extent == layout.extent(obj.size)
        cell_top, cell_left = layout.cell_origin(obj.cell)  # the box stays in its cell
        assert cell_top <= top and top + extent < cell_top + layout.cell
        assert cell_left <= left and left + extent < cell_left + layout.cell
        box = image[top : top + extent, left : left + extent]
        assert tuple(box[extent // 2, extent // 2]) == COLOURS[obj.colour]  # the object's centre
        full = shape_alpha(shape, extent) == 1.0
        assert np.all(box[full] == COLOURS[obj.colour])
        assert colours_in(box) == {obj.colour}
        outside[top : top + extent, left : left + extent] = False
    background = image[outside]
    assert np.all(background < BACKGROUND_LEVELS)
    assert np.all(background == background[:, :1])  # grey: nothing drawn outside the boxes


def test_large_is_larger_and_shapes_differ_at_every_size():
    for size in (16, 32, 64, 224):
        layout = Layout.for_size(size)
        assert layout.small < layout.large < layout.cell
        for word in ("small", "large"):
            extent = layout.extent(word)
            masks = [shape_alpha(shape, extent) for shape in SHAPES]
            assert all(m[extent // 2, extent // 2] == 1.0 for m in masks)  # a pure-colour centre
            for i in range(len(masks)):
                for j in range(i):
                    assert not np.allclose(masks[i], masks[j])
    with pytest.raises(ValueError, match="too small"):
        Layout.for_size(12)


@pytest.mark.parametrize("size, max_objects", [(16, 2), (64, 3)])
def test_every_generated_caption_is_true(size, max_objects):
    images, captions = generate_scenes(250, size, max_objects, seed=0)
    layout = Layout.for_size(size)
    counts = []
    for image, text in zip(images, captions, strict=True):
        objects = {obj.cell: obj for obj in parse_caption(text)}
        counts.append(len(objects))
        for cell in range(9):
            top, left = layout.cell_origin(cell)
            region = image[top : top + layout.cell, left : left + layout.cell]
            assert colours_in(region) == ({objects[cell].colour} if cell in objects else set()), text
    assert set(counts) == set(range(1, max_objects + 1))


# ---- scenes: datasets ---------------------------------------------------------------


def test_scene_generation_is_deterministic():
    a_images, a_captions = generate_scenes(30, 16, 2, seed=3)
    b_images, b_captions = generate_scenes(30, 16, 2, seed=3)
    assert np.array_equal(a_images, b_images) and a_captions == b_captions
    prefix_images, prefix_captions = generate_scenes(10, 16, 2, seed=3)
    assert np.array_equal(prefix_images, a_images[:10]) and prefix_captions == a_captions[:10]
    assert generate_scenes(30, 16, 2, seed=4)[1] != a_captions


def test_tiny_scenes():
    data = load_dataset("tiny-scenes")
    assert (len(data.train), len(data.validation), len(data.test), data.native_size) == (200, 40, 60, 16)
    assert data.train.images.load(np.arange(3)).shape == (3, 16, 16, 3)
    assert data.train.images.identity(0) == "tiny-scenes/train[0]"
    assert max(len(parse_caption(c)) for c in data.train.captions + data.test.captions) == 2
    assert data.test.captions != data.train.captions[:60]  # test scenes are other draws
    assert_ids_follow_captions(data.train.captions + data.test.captions,
                               np.concatenate([data.train.meanings, data.test.meanings]))


def test_scenes():
    data = load_dataset("scenes")
    assert (len(data.train), len(data.validation), len(data.test), data.native_size) == (8000, 1000, 1000, 64)
    assert data.test.images.load(np.array([0, 999])).shape == (2, 64, 64, 3)
    assert {len(parse_caption(c)) for c in data.test.captions} == {1, 2, 3}
    assert_ids_follow_captions(data.train.captions + data.test.captions,
                               np.concatenate([data.train.meanings, data.test.meanings]))


# ---- fashion-captions ---------------------------------------------------------------


def square_image(side: int, values: tuple[int, int]) -> np.ndarray:
    """A black 28×28 canvas with a centred ``side``-pixel square, checkered in ``values``."""
    image = np.zeros((28, 28), np.uint8)
    start = (28 - side) // 2
    checker = np.indices((side, side)).sum(0) % 2
    image[start : start + side, start : start + side] = np.where(checker, *values)
    return image


def test_fashion_attributes_are_measured_from_pixels():
    thresholds = Thresholds(tone=(100.0, 180.0), extent=0.3, texture=10.0)
    images = np.stack([
        square_image(24, (250, 250)),  # bright, covers 73%, one intensity
        square_image(6, (40, 120)),  # mean 80, covers 5%, std 40
        square_image(20, (150, 150)),  # between the tone cuts
    ])
    codes = attributes(images, thresholds)
    assert describe("bag", codes[0], 0) == "a photo of a bright, large, plain bag."
    assert describe("bag", codes[1], 1) == "a dark, small, patterned bag on a black background."
    assert describe("coat", codes[2], 2) == "a greyscale picture of a grey, large, plain coat."
    assert attributes(np.zeros((1, 28, 28), np.uint8), thresholds).tolist() == [[0, 0, 0]]


@needs_fashion
def test_fashion_attributes_with_the_datasets_thresholds():
    thresholds = fit_thresholds(load_dataset("fashion-mnist").train.images)
    codes = attributes(np.stack([square_image(24, (250, 250)), square_image(8, (100, 100)),
                                 square_image(8, (40, 220))]), thresholds)
    assert [describe("bag", c, 0) for c in codes] == [
        "a photo of a bright, large, plain bag.",
        "a photo of a dark, small, plain bag.",
        "a photo of a dark, small, patterned bag.",
    ]


def test_fashion_meaning_ignores_wording():
    codes = np.array([[2, 1, 0], [2, 1, 0], [0, 1, 0], [2, 1, 0]])
    ids = meaning_ids(np.array([3, 3, 3, 4]), codes)
    assert ids[0] == ids[1] and len(set(ids.tolist())) == 3
    assert describe("coat", codes[0], 0) != describe("coat", codes[1], 1)
    every = np.array([[t, e, x] for t in range(3) for e in range(2) for x in range(2)] * 10)
    labels = np.repeat(np.arange(10), 12)
    assert sorted(meaning_ids(labels, every).tolist()) == list(range(120))  # dense, no clashes


@needs_fashion
def test_fashion_captions_dataset():
    data = load_dataset("fashion-captions")
    source = load_dataset("fashion-mnist")
    assert (len(data.train), len(data.validation), len(data.test), data.native_size) == (59000, 1000, 1000, 28)
    assert np.bincount(data.validation.meanings // 12).tolist() == [100] * 10
    assert data.test.images.load(np.arange(2)).shape == (2, 28, 28)
    assert np.bincount(data.test.meanings // 12).tolist() == [100] * 10  # class = id // 12
    # The captions say what the pixels show, under thresholds fitted on the train pool.
    thresholds = fit_thresholds(source.train.images)
    images = data.test.images.load(np.arange(len(data.test)))
    codes = attributes(images, thresholds)
    classes = data.test.meanings // 12
    assert np.array_equal(data.test.meanings, meaning_ids(classes, codes))
    wordings = {t.format("") for t in TEMPLATES}
    for text, label, code in zip(data.test.captions, classes, codes, strict=True):
        words = describe(FASHION_CLASSES[label], code, 0)[len("a photo of a ") : -1]
        assert words in text and text.replace(words, "") in wordings
    # The tertile and median cuts spread the training pool over the words.
    pool_and_held_out = np.concatenate([data.train.meanings, data.validation.meanings])
    assert np.bincount(pool_and_held_out % 12 // 4).tolist() == pytest.approx([20000] * 3, abs=2)
    assert 100 <= len(np.unique(data.train.meanings)) <= 120


# ---- training subsets ---------------------------------------------------------------


def test_train_subsets_are_nested_seeded_and_bounded():
    data = load_dataset("tiny-scenes")
    small, large = data.train_subset(50, seed=1), data.train_subset(120, seed=1)
    assert len(small) == 50 and set(small) <= set(large)
    assert np.all(np.diff(large) > 0)
    assert np.array_equal(small, data.train_subset(50, seed=1))
    assert not np.array_equal(small, data.train_subset(50, seed=2))
    assert len(data.train_subset(200, seed=1)) == 200
    with pytest.raises(ConfigError, match="200 training pairs; asked for 201"):
        data.train_subset(201, seed=1)


# ---- validation pairs ---------------------------------------------------------------


def _image_hashes(split) -> set[str]:
    import hashlib

    images = split.images.load(np.arange(len(split)))
    return {hashlib.sha256(image.tobytes()).hexdigest() for image in images}


def test_validation_pairs_are_held_out_of_the_training_pool():
    data = load_dataset("tiny-scenes")
    # By content: no validation image is a pool image, so no draw (any size, any seed) holds one.
    assert len(_image_hashes(data.validation)) == 40
    assert not _image_hashes(data.validation) & _image_hashes(data.train)
    assert not _image_hashes(data.validation) & _image_hashes(data.test)
    # The pool is what it was before validation existed: the first 200 seed-0 scenes.
    images, captions = generate_scenes(240, 16, 2, seed=0)
    assert np.array_equal(data.train.images.load(np.arange(200)), images[:200])
    assert data.validation.captions == tuple(captions[200:])
    assert_ids_follow_captions(data.train.captions + data.validation.captions + data.test.captions,
                               np.concatenate([data.train.meanings, data.validation.meanings, data.test.meanings]))
    assert data.split("validation") is data.validation and data.split("test") is data.test
    with pytest.raises(ConfigError, match="test or validation"):
        data.split("train")


@needs_fashion
def test_fashion_validation_pairs_keep_their_captions_and_leave_the_pool():
    data = load_dataset("fashion-captions")
    source = load_dataset("fashion-mnist")
    from tunebench.datasets.fashion_captions import VALIDATION_PER_CLASS, VALIDATION_SEED
    from tunebench.datasets.fewshot import stratified_split

    pool, held_out = stratified_split(source.train.labels, per_class=VALIDATION_PER_CLASS, seed=VALIDATION_SEED)
    assert not set(pool.tolist()) & set(held_out.tolist()) and len(pool) + len(held_out) == 60000
    assert np.array_equal(data.validation.images.load(np.arange(1000)), source.train.load(held_out))
    assert np.array_equal(data.train.images.load(np.array([0, 58999])), source.train.load(pool[[0, -1]]))
