"""Run and training configs: frozen, validated, hashed.

A run is fully described by a ``RunConfig``; the hash of its canonical JSON names the
result file, so a finished cell is recognised on rerun and a changed setting makes a
new cell instead of overwriting an old one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any

from tunebench.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    """Settings shared by every method in a sweep (the loop, not the method)."""

    steps: int = field(default=100, metadata={"help": "optimizer steps per run"})
    batch_size: int = field(default=16, metadata={"help": "images per step (capped at the train-set size)"})
    warmup_steps: int = field(default=10, metadata={"help": "linear warm-up before the cosine decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0 = off)"})
    image_size: int = field(default=64, metadata={"help": "pixels per side fed to the image tower"})
    test_per_class: int | None = field(default=100, metadata={"help": "fixed test images per class (null = all)"})
    eval_batch_size: int = field(default=256, metadata={"help": "images per batch when evaluating"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 autocast on CUDA) | fp32 | bf16"})
    save_artifacts: bool = field(default=True, metadata={"help": "save each run's trained tensors"})

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "image_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.grad_clip < 0:
            raise ConfigError("train.warmup_steps and train.grad_clip must be >= 0")
        if self.test_per_class is not None and self.test_per_class < 1:
            raise ConfigError("train.test_per_class must be >= 1 or null")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"train.precision must be auto, fp32 or bf16, got {self.precision!r}")


_ADDED_LATER = ("task_config",)


@dataclass(frozen=True)
class RunConfig:
    """One cell of a sweep."""

    task: str
    dataset: str
    method: str
    backbone: str
    shots: int
    seed: int
    train: TrainConfig = field(default_factory=TrainConfig)
    method_config: dict = field(default_factory=dict)
    pretrained: str | None = None
    # Changes whenever the backbone's weights recipe changes (set by the builder).
    backbone_version: str | None = None
    # The task's own settings, resolved with their defaults (empty for tasks without any).
    task_config: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def config_hash(self) -> str:
        identity = self.to_dict()
        # Fields added after results were stored are left out while unset, so that
        # those results keep their hashes and are not rerun for nothing.
        for name in _ADDED_LATER:
            if not identity[name]:
                del identity[name]
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        return f"{self.method} on {self.dataset}, {self.shots}-shot, seed {self.seed}"


def build_dataclass(cls, values: dict | None, where: str):
    """Instantiate a config dataclass from a dict, naming unknown and invalid fields."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping of settings, got {type(values).__name__}")
    values = dict(values)
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown} in {where}; valid: {', '.join(valid)}")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def method_config(method_cls, values: dict | None, where: str):
    return build_dataclass(method_cls.config_class, values, where)


def task_config(task_cls, values: dict | None, where: str = "task_config") -> dict:
    """A task's settings with defaults filled in ({} for tasks that have none)."""
    config_class = getattr(task_cls, "config_class", None)
    if config_class is None:
        if values:
            raise ConfigError(f"{where}: task {task_cls.__name__} takes no settings")
        return {}
    return dataclasses.asdict(build_dataclass(config_class, values, where))
