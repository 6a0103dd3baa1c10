"""Detection backbones: a CLIP whose image side is an open-vocabulary detector.

- ``det:NAME`` puts a detector (``detector.py``) on the image tower of backbone NAME
  (mini-clip, lite0-minilm, tiny-clip, ...); ``--pretrained FILE`` loads the detector's
  weights (a state dict of ``detector.*`` keys, as ``tunebench build mini-det`` saves),
  otherwise its heads are random and only good for testing the pipeline.
- ``mini-det`` is ``det:mini-clip`` with the weights of ``tunebench build mini-det``.

How mini-det is built (F-VLM's recipe, small): the whole CLIP stays frozen — image
tower included, so its features are the ones every classification method sees — and
only the detector parts train, on the ``base`` split of ``det-mnist`` (canvases that
hold base-class objects only; novel classes never appear). Regions are classified
against the frozen text embeddings of the base-class prompts, and, as in ViLD, the
embedding of each object's region is also pulled (cosine distance) towards mini-clip's own image
embedding of that object's crop, which keeps region embeddings in the joint space
where novel classes can later be told apart. The recipe is below; the training job is
``tunebench/builds/mini_det.py``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tunebench.errors import ConfigError
from tunebench.models.checkpoints import file_digest, load_state_file
from tunebench.models.detector import Detector, DetectorSpec, pyramid_taps
from tunebench.models.two_tower import TwoTowerClip
from tunebench.paths import tunebench_cache_dir
from tunebench.registry import BACKBONES, build_model

RECIPE = {
    "version": 1,
    "base_backbone": "mini-clip",
    "dataset": "det-mnist",
    "split": "base",
    "detector": DetectorSpec().to_dict(),
    "steps": 1200,
    "batch_size": 8,
    "lr": 1e-3,
    "warmup_steps": 100,
    "weight_decay": 1e-4,
    "grad_clip": 10.0,
    "distill_weight": 1.0,
    "distill_crop_size": 64,  # crops are encoded as the classification track sees images
    "seed": 0,
}


class DetectionClip(TwoTowerClip):
    """A two-tower CLIP plus a detector on its image tower.

    Methods see the same text side (tokenizer, token embeddings, text tower and
    projection), so zero-shot, ConES, CoOp and textual inversion run unchanged. Extra
    parameter group ``detector_heads`` (every detector part) serves ``lit``.

    It holds only parameters that shape a detection, so that "trainable" and "total"
    counts are true: the image projection is gone (regions have their own,
    ``detector.region_projection``), so are the image tower's layers after the last
    tapped map (timm's ``prune_intermediate_layers``), the text tower's unused pooler
    and the CLIP temperature (regions are scored with ``detector.region_logit_scale``).
    """

    def __init__(self, clip: TwoTowerClip, detector: Detector, content_id: str) -> None:
        # Built from an existing CLIP's parts rather than through TwoTowerClip.__init__,
        # which would make fresh projections; every attribute TwoTowerClip's methods read
        # is set below.
        nn.Module.__init__(self)
        tower = copy.deepcopy(clip.image_tower)  # pruned below: leave the CLIP's own tower whole
        if hasattr(tower, "prune_intermediate_layers"):
            tower.prune_intermediate_layers(len(detector.taps), prune_norm=True, prune_head=True)
        self.image_tower = tower
        self.image_projection = nn.Identity()
        self.text_tower = clip.text_tower
        if getattr(self.text_tower, "pooler", None) is not None:
            self.text_tower.pooler = None  # mean pooling is used, never BERT's pooler
        self.text_projection = clip.text_projection
        self.logit_scale = None
        self.detector = detector
        self.tokenizer = clip.tokenizer
        self.max_length = clip.max_length
        self.image_mean, self.image_std = clip.image_mean, clip.image_std
        self.default_image_size = clip.default_image_size
        self.content_id = content_id
        self.group_patterns = dict(clip.group_patterns)
        self.group_patterns["projection"] = (r"^text_projection\.", r"^detector\.region_projection\.")
        self.group_patterns["detector_heads"] = (r"^detector\.",)

    def pixels(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 → normalised (3, H, W) at the image's own size (no resize:
        boxes and masks stay in the annotation's pixel coordinates)."""
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        return (x - mean) / std


def attach_detector(clip, spec: DetectorSpec, content_id: str) -> DetectionClip:
    if not isinstance(clip, TwoTowerClip):
        raise ConfigError(f"detection needs a two-tower CNN backbone (mini-clip, lite0-minilm, towers:...); "
                          f"{type(clip).__name__} is not one")
    try:
        taps = pyramid_taps(clip.image_tower)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    embed_dim = clip.text_projection.out_features
    return DetectionClip(clip, Detector(taps, embed_dim, spec), content_id)


def _load_detector_weights(model: DetectionClip, path: str | Path) -> None:
    state = load_state_file(path)
    state = {k.removeprefix("detector."): v for k, v in state.items()}
    try:
        missing, unexpected = model.detector.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that differ: another spec or another tower
        raise ConfigError(f"{path} does not fit this detector (tensor shapes differ): was it saved for "
                          "this backbone by tunebench build mini-det?") from exc
    if missing or unexpected:
        raise ConfigError(f"{path} does not fit this detector ({len(missing)} missing, "
                          f"{len(unexpected)} unexpected keys): was it saved by tunebench build mini-det?")


def _spec_id(spec: DetectorSpec) -> str:
    return hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()[:8]


def _seeded_detector(clip, spec: DetectorSpec, name: str, pretrained: str | None) -> DetectionClip:
    """Detector parts drawn from a fixed seed (the same random heads in every process,
    so runs stay comparable), then loaded from ``pretrained`` when given."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = attach_detector(clip, spec, f"{name}-{_spec_id(spec)}-random")
    finally:
        torch.random.set_rng_state(generator_state)
    if pretrained:
        _load_detector_weights(model, pretrained)
        model.content_id = f"{name}-{_spec_id(spec)}-{file_digest(pretrained)}"
    return model.eval()


def detection_builder(builder):
    """Mark a backbone builder as making detectors (tasks check this before running)."""
    builder.detection = True
    return builder


def is_detection_backbone(name: str) -> bool:
    return bool(getattr(BACKBONES.resolve(name)[0], "detection", False))


@BACKBONES.register("det:")
@detection_builder
def build_detection_backbone(argument: str, *, pretrained: str | None = None) -> DetectionClip:
    builder, inner = BACKBONES.resolve(argument)
    if getattr(builder, "detection", False):
        raise ConfigError(f"det:{argument}: {argument} is already a detector")
    clip = builder(inner)
    if not pretrained:
        warnings.warn(f"det:{argument} has random detector heads (no --pretrained file): its results "
                      "mean nothing beyond testing the pipeline", stacklevel=2)
    return _seeded_detector(clip, DetectorSpec(), f"det-{clip.content_id}", pretrained)


def _refuse_vit_towers(config) -> None:
    """Refuse ViT towers during validation, before any model loads: the detector taps
    feature maps at growing strides, which a ViT (all blocks at one stride) lacks."""
    inner = config.backbone.partition(":")[2]
    builder, argument = BACKBONES.resolve(inner)
    is_vit = getattr(builder, "is_vit", None)  # declared by builders that can make ViT towers
    if is_vit is not None and is_vit(argument):
        raise ConfigError(f"{config.backbone}: the detector needs a CNN image tower with multi-scale "
                          f"feature maps, and {inner} is a ViT: use det:mini-clip, det:tiny-clip or "
                          "an open_clip CNN (RN50, convnext_*)")


build_detection_backbone.check = _refuse_vit_towers


# Test-sized detector parts for tiny-detector (tiny-clip's towers): milliseconds a step.
TINY_SPEC = DetectorSpec(fpn_channels=16, representation=32, anchor_sizes=((12, 18), (24, 36)),
                         mask_channels=8, proposals_train=64, proposals_test=32, regions_per_image=32)


@BACKBONES.register("tiny-detector")
@detection_builder
def build_tiny_detector(argument: str | None = None, *, pretrained: str | None = None) -> DetectionClip:
    """det:tiny-clip with tiny heads (fixed seed): the detection tests' backbone."""
    return _seeded_detector(BACKBONES.get("tiny-clip")(None), TINY_SPEC, "tiny-detector", pretrained)


def recipe_hash() -> str:
    return hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:12]


def built_dir() -> Path:
    return tunebench_cache_dir() / "models" / f"mini-det-{recipe_hash()}"


@BACKBONES.register("mini-det")
@detection_builder
def build_mini_det_backbone(argument: str | None = None, *, pretrained: str | None = None) -> DetectionClip:
    """mini-det from its built weights (``pretrained`` = a built folder, else the cache);
    built first, once per machine, when the cache has none."""
    folder = Path(pretrained).expanduser() if pretrained else built_dir()
    weights = folder / "weights.safetensors"
    if not weights.is_file():
        if pretrained:
            raise ConfigError(f"no built mini-det in {folder} (run: tunebench build mini-det)")
        build_model("mini-det")
    clip = BACKBONES.get(RECIPE["base_backbone"])(None)
    spec = DetectorSpec(**RECIPE["detector"])
    model = attach_detector(clip, spec, "")
    _load_detector_weights(model, weights)
    model.content_id = f"mini-det-{_spec_id(spec)}-{file_digest(weights)}-{clip.content_id}"
    return model.eval()


# Part of every run's config hash; mini-det's weights depend on mini-clip's too.
build_mini_det_backbone.version = f"recipe-{recipe_hash()}+mini-clip-{BACKBONES.get('mini-clip').version}"
