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
loaded by the same code as any ``diffusers:PATH``. The build also checks itself
(``CHECK``, not part of the recipe hash since it changes no weight): the fidelity judge
names the class of samples drawn for every seen class at a few guidance scales, and
the grid at the generation task's default guidance is saved as ``samples.png``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tunebench.bench.grids import png_grid
from tunebench.bench.progress import progress
from tunebench.bench.training import warmup_cosine
from tunebench.errors import ConfigError
from tunebench.models import mini_clip
from tunebench.models.checkpoints import file_digest
from tunebench.models.t2i import TextToImageModel, load_pipeline_folder, save_pipeline_folder
from tunebench.models.t2i_backbones import PIXEL_SETTINGS, SCHEDULER, make_unet, unet_config
from tunebench.paths import tunebench_cache_dir
from tunebench.registry import BACKBONES, BUILDS

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
# The self-check after training: 8 samples per class name, DDIM 25 steps, judged at each
# guidance scale. Measured on the first build: the judge recognised 65 / 74 / 27% of the
# seen classes' samples at guidance 1 / 2 / 3 (3 over-saturates this small model), hence
# the generation task's default of 2; the grid is drawn at GRID_GUIDANCE.
CHECK = {"template": "a photo of a {}.", "samples_per_class": 8, "steps": 25, "guidances": [1.0, 2.0, 3.0]}
GRID_GUIDANCE = 2.0


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


def seen_classes(recipe: dict) -> list[tuple[str, str, np.ndarray]]:
    """(source, classname, uint8 training images) of every class the model may see."""
    from tunebench.datasets import load_dataset

    out = []
    for source in sorted(recipe["held_out"]):
        data = load_dataset(source)
        for label, name in enumerate(data.classnames):
            if name not in recipe["held_out"][source]:
                out.append((source, name, data.train.load(np.flatnonzero(data.train.labels == label))))
    return out


@torch.no_grad()
def _caption_states(model: TextToImageModel, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen text tower over every distinct caption, once."""
    tokens = model.tokenize(captions)
    return model.encode_prompt_tokens(tokens), model.encoder_mask(tokens)


def train_unet(model: TextToImageModel, recipe: dict, classes, *, desc: str) -> dict:
    """Class-balanced denoising training with caption dropout; leaves the EMA weights in."""
    templates = recipe["templates"]
    captions = [t.format(name) for _, name, _ in classes for t in templates] + [""]
    states, masks = _caption_states(model, captions)
    null = len(captions) - 1
    scheduler = model.noise_scheduler()
    unet = model.unet.train().requires_grad_(True)
    params = list(unet.parameters())
    ema = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=recipe["lr"], weight_decay=0.0)
    steps = recipe["steps"]
    lr_lambda = lambda s: warmup_cosine(s, warmup=recipe["warmup_steps"], total=steps)  # noqa: E731
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    generator = torch.Generator().manual_seed(recipe["seed"])
    batch = recipe["batch_size"]
    losses: list[float] = []
    bar = progress(range(steps), desc=desc, unit="step")
    for step in bar:
        cls = torch.randint(0, len(classes), (batch,), generator=generator).tolist()
        images = np.stack([classes[c][2][int(torch.randint(0, len(classes[c][2]), (1,), generator=generator))]
                           for c in cls])
        caption = [c * len(templates) + int(torch.randint(0, len(templates), (1,), generator=generator))
                   for c in cls]
        drop = torch.rand(batch, generator=generator) < recipe["caption_dropout"]
        index = torch.where(drop, torch.tensor(null), torch.tensor(caption))
        x0 = model.preprocess(images)
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
        prediction = model.denoise(scheduler.add_noise(x0, noise, t), t, states[index], masks[index])
        loss = F.mse_loss(prediction, model.training_target(scheduler, x0, noise, t))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe["grad_clip"])
        optimizer.step()
        lr_schedule.step()
        decay = min(recipe["ema_decay"], (1 + step) / (10 + step))  # short warm-up of the average
        with torch.no_grad():
            for e, p in zip(ema, params, strict=True):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-200:]):.4f}")
    with torch.no_grad():
        for e, p in zip(ema, params, strict=True):
            p.copy_(e)
    unet.eval().requires_grad_(False)
    return {"final_loss_mean_last_200": round(float(np.mean(losses[-200:])), 5),
            "loss_curve_every_500": [round(float(np.mean(losses[i : i + 50])), 5)
                                     for i in range(0, len(losses), 500)]}


@torch.no_grad()
def check_samples(model: TextToImageModel, names: list[tuple[str, str]], *, guidance: float,
                  check: dict = CHECK, judge: str = "mnist20") -> tuple[dict, bytes]:
    """Samples per class name; the judge's verdict per class, and the grid (one row a class)."""
    from tunebench.models.judge import load_judge

    judge = load_judge(judge)
    n = check["samples_per_class"]
    tokens = model.tokenize([check["template"].format(name) for _, name in names for _ in range(n)])
    states = model.encode_prompt_tokens(tokens)
    null_tokens = model.tokenize([""])
    pixels = model.sample(states, model.encoder_mask(tokens),
                          null_states=model.encode_prompt_tokens(null_tokens),
                          null_mask=model.encoder_mask(null_tokens),
                          seeds=list(range(n)) * len(names), steps=check["steps"], guidance=guidance)
    images = model.to_uint8(pixels)
    predicted = judge.classify(images).reshape(len(names), n)
    verdict = {f"{source}/{name}": round(float((predicted[i] == judge.label(source, name)).mean()), 3)
               for i, (source, name) in enumerate(names)}
    return verdict, png_grid([images[i * n : (i + 1) * n] for i in range(len(names))])


def make_untrained(recipe: dict) -> TextToImageModel:
    text_backbone = BACKBONES.get("mini-clip")(None)
    torch.manual_seed(recipe["seed"])
    return TextToImageModel(
        tokenizer=text_backbone.tokenizer, text_encoder=text_backbone.text_tower.eval().requires_grad_(False),
        unet=make_unet("small", 384), scheduler_config=recipe["scheduler"], settings=PIXEL_SETTINGS,
        content_id="mini-t2i-untrained",
    )


def build(recipe: dict, target: Path, force: bool = False) -> Path:
    with mini_clip._build_lock(target.parent / f".{target.name}.lock"):
        if (target / "unet").is_dir() and not force:
            return target
        started = time.perf_counter()
        model = make_untrained(recipe)
        classes = seen_classes(recipe)
        summary = train_unet(model, recipe, classes, desc="building mini-t2i (denoiser)")
        train_seconds = time.perf_counter() - started
        seen = [(source, name) for source, name, _ in classes]
        held = [(source, name) for source in sorted(recipe["held_out"]) for name in recipe["held_out"][source]]
        record = {
            "recipe": recipe, "recipe_hash": recipe_hash(recipe),
            "train_seconds": round(train_seconds, 1),
            "torch_threads": torch.get_num_threads(),
            **summary,
        }
        grid = self_check(model, seen, held, record)
        record["build_seconds"] = round(time.perf_counter() - started, 1)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        save_pipeline_folder(model, staging)
        (staging / "samples.png").write_bytes(grid)
        (staging / "recipe.json").write_text(json.dumps(record, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)  # a crash never leaves half a model
        seen_mean = record["check"]["judge_accuracy_seen_mean"][str(GRID_GUIDANCE)]
        print(f"mini-t2i built in {record['build_seconds']} s; at guidance {GRID_GUIDANCE} the judge "
              f"recognises {100 * seen_mean:.0f}% of its samples of seen classes "
              f"(grid: {target / 'samples.png'})", file=sys.stderr)
        return target


def self_check(model: TextToImageModel, seen, held, record: dict, *, judge: str = "mnist20") -> bytes:
    """Judge the samples of every class name at each guidance; record it, return the grid."""
    check = {**CHECK, "judge_accuracy_seen_mean": {}, "judge_accuracy": {},
             "grid": f"samples.png: guidance {GRID_GUIDANCE}, one row per class name, seen classes "
                     "then held-out names (never trained on)"}
    grid = b""
    seen_keys = [f"{s}/{n}" for s, n in seen]
    for guidance in CHECK["guidances"]:
        verdict, picture = check_samples(model, seen + held, guidance=guidance, judge=judge)
        check["judge_accuracy_seen_mean"][str(guidance)] = round(float(np.mean([verdict[k] for k in seen_keys])), 4)
        check["judge_accuracy"][str(guidance)] = verdict
        if guidance == GRID_GUIDANCE:
            grid = picture
    record["check"] = check
    return grid


@BUILDS.register("mini-t2i")
def build_mini_t2i(force: bool = False) -> Path:
    return build(RECIPE, built_dir(), force=force)


build_mini_t2i.summary = ("pixel-space text-to-image UNet on mini-clip's text tower, Fashion/Animal-MNIST "
                          "minus held-out concepts; ~30 min on one core")
