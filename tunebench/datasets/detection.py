"""Detection datasets in COCO format: your own (``coco:PATH``) and generated canvases.

On disk, which is what ``coco:PATH`` reads and what the generated sets are written as::

    PATH/annotations/<split>.json   COCO instances: images, annotations (bbox, RLE or
                                    polygon segmentation, area, iscrowd), categories
    PATH/images/<split>/<file_name>

Splits: ``train`` (the pool that few-shot images are drawn from), ``test``, and
optionally ``base`` (images with base-class objects only, on which a detector is
built). A category may say ``"split": "base"``; every other category is *novel*: the
classes the tuning methods are compared on. Extra keys are ignored by COCO tools.

Generated sets (built once into the cache, then read like any ``coco:`` folder):

- ``det-mnist``: 160 px canvases of 1–4 objects from Fashion-MNIST and Animal-MNIST,
  20 classes; novel: elephant, giraffe, zebra, bag, ankle boot. ``base`` has 2,400
  canvases of base objects only, ``train`` 600 and ``test`` 300 with every class
  (test objects come from the source datasets' test images).
- ``det-textile``: a specialised domain. 192 px canvases of 1–3 textile patches
  (defect-free, local defect, global defect), all three classes novel.
- ``tiny-det``: 48 px canvases of drawn shapes, for tests.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tunebench.datasets.canvas import CanvasRecipe, SpritePool, compose, tight_box
from tunebench.errors import DataError
from tunebench.paths import tunebench_cache_dir
from tunebench.registry import DATASETS

GENERATOR_VERSION = 1  # bump when canvas.py or the writers change what they produce
TEMPLATES = (
    "a photo of a {}.",  # templates[0]: the single prompt of coop-style methods
    "a picture of a {}.",
    "a cropped photo of a {}.",
    "a black and white photo of a {}.",
)


class DetectionSplit:
    """One split: images addressed by position (0..n-1) and their annotations."""

    def __init__(self, coco: dict, image_dir: Path, label_of: dict[int, int], name: str) -> None:
        self.coco = coco
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

    def __len__(self) -> int:
        return len(self.images)

    def image_id(self, position: int) -> int:
        return int(self.images[position]["id"])

    def load(self, position: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB; decoded once, then kept (canvases are small)."""
        if position not in self._pixels:
            path = self.image_dir / self.images[position]["file_name"]
            try:
                with Image.open(path) as image:
                    self._pixels[position] = np.array(image.convert("RGB"))  # writable: torch wraps it
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"cannot read image {path} ({type(exc).__name__}): "
                                "remove it from the annotations or replace the file") from exc
        return self._pixels[position]

    def labels_in(self, position: int) -> set[int]:
        return {self.label_of[a["category_id"]] for a in self._annotations[position] if not a.get("iscrowd")}

    def target(self, position: int) -> dict[str, np.ndarray]:
        """Boxes (n, 4) x1y1x2y2, contiguous labels (n,), masks (n, H, W) uint8."""
        from pycocotools import mask as mask_utils

        info = self.images[position]
        height, width = int(info["height"]), int(info["width"])
        boxes, labels, masks = [], [], []
        for ann in self._annotations[position]:
            if ann.get("iscrowd"):
                continue  # crowd regions are for the evaluator to ignore, not to learn
            x, y, w, h = ann["bbox"]
            if w < 1 or h < 1:
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(self.label_of[ann["category_id"]])
            segmentation = ann.get("segmentation")
            if isinstance(segmentation, dict):
                rle = dict(segmentation)
                if isinstance(rle["counts"], list):
                    rle = mask_utils.frPyObjects(rle, height, width)
            elif segmentation:
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            else:  # a box without a mask: the box itself is the best mask we have
                box_mask = np.zeros((height, width), dtype=np.uint8)
                box_mask[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))] = 1
                masks.append(box_mask)
                continue
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
    out = []
    while len(out) < count:
        pixels, objects = compose(rng, pool, recipe)
        if objects:
            out.append((pixels, objects))
    return out


# ---- det-mnist ----------------------------------------------------------------------

MNIST_NOVEL = ("elephant", "giraffe", "zebra", "bag", "ankle boot")
MNIST_RECIPE = {"size": 160, "objects": [1, 4], "sprite_size": [34, 62], "base": 2400, "train": 600,
                "test": 300, "novel": list(MNIST_NOVEL)}


@DATASETS.register("det-mnist")
def det_mnist() -> DetectionDataset:
    def make(root: Path) -> None:
        from tunebench.datasets import load_dataset

        fashion, animal = load_dataset("fashion-mnist"), load_dataset("animal-mnist")
        names = list(fashion.classnames) + list(animal.classnames)
        categories = _categories(names, set(MNIST_NOVEL), ["clothing"] * 10 + ["animal"] * 10)
        recipe = CanvasRecipe(size=MNIST_RECIPE["size"], objects=tuple(MNIST_RECIPE["objects"]),
                              sprite_size=tuple(MNIST_RECIPE["sprite_size"]))

        def pool(split: str, only_base: bool) -> SpritePool:
            parts, labels = [], []
            for offset, source in ((0, fashion), (10, animal)):
                images = getattr(source, split)
                pixels = images.load(np.arange(len(images)))
                parts.append(pixels)
                labels.append(images.labels + offset)
            sprites, sprite_labels = np.concatenate(parts), np.concatenate(labels)
            if only_base:
                keep = np.isin(sprite_labels, [i for i, n in enumerate(names) if n not in MNIST_NOVEL])
                sprites, sprite_labels = sprites[keep], sprite_labels[keep]
            return SpritePool(sprites, sprite_labels)

        write_split(root, "base", _canvases(pool("train", True), recipe, MNIST_RECIPE["base"], 1), categories)
        write_split(root, "train", _canvases(pool("train", False), recipe, MNIST_RECIPE["train"], 2), categories)
        write_split(root, "test", _canvases(pool("test", False), recipe, MNIST_RECIPE["test"], 3), categories)

    return generated("det-mnist", MNIST_RECIPE, make)


# ---- det-textile --------------------------------------------------------------------

TEXTILE_RECIPE = {"size": 192, "objects": [1, 3], "sprite_size": [72, 104], "train": 300, "test": 120,
                  "overlap": False}


@DATASETS.register("det-textile")
def det_textile() -> DetectionDataset:
    def make(root: Path) -> None:
        from tunebench.datasets import load_dataset

        textile = load_dataset("textile-defects")
        categories = _categories(list(textile.classnames), set(textile.classnames), "fabric")
        # Patches never overlap: a covered corner could hide the one blotch that makes a
        # patch "local defect", and the label would then be wrong.
        recipe = CanvasRecipe(size=TEXTILE_RECIPE["size"], objects=tuple(TEXTILE_RECIPE["objects"]),
                              sprite_size=tuple(TEXTILE_RECIPE["sprite_size"]), opaque=True,
                              min_visible=1.0)
        for split, seed in (("train", 2), ("test", 3)):
            images = getattr(textile, split)
            grey = images.load(np.arange(len(images))).mean(axis=-1).round().astype(np.uint8)
            canvases = _canvases(SpritePool(grey, images.labels), recipe, TEXTILE_RECIPE[split], seed)
            write_split(root, split, canvases, categories)

    return generated("det-textile", TEXTILE_RECIPE, make)


# ---- tiny-det (tests) ---------------------------------------------------------------

TINY_RECIPE = {"size": 48, "objects": [1, 3], "sprite_size": [14, 22], "base": 24, "train": 24, "test": 12,
               "novel": ["cross"]}


@DATASETS.register("tiny-det")
def tiny_det() -> DetectionDataset:
    def make(root: Path) -> None:
        from tunebench.datasets.tiny import CLASSNAMES, _mask

        rng = np.random.RandomState(0)
        sprites = np.stack([np.where(_mask(shape, rng), 220, 0).astype(np.uint8)
                            for shape in CLASSNAMES for _ in range(8)])
        labels = np.repeat(np.arange(len(CLASSNAMES)), 8)
        categories = _categories(list(CLASSNAMES), set(TINY_RECIPE["novel"]), "shape")
        recipe = CanvasRecipe(size=48, objects=(1, 3), sprite_size=(14, 22))
        base_only = ~np.isin(labels, [CLASSNAMES.index(n) for n in TINY_RECIPE["novel"]])
        write_split(root, "base", _canvases(SpritePool(sprites[base_only], labels[base_only]), recipe, 24, 1),
                    categories)
        write_split(root, "train", _canvases(SpritePool(sprites, labels), recipe, 24, 2), categories)
        write_split(root, "test", _canvases(SpritePool(sprites, labels), recipe, 12, 3), categories)

    return generated("tiny-det", TINY_RECIPE, make)


def fewshot_images(split: DetectionSplit, labels: list[int], shots: int, seed: int) -> list[int]:
    """Positions of ``shots`` annotated images per label (the union over labels).

    Labels are visited in order; for each, images holding it are drawn without
    replacement by a seeded RandomState (stable across numpy versions), skipping images
    already chosen, so that K images per class are distinct where the pool allows.
    """
    rng = np.random.RandomState(seed)
    holders = {label: [p for p in range(len(split)) if label in split.labels_in(p)] for label in labels}
    chosen: list[int] = []
    for label in labels:
        candidates = [p for p in holders[label] if p not in chosen]
        if len(holders[label]) < shots:
            raise DataError(f"{split.name}: only {len(holders[label])} images hold class {label}, "
                            f"{shots} asked for: lower shots")
        picked = rng.permutation(candidates)[: max(0, shots - len([p for p in chosen if p in holders[label]]))]
        chosen += [int(p) for p in picked]
    return sorted(chosen)
