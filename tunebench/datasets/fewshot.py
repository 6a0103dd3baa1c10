"""CoOp's few-shot protocol: K training images per class, fixed by a seed, frozen in a file.

The chosen indices are written to a JSON split file the first time and read back
afterwards, so every method and every later run trains on exactly the same images,
even if the sampling code or numpy's generator changes. The file also records each
image's identity, so a split that no longer matches the data (files added to an
image folder, a dataset re-ordered) is noticed and redrawn instead of silently
pointing at other images.

Validation images (for choosing hyper-parameters, ``tunebench select``) never overlap a
K-shot draw: where a dataset ships its own validation list (CoOp's split files) that
list is used; otherwise ``val_per_class`` images of each class are held out of the train
pool with a fixed seed that no cell's seed changes, and every draw, for selection trials
and final runs alike, comes from the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np

from tunebench.datasets.base import ClassificationDataset
from tunebench.errors import ConfigError, DataError
from tunebench.paths import tunebench_cache_dir


def stratified_split(
    labels: np.ndarray,
    *,
    per_class: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, chosen), both sorted, choosing per class either a count or a fraction.

    A class with fewer than ``per_class`` images gives all of them. With ``fraction``
    every class with two or more images keeps at least one image on each side, so a
    small class is neither untestable nor untrainable.
    """
    if (per_class is None) == (fraction is None):
        raise ValueError("give exactly one of per_class and fraction")
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    chosen: list[np.ndarray] = []
    for label in np.unique(labels):  # classes in a fixed order so the draws are reproducible
        members = np.flatnonzero(labels == label)
        if per_class is not None:
            count = min(per_class, len(members))
        elif len(members) < 2:
            count = 0
        else:
            count = min(max(1, round(fraction * len(members))), len(members) - 1)
        chosen.append(rng.permutation(members)[:count])
    picked = np.sort(np.concatenate(chosen)).astype(np.int64)
    rest = np.setdiff1d(np.arange(len(labels), dtype=np.int64), picked)
    return rest, picked


def test_indices(dataset: ClassificationDataset, per_class: int | None) -> np.ndarray:
    """The fixed evaluation subset: all test images, or ``per_class`` per class (seed 0, sorted)."""
    if per_class is None:
        return np.arange(len(dataset.test), dtype=np.int64)
    if per_class < 1:
        raise ConfigError(f"test images per class must be >= 1 or None (all), got {per_class}")
    return stratified_split(dataset.test.labels, per_class=per_class, seed=0)[1]


# The name starts with "test": without this, pytest collects it from any test module
# that imports it and fails looking for fixtures called `dataset` and `per_class`.
test_indices.__test__ = False  # type: ignore[attr-defined]


# The seed of the held-out validation images: one for every cell, so that no seed's
# K-shot draw can reach them (a cell's own seed would move them from cell to cell).
VALIDATION_SEED = 20_240_611


def held_out_for_validation(dataset: ClassificationDataset, per_class: int) -> np.ndarray:
    """Sorted indices into ``dataset.train`` kept for validation: ``per_class`` per class
    (fixed seed), or none when the dataset ships its own validation list."""
    if dataset.val is not None:
        return np.empty(0, dtype=np.int64)
    return stratified_split(dataset.train.labels, per_class=per_class, seed=VALIDATION_SEED)[1]


def validation_indices(dataset: ClassificationDataset, per_class: int) -> tuple[str, np.ndarray]:
    """Where a validation run is scored: ``("val", indices into dataset.val)`` — at most
    ``per_class`` per class of the dataset's own list (fixed seed) — or ``("train", the
    held-out indices into dataset.train)``. Never test images."""
    if dataset.val is not None:
        return "val", stratified_split(dataset.val.labels, per_class=per_class, seed=VALIDATION_SEED)[1]
    return "train", held_out_for_validation(dataset, per_class)


def fewshot_indices(
    dataset: ClassificationDataset, shots: int, seed: int, cache_dir: Path | None = None, *,
    val_per_class: int,
) -> np.ndarray:
    """Sorted indices into ``dataset.train``: ``shots`` images per class, drawn with ``seed``
    from the images not held out for validation (``held_out_for_validation``).

    Read from the split file when a valid one exists, otherwise drawn and written.
    """
    held_out = held_out_for_validation(dataset, val_per_class)
    check_shots(dataset, shots)
    check_validation_room(dataset, shots, val_per_class)
    labels = dataset.train.labels
    directory = cache_dir if cache_dir is not None else tunebench_cache_dir() / "splits"
    path = directory / split_filename(dataset.name, len(labels), shots, seed,
                                      val_per_class=val_per_class if len(held_out) else 0)
    if path.exists():
        indices = _read_split(path, dataset, shots, held_out)
        if indices is not None:
            return indices
    indices = _draw(labels, dataset.num_classes, shots, seed, held_out)
    _write_split(path, dataset, shots, seed, indices)
    return indices


def check_validation_room(dataset: ClassificationDataset, shots: int, val_per_class: int) -> None:
    """Refuse, in one line, a class whose training pool cannot give ``shots`` images
    besides its held-out validation images (a dataset with its own list holds none out)."""
    if dataset.val is not None:
        return
    counts = np.bincount(dataset.train.labels, minlength=dataset.num_classes)
    short = [c for c in range(dataset.num_classes) if counts[c] < shots + val_per_class]
    if short:
        c = short[0]
        room = int(counts[c]) - shots  # validation images left beside the shots
        fix = (f"set train.val_per_class to at most {room} or use fewer shots" if room >= 1 else
               f"use at most {max(int(counts[c]) - val_per_class, 0)} shots or lower train.val_per_class")
        more = f" ({len(short) - 1} more class(es) too)" if len(short) > 1 else ""
        raise ConfigError(f"{dataset.name}: class {dataset.classnames[c]} has {counts[c]} training images, "
                          f"fewer than {shots} shots + {val_per_class} held out for validation{more}: {fix}")


def check_shots(dataset: ClassificationDataset, shots: int) -> None:
    """Refuse ``shots`` that some class's training pool cannot give, naming each such
    class and its count. Tasks call this from ``validate`` so that a sweep stops before
    its first cell rather than at the cell that draws the split."""
    if shots < 1:
        raise ConfigError(f"shots must be >= 1, got {shots}")
    counts = np.bincount(dataset.train.labels, minlength=dataset.num_classes)
    short = [c for c in range(dataset.num_classes) if counts[c] < shots]
    if short:
        named = ", ".join(f"{dataset.classnames[c]} ({counts[c]})" for c in short[:5])
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        fewest = int(counts.min())
        fix = (f"use at most {fewest} shots" if fewest else
               "a class without training images cannot be drawn from: add images or remove the class")
        raise DataError(
            f"{dataset.name}: {shots} shots asked, but class(es) {named}{more} have fewer "
            f"training images: {fix}"
        )


def split_filename(dataset_name: str, pool_size: int, shots: int, seed: int, *, val_per_class: int = 0) -> str:
    """``<name>_<N>pool_<K>shot_seed<S>.json`` (``..._seed<S>_val<V>.json`` when V images per
    class are held out for validation, so a draw from the whole pool is never read back); names
    that need sanitising get a short hash so that two folders whose paths sanitise alike
    do not share a file."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", dataset_name).strip("-.") or "dataset"
    if safe != dataset_name:
        safe = f"{safe[-60:]}-{hashlib.sha256(dataset_name.encode()).hexdigest()[:8]}"
    return f"{safe}_{pool_size}pool_{shots}shot_seed{seed}" + (f"_val{val_per_class}" if val_per_class else "") + ".json"


def _draw(labels: np.ndarray, num_classes: int, shots: int, seed: int, held_out: np.ndarray) -> np.ndarray:
    # One generator walks the classes in order; a fresh RandomState(seed) per class would
    # pick the same relative positions in every class, which correlates the classes.
    rng = np.random.RandomState(seed)
    free = np.ones(len(labels), dtype=bool)
    free[held_out] = False
    picked = [
        rng.choice(np.flatnonzero((labels == c) & free), size=shots, replace=False)
        for c in range(num_classes)
    ]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _read_split(path: Path, dataset: ClassificationDataset, shots: int, held_out: np.ndarray) -> np.ndarray | None:
    """The stored indices, or None (with a warning) when the file is unreadable or stale."""
    problem = None
    try:
        record = json.loads(path.read_text())
        indices = np.asarray(record["indices"], dtype=np.int64)
        identities = list(record["identities"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = f"unreadable ({type(exc).__name__})"
    else:
        labels = dataset.train.labels
        if indices.ndim != 1 or len(indices) != shots * dataset.num_classes:
            problem = f"has {indices.size} indices, expected {shots * dataset.num_classes}"
        elif len(np.unique(indices)) != len(indices):
            problem = "repeats an index"
        elif indices.min() < 0 or indices.max() >= len(labels):
            problem = f"has indices outside 0..{len(labels) - 1}"
        elif np.any(np.bincount(labels[indices], minlength=dataset.num_classes) != shots):
            problem = f"does not hold {shots} images of every class"
        elif np.intersect1d(indices, held_out).size:
            problem = "draws images held out for validation"
        elif identities != [dataset.train.identity(int(i)) for i in indices]:
            problem = "names other images than the dataset has at those indices"
    if problem is None:
        return np.sort(indices)
    warnings.warn(f"few-shot split file {path} {problem}: drawing the split again", stacklevel=3)
    return None


def _write_split(
    path: Path, dataset: ClassificationDataset, shots: int, seed: int, indices: np.ndarray
) -> None:
    record = {
        "dataset": dataset.name,
        "pool_size": len(dataset.train),
        "shots": shots,
        "seed": seed,
        "indices": [int(i) for i in indices],
        "identities": [dataset.train.identity(int(i)) for i in indices],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename: a crash or a parallel run never leaves a half file.
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(record, stream, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
