"""``mini-t2i``: the embedded default text-to-image model, trained offline by the harness.

No diffusion weights exist on these machines, so ``tunebench build mini-t2i`` makes one:
a small diffusers ``UNet2DConditionModel`` in pixel space (28 px images padded to
32, one channel), denoising with cross-attention on the token states (last hidden
states, before pooling) of mini-clip's text tower, which stays frozen. Training data:
captioned Fashion-MNIST and Animal-MNIST training images, class-balanced, with the
held-out concept classes (giraffe, zebra, ankle boot) entirely absent, so that those
are new concepts for the tuning methods. Captions come from a few templates and are
dropped 10% of the time (classifier-free guidance). Weights are an EMA of the run.

The result is a pipeline folder (``tokenizer/``, ``text_encoder/``, ``unet/``,
``scheduler/``) cached with its recipe under ``models/mini-t2i-<recipe hash>/`` and
loaded by the same code as any ``diffusers:PATH``. The training job,
``tunebench/builds/mini_t2i.py``, also checks what it built (``CHECK`` there, not part
of the recipe hash since it changes no weight): the fidelity judge names the class of
samples drawn for every seen class at a few guidance scales, and the grid at the
generation task's default guidance is saved as ``samples.png``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from tunebench.errors import ConfigError
from tunebench.models import mini_clip
from tunebench.models.checkpoints import file_digest
from tunebench.models.t2i import TextToImageModel, load_pipeline_folder
from tunebench.models.t2i_backbones import (
    PIXEL_SETTINGS,
    SCHEDULER,
    masked_text_encoder,
    unet_config,
)
from tunebench.paths import tunebench_cache_dir
from tunebench.registry import BACKBONES

HELD_OUT = {"animal-mnist": ["giraffe", "zebra"], "fashion-mnist": ["ankle boot"]}
RECIPE = {
    "version": 1,
    "text_tower": "mini-clip's text tower (all-MiniLM-L6-v2 aligned by LiT), frozen; "
                  "conditioning = its last hidden states",
    "mini_clip_recipe": mini_clip.recipe_hash(),
    "unet": unet_config("small", 384),
    "scheduler": SCHEDULER,
    "settings": asdict(PIXEL_SETTINGS),
    "held_out": HELD_OUT,
    "templates": ["a photo of a {}.", "a picture of a {}.", "a {}.", "an image of a {}.",
                  "a black and white photo of a {}.", "a small photo of a {}."],
    "caption_dropout": 0.1,
    "steps": 4000,
    "batch_size": 32,
    "lr": 1e-3,
    "warmup_steps": 200,
    "grad_clip": 1.0,
    "ema_decay": 0.999,
    "seed": 0,
}
def recipe_hash(recipe: dict = RECIPE) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def built_dir() -> Path:
    return tunebench_cache_dir() / "models" / f"mini-t2i-{recipe_hash()}"


def is_built() -> bool:
    return (built_dir() / "unet").is_dir()


@BACKBONES.register("mini-t2i")
def build_mini_t2i_backbone(argument: str | None = None, *, pretrained: str | None = None) -> TextToImageModel:
    """The built mini-t2i (``pretrained`` = a built folder, else the cache)."""
    folder = Path(pretrained).expanduser() if pretrained else built_dir()
    if not (folder / "unet").is_dir():
        raise ConfigError(f"mini-t2i is not built in {folder}: run `tunebench build mini-t2i` "
                          "(~30 min on one core, once per machine)")
    model = load_pipeline_folder(folder, content_id="pending")
    # Builds made before the flag was written into text_encoder/config.json lack it; every
    # build was trained with the padding mask, so it is declared here whatever the file says.
    masked_text_encoder(model.text_encoder)
    model.content_id = f"mini-t2i-{file_digest(folder / 'unet' / 'diffusion_pytorch_model.safetensors')}"
    return model


def require_built(config) -> None:
    """Fail a sweep before it starts when its cells need a mini-t2i that is not built."""
    folder = Path(config.pretrained).expanduser() if config.pretrained else built_dir()
    if not (folder / "unet").is_dir():
        build_mini_t2i_backbone(pretrained=config.pretrained)  # raises the one-line error


# Part of every run's config hash: results made with another recipe are other cells.
build_mini_t2i_backbone.version = f"recipe-{recipe_hash()}"
build_mini_t2i_backbone.check = require_built
build_mini_t2i_backbone.text_to_image = True
