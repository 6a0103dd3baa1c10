"""``coop:PATH/TO/DATA/<name>``: a dataset laid out the way CoOp keeps it under ``DATA/``.

``<name>`` is CoOp's folder name (caltech-101, oxford_pets, stanford_cars,
oxford_flowers, food-101, fgvc_aircraft, sun397, dtd, eurosat, ucf101, imagenet); it
picks the layout in ``coop_layouts.LAYOUTS``. The published train / val / test splits
are used as they are, so a run is comparable with the prompt-learning literature:

* nine datasets: ``split_zhou_<Name>.json`` with ``train``, ``val`` and ``test`` lists of
  ``[image path relative to the image folder, label, class name]``;
* FGVC-Aircraft: ``variants.txt`` (the classes, in label order) and
  ``images_variant_{train,val,test}.txt`` (``<image id> <variant>``; images/<id>.jpg);
* ImageNet: ``images/train/<wnid>/``, ``images/val/<wnid>/`` and ``classnames.txt``
  (``<wnid> <name>``); labels follow the sorted train folders, the val folder is the
  test split, and there is no validation split (``val`` is None), as in CoOp.

Class names are the split's names with ``_`` read as a space (what CoOp's prompt
learner feeds the text tower); ``templates`` is CoOp's one prompt for the dataset. The
``val`` split is exposed for hyper-parameter selection; few-shot draws come from
``train`` through the usual split files and seeds. Every image the split names must
exist and every label must belong to the class list, checked when the dataset is
loaded (task validation), so a bad folder stops a sweep before its first cell.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from tunebench.datasets.base import ClassificationDataset, FileImages
from tunebench.datasets.coop_layouts import LAYOUTS, CoopLayout
from tunebench.errors import ConfigError, DataError
from tunebench.registry import DATASETS

DEFAULT_SIZE = 224  # decoded size, as for imagefolder: CLIP towers are trained at 224 px
SPLITS = ("train", "val", "test")
Rows = list[tuple[Path, int]]  # (image file, label) per image of one split


def _folder(path: str | Path) -> Path:
    # abspath, not resolve: a DATA/oxford_pets symlink keeps the name that picks its layout.
    return Path(os.path.abspath(Path(path).expanduser()))


def coop_label(path: str | Path) -> str:
    """``oxford_pets-3f2a9c1b``: the dataset folder's name plus a fingerprint of where it is
    (distinct from imagefolder's for the same folder, whose images it reads differently)."""
    folder = _folder(path)
    fingerprint = hashlib.sha256(f"coop:{folder.resolve()}".encode()).hexdigest()[:8]
    return f"{folder.name}-{fingerprint}"


def _layout(folder: Path, typed: str) -> CoopLayout:
    layout = LAYOUTS.get(folder.name)
    if layout is not None:
        return layout
    # Also match CoOp's class names (OxfordPets), which users type from its configs.
    spellings = {name: name for name in LAYOUTS} | {v.coop_name.lower(): k for k, v in LAYOUTS.items()}
    close = difflib.get_close_matches(folder.name.lower(), spellings, n=1, cutoff=0.5)
    hint = f" Did you mean {folder.parent / spellings[close[0]]}?" if close else ""
    raise ConfigError(f"coop:{typed}: {folder.name!r} is not a CoOp dataset folder.{hint} "
                      f"The path must end in one of: {', '.join(LAYOUTS)}")


def _lines(file: Path) -> list[tuple[int, str]]:
    """Non-blank lines of a text file with their 1-based numbers, stripped."""
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {file} ({type(exc).__name__}): replace it with the original") from exc
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _refuse_missing(source: Path, image_root: Path, splits: dict[str, Rows]) -> None:
    """One listing per folder rather than one stat per image: a split names up to ~100,000
    images in a few thousand folders."""
    listings: dict[Path, set[str]] = {}
    missing: list[tuple[str, Path]] = []
    for split, rows in splits.items():
        for path, _ in rows:
            if path.parent not in listings:
                try:
                    listings[path.parent] = {e.name for e in os.scandir(path.parent) if e.is_file()}
                except OSError:
                    listings[path.parent] = set()
            if path.name not in listings[path.parent]:
                missing.append((split, path))
    if missing:
        split, first = missing[0]
        raise DataError(f"{source} names {len(missing)} image(s) missing from {image_root} (first, in "
                        f"{split}: {first.relative_to(image_root)}): restore them or use the split "
                        "file that came with these images")


def _is_label(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_split_json(folder: Path, layout: CoopLayout) -> tuple[list[str], dict[str, Rows]]:
    file, image_root = folder / layout.split_file, folder / layout.image_dir
    try:
        record = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"cannot read {file} ({type(exc).__name__}): download CoOp's "
                        f"{layout.split_file} again") from exc
    if not isinstance(record, dict) or not all(isinstance(record.get(s), list) for s in SPLITS):
        raise DataError(f"{file} is not a CoOp split file: it needs 'train', 'val' and 'test' lists "
                        "of [image path, label, class name]")
    for split in SPLITS:
        for i, item in enumerate(record[split]):
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                    and _is_label(item[1]) and isinstance(item[2], str) and item[2].strip()):
                raise DataError(f"{file}: {split}[{i}] is {json.dumps(item)[:80]}, not "
                                "[image path, label, class name]: use CoOp's split file")
    classnames = _class_list(file, record)
    splits = {split: [(image_root / path, label) for path, label, _ in record[split]] for split in SPLITS}
    _refuse_missing(file, image_root, splits)
    return classnames, splits


def _class_list(file: Path, record: dict[str, list[list]]) -> list[str]:
    """Class names in label order. As in CoOp, the train list defines the classes (labels
    0..n-1, each with training images); every label keeps one name and every name one
    label, or prompts would describe another class than the images show."""
    train_labels = {label for _, label, _ in record["train"]}
    count = max(train_labels, default=-1) + 1
    if not train_labels:
        raise DataError(f"{file}: the train list is empty, so there are no classes: use CoOp's split file")
    gaps = sorted(set(range(count)) - train_labels)
    if gaps:
        raise DataError(f"{file}: label {gaps[0]} has no training image, so the train list's labels are not "
                        f"0..{count - 1}: use CoOp's split file")
    for split in SPLITS:
        for i, (_, label, _) in enumerate(record[split]):
            if not 0 <= label < count:
                raise DataError(f"{file}: {split}[{i}] has label {label}, outside the class list 0..{count - 1} "
                                "that the train list defines: use CoOp's split file")
    names: dict[int, str] = {}
    labels_of: dict[str, int] = {}
    for split in SPLITS:
        for i, (_, label, name) in enumerate(record[split]):
            known_name, known_label = names.setdefault(label, name), labels_of.setdefault(name, label)
            if known_name != name or known_label != label:
                earlier = (f"label {label} with {known_name!r}" if known_name != name
                           else f"{name!r} with label {known_label}")
                raise DataError(f"{file}: {split}[{i}] pairs label {label} with {name!r}, but an earlier "
                                f"entry pairs {earlier}: use CoOp's split file")
    return [names[c] for c in range(count)]


def _read_fgvc(folder: Path, layout: CoopLayout) -> tuple[list[str], dict[str, Rows]]:
    variants_file, image_root = folder / layout.split_file, folder / layout.image_dir
    variants = [line for _, line in _lines(variants_file)]
    label_of = {name: label for label, name in enumerate(variants)}
    if len(label_of) != len(variants):
        twice = next(name for name in variants if variants.count(name) > 1)
        raise DataError(f"{variants_file} lists {twice!r} twice: use FGVC-Aircraft's own variants.txt")
    splits: dict[str, Rows] = {}
    for split in SPLITS:
        file = folder / f"images_variant_{split}.txt"
        if not file.is_file():
            raise DataError(f"{folder} has no {file.name}: keep the .txt files of FGVC-Aircraft's "
                            "data/ folder next to images/")
        rows: Rows = []
        for number, line in _lines(file):
            image_id, _, variant = line.partition(" ")
            if not variant.strip():
                raise DataError(f"{file}:{number} is {line[:60]!r}, not '<image id> <variant>'")
            if variant.strip() not in label_of:
                raise DataError(f"{file}:{number} names variant {variant.strip()!r}, outside the class "
                                f"list in {variants_file.name}: use FGVC-Aircraft's own split files")
            rows.append((image_root / f"{image_id}.jpg", label_of[variant.strip()]))
        splits[split] = rows
    _refuse_missing(folder / "images_variant_*.txt", image_root, splits)
    return variants, splits


def _entries(folder: Path, *, files: bool) -> list[Path]:
    """Non-hidden files or folders directly in ``folder``, sorted (os order is arbitrary)."""
    with os.scandir(folder) as scan:
        return sorted(Path(e.path) for e in scan
                      if not e.name.startswith(".") and (e.is_file() if files else e.is_dir()))


def _read_imagenet(folder: Path, layout: CoopLayout) -> tuple[list[str], dict[str, Rows]]:
    names_file = folder / layout.split_file
    names: dict[str, str] = {}
    for number, line in _lines(names_file):
        wnid, _, name = line.partition(" ")
        if not name.strip():
            raise DataError(f"{names_file}:{number} is {line[:60]!r}, not '<wnid> <class name>'")
        names[wnid] = name.strip()
    roots = {split: folder / layout.image_dir / split for split in ("train", "val")}
    for split, root in roots.items():
        if not root.is_dir():
            raise DataError(f"{folder} has no {layout.image_dir}/{split}/ folder: extract ImageNet's "
                            f"{split} set to {root}, one folder per wnid")
    wnids = [p.name for p in _entries(roots["train"], files=False)]
    if not wnids:
        raise DataError(f"{roots['train']} has no class folders: extract ImageNet's train set there")
    unnamed = [w for w in wnids if w not in names]
    if unnamed:
        raise DataError(f"{names_file} has no line for {unnamed[0]} ({len(unnamed)} class folder(s) in "
                        f"{roots['train']} unnamed): use CoOp's classnames.txt")
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    splits: dict[str, Rows] = {}
    for split, root in roots.items():
        rows: Rows = []
        for class_folder in _entries(root, files=False):
            if class_folder.name not in label_of:
                raise DataError(f"{class_folder} is a class that {roots['train']} lacks (outside the class "
                                f"list): add {roots['train'] / class_folder.name}/ or remove it")
            rows += [(p, label_of[class_folder.name]) for p in _entries(class_folder, files=True)]
        splits[split] = rows
    # CoOp evaluates ImageNet on its val folder and publishes no separate validation split.
    return [names[w] for w in wnids], {"train": splits["train"], "test": splits["val"]}


READERS = {"split-json": _read_split_json, "fgvc-variants": _read_fgvc, "imagenet-folders": _read_imagenet}
WHERE_SPLIT_FILES_COME_FROM = {
    "split-json": "download it as CoOp's DATASETS.md says",
    "fgvc-variants": "keep the .txt files of FGVC-Aircraft's data/ folder next to images/",
    "imagenet-folders": "download CoOp's classnames.txt ('<wnid> <name>' lines) into it",
}


def _source(rows: Rows, size: int) -> FileImages:
    return FileImages([p for p, _ in rows], np.asarray([label for _, label in rows], dtype=np.int64), size)


@DATASETS.register("coop:")
def coop_dataset(path: str | Path, size: int = DEFAULT_SIZE) -> ClassificationDataset:
    """A CoOp DATA/<name> folder with its published splits and prompt (docs/datasets-coop.md)."""
    folder = _folder(path)
    layout = _layout(folder, str(path))
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist: put CoOp's {layout.folder}/ folder in {folder.parent} "
                        "(see docs/datasets-coop.md)")
    if not (folder / layout.split_file).is_file():
        raise DataError(f"{folder} has no {layout.split_file}: "
                        f"{WHERE_SPLIT_FILES_COME_FROM[layout.split_format]}")
    if not (folder / layout.image_dir).is_dir():
        raise DataError(f"{folder} has no {layout.image_dir}/ folder: extract the dataset's images there "
                        "as CoOp's DATASETS.md says")
    raw_names, splits = READERS[layout.split_format](folder, layout)
    if len(raw_names) < 2:
        raise DataError(f"{folder} has one class ({raw_names[0]}): a classifier needs at least two")
    if not splits["test"]:
        raise DataError(f"{folder}: the test split is empty, so nothing can be scored: use the full split")
    return ClassificationDataset(
        name=coop_label(folder),
        # "Apply_Eye_Makeup" -> "Apply Eye Makeup": what CoOp's prompt learner gives the text tower.
        classnames=tuple(name.replace("_", " ") for name in raw_names),
        templates=(layout.template,),  # CoOp's single prompt; methods take templates[0]
        train=_source(splits["train"], size),
        test=_source(splits["test"], size),
        native_size=size,  # files differ in size; this is the size they are decoded at
        val=_source(splits["val"], size) if "val" in splits else None,
    )


# How `dataset_label` names a ``coop:PATH`` cell without reading the folder.
coop_dataset.label = coop_label
coop_dataset.example = "/data/DATA/oxford_pets"  # shown when the path is left out
