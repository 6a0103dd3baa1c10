"""What a frozen detector sees in each image, computed once and shared by every
class-embedding method, seed and sweep (the detection counterpart of the feature cache).

Two kinds, per image:

- ``train``: the RPN's proposals plus the ground-truth boxes, with their region
  embeddings and their label (the matched object's class + 1 where IoU ≥ 0.5, else
  0 = background), which is all a method that only learns class embeddings needs to
  train the region classifier;
- ``test``: refined boxes, region embeddings and mask logits, which any set of class
  embeddings turns into scored detections.

Files are keyed by the detector (its content id names its weights and parts), the
annotations, the images' files and ``REGION_CACHE_VERSION``; a request computes only
the images missing, under a file lock, and replaces the file atomically.
"""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import torch
from torchvision.ops import box_iou

from tunebench.engine.features import locked, remove_stale_temporaries, safe_name
from tunebench.engine.progress import progress
from tunebench.models.detector import to_image_list
from tunebench.paths import atomic_write_bytes

KINDS = ("train", "test")
# Bump when what is stored changes meaning (proposal counts, the 0.5 IoU labelling,
# detect_regions' outputs): old files are then never read again.
REGION_CACHE_VERSION = 1


def _batches(split, positions: list[int], size: int) -> list[list[int]]:
    """Batches of images of one size each: padding a smaller image to its batch-mates'
    size would change its features, and a cached image's regions would then depend on
    which images happened to be computed with it."""
    by_size: dict[tuple, list[int]] = {}
    for position in positions:
        info = split.images[position]
        by_size.setdefault((int(info["height"]), int(info["width"])), []).append(position)
    return [group[start : start + size] for _, group in sorted(by_size.items())
            for start in range(0, len(group), size)]


@torch.no_grad()
def compute_regions(backbone, split, positions: list[int], kind: str, *, device, batch_size: int = 16,
                    desc: str = "regions") -> dict[int, dict]:
    """Regions of ``positions`` with the backbone's detector as it is now."""
    detector, out = backbone.detector, {}
    for chunk in progress(_batches(split, positions, batch_size), desc=desc, unit="batch"):
        images = to_image_list([backbone.pixels(split.load(p)) for p in chunk]).to(device)
        if kind == "test":
            for position, regions in zip(chunk, detector.detect_regions(backbone.image_tower, images), strict=True):
                out[position] = {"boxes": regions["boxes"].float().cpu(),
                                 "embeddings": regions["embeddings"].float().cpu(),
                                 "mask_logits": regions["mask_logits"].half().cpu()}
            continue
        features = detector.features(backbone.image_tower, images.tensors)
        proposals, _ = detector.propose(images, features, training=False)
        all_boxes = []
        for position, props in zip(chunk, proposals, strict=True):
            target = split.target(position)
            gt = torch.from_numpy(target["boxes"]).to(props)
            boxes = torch.cat([props, gt])  # ground truth joins the proposals, as in training
            labels = torch.zeros(len(boxes), dtype=torch.long)
            if len(gt):
                iou, match = box_iou(boxes, gt).max(dim=1)
                labels = torch.from_numpy(target["labels"])[match.cpu()] + 1
                labels[iou.cpu() < 0.5] = 0
            out[position] = {"boxes": boxes.cpu(), "labels": labels}
            all_boxes.append(boxes)
        embeddings = detector.embed(detector.region_features(features, all_boxes, images.image_sizes)).float().cpu()
        for position, part in zip(chunk, embeddings.split([len(b) for b in all_boxes]), strict=True):
            out[position]["embeddings"] = part
    return out


class RegionCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.seconds_computing = 0.0

    def file_for(self, backbone, dataset, split_name: str, kind: str) -> Path:
        split = dataset.split(split_name)
        images = _image_files_identity(split)
        identity = f"v{REGION_CACHE_VERSION}|{dataset.name}|{dataset.content_id}|{split_name}|{images}"
        key = hashlib.sha256(identity.encode()).hexdigest()[:10]
        return self.root / f"{safe_name(backbone.content_id)}__{safe_name(dataset.name)}-{key}__{split_name}__{kind}.pt"

    def get(self, backbone, dataset, split_name: str, positions: list[int], kind: str, *, device,
            batch_size: int = 16) -> dict[int, dict]:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        path = self.file_for(backbone, dataset, split_name, kind)
        with locked(path):
            remove_stale_temporaries(path)
            stored = self._read(path)
            missing = [p for p in positions if p not in stored]
            if missing:
                started = time.perf_counter()
                stored.update(compute_regions(backbone, dataset.split(split_name), missing, kind, device=device,
                                              batch_size=batch_size, desc=f"regions {dataset.name}/{split_name}"))
                self.seconds_computing += time.perf_counter() - started
                buffer = io.BytesIO()
                torch.save(stored, buffer)
                atomic_write_bytes(path, buffer.getvalue())
        return {p: stored[p] for p in positions}

    @staticmethod
    def _read(path: Path) -> dict[int, dict]:
        if not path.is_file():
            return {}
        try:
            return dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception:  # a damaged cache is rebuilt, never trusted
            return {}


def _image_files_identity(split) -> str:
    """Size and modification time of every image file: replacing an image in a
    ``coco:`` folder makes new cache files instead of serving the old regions."""
    digest = hashlib.sha256()
    for info in split.images:
        try:
            stat = (split.image_dir / info["file_name"]).stat()
            digest.update(f"{info['file_name']}:{stat.st_size}:{int(stat.st_mtime)};".encode())
        except OSError:
            digest.update(f"{info['file_name']}:missing;".encode())
    return digest.hexdigest()[:16]
