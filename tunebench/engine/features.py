"""Cache of frozen image-tower features, shared across methods, seeds and sweeps.

Keyed by (backbone weights, dataset, split, the images' content, resolution): editing,
adding or removing an image makes a new file (see ``ImageSource.content_key``). Each
file holds the indices computed so far and their trunk features; a request computes
only what is missing and merges it in. Writers take a file lock and replace the file
atomically, so concurrent runs never corrupt a cache file.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from tunebench.datasets.base import ImageSource
from tunebench.engine.progress import progress
from tunebench.models.base import VisionLanguageBackbone
from tunebench.paths import atomic_write_bytes


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
        name = f"{safe_name(backbone.content_id)}__{safe_name(dataset)}-{digest}__{split}__{size}px.safetensors"
        return self.root / name

    def _read(self, path: Path) -> tuple[np.ndarray, torch.Tensor | None]:
        from safetensors.torch import load_file

        if not path.is_file():
            return np.empty(0, dtype=np.int64), None
        try:
            stored = load_file(str(path))
            return stored["indices"].numpy(), stored["features"]
        except Exception:  # a damaged cache is rebuilt, never trusted
            return np.empty(0, dtype=np.int64), None

    @torch.no_grad()
    def get(
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
    ) -> torch.Tensor:
        """Trunk features (len(indices), F) in the order of ``indices``."""
        from safetensors.torch import save

        path = self.file_for(backbone, source, dataset, split, image_size)
        indices = np.asarray(indices, dtype=np.int64)
        with locked(path):
            remove_stale_temporaries(path)
            have, features = self._read(path)
            missing = np.setdiff1d(indices, have)
            if len(missing):
                started = time.perf_counter()
                new = _encode(backbone, source, missing, image_size, device, batch_size,
                              desc=f"image features {dataset}/{split}")
                self.seconds_computing += time.perf_counter() - started
                have = np.concatenate([have, missing])
                features = new if features is None else torch.cat([features, new])
                order = np.argsort(have)
                have, features = have[order], features[torch.from_numpy(order)]
                atomic_write_bytes(path, save({"indices": torch.from_numpy(have), "features": features.contiguous()}))
        rows = np.searchsorted(have, indices)
        if not np.array_equal(have[np.minimum(rows, len(have) - 1)], indices):
            raise RuntimeError(f"feature cache {path} lacks requested rows; delete it and rerun")
        return features[torch.from_numpy(rows)]


def remove_stale_temporaries(path: Path) -> None:
    """Delete half-written copies of ``path`` left by a writer that was killed (e.g. a
    Ray worker) before atomic_output could clean up. Only called under the file's lock,
    so no live writer of this file can own one of them."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def _encode(backbone, source, indices, image_size, device, batch_size, desc) -> torch.Tensor:
    backbone.eval()
    chunks = []
    for start in progress(range(0, len(indices), batch_size), desc=desc, unit="batch"):
        images = source.load(indices[start : start + batch_size])
        pixels = backbone.preprocess(images, image_size).to(device)
        chunks.append(backbone.encode_image_trunk(pixels).float().cpu())
    return torch.cat(chunks)


def encode_images(backbone, source, indices, *, image_size, device, batch_size) -> torch.Tensor:
    """Trunk features computed now, with the backbone as it is (for tuned image towers)."""
    with torch.no_grad():
        return _encode(backbone, source, np.asarray(indices), image_size, device, batch_size,
                       desc="image features (tuned tower)")
