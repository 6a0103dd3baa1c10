"""Detection datasets in COCO format: your own (``coco:PATH``) and generated canvases.

On disk, which is what ``coco:PATH`` reads and what the generated sets are written as::

    PATH/annotations/<split>.json   COCO instances: images, annotations (bbox, RLE or
                                    polygon segmentation, area, iscrowd), categories
    PATH/images/<split>/<file_name>

Splits: ``train`` (the pool that few-shot images are drawn from), ``test``, and
optionally ``base`` (images with base-class objects only, on which a detector is
built) and ``validation`` (held-out images that hyper-parameter selection scores on;
its images must be in neither ``train`` nor ``test``: a selection trial compares their
pixels' hashes before it runs). A category may say ``"split": "base"``; every other
category is *novel*: the classes the tuning methods are compared on. Extra keys are
ignored by COCO tools.

Generated sets (built once into the cache, then read like any ``coco:`` folder):

- ``det-mnist``: 160 px canvases of 1–4 objects from Fashion-MNIST and Animal-MNIST,
  20 classes; novel: elephant, giraffe, zebra, bag, ankle boot. ``base`` has 2,400
  canvases of base objects only, ``train`` 600 and ``test`` 300 with every class
  (test objects come from the source datasets' test images), and ``validation`` 150:
  canvases of their own, whose objects are source training images that no ``base``
  or ``train`` canvas shows (so neither a K-shot draw nor the detector's build saw
  them), and never test images.
- ``det-textile``: a specialised domain. 192 px canvases of 1–3 textile patches
  (defect-free, local defect, global defect), all three classes novel; ``validation``
  60 canvases of training patches that no ``train`` canvas shows.
- ``tiny-det``: 48 px canvases of drawn shapes, for tests; its validation canvases
  use shapes drawn after (and apart from) the others.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tunebench.datasets.canvas import ALPHA_CUT, CanvasRecipe, SpritePool, compose, tight_box
from tunebench.errors import DataError
from tunebench.paths import tunebench_cache_dir
from tunebench.registry import DATASETS

GENERATOR_VERSION = 2  # bump when canvas.py or the writers change what they produce
PIXEL_CACHE_IMAGES = 4096  # decoded images kept per split (a large coco: folder would not fit)
TEMPLATES = (
    "a photo of a {}.",  # templates[0]: the single prompt of coop-style methods
    "a picture of a {}.",
    "a cropped photo of a {}.",
    "a black and white photo of a {}.",
)


def usable(annotation: dict) -> bool:
    """An object a detector can learn from: not a crowd region, a box of at least 1 px.
    (Crowd regions stay in the file: the evaluator ignores detections on them.)"""
    _x, _y, w, h = annotation["bbox"]
    return not annotation.get("iscrowd") and w >= 1 and h >= 1


def _checked(coco: dict, label_of: dict[int, int], name: str) -> dict:
    """The split's COCO dict with what pycocotools needs filled in (``iscrowd``, ``area``),
    or a one-line DataError naming the first entry that cannot be used."""
    for image in coco["images"]:
        missing = {"id", "file_name", "height", "width"} - set(image)
        if missing:
            raise DataError(f"{name}: image entry {image.get('id', image)} lacks {sorted(missing)}")
    for ann in coco["annotations"]:
        where = f"{name}: annotation {ann.get('id')}"
        if ann.get("category_id") not in label_of:
            raise DataError(f"{where} has category_id {ann.get('category_id')}, not in the categories list")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise DataError(f"{where} has no [x, y, width, height] bbox")
        segmentation = ann.get("segmentation")
        if isinstance(segmentation, list) and any(len(polygon) < 6 for polygon in segmentation):
            raise DataError(f"{where} has a polygon of fewer than 3 points: fix or drop it")
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(bbox[2] * bbox[3]))
        if not segmentation:  # a box without a mask: the box is the best mask there is
            x, y, w, h = bbox
            ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return coco


class DetectionSplit:
    """One split: images addressed by position (0..n-1) and their annotations."""

    def __init__(self, coco: dict, image_dir: Path, label_of: dict[int, int], name: str) -> None:
        self.coco = _checked(coco, label_of, name)
        self.image_dir = image_dir
        self.name = name
        self.images = sorted(coco["images"], key=lambda im: im["id"])
        self.label_of = label_of  # COCO category id -> contiguous label
        by_image: dict[int, list[dict]] = {im["id"]: [] for im in self.images}
        for ann in coco["annotations"]:
            if ann["image_id"] not in by_image:
                raise DataError(f"{name}: annotation {ann.get('id')} names unknown image {ann['image_id']}")
            by_image[ann["image_id"]].append(ann)
        self._annotations = [by_image[im["id"]] for im in self.images]
        self._pixels: dict[int, np.ndarray] = {}
        self._hashes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def image_id(self, position: int) -> int:
        return int(self.images[position]["id"])

    def load(self, position: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB; decoded once, then kept (up to PIXEL_CACHE_IMAGES)."""
        if position in self._pixels:
            return self._pixels[position]
        pixels = self._decode(position)
        if len(self._pixels) < PIXEL_CACHE_IMAGES:
            self._pixels[position] = pixels
        return pixels

    def image_hashes(self) -> list[str]:
        """sha256 of each image's decoded pixels, by position: what "the same image" means
        when splits must not share one. Computed once; decoding here fills no pixel cache
        (a large train split would not fit)."""
        if self._hashes is None:
            self._hashes = [hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
                            for pixels in map(self._peek, range(len(self)))]
        return self._hashes

    def _peek(self, position: int) -> np.ndarray:
        return self._pixels[position] if position in self._pixels else self._decode(position)

    def _decode(self, position: int) -> np.ndarray:
        info = self.images[position]
        path = self.image_dir / info["file_name"]
        try:
            with Image.open(path) as image:
                pixels = np.array(image.convert("RGB"))  # writable: torch wraps it
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot read image {path} ({type(exc).__name__}): "
                            "remove it from the annotations or replace the file") from exc
        # Boxes and masks are in the annotation's pixel frame: a resized or rotated file
        # would be scored against the wrong pixels without any error, so refuse it.
        if pixels.shape[:2] != (int(info["height"]), int(info["width"])):
            raise DataError(f"{path} is {pixels.shape[1]}x{pixels.shape[0]} px but its annotation says "
                            f"{info['width']}x{info['height']}: re-export the image or fix width/height")
        return pixels

    def labels_in(self, position: int) -> set[int]:
        return {self.label_of[a["category_id"]] for a in self._annotations[position] if usable(a)}

    def objects_in(self, position: int) -> int:
        return sum(usable(a) for a in self._annotations[position])

    def target(self, position: int) -> dict[str, np.ndarray]:
        """Boxes (n, 4) x1y1x2y2, contiguous labels (n,), masks (n, H, W) uint8."""
        from pycocotools import mask as mask_utils

        info = self.images[position]
        height, width = int(info["height"]), int(info["width"])
        boxes, labels, masks = [], [], []
        for ann in self._annotations[position]:
            if not usable(ann):
                continue
            x, y, w, h = ann["bbox"]
            boxes.append([x, y, x + w, y + h])
            labels.append(self.label_of[ann["category_id"]])
            segmentation = ann.get("segmentation")
            if isinstance(segmentation, dict):
                rle = dict(segmentation)
                if isinstance(rle["counts"], list):
                    rle = mask_utils.frPyObjects(rle, height, width)
            else:  # polygons (a missing mask was filled in with the box's polygon at load)
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            masks.append(mask_utils.decode(rle))
        return {
            "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, dtype=np.int64),
            "masks": np.asarray(masks, dtype=np.uint8).reshape(-1, height, width),
        }


@dataclass(frozen=True)
class DetectionDataset:
    name: str
    root: Path
    classnames: tuple[str, ...]  # in contiguous-label order
    category_ids: tuple[int, ...]  # COCO id of each contiguous label
    novel: tuple[bool, ...]
    templates: tuple[str, ...]
    splits: dict
    content_id: str  # changes whenever the annotations change

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def novel_labels(self) -> list[int]:
        return [i for i, flag in enumerate(self.novel) if flag]

    @property
    def base_labels(self) -> list[int]:
        return [i for i, flag in enumerate(self.novel) if not flag]

    def split(self, name: str) -> DetectionSplit:
        if name not in self.splits:
            raise DataError(f"{self.name} has no '{name}' split: add {self.root}/annotations/{name}.json")
        return self.splits[name]


def load_coco_folder(root: Path, name: str) -> DetectionDataset:
    root = Path(root).expanduser()
    annotations = root / "annotations"
    files = sorted(annotations.glob("*.json")) if annotations.is_dir() else []
    if not files:
        raise DataError(f"{name}: no {annotations}/<split>.json files (COCO instances); "
                        "see tunebench/datasets/detection.py for the folder layout")
    cocos = {}
    for path in files:
        try:
            cocos[path.stem] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{path} is not readable COCO JSON ({type(exc).__name__}): fix or remove it") from exc
        missing = {"images", "annotations", "categories"} - set(cocos[path.stem])
        if missing:
            raise DataError(f"{path} lacks {sorted(missing)}: it must be COCO instances JSON")
    for required in ("train", "test"):
        if required not in cocos:
            raise DataError(f"{name}: {annotations}/{required}.json is missing")
    categories = sorted(cocos["test"]["categories"], key=lambda c: c["id"])
    label_of = {int(c["id"]): i for i, c in enumerate(categories)}
    for split, coco in cocos.items():
        if sorted(int(c["id"]) for c in coco["categories"]) != sorted(label_of):
            raise DataError(f"{name}: {split}.json and test.json list different categories")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return DetectionDataset(
        name=name,
        root=root,
        classnames=tuple(str(c["name"]) for c in categories),
        category_ids=tuple(int(c["id"]) for c in categories),
        novel=tuple(c.get("split") != "base" for c in categories),
        templates=TEMPLATES,
        splits={s: DetectionSplit(c, root / "images" / s, label_of, f"{name}/{s}") for s, c in cocos.items()},
        content_id=digest.hexdigest()[:16],
    )


@DATASETS.register("coco:")
def coco_folder(path: str) -> DetectionDataset:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"coco:{path}: no such folder")
    return load_coco_folder(root, f"coco:{path}")


# ---- writing generated sets ---------------------------------------------------------


def write_split(root: Path, split: str, canvases, categories: list[dict]) -> None:
    """Write canvases [(grey image, [PlacedObject])] as PNGs plus one COCO JSON."""
    from pycocotools import mask as mask_utils

    image_dir = root / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for number, (pixels, objects) in enumerate(canvases, start=1):
        file_name = f"{number:06d}.png"
        Image.fromarray(pixels).save(image_dir / file_name)
        images.append({"id": number, "file_name": file_name, "height": int(pixels.shape[0]),
                       "width": int(pixels.shape[1])})
        for obj in objects:
            rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({
                "id": len(annotations) + 1, "image_id": number,
                "category_id": categories[obj.category]["id"],
                "bbox": list(tight_box(obj.mask)), "area": int(obj.mask.sum()),
                "segmentation": rle, "iscrowd": 0,
            })
    (root / "annotations").mkdir(exist_ok=True)
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"{split}.json").write_text(json.dumps(coco))


def generated(name: str, recipe: dict, make) -> DetectionDataset:
    """The generated set ``name``: built once per recipe into the cache (under a lock,
    into a temporary folder renamed into place), then read as a ``coco:`` folder."""
    identity = json.dumps({"recipe": recipe, "generator": GENERATOR_VERSION}, sort_keys=True)
    key = hashlib.sha256(identity.encode()).hexdigest()[:12]
    base = tunebench_cache_dir() / "detection"
    target = base / f"{name}-{key}"
    if not (target / "annotations" / "test.json").exists():
        base.mkdir(parents=True, exist_ok=True)
        with open(base / f".{name}-{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (target / "annotations" / "test.json").exists():
                staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=base))
                try:
                    make(staging)
                    (staging / "recipe.json").write_text(identity + "\n")
                    shutil.rmtree(target, ignore_errors=True)
                    os.replace(staging, target)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
    dataset = load_coco_folder(target, name)
    return dataset


def _categories(names: list[str], novel: set[str], supercategory: str | list[str]) -> list[dict]:
    supers = [supercategory] * len(names) if isinstance(supercategory, str) else supercategory
    return [{"id": i + 1, "name": n, "supercategory": s, "split": "novel" if n in novel else "base"}
            for i, (n, s) in enumerate(zip(names, supers, strict=True))]


def _canvases(pool: SpritePool, recipe: CanvasRecipe, count: int, seed: int):
    rng = np.random.default_rng(seed)
    out, attempts = [], 0
    while len(out) < count:
        attempts += 1
        if attempts > 20 * count:  # e.g. sprites larger than the canvas allows
            raise DataError(f"the canvas recipe {recipe} placed objects on {len(out)} of {attempts} canvases")
        pixels, objects = compose(rng, pool, recipe)
        if objects:
            out.append((pixels, objects))
    return out


def _recipe(canvas: CanvasRecipe, counts: dict[str, int], **more) -> dict:
    """Everything that decides a generated set's pixels and labels: its cache key."""
    return {"canvas": asdict(canvas), "alpha_cut": ALPHA_CUT, "counts": counts, **more}


# ---- det-mnist ----------------------------------------------------------------------

MNIST_NOVEL = ("elephant", "giraffe", "zebra", "bag", "ankle boot")
MNIST_CANVAS = CanvasRecipe(size=160, objects=(1, 4), sprite_size=(34, 62))
MNIST_RECIPE = _recipe(MNIST_CANVAS, {"base": 2400, "train": 600, "test": 300, "validation": 150},
                       novel=list(MNIST_NOVEL))
SPLIT_SEEDS = {"base": 1, "train": 2, "test": 3, "validation": 4}  # canvas seeds of every generated set


@DATASETS.register("det-mnist")
def det_mnist() -> DetectionDataset:
    def make(root: Path) -> None:
        from tunebench.datasets import load_dataset

        fashion, animal = load_dataset("fashion-mnist"), load_dataset("animal-mnist")
        names = list(fashion.classnames) + list(animal.classnames)
        categories = _categories(names, set(MNIST_NOVEL), ["clothing"] * 10 + ["animal"] * 10)

        def sprites(split: str) -> tuple[np.ndarray, np.ndarray]:
            parts = [getattr(source, split) for source in (fashion, animal)]
            return (np.concatenate([images.load(np.arange(len(images))) for images in parts]),
                    np.concatenate([parts[0].labels, parts[1].labels + 10]))

        novel = [i for i, n in enumerate(names) if n in MNIST_NOVEL]
        for split, _pool, canvases in mnist_draws(sprites("train"), sprites("test"), novel,
                                                  MNIST_RECIPE["counts"], MNIST_CANVAS):
            write_split(root, split, canvases, categories)

    return generated("det-mnist", MNIST_RECIPE, make)


def mnist_draws(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                novel: list[int], counts: dict[str, int], canvas: CanvasRecipe):
    """det-mnist's canvases from (sprites, labels) of the sources' train and test images:
    ``(split, pool, canvases)`` per split, validation last. ``base`` shows base objects
    only; test objects come from the test images, never seen in training; validation
    objects are training images that no base or train canvas shows."""
    sprites, labels = train
    ids = np.arange(len(sprites))  # rows of the unfiltered source: comparable across pools
    base = ~np.isin(labels, novel)  # the build split must never show a novel object
    pools = {"base": SpritePool(sprites[base], labels[base], ids[base]), "train": SpritePool(sprites, labels, ids),
             "test": SpritePool(*test)}
    return _draws(pools, SpritePool(sprites, labels, ids), ("base", "train"), counts, canvas)


def _draws(pools: dict[str, SpritePool], source: SpritePool, seen: tuple[str, ...], counts: dict[str, int],
           canvas: CanvasRecipe):
    """``(split, pool, canvases)`` for each of ``pools``, then validation: canvases from
    ``source`` less every sprite that the ``seen`` splits' canvases drew. A generator, so
    that the caller writes each split before the next is drawn."""
    for split, pool in pools.items():
        yield split, pool, _canvases(pool, canvas, counts[split], SPLIT_SEEDS[split])
    unseen = source.excluding(set().union(*(pools[split].drawn for split in seen)))
    yield "validation", unseen, _canvases(unseen, canvas, counts["validation"], SPLIT_SEEDS["validation"])


# ---- det-textile --------------------------------------------------------------------

# Patches never overlap (min_visible 1): a covered corner could hide the one blotch
# that makes a patch "local defect", and the label would then be wrong.
TEXTILE_CANVAS = CanvasRecipe(size=192, objects=(1, 3), sprite_size=(72, 104), opaque=True, min_visible=1.0)
TEXTILE_RECIPE = _recipe(TEXTILE_CANVAS, {"train": 300, "test": 120, "validation": 60})


@DATASETS.register("det-textile")
def det_textile() -> DetectionDataset:
    def make(root: Path) -> None:
        from tunebench.datasets import load_dataset

        textile = load_dataset("textile-defects")
        categories = _categories(list(textile.classnames), set(textile.classnames), "fabric")

        def sprites(split: str) -> tuple[np.ndarray, np.ndarray]:
            images = getattr(textile, split)
            return images.load(np.arange(len(images))).mean(axis=-1).round().astype(np.uint8), images.labels

        for split, _pool, canvases in textile_draws(sprites("train"), sprites("test"), TEXTILE_RECIPE["counts"],
                                                    TEXTILE_CANVAS):
            write_split(root, split, canvases, categories)

    return generated("det-textile", TEXTILE_RECIPE, make)


def textile_draws(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                  counts: dict[str, int], canvas: CanvasRecipe):
    """det-textile's canvases from grey (patches, labels): ``(split, pool, canvases)`` per
    split, validation last, made of training patches that no train canvas shows."""
    pools = {"train": SpritePool(*train), "test": SpritePool(*test)}
    return _draws(pools, pools["train"], ("train",), counts, canvas)


# ---- tiny-det (tests) ---------------------------------------------------------------

TINY_CANVAS = CanvasRecipe(size=48, objects=(1, 3), sprite_size=(14, 22))
TINY_RECIPE = _recipe(TINY_CANVAS, {"base": 24, "train": 24, "test": 12, "validation": 12}, novel=["cross"],
                      sprites_per_shape=8)


@DATASETS.register("tiny-det")
def tiny_det() -> DetectionDataset:
    def make(root: Path) -> None:
        from tunebench.datasets.tiny import CLASSNAMES, _mask

        rng = np.random.RandomState(0)
        per_shape = TINY_RECIPE["sprites_per_shape"]
        sprites = np.stack([np.where(_mask(shape, rng), 220, 0).astype(np.uint8)
                            for shape in CLASSNAMES for _ in range(per_shape)])
        labels = np.repeat(np.arange(len(CLASSNAMES)), per_shape)
        categories = _categories(list(CLASSNAMES), set(TINY_RECIPE["novel"]), "shape")
        base_only = ~np.isin(labels, [CLASSNAMES.index(n) for n in TINY_RECIPE["novel"]])
        pools = {"base": SpritePool(sprites[base_only], labels[base_only]), "train": SpritePool(sprites, labels),
                 "test": SpritePool(sprites, labels)}
        # Validation shapes are drawn after the others, so theirs stay as they were.
        held_out = np.stack([np.where(_mask(shape, rng), 220, 0).astype(np.uint8)
                             for shape in CLASSNAMES for _ in range(per_shape)])
        pools["validation"] = SpritePool(held_out, labels)
        for seed, (split, count) in enumerate(TINY_RECIPE["counts"].items(), start=1):
            write_split(root, split, _canvases(pools[split], TINY_CANVAS, count, seed), categories)

    return generated("tiny-det", TINY_RECIPE, make)


def fewshot_images(split: DetectionSplit, labels: list[int], shots: int, seed: int,
                   classnames: tuple[str, ...] = ()) -> list[int]:
    """Positions of images such that each label is held by at least ``shots`` of them.

    Labels are visited in order; for each, images holding it are drawn without
    replacement by a seeded RandomState (stable across numpy versions), counting images
    already chosen for earlier labels. Every object in a chosen image is annotated, so a
    class can have more than K objects in the set: this is K *images* per class, not the
    K-instance protocol of some few-shot detection papers.
    """
    rng = np.random.RandomState(seed)
    holders = {label: [p for p in range(len(split)) if label in split.labels_in(p)] for label in labels}
    chosen: list[int] = []
    for label in labels:
        candidates = [p for p in holders[label] if p not in chosen]
        if len(holders[label]) < shots:
            name = classnames[label] if classnames else f"label {label}"
            fix = "lower shots" if holders[label] else "annotate some, or drop the class"
            raise DataError(f"{split.name}: only {len(holders[label])} images hold {name!r}, "
                            f"{shots} asked for: {fix}")
        picked = rng.permutation(candidates)[: max(0, shots - len([p for p in chosen if p in holders[label]]))]
        chosen += [int(p) for p in picked]
    return sorted(chosen)
