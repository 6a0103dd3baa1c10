"""Build ``mini-clip``: align MiniLM to the locked EfficientNet-Lite0 by LiT, without
any image-caption corpus (the method is described in ``tunebench/models/mini_clip.py``,
which also holds the recipe and loads the result)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tunebench.builds.base import build_lock, write_build
from tunebench.engine.training import Optimization
from tunebench.models.efficientnet_lite import load_efficientnet_lite
from tunebench.models.mini_clip import (
    RECIPE,
    TRAINED_PREFIXES,
    built_dir,
    recipe_hash,
    untrained_mini_clip,
)
from tunebench.models.two_tower import TwoTowerClip
from tunebench.registry import BUILDS


def _imagenet_prompts() -> list[list[str]]:
    """Synonyms per ImageNet class, e.g. ['tabby', 'tabby cat'], from timm's class list."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [
        [s.strip() for s in info.index_to_description(i).split(",") if s.strip()]
        for i in range(1000)
    ]


def _anchors(classifier_weight: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(image projection matrix D×F, class anchors 1000×D) from the classifier rows."""
    centred = classifier_weight - classifier_weight.mean(0, keepdim=True)
    u, s, vh = torch.linalg.svd(centred.double(), full_matrices=False)
    projection = (s[:dim, None] * vh[:dim]).float()
    return projection, u[:, :dim].float()


@BUILDS.register("mini-clip")
def build_mini_clip(force: bool = False) -> Path:
    """Align MiniLM to the locked EfficientNet-Lite0 and cache the result; returns its folder."""
    target = built_dir()
    with build_lock(target.parent / f".{target.name}.lock"):
        if (target / "weights.safetensors").is_file() and not force:
            return target
        started = time.perf_counter()
        torch.manual_seed(RECIPE["seed"])
        model = untrained_mini_clip()
        classifier = load_efficientnet_lite("lite0", with_classifier=True).classifier
        projection, anchors = _anchors(classifier.weight.detach(), RECIPE["embed_dim"])
        with torch.no_grad():
            model.image_projection.weight.copy_(projection)
            model.image_projection.bias.zero_()
        synonyms = _imagenet_prompts()
        val_top1_before = _text_to_anchor_top1(model, synonyms, anchors)
        losses = _align_text(model, synonyms, anchors)
        val_top1_after = _text_to_anchor_top1(model, synonyms, anchors)
        with torch.no_grad():
            model.logit_scale.fill_(math.log(RECIPE["final_logit_scale"]))
        state = {
            k: v.detach().contiguous()
            for k, v in model.state_dict().items()
            if k.startswith(TRAINED_PREFIXES)
        }
        record = {
            "recipe": RECIPE,
            "recipe_hash": recipe_hash(),
            "build_seconds": round(time.perf_counter() - started, 1),
            "final_train_loss": round(losses[-1], 4),
            "val_text_to_class_top1_before": round(val_top1_before, 4),
            "val_text_to_class_top1_after": round(val_top1_after, 4),
        }
        write_build(target, state, record)
        print(
            f"mini-clip built in {record['build_seconds']} s: held-out-template text->class "
            f"top-1 over 1000 ImageNet classes {val_top1_before:.3f} -> {val_top1_after:.3f}",
            file=sys.stderr,
        )
        return target


def _align_text(model: TwoTowerClip, synonyms: list[list[str]], anchors: torch.Tensor) -> list[float]:
    for p in model.parameters():
        p.requires_grad_(False)
    tower = [p for p in model.text_tower.parameters()]
    heads = [model.text_projection.weight, model.logit_scale]
    for p in tower + heads:
        p.requires_grad_(True)
    run = Optimization(
        [
            {"params": tower, "lr": RECIPE["lr_text_tower"]},
            {"params": heads, "lr": RECIPE["lr_projection"]},
        ],
        steps=RECIPE["steps"], schedule="cosine", grad_clip=1.0, weight_decay=RECIPE["weight_decay"],
    )
    generator = torch.Generator().manual_seed(RECIPE["seed"])
    templates = RECIPE["train_templates"]
    anchors_n = F.normalize(anchors, dim=-1)
    model.text_tower.train()
    losses: list[float] = []
    for step in run.steps(desc="building mini-clip (LiT text alignment)", inner=False):
        classes = torch.randint(0, len(synonyms), (RECIPE["batch_size"],), generator=generator)
        texts = []
        for c in classes.tolist():
            names = synonyms[c]
            name = names[int(torch.randint(0, len(names), (1,), generator=generator))]
            template = templates[int(torch.randint(0, len(templates), (1,), generator=generator))]
            texts.append(template.format(name))
        text = F.normalize(model.encode_text(model.tokenize(texts)), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * text @ anchors_n.T
        losses.append(run.update(F.cross_entropy(logits, classes), step))
        run.bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return losses


@torch.no_grad()
def _text_to_anchor_top1(model: TwoTowerClip, synonyms: list[list[str]], anchors: torch.Tensor) -> float:
    """Held-out templates, first synonym: does the text land nearest its own class anchor?"""
    model.eval()
    anchors_n = F.normalize(anchors, dim=-1)
    correct = total = 0
    for template in RECIPE["val_templates"]:
        texts = [template.format(names[0]) for names in synonyms]
        for start in range(0, len(texts), 250):
            chunk = texts[start : start + 250]
            text = F.normalize(model.encode_text(model.tokenize(chunk)), dim=-1)
            predicted = (text @ anchors_n.T).argmax(-1)
            correct += int((predicted == torch.arange(start, start + len(chunk))).sum())
            total += len(chunk)
    return correct / total


build_mini_clip.summary = "small CLIP by LiT: EfficientNet-Lite0 (ImageNet) + MiniLM, ~6 min on 2 cores"
