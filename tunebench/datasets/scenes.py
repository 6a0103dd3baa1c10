"""``scenes`` / ``tiny-scenes``: drawn scenes whose captions are exact by construction.

A scene is a dark, grey-noise canvas with 1 to ``max_objects`` objects. An object is a
shape (circle, square, triangle, cross) in a colour (red, green, blue, yellow, white,
purple), small or large, placed in one cell of a 3×3 grid, at most one object per
cell, with a pixel of background between cells, so objects never touch.

Caption grammar (one canonical caption per scene)::

    caption := phrase                                  (one object)
             | phrase " and " phrase                   (two)
             | phrase ", " phrase " and " phrase       (three)
    phrase  := "a " SIZE " " COLOUR " " SHAPE " " POSITION

with phrases in reading order of their cells (top row first, left to right) and
POSITION one of "at the top left", "at the top", "at the top right", "on the left",
"in the center", "on the right", "at the bottom left", "at the bottom", "at the bottom
right". Example: "a large red circle at the top left and a small blue square in the
center". Every object gets its own phrase, so the number of phrases is the count;
two alike objects read "a small blue square on the left and a small blue square on
the right". ``parse_caption`` inverts the grammar.

Geometry on a ``size``-pixel canvas: cells are ``size // 3`` pixels, the grid centred;
each cell keeps its last row and column as background (the gap between objects). A
large object's box is ~0.85 of a cell, a small one's ~0.5 (at least 3 px), and the box
sits at a random offset inside the usable part of its cell, so one caption covers
many slightly different images. Shapes are drawn with 4×4 supersampled coverage:
interior pixels have the caption's colour exactly, edge pixels blend with the
background, which keeps a 3-pixel circle distinguishable from a 3-pixel square.

The meaning id of a pair is the index of its caption among the unique captions of
all splits together, so equal captions share an id across splits. Train scenes come
from seed 0, validation scenes are the seed-0 draws after them (held out of the
training pool) and test scenes come from seed 1: held-out scenes are new draws (a
held-out caption can still equal a training caption, as in any captioned corpus).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from tunebench.datasets.base import ArrayImages
from tunebench.datasets.pairs import PairDataset, PairSplit
from tunebench.registry import DATASETS

SHAPES = ("circle", "square", "triangle", "cross")
# Far apart in RGB and all with one channel >= 160, so none can be mistaken for the
# dark grey background or for another colour blended with it.
COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "purple": (160, 60, 200),
}
SIZES = ("small", "large")
POSITIONS = (
    "at the top left", "at the top", "at the top right",
    "on the left", "in the center", "on the right",
    "at the bottom left", "at the bottom", "at the bottom right",
)  # fmt: skip
BACKGROUND_LEVELS = 24  # background pixels are grey in 0..23
SUPERSAMPLE = 4  # coverage samples per pixel side


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    cell: int  # 0..8, row-major over the 3×3 grid

    def __post_init__(self) -> None:
        if self.shape not in SHAPES or self.colour not in COLOURS or self.size not in SIZES:
            raise ValueError(f"unknown shape, colour or size in {self}")
        if not 0 <= self.cell < 9:
            raise ValueError(f"cell must be in 0..8, got {self.cell}")

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} {POSITIONS[self.cell]}"


def caption(objects: list[SceneObject]) -> str:
    """The canonical caption of a scene (see the module docstring for the grammar)."""
    if not objects or len({o.cell for o in objects}) != len(objects):
        raise ValueError("a scene has at least one object and at most one object per cell")
    phrases = [o.phrase() for o in sorted(objects, key=lambda o: o.cell)]
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


# Longest positions first: the regex takes the first alternative that matches, and
# "at the top" must not cut "at the top right" short.
_PHRASE = re.compile(
    rf"a ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) "
    rf"({'|'.join(sorted(POSITIONS, key=len, reverse=True))})"
)


def parse_caption(text: str) -> list[SceneObject]:
    """The objects a caption names, in caption order; ValueError if it is not canonical."""
    objects = [
        SceneObject(shape, colour, size, POSITIONS.index(position))
        for size, colour, shape, position in _PHRASE.findall(text)
    ]
    if not objects or caption(objects) != text:
        raise ValueError(f"not a canonical scene caption: {text!r}")
    return objects


@dataclass(frozen=True)
class Layout:
    """Where objects may go on a ``size``-pixel canvas, and how big they are."""

    size: int
    cell: int  # pixels per grid cell
    margin: int  # pixels before the first cell (the grid is centred)
    small: int  # box side of a small object
    large: int  # box side of a large object

    @classmethod
    def for_size(cls, size: int) -> Layout:
        cell = size // 3
        usable = cell - 1  # the cell's last row and column stay background
        large = min(usable, round(0.85 * cell))
        small = max(3, round(0.5 * cell))
        if small >= large:
            raise ValueError(f"a {size}-pixel canvas is too small to tell small from large; use >= 15")
        return cls(size=size, cell=cell, margin=(size - 3 * cell + 1) // 2, small=small, large=large)

    def extent(self, size_word: str) -> int:
        return self.large if size_word == "large" else self.small

    def cell_origin(self, cell: int) -> tuple[int, int]:
        """(top, left) pixel of a grid cell."""
        row, col = divmod(cell, 3)
        return self.margin + row * self.cell, self.margin + col * self.cell


def shape_alpha(shape: str, extent: int) -> np.ndarray:
    """Coverage in [0, 1] of a shape filling an ``extent``-pixel box, float32 (extent, extent)."""
    k = SUPERSAMPLE
    y, x = (np.mgrid[0 : extent * k, 0 : extent * k] + 0.5) / k  # sample points, in pixels
    c = extent / 2
    if shape == "circle":
        inside = (x - c) ** 2 + (y - c) ** 2 <= c**2
    elif shape == "square":
        # The whole box: crisp full-coverage edges keep a 3-pixel square distinct from
        # a 3-pixel circle, whose corners are half covered.
        inside = np.maximum(np.abs(x - c), np.abs(y - c)) <= c
    elif shape == "triangle":  # apex up: the half-width grows linearly from the top
        inside = np.abs(x - c) <= (y / extent) * c
    elif shape == "cross":
        # Bars ~0.36 of the box thick, in whole pixels centred in the box, so that even a
        # 4-pixel cross has pixels of the pure colour (a thinner bar would only blend).
        thickness = extent - 2 * round(0.32 * extent)
        inside = (np.abs(x - c) <= thickness / 2) | (np.abs(y - c) <= thickness / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside.reshape(extent, k, extent, k).mean(axis=(1, 3), dtype=np.float32)


@functools.cache
def _alphas(size: int) -> dict[tuple[str, str], np.ndarray]:
    """Every (shape, size word) coverage mask for one canvas size, computed once per process."""
    layout = Layout.for_size(size)
    alphas = {}
    for shape in SHAPES:
        for word in SIZES:
            alpha = shape_alpha(shape, layout.extent(word))[..., None]  # broadcasts over RGB
            alpha.setflags(write=False)  # shared between calls
            alphas[shape, word] = alpha
    return alphas


def place(obj: SceneObject, layout: Layout, rng: np.random.RandomState) -> tuple[int, int, int]:
    """(top, left, extent) of the object's box: a random offset inside its cell's usable part."""
    extent = layout.extent(obj.size)
    top, left = layout.cell_origin(obj.cell)
    slack = layout.cell - 1 - extent
    dy, dx = rng.randint(0, slack + 1, size=2)
    return top + int(dy), left + int(dx), extent


def draw_scene(
    objects: list[SceneObject], size: int, rng: np.random.RandomState
) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """A uint8 (size, size, 3) scene and each object's (top, left, extent) box."""
    layout = Layout.for_size(size)
    alphas = _alphas(size)
    canvas = rng.randint(0, BACKGROUND_LEVELS, size=(size, size, 1)).repeat(3, axis=2)
    canvas = canvas.astype(np.float32)
    boxes = []
    for obj in objects:
        top, left, extent = place(obj, layout, rng)
        alpha = alphas[obj.shape, obj.size]
        patch = canvas[top : top + extent, left : left + extent]
        colour = np.asarray(COLOURS[obj.colour], dtype=np.float32)
        patch[...] = patch * (1 - alpha) + colour * alpha  # alpha 1 gives the colour exactly
        boxes.append((top, left, extent))
    return np.rint(canvas).astype(np.uint8), boxes


def random_objects(rng: np.random.RandomState, max_objects: int) -> list[SceneObject]:
    """1..max_objects objects with uniform attributes, in distinct cells."""
    count = rng.randint(1, max_objects + 1)
    cells = rng.choice(9, size=count, replace=False)
    return [
        SceneObject(
            shape=SHAPES[rng.randint(len(SHAPES))],
            colour=list(COLOURS)[rng.randint(len(COLOURS))],
            size=SIZES[rng.randint(len(SIZES))],
            cell=int(cell),
        )
        for cell in cells
    ]


def generate_scenes(
    n: int, size: int = 64, max_objects: int = 3, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    """``n`` uint8 RGB scenes (n, size, size, 3) and their captions, from ``seed``.

    One generator draws scene after scene, so the first m scenes of a call with n > m
    are the scenes of the call with m.
    """
    if not 1 <= max_objects <= 9:
        raise ValueError(f"max_objects must be in 1..9, got {max_objects}")
    rng = np.random.RandomState(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    captions = []
    for i in range(n):
        objects = random_objects(rng, max_objects)
        images[i], _ = draw_scene(objects, size, rng)
        captions.append(caption(objects))
    return images, captions


def scene_dataset(name: str, *, n_train: int, n_validation: int, n_test: int, size: int,
                  max_objects: int) -> PairDataset:
    """Train then validation scenes from seed 0, test scenes from seed 1, meaning ids shared.

    The validation scenes are the seed-0 draws after the training pool's: the pool is
    exactly what it was before validation existed (nested draws), and no validation
    scene is a row of it.
    """
    drawn_images, drawn_captions = generate_scenes(n_train + n_validation, size, max_objects, seed=0)
    test_images, test_captions = generate_scenes(n_test, size, max_objects, seed=1)
    _, ids = np.unique(np.asarray(drawn_captions + test_captions), return_inverse=True)
    ids = ids.reshape(-1).astype(np.int64)
    bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_validation)}
    splits = {split: PairSplit(ArrayImages(drawn_images[a:b], ids[a:b], f"{name}/{split}"),
                               tuple(drawn_captions[a:b]))
              for split, (a, b) in bounds.items()}
    drawn = n_train + n_validation
    return PairDataset(
        name=name,
        **splits,
        test=PairSplit(ArrayImages(test_images, ids[drawn:], f"{name}/test"), tuple(test_captions)),
        native_size=size,
        description=f"{n_train} + {n_validation} validation + {n_test} drawn scenes, {size} px, "
                    f"1-{max_objects} objects",
    )


@DATASETS.register("scenes")
def scenes() -> PairDataset:
    """Drawn scenes with exact captions (shape, colour, size, 3×3 position); 8000 + 1000 validation
    + 1000 test pairs, 64 px."""
    return scene_dataset("scenes", n_train=8000, n_validation=1000, n_test=1000, size=64, max_objects=3)


@DATASETS.register("tiny-scenes")
def tiny_scenes() -> PairDataset:
    """Scenes for tests and smoke runs: 16 px, 1-2 objects, 200 + 40 validation + 60 test pairs."""
    return scene_dataset("tiny-scenes", n_train=200, n_validation=40, n_test=60, size=16, max_objects=2)
