"""Multi-object canvases with exact boxes and instance masks, for the detection track.

Objects are sprites (28 px MNIST-style images, or textile patches) pasted onto a
textured background at random positions and scales. A sprite's *alpha* is the set
of its pixels brighter than ``ALPHA_CUT`` (MNIST-style images are bright objects on
black), or the whole patch for opaque sprites; pasting writes the sprite's pixels
exactly where its alpha is set. So an instance mask is exact by construction: the
object's alpha minus whatever later objects cover, and its box is the tight box of
that visible mask (COCO convention: boxes cover what is visible).

Placement refuses a position when the new object would hide more than
``1 - min_visible`` of an object already on the canvas, so every object drawn is
annotated and recognisable; no unannotated fragments are left behind.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

ALPHA_CUT = 40  # grey level above which an MNIST-style pixel belongs to the object


@dataclass(frozen=True)
class CanvasRecipe:
    size: int = 160  # canvas side in pixels
    objects: tuple[int, int] = (1, 4)  # objects per canvas, both ends included
    sprite_size: tuple[int, int] = (34, 62)  # pasted sprite side in pixels
    min_visible: float = 0.6  # share of an object's alpha that must stay visible
    background_max: int = 70  # brightest background grey level (objects are brighter)
    opaque: bool = False  # True: a sprite's alpha is the whole square (textile patches)
    tries: int = 30  # placement attempts per object before the canvas takes fewer

    def __post_init__(self) -> None:
        lo, hi = self.objects
        if not 1 <= lo <= hi:
            raise ValueError(f"objects must be (min, max) with 1 <= min <= max, got {self.objects}")
        if not 8 <= self.sprite_size[0] <= self.sprite_size[1] <= self.size:
            raise ValueError(f"sprite_size {self.sprite_size} must lie within [8, {self.size}]")
        if not 0 < self.min_visible <= 1:
            raise ValueError("min_visible must be in (0, 1]")


@dataclass
class PlacedObject:
    category: int  # index into the sprite pool's categories
    mask: np.ndarray  # (H, W) bool, visible pixels only


def background(rng: np.random.Generator, size: int, brightest: int) -> np.ndarray:
    """Smooth noise plus faint stripes: texture that is not an object of any class."""
    coarse = rng.random((6, 6)).astype(np.float32)
    noise = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC),
                       dtype=np.float32) / 255.0
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, 20)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    stripes = 0.5 + 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    level = brightest * (0.75 * noise + 0.25 * stripes * rng.uniform(0.2, 1.0))
    return np.clip(level, 0, 255).astype(np.uint8)


def _resize(sprite: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(sprite).resize((side, side), Image.BILINEAR), dtype=np.uint8)


class SpritePool:
    """Sprites by category; a draw picks a category uniformly, then one of its sprites,
    so that classes with many source images (Fashion-MNIST) do not crowd out the rest.

    Each sprite has an id (its row in the source array unless ``ids`` says otherwise)
    and the pool remembers which ids it has handed out (``drawn``): a validation set is
    then composed from a pool ``excluding`` every sprite the training canvases used.
    Recording changes no draw, so canvases stay what they were.
    """

    def __init__(self, sprites: np.ndarray, labels: np.ndarray, ids: np.ndarray | None = None) -> None:
        if sprites.dtype != np.uint8 or sprites.ndim != 3:
            raise ValueError("sprites must be uint8 (N, h, w)")
        self.sprites = sprites
        self.labels = np.asarray(labels)
        self.ids = np.arange(len(sprites)) if ids is None else np.asarray(ids)
        self.by_category = {int(c): np.flatnonzero(self.labels == c) for c in np.unique(self.labels)}
        self.categories = sorted(self.by_category)
        self.drawn: set[int] = set()

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        category = self.categories[int(rng.integers(len(self.categories)))]
        members = self.by_category[category]
        row = members[int(rng.integers(len(members)))]
        self.drawn.add(int(self.ids[row]))
        return self.sprites[row], category

    def excluding(self, ids: set[int]) -> SpritePool:
        """The sprites whose ids are not in ``ids``; every category must keep one."""
        keep = ~np.isin(self.ids, np.fromiter(ids, dtype=np.int64, count=len(ids)))
        emptied = sorted(set(self.categories) - {int(c) for c in np.unique(self.labels[keep])})
        if emptied:
            raise ValueError(f"no unused sprite is left for categories {emptied}")
        return SpritePool(self.sprites[keep], self.labels[keep], self.ids[keep])


def compose(
    rng: np.random.Generator, pool: SpritePool, recipe: CanvasRecipe
) -> tuple[np.ndarray, list[PlacedObject]]:
    """One canvas (H, W) uint8 grey and its objects, drawing sprites from ``pool``."""
    size = recipe.size
    canvas = background(rng, size, recipe.background_max)
    owner = np.full((size, size), -1, dtype=np.int32)  # which object each pixel shows
    full_area: list[int] = []
    categories: list[int] = []
    wanted = int(rng.integers(recipe.objects[0], recipe.objects[1] + 1))
    for _ in range(wanted):
        source, category = pool.draw(rng)
        for _attempt in range(recipe.tries):
            side = int(rng.integers(recipe.sprite_size[0], recipe.sprite_size[1] + 1))
            sprite = _resize(source, side)
            alpha = np.ones_like(sprite, dtype=bool) if recipe.opaque else sprite > ALPHA_CUT
            if alpha.sum() < 16:  # a blank sprite cannot be an object
                break
            y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            window = owner[y : y + side, x : x + side]
            covered = np.bincount(window[alpha & (window >= 0)], minlength=len(full_area))
            # Would any earlier object keep too little of itself visible?
            visible_after = np.bincount(owner[owner >= 0], minlength=len(full_area)) - covered
            if any(visible_after[i] < recipe.min_visible * full_area[i] for i in range(len(full_area))):
                continue
            index = len(full_area)
            window[alpha] = index
            canvas[y : y + side, x : x + side][alpha] = sprite[alpha]
            full_area.append(int(alpha.sum()))
            categories.append(category)
            break
    objects = [PlacedObject(category=c, mask=owner == i) for i, c in enumerate(categories)]
    return canvas, objects


def tight_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """COCO box [x, y, width, height] of a boolean mask's set pixels."""
    ys, xs = np.nonzero(mask)
    x0, y0 = float(xs.min()), float(ys.min())
    return x0, y0, float(xs.max()) + 1 - x0, float(ys.max()) + 1 - y0
