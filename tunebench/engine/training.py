"""The training engine every task and every build calls.

How a step updates weights is written here, once: AdamW over the caller's optimizer
groups (constructed nowhere else), a warm-up + cosine schedule (or one-cycle), gradient
clipping, the non-finite guard (each loss before its update, the parameters after the
last step), autocast, seeding, and the shuffled-batch sampler. A caller writes only
what differs between loops — what a batch is and what the loss is::

    run = Optimization.for_run(adapter.optimizer_groups(), config.train)
    batches = ShuffledBatches(len(labels), config.train.batch_size, seed)
    for step in run.steps(desc=label, model=adapter):
        index = batches.next()
        run.update(loss_of(index), step)

Quality checkpoints (``engine/checkpoints.py``) are a feature of the same loop: pass
``checkpoints=`` to ``steps`` and the loop scores the model at 0, 1/8, 1/4, 1/2 and all
of the steps with the train clock paused.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext

import numpy as np
import torch

from tunebench.config import TrainConfig
from tunebench.engine.checkpoints import Checkpoints
from tunebench.engine.measure import synchronize
from tunebench.engine.progress import progress
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


def cosine(step: int, *, total: int) -> float:
    """Cosine decay from the first step. The same curve as ``warmup_cosine`` with no
    warm-up, but its float operations round differently at some steps, and mini-clip's
    built weights (made with this form) must not move."""
    return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


SCHEDULES = ("warmup-cosine", "cosine", "one-cycle")


class Optimization:
    """AdamW over ``groups`` with its schedule, stepped ``steps`` times.

    ``groups``: optimizer groups (dicts with ``params`` and their own ``lr`` /
    ``weight_decay``) or a plain iterable of parameters; ``defaults`` are AdamW's
    keyword arguments for what the groups leave out. Schedules: ``warmup-cosine``
    (linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``),
    ``cosine`` (no warm-up, see ``cosine``) or ``one-cycle`` (torch's OneCycleLR
    peaking at ``defaults["lr"]``).
    """

    def __init__(self, groups: Iterable, *, steps: int, warmup: int = 0, grad_clip: float = 0.0,
                 schedule: str = "warmup-cosine", **defaults) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, not {schedule!r}")
        groups = list(groups)
        grouped = bool(groups) and isinstance(groups[0], dict)
        self.params = [p for g in groups for p in g["params"]] if grouped else groups
        self.optimizer = torch.optim.AdamW(groups, **defaults)
        if schedule == "one-cycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=defaults["lr"], total_steps=steps)
        elif schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: cosine(s, total=steps))
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda s: warmup_cosine(s, warmup=warmup, total=steps))
        self.total, self.grad_clip = steps, grad_clip
        self.loss = float("nan")  # the last step's
        self.bar = None
        self.step_times: list[float] = []  # seconds of each step's loop body, device synchronised

    @classmethod
    def for_run(cls, groups: Iterable, config: TrainConfig) -> Optimization:
        """A cell's optimisation: the sweep's steps, clipping and warm-up (at most half the steps)."""
        return cls(groups, steps=config.steps, warmup=min(config.warmup_steps, config.steps // 2),
                   grad_clip=config.grad_clip)

    def steps(self, *, desc: str, model: torch.nn.Module | None = None, inner: bool = True,
              checkpoints: Checkpoints | None = None, **bar) -> Iterator[int]:
        """Step numbers under a progress bar (``self.bar``); after the last one, the
        parameters are checked (``check_finite_parameters``). ``model`` is put in train
        mode first and in eval mode at the end. ``checkpoints``: scored before the steps
        they name (after that many updates) and after the last, outside the step timing
        and with the train clock paused; ``model`` goes back to train mode after each."""
        if model is not None:
            model.train()
        at = checkpoints.steps(self.total) if checkpoints is not None else frozenset()
        self.bar = progress(range(self.total), desc=desc, unit="step", inner=inner, **bar)
        device = self.params[0].device if self.params else torch.device("cpu")
        self.step_times = []
        for step in self.bar:
            if step in at:
                checkpoints.run(step)
                if model is not None:
                    model.train()
            # Each step's body (batch, forward, backward, update) is timed from here to the
            # caller's next request, the device synchronised at both ends: per-step
            # numbers for the cost-scaling study, without changing what a step does.
            synchronize(device)
            started = time.perf_counter()
            yield step
            synchronize(device)
            self.step_times.append(time.perf_counter() - started)
        check_finite_parameters(self.params, steps=self.total)
        if self.total in at:  # the end: scored once the weights are known to be finite
            checkpoints.run(self.total)
        if model is not None:
            model.eval()

    @property
    def median_step_seconds(self) -> float | None:
        """Median seconds per step, the first step left out when there are others (it pays
        one-off costs: allocations, kernel selection); None before any step ran."""
        steady = self.step_times[1:] or self.step_times
        return statistics.median(steady) if steady else None

    def update(self, loss: torch.Tensor, step: int) -> float:
        """One update from ``loss`` (refused when non-finite), clipped; returns the loss."""
        self.loss = optimizer_step(loss, self.optimizer, self.scheduler, self.params,
                                   grad_clip=self.grad_clip, step=step)
        return self.loss


class ShuffledBatches:
    """Batches of indices into ``count`` items, drawn in epochs reshuffled by a generator
    seeded with ``seed``; an epoch's last partial batch is skipped. ``batch`` is capped at
    ``count``."""

    def __init__(self, count: int, batch: int, seed: int) -> None:
        self.count = count
        self.batch = min(batch, count)
        self.generator = torch.Generator().manual_seed(seed)
        self.order, self.cursor = torch.randperm(count, generator=self.generator), 0

    def next(self) -> torch.Tensor:
        if self.cursor + self.batch > len(self.order):  # a new epoch: reshuffle
            self.order, self.cursor = torch.randperm(self.count, generator=self.generator), 0
        index = self.order[self.cursor : self.cursor + self.batch]
        self.cursor += self.batch
        return index
