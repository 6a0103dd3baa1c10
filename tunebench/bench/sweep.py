"""Sweep files: tasks × datasets × methods × shots × seeds, validated before anything runs.

Example (see bench.yaml for the default)::

    task: fewshot-cls
    backbone: mini-clip
    datasets: [fashion-mnist, animal-mnist]
    methods: [zero-shot, cones, coop]
    shots: [1, 4, 16]
    seeds: [1, 2, 3]
    train: {steps: 100, batch_size: 16}
    method_config:
      coop: {n_ctx: 4}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from tunebench.bench.config import RunConfig, TrainConfig, build_dataclass, method_config
from tunebench.bench.runner import backbone_version
from tunebench.errors import ConfigError
from tunebench.registry import METHODS


@dataclass(frozen=True)
class SweepConfig:
    datasets: list
    methods: list
    shots: list
    seeds: list
    task: str = "fewshot-cls"
    backbone: str = "mini-clip"
    pretrained: str | None = None
    train: dict = field(default_factory=dict)
    method_config: dict = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        for name in ("datasets", "methods", "shots", "seeds"):
            value = getattr(self, name)
            if not isinstance(value, list) or not value:
                raise ConfigError(f"'{name}' must be a non-empty list, got {value!r}")
        if not all(isinstance(s, int) and s >= 1 for s in self.shots):
            raise ConfigError(f"'shots' must be positive integers, got {self.shots}")
        if not all(isinstance(s, int) for s in self.seeds):
            raise ConfigError(f"'seeds' must be integers, got {self.seeds}")
        stray = sorted(set(self.method_config) - set(self.methods))
        if stray:
            raise ConfigError(f"method_config names methods not in 'methods': {stray}")


def load_sweep(path: Path) -> SweepConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"sweep file not found: {path}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}: fix the syntax") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of settings (see bench.yaml)")
    missing = [f.name for f in fields(SweepConfig) if f.name in ("datasets", "methods", "shots", "seeds") and f.name not in raw]
    if missing:
        raise ConfigError(f"{path} lacks {missing}; see bench.yaml for a complete example")
    return build_dataclass(SweepConfig, raw, str(path))


def expand(sweep: SweepConfig) -> list[RunConfig]:
    """All cells, in a stable order. Methods that use no training data run once per dataset."""
    train = build_dataclass(TrainConfig, sweep.train, "train")
    version = backbone_version(sweep.backbone, sweep.pretrained)
    cells = []
    for method in sweep.methods:
        method_cls = METHODS.get(method)
        # Resolved settings, defaults included: changing a default makes new cells.
        settings = dataclasses.asdict(
            method_config(method_cls, sweep.method_config.get(method), f"method_config.{method}")
        )
        grid = [(s, seed) for s in sweep.shots for seed in sweep.seeds] if method_cls.trains else [(0, 0)]
        for dataset in sweep.datasets:
            for shots, seed in grid:
                cells.append(RunConfig(
                    task=sweep.task, dataset=dataset, method=method, backbone=sweep.backbone,
                    shots=shots, seed=seed, train=train, method_config=dict(settings),
                    pretrained=sweep.pretrained, backbone_version=version,
                ))
    return cells
