"""An open-vocabulary detector whose classifier is the text side of a CLIP.

    pixels → image tower (taps at its last three strides) → FPN → RPN proposals
           → RoIAlign 7×7 → box head → region feature ─┬→ class-agnostic box deltas
                                                       └→ region projection → joint space
           → RoIAlign 14×14 → mask head → one class-agnostic mask logit map per region
    class scores = scale · cos(region embedding, [background; class embeddings])

Classes are not parameters of the detector: any (C, D) set of class embeddings in the
joint space — prompt-ensemble text embeddings, ConES concept vectors, CoOp prompts —
scores the same regions (as in ViLD or F-VLM). That is what lets every tuning method
of the classification track run unchanged on detection. Boxes and masks are
class-agnostic for the same reason: they must serve classes the detector never saw.

Built from torchvision's detection parts (FPN, anchors, RPN, RoIAlign, the box and
mask head layers, box coder, matcher, sampler); the region losses are written here
because they score against text embeddings instead of a fixed class layer.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, box_iou, roi_align

LEVELS = ("p3", "p4", "p5")
MAX_REGION_SCALE = 100.0  # clamp on the inverse temperature, as CLIP clamps its own


@dataclass(frozen=True)
class DetectorSpec:
    """Sizes of the detector's own parts (its recipe; the trunk comes from the backbone)."""

    fpn_channels: int = 128
    representation: int = 256  # width of the box head's region feature
    anchor_sizes: tuple[tuple[int, ...], ...] = ((24, 36), (48, 72), (96, 144))
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    mask_channels: int = 64
    proposals_train: int = 256  # RPN proposals kept per image after NMS, training
    proposals_test: int = 100  # ... and at inference
    regions_per_image: int = 64  # sampled for the region losses
    positive_fraction: float = 0.25

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def pyramid_taps(image_tower: nn.Module) -> list[dict]:
    """The tower's last three feature maps (module name, channels, stride).

    timm CNNs list them in ``feature_info``; other towers may define the same list. A
    pyramid needs maps at growing strides: a ViT lists all its blocks at one stride (and
    they are token sequences), so it is refused.
    """
    info = getattr(image_tower, "feature_info", None)
    name = type(image_tower).__name__
    if not info:
        raise ValueError(f"image tower {name} lists no feature_info: the detector needs a CNN tower with "
                         "multi-scale feature maps (timm CNNs have them)")
    taps = [dict(entry) for entry in info][-3:]
    strides = [t["reduction"] for t in taps]
    if len(taps) < 2 or any(b <= a for a, b in zip(strides, strides[1:], strict=False)):
        raise ValueError(f"image tower {name} has no feature maps at growing strides (it lists {strides}): "
                         "the detector needs a CNN tower; a ViT has one stride")
    return taps


@contextmanager
def _capture(image_tower: nn.Module, taps: list[dict]):
    """Forward hooks that keep the tapped maps, removed afterwards (never left on a
    module, where deep copies would carry hooks pointing at the original)."""
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for tap in taps:
        def keep(_module, _inputs, output, name=tap["module"]):
            outputs[name] = output
        handles.append(image_tower.get_submodule(tap["module"]).register_forward_hook(keep))
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _training_mode(module: nn.Module, mode: bool):
    """torchvision's RPN decides losses and proposal counts by ``.training``; the
    backbone, BN included, stays in eval mode in tunebench, so set it only here."""
    before = module.training
    module.training = mode
    try:
        yield
    finally:
        module.training = before


class Detector(nn.Module):
    def __init__(self, taps: list[dict], embed_dim: int, spec: DetectorSpec = DetectorSpec()) -> None:
        super().__init__()
        self.spec = spec
        self.taps = taps
        c = spec.fpn_channels
        levels = LEVELS[-len(taps):]
        self.levels = levels
        self.fpn = FeaturePyramidNetwork([t["num_chs"] for t in taps], c)
        sizes = spec.anchor_sizes[-len(taps):]
        anchors = AnchorGenerator(sizes, (spec.aspect_ratios,) * len(sizes))
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(c, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=128, positive_fraction=0.5,
            pre_nms_top_n={"training": 600, "testing": 300},
            post_nms_top_n={"training": spec.proposals_train, "testing": spec.proposals_test},
            nms_thresh=0.7,
        )
        # Small objects (30–100 px) would all map to the finest level with the ImageNet
        # canonical scale of 224 px; 112 spreads them over the levels.
        self.box_pool = MultiScaleRoIAlign(list(levels), 7, 1, canonical_scale=112)
        self.mask_pool = MultiScaleRoIAlign(list(levels), 14, 2, canonical_scale=112)
        self.box_head = TwoMLPHead(c * 7 * 7, spec.representation)
        self.box_deltas = nn.Linear(spec.representation, 4)
        self.region_projection = nn.Linear(spec.representation, embed_dim)
        self.background = nn.Parameter(torch.randn(embed_dim) * 0.02)
        self.region_logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.mask_head = MaskRCNNHeads(c, [spec.mask_channels] * 2, 1)
        self.mask_predictor = MaskRCNNPredictor(spec.mask_channels, spec.mask_channels, 1)
        nn.init.normal_(self.box_deltas.weight, std=0.001)
        nn.init.zeros_(self.box_deltas.bias)
        # torchvision's He init makes first mask logits of size ~50; start near 0 instead.
        nn.init.normal_(self.mask_predictor.mask_fcn_logits.weight, std=0.001)
        self.box_coder = det_utils.BoxCoder((10.0, 10.0, 5.0, 5.0))
        self.matcher = det_utils.Matcher(0.5, 0.5, allow_low_quality_matches=False)
        self.sampler = det_utils.BalancedPositiveNegativeSampler(spec.regions_per_image, spec.positive_fraction)

    # ---- features and proposals ---------------------------------------------------------
    def features(self, image_tower: nn.Module, pixels: torch.Tensor, *, train_tower: bool = True) -> OrderedDict:
        """FPN maps. With ``train_tower`` False the tower runs without autograd (it is
        frozen, and its activations need not be kept for a backward pass)."""
        with torch.set_grad_enabled(train_tower and torch.is_grad_enabled()), \
                _capture(image_tower, self.taps) as tapped:
            image_tower(pixels)
        maps = OrderedDict((level, tapped[t["module"]]) for level, t in zip(self.levels, self.taps, strict=True))
        return self.fpn(maps)

    def propose(self, images: ImageList, features: OrderedDict, targets=None, *, training: bool):
        with _training_mode(self.rpn, training):
            boxes, losses = self.rpn(images, features, targets)
        return [b.detach() for b in boxes], losses

    # ---- regions -----------------------------------------------------------------------
    def region_features(self, features: OrderedDict, boxes: list[torch.Tensor], image_sizes) -> torch.Tensor:
        return self.box_head(self.box_pool(features, boxes, image_sizes))

    def embed(self, region_features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.region_projection(region_features), dim=-1)

    def logits(self, region_embeddings: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
        """(R, 1 + C): column 0 is background."""
        targets = torch.cat([F.normalize(self.background, dim=-1)[None].to(class_embeddings.dtype),
                             class_embeddings])
        scale = self.region_logit_scale.exp().clamp(max=MAX_REGION_SCALE)
        return scale * region_embeddings @ targets.T

    def mask_logits(self, features: OrderedDict, boxes: list[torch.Tensor], image_sizes) -> torch.Tensor:
        return self.mask_predictor(self.mask_head(self.mask_pool(features, boxes, image_sizes)))[:, 0]

    # ---- training ----------------------------------------------------------------------
    def sample_regions(self, proposals: list[torch.Tensor], targets: list[dict]):
        """Proposals plus ground truth, matched (IoU ≥ 0.5 → that object) and sampled."""
        boxes, labels, matched = [], [], []
        for props, target in zip(proposals, targets, strict=True):
            gt = target["boxes"]
            props = torch.cat([props, gt])
            if len(gt):
                match = self.matcher(box_iou(gt, props))
                label = target["labels"][match.clamp(min=0)] + 1
                label[match < 0] = 0
            else:
                match = torch.full((len(props),), -1, dtype=torch.long, device=props.device)
                label = torch.zeros(len(props), dtype=torch.long, device=props.device)
            boxes.append(props), labels.append(label), matched.append(match)
        positive, negative = self.sampler(labels)
        keep = [torch.where(p | n)[0] for p, n in zip(positive, negative, strict=True)]
        return ([b[k] for b, k in zip(boxes, keep, strict=True)],
                [lab[k] for lab, k in zip(labels, keep, strict=True)],
                [m[k] for m, k in zip(matched, keep, strict=True)])

    def losses(
        self, image_tower: nn.Module, images: ImageList, targets: list[dict], class_embeddings: torch.Tensor,
        *, train_tower: bool, distill_weight: float = 0.0, refine=None,
    ) -> dict[str, torch.Tensor]:
        """Every detection loss for one batch: RPN, region classification against the
        class embeddings, class-agnostic box regression and masks (and, when asked,
        distillation of region embeddings towards ``target["embeddings"]``). ``refine``,
        when given, maps the region embeddings before they are scored (a tuning
        method's image side)."""
        features = self.features(image_tower, images.tensors, train_tower=train_tower)
        proposals, losses = self.propose(images, features, targets, training=True)
        boxes, labels, matched = self.sample_regions(proposals, targets)
        region = self.region_features(features, boxes, images.image_sizes)
        embeddings = self.embed(region)
        # Distillation pulls the detector's own region embeddings towards CLIP's; a method's
        # refinement is what gets scored, not what is distilled.
        scored = refine(embeddings) if refine is not None else embeddings
        label = torch.cat(labels)
        losses["loss_classifier"] = F.cross_entropy(self.logits(scored, class_embeddings).float(), label)
        fg = torch.where(label > 0)[0]
        deltas = self.box_deltas(region)
        if len(fg):
            # Each foreground region's object (images without objects add no rows).
            gt_boxes = torch.cat([t["boxes"][m[lab > 0]] for t, m, lab in zip(targets, matched, labels, strict=True)])
            regression = self.box_coder.encode_single(gt_boxes, torch.cat(boxes)[fg])
            losses["loss_box_reg"] = F.smooth_l1_loss(deltas[fg].float(), regression.float(), beta=1 / 9,
                                                      reduction="sum") / max(1, len(label))
            losses["loss_mask"] = self._mask_loss(features, boxes, labels, matched, targets, images.image_sizes)
            if distill_weight > 0:  # cosine distance to the object's image embedding (ViLD-style)
                wanted = torch.cat([t["embeddings"][m[lab > 0]]
                                    for t, m, lab in zip(targets, matched, labels, strict=True)])
                cosine = (embeddings[fg] * wanted.to(embeddings.dtype)).sum(-1)
                losses["loss_distill"] = distill_weight * (1 - cosine).mean()
        else:  # no object sampled: keep the graph (and DDP-style bookkeeping) uniform
            losses["loss_box_reg"] = deltas.sum() * 0
            losses["loss_mask"] = deltas.sum() * 0
        return losses

    def _mask_loss(self, features, boxes, labels, matched, targets, image_sizes) -> torch.Tensor:
        fg_boxes = [b[lab > 0] for b, lab in zip(boxes, labels, strict=True)]
        logits = self.mask_logits(features, fg_boxes, image_sizes)
        size = logits.shape[-1]
        wanted = []
        for box, lab, match, target in zip(boxes, labels, matched, targets, strict=True):
            fg = lab > 0
            if not fg.any():
                continue
            masks = target["masks"][match[fg]].unsqueeze(1).float()
            # Each region's target: its object's mask cut out along the region's box.
            index = torch.arange(len(masks), device=masks.device, dtype=box.dtype)[:, None]
            wanted.append(roi_align(masks, torch.cat([index, box[fg]], 1), (size, size), 1.0)[:, 0])
        return F.binary_cross_entropy_with_logits(logits.float(), (torch.cat(wanted) >= 0.5).float())

    # ---- inference ---------------------------------------------------------------------
    @torch.no_grad()
    def detect_regions(self, image_tower: nn.Module, images: ImageList) -> list[dict]:
        """Per image: refined boxes (R, 4), region embeddings (R, D), mask logits (R, M, M).

        Everything a class-embedding method needs to score, so a frozen detector's
        output can be cached once and rescored by any set of class embeddings.
        """
        features = self.features(image_tower, images.tensors)
        proposals, _ = self.propose(images, features, training=False)
        region = self.region_features(features, proposals, images.image_sizes)
        deltas = self.box_deltas(region).float()  # boxes in float32 even under bf16 autocast
        refined = self.box_coder.decode_single(deltas, torch.cat(proposals).float())
        out, start = [], 0
        for props, size in zip(proposals, images.image_sizes, strict=True):
            boxes = _clip(refined[start : start + len(props)], size)
            out.append({"boxes": boxes, "embeddings": self.embed(region[start : start + len(props)])})
            start += len(props)
        masks = self.mask_logits(features, [o["boxes"] for o in out], images.image_sizes)
        start = 0
        for o in out:
            o["mask_logits"] = masks[start : start + len(o["boxes"])]
            start += len(o["boxes"])
        return out


def _clip(boxes: torch.Tensor, size) -> torch.Tensor:
    height, width = size
    return torch.stack([boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height),
                        boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)], dim=1)


def to_image_list(pixels: list[torch.Tensor], stride: int = 32) -> ImageList:
    """Pad (3, H, W) tensors to one batch whose sides are multiples of ``stride``."""
    height = max(p.shape[-2] for p in pixels)
    width = max(p.shape[-1] for p in pixels)
    height, width = (math.ceil(height / stride) * stride, math.ceil(width / stride) * stride)
    batch = pixels[0].new_zeros((len(pixels), 3, height, width))
    for i, p in enumerate(pixels):
        batch[i, :, : p.shape[-2], : p.shape[-1]] = p
    return ImageList(batch, [(int(p.shape[-2]), int(p.shape[-1])) for p in pixels])
