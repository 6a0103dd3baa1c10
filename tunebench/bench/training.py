"""The one training loop every method runs: AdamW, warm-up + cosine, clipping, seeds."""

from __future__ import annotations

import math
import random
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tunebench.bench.config import TrainConfig
from tunebench.bench.progress import progress
from tunebench.errors import ConfigError, TunebenchError


class NonFiniteLoss(TunebenchError):
    """Training diverged; the run is recorded as failed with this message."""


class NonFiniteLogits(TunebenchError):
    """Evaluation scored with NaN or infinite logits; the run is recorded as failed."""


def check_finite_parameters(params, *, steps: int) -> None:
    """After the last step: ``optimizer_step`` checks each loss before its update, so an
    update that leaves NaN or infinite weights is seen only by the next step's loss,
    which the last step never gets. Without this, such a run would be stored as ok."""
    for parameter in params:
        if not bool(torch.isfinite(parameter.detach()).all()):
            raise NonFiniteLoss(f"trainable parameters became non-finite at step {steps - 1} (the last): "
                                "lower this method's lr in method_config")


def check_finite_logits(values: torch.Tensor, what: str = "logits") -> None:
    """A NaN logit makes argmax pick an arbitrary class: fail the cell instead of scoring it."""
    if not bool(torch.isfinite(values).all()):
        raise NonFiniteLogits(f"evaluation produced non-finite {what}: the tuned model diverged; "
                              "lower this method's lr in method_config")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """The device train.device names (TrainConfig has checked its form); a ConfigError
    when it names a GPU this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device {name!r} asked for but no CUDA GPU is visible; use auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device {name!r} asked for but this machine has "
                          f"{torch.cuda.device_count()} GPU(s): use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return device


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on CUDA by default; fp32 on CPU (CPU bf16 is slower there)."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def warmup_cosine(step: int, *, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress_fraction = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_fraction)))


@dataclass
class TrainOutcome:
    steps: int
    images_seen: int
    final_loss: float


def optimizer_step(loss, optimizer, scheduler, params, *, grad_clip: float, step: int) -> float:
    """One update from ``loss``: refuse a non-finite loss, clip, step; returns the loss."""
    if not torch.isfinite(loss):
        raise NonFiniteLoss(
            f"loss became {loss.item()} at step {step}: lower this method's lr in method_config"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    scheduler.step()
    return loss.item()


def train_classifier(
    adapter,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    pixels: bool,
    config: TrainConfig,
    seed: int,
    device: torch.device,
    label: str = "training",
) -> TrainOutcome:
    """Cross-entropy training of ``adapter`` on ``inputs`` (pixels or cached features)."""
    groups = adapter.optimizer_groups()
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: warmup_cosine(s, warmup=min(config.warmup_steps, config.steps // 2), total=config.steps),
    )
    generator = torch.Generator().manual_seed(seed)
    batch = min(config.batch_size, len(labels))
    order = torch.randperm(len(labels), generator=generator)
    cursor = 0
    adapter.train()
    loss_value = float("nan")
    for step in progress(range(config.steps), desc=label, unit="step", inner=True):
        if cursor + batch > len(order):  # a new epoch: reshuffle
            order, cursor = torch.randperm(len(labels), generator=generator), 0
        index = order[cursor : cursor + batch]
        cursor += batch
        x = inputs[index].to(device, non_blocking=True)
        y = labels[index].to(device, non_blocking=True)
        with autocast_for(device, config.precision):
            logits = adapter(x, pixels=pixels)
        loss = F.cross_entropy(logits.float(), y)
        loss_value = optimizer_step(loss, optimizer, scheduler, params, grad_clip=config.grad_clip, step=step)
    check_finite_parameters(params, steps=config.steps)
    adapter.eval()
    return TrainOutcome(steps=config.steps, images_seen=config.steps * batch, final_loss=loss_value)
