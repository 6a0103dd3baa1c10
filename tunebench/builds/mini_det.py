"""Build ``mini-det``: train the detector parts on frozen mini-clip (F-VLM's recipe,
small; described in ``tunebench/models/mini_det.py``, which holds the recipe and loads
the result), then score it zero-shot on det-mnist's test split for the record."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tunebench.builds.base import build_lock, write_build
from tunebench.datasets import load_dataset
from tunebench.engine.training import Optimization
from tunebench.methods.base import ClassPrompts
from tunebench.methods.prompts import start_embeddings
from tunebench.models.detector import DetectorSpec, to_image_list
from tunebench.models.mini_det import RECIPE, DetectionClip, attach_detector, built_dir, recipe_hash
from tunebench.models.two_tower import TwoTowerClip
from tunebench.registry import BACKBONES, BUILDS
from tunebench.tasks.detection_eval import coco_metrics, coco_results, detections

# The detector heads are built against every template's mean (the recipe's class side,
# unchanged since it was first built), whatever start a later sweep's ``init`` picks.
ENSEMBLE = "ensemble"


def _targets(model: DetectionClip, split, positions, label_map: dict[int, int], embeddings=None):
    pixels, targets = [], []
    for position in positions:
        target = split.target(position)
        keep = np.isin(target["labels"], list(label_map))
        item = {
            "boxes": torch.from_numpy(target["boxes"][keep]),
            "labels": torch.tensor([label_map[int(lab)] for lab in target["labels"][keep]], dtype=torch.long),
            "masks": torch.from_numpy(target["masks"][keep]),
        }
        if embeddings is not None:
            item["embeddings"] = embeddings[position][torch.from_numpy(np.flatnonzero(keep))]
        pixels.append(model.pixels(split.load(position)))
        targets.append(item)
    return to_image_list(pixels), targets


@torch.no_grad()
def crop_embeddings(clip: TwoTowerClip, split, size: int, batch_size: int = 256) -> dict[int, torch.Tensor]:
    """mini-clip's normalised image embedding of every annotated object's crop (its box,
    padded to a square), per image position: the distillation targets."""
    crops, owners = [], []
    for position in range(len(split)):
        image, target = split.load(position), split.target(position)
        height, width = image.shape[:2]
        for x1, y1, x2, y2 in target["boxes"]:
            cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) / 2 + 2
            box = [int(max(0, cx - half)), int(max(0, cy - half)),
                   int(min(width, cx + half)), int(min(height, cy + half))]
            crop = image[box[1] : box[3], box[0] : box[2]]
            crops.append(clip.preprocess(crop[None], size)[0])
            owners.append(position)
    out: dict[int, list[torch.Tensor]] = {p: [] for p in range(len(split))}
    for start in range(0, len(crops), batch_size):
        batch = torch.stack(crops[start : start + batch_size])
        embedded = F.normalize(clip.encode_image(batch), dim=-1)
        for owner, row in zip(owners[start : start + batch_size], embedded, strict=True):
            out[owner].append(row)
    return {p: torch.stack(rows) if rows else torch.zeros(0, clip.text_projection.out_features)
            for p, rows in out.items()}


@BUILDS.register("mini-det")
def build_mini_det(force: bool = False) -> Path:
    """Train mini-det's detector parts on det-mnist's base split; returns its folder."""
    target = built_dir()
    with build_lock(target.parent / f".{target.name}.lock"):
        if (target / "weights.safetensors").is_file() and not force:
            return target
        started = time.perf_counter()
        torch.manual_seed(RECIPE["seed"])
        dataset = load_dataset(RECIPE["dataset"])
        split = dataset.split(RECIPE["split"])
        clip = BACKBONES.get(RECIPE["base_backbone"])(None).eval()
        model = attach_detector(clip, DetectorSpec(**RECIPE["detector"]), "mini-det-building")
        model.requires_grad_(False)
        model.detector.requires_grad_(True)
        base = dataset.base_labels
        label_map = {label: i for i, label in enumerate(base)}
        with torch.no_grad():
            class_embeddings = start_embeddings(
                clip, ClassPrompts(tuple(dataset.classnames[i] for i in base), dataset.templates, ENSEMBLE))
        embeddings = crop_embeddings(clip, split, RECIPE["distill_crop_size"])
        params = [p for p in model.detector.parameters() if p.requires_grad]
        run = Optimization(params, steps=RECIPE["steps"], warmup=RECIPE["warmup_steps"],
                           grad_clip=RECIPE["grad_clip"], lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
        rng = np.random.default_rng(RECIPE["seed"])
        history = []
        for step in run.steps(desc="building mini-det (detector heads)", inner=False):
            positions = rng.choice(len(split), size=RECIPE["batch_size"], replace=False)
            images, targets = _targets(model, split, positions, label_map, embeddings)
            losses = model.detector.losses(model.image_tower, images, targets, class_embeddings,
                                           train_tower=False, distill_weight=RECIPE["distill_weight"])
            loss = sum(losses.values())
            history.append(run.update(loss, step))
            if step % 10 == 0:
                run.bar.set_postfix(loss=f"{np.mean(history[-50:]):.3f}")
        model.eval()
        # A sanity score for the record: zero-shot AP on det-mnist's test split.
        test = dataset.split("test")
        with torch.no_grad():
            all_classes = start_embeddings(clip, ClassPrompts(dataset.classnames, dataset.templates, ENSEMBLE))
        dets = {}
        for start in range(0, len(test), 32):
            positions = list(range(start, min(len(test), start + 32)))
            images = to_image_list([model.pixels(test.load(p)) for p in positions])
            for position, regions, size in zip(positions, model.detector.detect_regions(model.image_tower, images),
                                               images.image_sizes, strict=True):
                dets[position] = detections(regions, all_classes, model.detector, size)
        metrics = coco_metrics(test, dataset, coco_results(test, dets, dataset.category_ids),
                               [test.image_id(p) for p in range(len(test))])
        state = {f"detector.{k}": v.detach().contiguous() for k, v in model.detector.state_dict().items()}
        record = {
            "recipe": RECIPE, "recipe_hash": recipe_hash(),
            "build_seconds": round(time.perf_counter() - started, 1),
            "final_train_loss": round(float(np.mean(history[-50:])), 4),
            "zero_shot_test": {k: v for k, v in metrics.items() if k.endswith(("bbox_ap", "bbox_ap50", "segm_ap"))},
        }
        write_build(target, state, record)
        zs = record["zero_shot_test"]
        print(f"mini-det built in {record['build_seconds']} s: zero-shot test bbox AP50 base "
              f"{zs['base_bbox_ap50']}, novel {zs['novel_bbox_ap50']}", file=sys.stderr)
        return target


build_mini_det.summary = "open-vocabulary detector heads on frozen mini-clip, trained on det-mnist base classes"
