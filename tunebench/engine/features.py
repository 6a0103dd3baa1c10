"""Cache of frozen image-tower features, shared across methods, seeds and sweeps.

Keyed by (backbone weights, dataset, split, the images' content, resolution): editing,
adding or removing an image makes a new file (see ``ImageSource.content_key``). Each
file holds the indices computed so far and their trunk features; a request computes
only what is missing and merges it in. Writers take a file lock and replace the file
atomically, so concurrent runs never corrupt a cache file.

Nothing here holds a whole split: images are decoded a batch at a time by a thread pool
(``engine/decoding.py``), features are written to the file as they are computed and
read back a batch at a time (``engine/feature_file.py``), so a 50,000-image folder
costs the memory of one batch. ``rows`` answers with such a lazy selection; ``get``
loads it (for few-shot training rows, which are few).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from tunebench.datasets.base import ImageSource
from tunebench.engine.decoding import image_batches
from tunebench.engine.feature_file import (
    DTYPE,
    FeatureFile,
    FeatureRows,
    stream_to_scratch,
    write_rows,
)
from tunebench.engine.progress import progress
from tunebench.models.base import VisionLanguageBackbone
from tunebench.paths import atomic_output


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80]


@contextmanager
def locked(path: Path):
    """An exclusive lock on ``path`` (a sibling .lock file) for one writer at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class FeatureCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.seconds_computing = 0.0  # time spent on features that were not cached yet

    def file_for(
        self, backbone: VisionLanguageBackbone, source: ImageSource, dataset: str, split: str, size: int
    ) -> Path:
        # Stored features are only valid for one exact list of images with one content:
        # the key carries the source's content key (every file's path, size and mtime,
        # or the arrays' bytes), so images edited in place, added or removed get a new
        # file, and two long names that shorten alike never share one.
        fingerprint = "|".join([dataset, split, str(len(source)), source.content_key])
        digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:10]
        name = f"{safe_name(backbone.content_id)}__{safe_name(dataset)}-{digest}__{split}__{size}px.features"
        return self.root / name

    @staticmethod
    def open(path: Path) -> FeatureFile | None:
        """The stored file, or None when there is none or it is damaged (then it is
        rebuilt, never trusted)."""
        try:
            return FeatureFile.open(path)
        except (OSError, ValueError, EOFError):
            return None

    def rows(
        self,
        backbone: VisionLanguageBackbone,
        source: ImageSource,
        indices: np.ndarray,
        *,
        dataset: str,
        split: str,
        image_size: int,
        device: torch.device,
        batch_size: int = 256,
    ) -> FeatureRows:
        """Trunk features of ``indices``, in their order, read from disk when sliced:
        memory stays one batch whatever the split's size."""
        path = self.file_for(backbone, source, dataset, split, image_size)
        indices = np.asarray(indices, dtype=np.int64)
        with locked(path):
            remove_stale_temporaries(path)
            stored = self.open(path)
            have = stored.indices if stored is not None else np.empty(0, dtype=np.int64)
            missing = np.setdiff1d(indices, have)
            if len(missing) or stored is None:  # (nothing asked and nothing stored: an empty file)
                started = time.perf_counter()
                new = _encode_batches(backbone, source, missing, image_size, device, batch_size,
                                      desc=f"image features {dataset}/{split}")
                try:
                    _write_merged(path, stored, missing, new)
                finally:
                    if stored is not None:
                        stored.close()
                self.seconds_computing += time.perf_counter() - started
                stored = FeatureFile.open(path)
        rows = np.searchsorted(stored.indices, indices)
        if not np.array_equal(stored.indices[np.minimum(rows, len(stored.indices) - 1)], indices):
            stored.close()
            raise RuntimeError(f"feature cache {path} lacks requested rows; delete it and rerun")
        return FeatureRows(stored, rows)

    def get(self, backbone: VisionLanguageBackbone, source: ImageSource, indices: np.ndarray,
            **options) -> torch.Tensor:
        """``rows(...)`` all in memory, (len(indices), F): for selections that fit (few-shot
        training rows, small test splits)."""
        return self.rows(backbone, source, indices, **options).tensor()


def _write_merged(path: Path, stored: FeatureFile | None, missing: np.ndarray, new) -> None:
    """Replace ``path`` atomically with the stored rows plus ``new`` (the features of
    ``missing``, sorted, arriving in chunks), in index order, a chunk at a time."""
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        if stored is None or not len(stored.indices):
            write_rows(handle, missing, new)
        else:  # computed rows go to a scratch file first, then both are merged in order
            fresh = stream_to_scratch(missing, new, directory=path.parent)
            try:
                write_rows(handle, *_merge(stored, fresh.file, missing))
            finally:
                fresh.file.close()
        handle.flush()
        os.fsync(handle.fileno())


def _merge(old: FeatureFile, new: FeatureFile, missing: np.ndarray, block: int = 4096):
    """The sorted union of two files' indices, and its rows in chunks of ``block``."""
    merged = np.concatenate([old.indices, missing])
    order = np.argsort(merged, kind="stable")
    from_old = order < len(old.indices)

    def chunks():
        taken_old = taken_new = 0
        for start in range(0, len(order), block):
            mask = from_old[start : start + block]
            n_old = int(mask.sum())
            rows = np.empty((len(mask), old.num_features), dtype=DTYPE)
            rows[mask] = old.read(np.arange(taken_old, taken_old + n_old))
            rows[~mask] = new.read(np.arange(taken_new, taken_new + len(mask) - n_old))
            taken_old, taken_new = taken_old + n_old, taken_new + len(mask) - n_old
            yield rows

    return merged[order], chunks()


def remove_stale_temporaries(path: Path) -> None:
    """Delete half-written copies of ``path`` left by a writer that was killed (e.g. a
    Ray worker) before atomic_output could clean up. Only called under the file's lock,
    so no live writer of this file can own one of them."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def _encode_batches(backbone, source, indices, image_size, device, batch_size, desc):
    """Trunk features of ``indices``, one float32 CPU tensor per batch, images decoded
    by the pool one batch ahead (``engine/decoding.py``)."""
    backbone.eval()
    batches = image_batches(source, indices, batch_size)
    for images in progress(batches, desc=desc, unit="batch", total=-(-len(indices) // batch_size)):
        with torch.no_grad():  # not around the yield: a generator would leak the mode to its caller
            features = backbone.encode_image_trunk(backbone.preprocess(images, image_size).to(device))
        yield features.float().cpu()


def encode_images(backbone, source, indices, *, image_size, device, batch_size) -> torch.Tensor:
    """Trunk features computed now, with the backbone as it is (for tuned image towers)."""
    return torch.cat(list(_encode_batches(backbone, source, np.asarray(indices), image_size, device, batch_size,
                                          desc="image features (tuned tower)")))


def encode_rows(backbone, source, indices, *, image_size, device, batch_size) -> FeatureRows:
    """``encode_images`` kept in an anonymous scratch file, for splits too large to hold."""
    indices = np.asarray(indices)
    return stream_to_scratch(indices, _encode_batches(backbone, source, indices, image_size, device, batch_size,
                                                      desc="image features (tuned tower)"))
