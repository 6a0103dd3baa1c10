"""Build ``mini-t2i``: class-balanced denoising training of a small pixel-space UNet on
mini-clip's frozen text tower (described in ``tunebench/models/mini_t2i.py``, which
holds the recipe and loads the result), then a self-check of what it built."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tunebench.builds.base import build_lock
from tunebench.datasets import load_dataset
from tunebench.engine.grids import png_grid
from tunebench.engine.training import Optimization
from tunebench.models.judge import load_judge
from tunebench.models.mini_t2i import RECIPE, built_dir, recipe_hash
from tunebench.models.t2i import TextToImageModel, save_pipeline_folder
from tunebench.models.t2i_backbones import PIXEL_SETTINGS, make_unet, masked_text_encoder
from tunebench.registry import BACKBONES, BUILDS

# The self-check after training: 8 samples per class name, DDIM 25 steps, judged at each
# guidance scale. Measured on the first build: the judge recognised 65 / 74 / 27% of the
# seen classes' samples at guidance 1 / 2 / 3 (3 over-saturates this small model), hence
# the generation task's default of 2; the grid is drawn at GRID_GUIDANCE.
CHECK = {"template": "a photo of a {}.", "samples_per_class": 8, "steps": 25, "guidances": [1.0, 2.0, 3.0]}
GRID_GUIDANCE = 2.0


def seen_classes(recipe: dict) -> list[tuple[str, str, np.ndarray]]:
    """(source, classname, uint8 training images) of every class the model may see."""
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
    run = Optimization(params, steps=recipe["steps"], warmup=recipe["warmup_steps"], grad_clip=recipe["grad_clip"],
                       lr=recipe["lr"], weight_decay=0.0)
    generator = torch.Generator().manual_seed(recipe["seed"])
    batch = recipe["batch_size"]
    losses: list[float] = []
    for step in run.steps(desc=desc, inner=False):
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
        losses.append(run.update(F.mse_loss(prediction, model.training_target(scheduler, x0, noise, t)), step))
        decay = min(recipe["ema_decay"], (1 + step) / (10 + step))  # short warm-up of the average
        with torch.no_grad():
            for e, p in zip(ema, params, strict=True):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        if step % 50 == 0:
            run.bar.set_postfix(loss=f"{np.mean(losses[-200:]):.4f}")
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
        tokenizer=text_backbone.tokenizer,
        text_encoder=masked_text_encoder(text_backbone.text_tower.eval().requires_grad_(False)),
        unet=make_unet("small", 384), scheduler_config=recipe["scheduler"], settings=PIXEL_SETTINGS,
        content_id="mini-t2i-untrained",
    )


def build(recipe: dict, target: Path, force: bool = False) -> Path:
    with build_lock(target.parent / f".{target.name}.lock"):
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
