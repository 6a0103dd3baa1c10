"""From scored regions to COCO detections, and COCO AP by pycocotools on class subsets.

``detections`` turns one image's regions (refined boxes, region embeddings, mask
logits) and a set of class embeddings into scored detections: softmax over
[background; classes], every (region, class) pair above a score floor, per-class NMS,
the best ``max_detections`` kept, and class-agnostic masks pasted into the image.
``coco_metrics`` scores a split's detections with pycocotools' COCOeval for bbox
and segm, separately on novel, base and all classes.
"""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import batched_nms

SCORE_FLOOR = 0.05  # as torchvision's detectors: lower-scored pairs are not detections
NMS_IOU = 0.5
MAX_DETECTIONS = 100  # COCO's maxDets


@torch.no_grad()
def detections(regions: dict, class_embeddings: torch.Tensor, detector, image_size: tuple[int, int],
               *, max_detections: int = MAX_DETECTIONS) -> dict[str, torch.Tensor]:
    """Boxes (K, 4), scores (K,), labels (K,) contiguous, masks (K, H, W) bool, on the CPU."""
    embeddings = regions["embeddings"].to(class_embeddings.device, class_embeddings.dtype)
    probs = detector.logits(embeddings, class_embeddings).float().softmax(-1)[:, 1:].cpu()
    region, label = torch.nonzero(probs > SCORE_FLOOR, as_tuple=True)
    boxes = regions["boxes"].float().cpu()[region]
    scores = probs[region, label]
    keep = batched_nms(boxes, scores, label, NMS_IOU)[:max_detections]  # sorted by score
    region, boxes, scores, label = region[keep], boxes[keep], scores[keep], label[keep]
    mask_probs = regions["mask_logits"].float().cpu()[region].sigmoid()[:, None]
    masks = paste_masks_in_image(mask_probs, boxes, image_size)[:, 0] >= 0.5 if len(region) else \
        torch.zeros((0, *image_size), dtype=torch.bool)
    return {"boxes": boxes, "scores": scores, "labels": label, "masks": masks}


def coco_results(split, dets_by_position: dict[int, dict], category_ids: tuple[int, ...]) -> list[dict]:
    """COCO result entries (bbox and RLE segmentation) for every detection."""
    from pycocotools import mask as mask_utils

    results = []
    for position in sorted(dets_by_position):
        det = dets_by_position[position]
        image_id = split.image_id(position)
        masks = np.asfortranarray(det["masks"].numpy().transpose(1, 2, 0).astype(np.uint8))
        rles = mask_utils.encode(masks) if len(det["boxes"]) else []
        for k in range(len(det["boxes"])):
            x1, y1, x2, y2 = (float(v) for v in det["boxes"][k])
            rle = dict(rles[k])
            rle["counts"] = rle["counts"].decode("ascii")
            results.append({
                "image_id": image_id, "category_id": category_ids[int(det["labels"][k])],
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "score": round(float(det["scores"][k]), 5), "segmentation": rle,
            })
    return results


def _coco_ground_truth(split):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints on every call
        coco = COCO()
        # A deep copy: COCOeval writes into the ground truth it scores (RLE counts as
        # bytes, ignore flags), which must not leak into the dataset other runs read.
        coco.dataset = copy.deepcopy({k: split.coco[k] for k in ("images", "annotations", "categories")})
        coco.createIndex()
    return coco


def average_precision(ground_truth, results: list[dict], category_ids: list[int], iou_type: str,
                      image_ids: list[int] | None = None) -> dict[str, float | None]:
    """COCO AP, AP50, AP75 over ``category_ids`` (None where those classes have no object)."""
    from pycocotools.cocoeval import COCOeval

    wanted = set(category_ids)
    images = None if image_ids is None else set(image_ids)
    if not any(a["category_id"] in wanted and (images is None or a["image_id"] in images)
               for a in ground_truth.dataset["annotations"]):
        return {"ap": None, "ap50": None, "ap75": None}  # no such object among the images scored
    mine = [r for r in results if r["category_id"] in wanted]
    if not mine:  # loadRes cannot take an empty list; no detections is AP 0
        return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        detected = ground_truth.loadRes([dict(r) for r in mine])  # loadRes adds keys: copy
        evaluation = COCOeval(ground_truth, detected, iou_type)
        evaluation.params.catIds = sorted(wanted)
        if image_ids is not None:
            evaluation.params.imgIds = sorted(image_ids)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # COCOeval writes -1 where the evaluated images hold no object of those classes.
    ap, ap50, ap75 = (None if v < 0 else round(float(v), 5) for v in evaluation.stats[:3])
    return {"ap": ap, "ap50": ap50, "ap75": ap75}


def coco_metrics(split, dataset, results: list[dict], image_ids: list[int]) -> dict[str, float | None]:
    """``{novel,base,all}_{bbox,segm}_{ap,ap50,ap75}`` for the evaluated images."""
    ground_truth = _coco_ground_truth(split)
    subsets = {
        "novel": [dataset.category_ids[i] for i in dataset.novel_labels],
        "base": [dataset.category_ids[i] for i in dataset.base_labels],
        "all": list(dataset.category_ids),
    }
    metrics: dict[str, float | None] = {}
    for subset, ids in subsets.items():
        for iou_type in ("bbox", "segm"):
            values = (average_precision(ground_truth, results, ids, iou_type, image_ids) if ids
                      else {"ap": None, "ap50": None, "ap75": None})
            for name, value in values.items():
                metrics[f"{subset}_{iou_type}_{name}"] = value
    return metrics
