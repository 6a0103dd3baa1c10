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

A method may name a variant after a colon (``lit:bitfit`` is ``lit`` with
``preset: bitfit``); its settings are those of ``method_config.lit`` overlaid with
those of ``method_config["lit:bitfit"]``. ``backbone`` may be a list: every cell
then runs on each backbone (the model-size axis).

A ``selection:`` block chooses every trained method's lr on validation data instead of
taking it from ``method_config`` (see ``SelectionSpec`` and ``bench/selection.py``)::

    selection:
      lr_factors: [0.316, 1, 3.16, 10]   # × each method's own default lr
      rule: max                          # highest validation score; a tie goes to the smaller lr
      pilot: {shots: 16, seed: 1}        # the cell each choice is made at (default: largest shots, first seed);
                                         # add dataset: NAME for one choice per method, made there, used everywhere

A ``chain:`` block adds ConES-then-fine-tuning cells at equal total steps (see
``ChainSpec`` and ``bench/chain.py``)::

    chain:
      source: cones          # each chained cell starts from a run of this method ...
      source_steps: 50       # ... of 50 steps, and trains train.steps - 50 itself
      methods: [lit, full-ft]

``datasets``, ``backbone``, ``pretrained`` and ``selection.pilot.dataset`` may name
environment variables as ``${NAME}``, so that one recipe serves every machine
(``bench-coop-vitb16.yaml`` reads ``${CLIP}`` and ``${DATA}``); the cells store the
expanded paths.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from tunebench.bench.runner import backbone_version
from tunebench.config import (
    SEED_LIMIT,
    RunConfig,
    TrainConfig,
    build_dataclass,
    is_integer,
    is_seed,
    load_settings_yaml,
    method_config,
    task_config,
    typed_value,
)
from tunebench.errors import ConfigError
from tunebench.methods.base import merge_variant
from tunebench.registry import TASKS

SELECTION_RULES = ("max",)  # max: the highest validation score; a tie goes to the smaller lr


@dataclass(frozen=True)
class SelectionSpec:
    """How a sweep chooses each trained method's lr: the same grid, rule and pilot cell
    for every method, scored on the task's validation split (never on test data)."""

    lr_factors: list = field(default_factory=lambda: [0.316, 1, 3.16, 10], metadata={
        "help": "the grid, as multiples of each method's own default lr (its config class)"})
    rule: str = field(default="max", metadata={"help": "max: highest validation score, a tie to the smaller lr"})
    pilot: dict = field(default_factory=dict, metadata={
        "help": "{shots, seed} of the one cell per dataset x method where the choice is made "
                "(default: the sweep's largest shots, its first seed); with dataset, one cell per "
                "method on that dataset, whose choice every dataset uses"})

    def __post_init__(self) -> None:
        if not self.lr_factors:
            raise ConfigError("selection.lr_factors is empty: give the grid, e.g. [0.316, 1, 3.16, 10]")
        factors = [typed_value(f, float, "selection.lr_factors") for f in self.lr_factors]
        if any(f <= 0 for f in factors):
            raise ConfigError(f"selection.lr_factors must all be > 0 (multiples of the default lr), got {factors}")
        if len(set(factors)) < len(factors):
            raise ConfigError(f"selection.lr_factors repeats a value: {factors}")
        object.__setattr__(self, "lr_factors", sorted(factors))
        if self.rule not in SELECTION_RULES:
            raise ConfigError(f"selection.rule must be one of {', '.join(SELECTION_RULES)}, got {self.rule!r}")
        unknown = sorted(set(self.pilot) - {"shots", "seed", "dataset"})
        if unknown:
            raise ConfigError(f"selection.pilot takes shots, seed and dataset, not {unknown}")
        if "shots" in self.pilot and not (is_integer(self.pilot["shots"]) and self.pilot["shots"] >= 1):
            raise ConfigError(f"selection.pilot.shots must be a whole number >= 1, got {self.pilot['shots']!r}")


@dataclass(frozen=True)
class ChainSpec:
    """ConES then fine-tuning, compared at equal total steps (chaining, ``bench/chain.py``).

    For each dataset, shots and seed: a ``source`` cell of ``source_steps`` steps (the
    source's own cell but for its steps), and for each of ``methods`` a cell that starts
    from it (``init_from``: its hash) and trains train.steps − source_steps steps. Every
    one of them also runs alone at train.steps (they must be in the sweep's ``methods``),
    so each row of the comparison has train.steps in all. The chained and source cells
    take the lr chosen for their method alone (the ``selection:`` block, no search of their
    own), and say so in their ``selection``."""

    source: str = field(default="cones", metadata={"help": "the method whose runs the chained cells start from"})
    source_steps: int | None = field(default=None, metadata={
        "help": "the source cells' steps; each chained cell trains train.steps minus these"})
    methods: list = field(default_factory=list, metadata={"help": "the methods that start from the source"})

    def __post_init__(self) -> None:
        if self.source_steps is None or self.source_steps < 1:
            raise ConfigError(f"chain.source_steps must be a whole number >= 1 (the source's steps), "
                              f"got {self.source_steps!r}")
        if not self.methods or not all(isinstance(m, str) and m for m in self.methods):
            raise ConfigError(f"chain.methods must be a non-empty list of method names, got {self.methods!r}")


@dataclass(frozen=True)
class SweepConfig:
    datasets: list
    methods: list
    shots: list
    seeds: list
    task: str = "fewshot-cls"
    backbone: str | list = "mini-clip"
    pretrained: str | None = None
    train: dict = field(default_factory=dict)
    method_config: dict = field(default_factory=dict)
    task_config: dict = field(default_factory=dict)
    description: str = ""
    # The prompt information every method starts from (config.INITS); one for the sweep.
    init: str = "single"
    # How trained methods' lrs are chosen on validation data (SelectionSpec); None: as set.
    selection: dict | None = None
    # Chained cells, compared at equal total steps (ChainSpec); None: no chaining.
    chain: dict | None = None

    def __post_init__(self) -> None:
        for name in ("datasets", "methods", "shots", "seeds"):
            value = getattr(self, name)
            if not isinstance(value, list) or not value:
                raise ConfigError(f"'{name}' must be a non-empty list, got {value!r}")
        for name in ("datasets", "methods"):
            if not all(isinstance(v, str) and v for v in getattr(self, name)):
                raise ConfigError(f"'{name}' must be a list of names, got {getattr(self, name)}")
        if not all(is_integer(s) and s >= 1 for s in self.shots):
            raise ConfigError(f"'shots' must be whole numbers >= 1, got {self.shots}")
        if not all(is_seed(s) for s in self.seeds):
            raise ConfigError(f"'seeds' must be whole numbers from 0 to {SEED_LIMIT - 1} "
                              f"(numpy's seed range), got {self.seeds}")
        named = set(self.methods) | {m.partition(":")[0] for m in self.methods}
        stray = sorted(set(self.method_config) - named)
        if stray:
            raise ConfigError(f"method_config names methods not in 'methods': {stray}")
        if not self.backbones or not all(isinstance(b, str) and b for b in self.backbones):
            raise ConfigError(f"'backbone' must be a name or a non-empty list of names, got {self.backbone!r}")
        if self.selection is not None:
            self.selection_spec  # noqa: B018 -- a bad block stops here, in one line
            for method, values in self.method_config.items():
                if "lr" in (values or {}):
                    raise ConfigError(f"method_config.{method} sets lr, but the selection: block chooses every "
                                      "trained method's lr on validation data: remove the lr (or the block)")
        if self.chain is not None:
            self.chain_spec  # noqa: B018 -- a bad block stops here, in one line

    @property
    def chain_spec(self) -> ChainSpec | None:
        """The ``chain:`` block, checked against the sweep's methods; None without one."""
        if self.chain is None:
            return None
        spec = build_dataclass(ChainSpec, self.chain, "chain")
        alone = [m for m in (spec.source, *spec.methods) if m not in self.methods]
        if alone:
            raise ConfigError(f"chain names {alone}, which 'methods' does not run: each chained method and "
                              "its source also run alone, for the comparison (and their lr is chosen there)")
        return spec

    @property
    def selection_spec(self) -> SelectionSpec | None:
        """The ``selection:`` block with its defaults filled in; None without one."""
        if self.selection is None:
            return None
        spec = build_dataclass(SelectionSpec, self.selection, "selection")
        pilot = {"shots": max(self.shots), "seed": self.seeds[0], **spec.pilot}
        if pilot["shots"] not in self.shots:
            raise ConfigError(f"selection.pilot.shots is {pilot['shots']}, which the sweep does not run: "
                              f"pick one of shots {self.shots}")
        if not is_seed(pilot["seed"]):
            raise ConfigError(f"selection.pilot.seed must be a whole number from 0 to {SEED_LIMIT - 1}, "
                              f"got {pilot['seed']!r}")
        if "dataset" in pilot and pilot["dataset"] not in self.datasets:
            raise ConfigError(f"selection.pilot.dataset is {pilot['dataset']!r}, which the sweep does not run: "
                              f"use one of {', '.join(self.datasets)}")
        return dataclasses.replace(spec, pilot=pilot)

    @property
    def backbones(self) -> list[str]:
        return [self.backbone] if isinstance(self.backbone, str) else list(self.backbone)


def load_sweep(path: Path) -> SweepConfig:
    path = Path(path)
    try:
        raw = load_settings_yaml(path.read_text())
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
    for key in PATH_KEYS:
        if key in raw:
            raw[key] = _with_environment(raw[key], path)
    # The pilot dataset names one of ``datasets``, so it is expanded as they are.
    selection = raw.get("selection")
    pilot = selection.get("pilot") if isinstance(selection, dict) else None
    if isinstance(pilot, dict) and "dataset" in pilot:
        pilot = {**pilot, "dataset": _with_environment(pilot["dataset"], path)}
        raw["selection"] = {**selection, "pilot": pilot}
    return build_dataclass(SweepConfig, raw, path)


# Settings that hold paths, where ${NAME} is read from the environment.
PATH_KEYS = ("datasets", "backbone", "pretrained")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _with_environment(value, path: Path):
    """``value`` (a string or a list of them) with each ${NAME} replaced by its value."""
    if isinstance(value, list):
        return [_with_environment(v, path) for v in value]
    if not isinstance(value, str):
        return value

    def lookup(match: re.Match) -> str:
        name = match.group(1)
        if not os.environ.get(name):
            raise ConfigError(f"{path} uses ${{{name}}}, which is not set: run e.g. "
                              f"{name}=/path/to/it tunebench bench {path}")
        return os.environ[name]

    return _VARIABLE.sub(lookup, value)


# A selection choice is made per backbone, dataset and method (variant).
ChoiceKey = tuple[str, str, str]


def expand(sweep: SweepConfig, choices: dict[ChoiceKey, dict] | None = None) -> list[RunConfig]:
    """All cells, in a stable order. Methods that use no training data run once per dataset.

    With a ``selection:`` block a trained method's cells take their lr from ``choices``
    (``bench/selection.py``: ``chosen`` is the lr, the whole dict the cells'
    ``selection``); cells whose choice is not made yet are left out."""
    train = build_dataclass(TrainConfig, sweep.train, "train")
    task_settings = task_config(TASKS.get(sweep.task), sweep.task_config)
    cells = []
    alone: dict[tuple, RunConfig] = {}  # (backbone, method, dataset, shots, seed) -> cell, for the chain
    for backbone in sweep.backbones:
        version = backbone_version(backbone, sweep.pretrained)
        for method in sweep.methods:
            method_cls, settings = resolved_method_settings(sweep, method)
            grid = [(s, seed) for s in sweep.shots for seed in sweep.seeds] if method_cls.trains else [(0, 0)]
            for dataset in sweep.datasets:
                chosen = None
                if sweep.selection is not None and method_cls.trains:
                    # With a pilot dataset, its choice serves every dataset of the sweep.
                    where = sweep.selection_spec.pilot.get("dataset", dataset)
                    chosen = (choices or {}).get((backbone, where, method))
                    if chosen is None:
                        continue
                lr = {} if chosen is None else {"lr": chosen["chosen"]}
                for shots, seed in grid:
                    cells.append(RunConfig(
                        task=sweep.task, dataset=dataset, method=method, backbone=backbone,
                        shots=shots, seed=seed, train=train, method_config={**settings, **lr},
                        pretrained=sweep.pretrained, backbone_version=version,
                        task_config=dict(task_settings), init=sweep.init, selection=chosen,
                    ))
                    alone[backbone, method, dataset, shots, seed] = cells[-1]
    return cells + chain_cells(sweep.chain_spec, alone, train)


def chain_cells(spec: ChainSpec | None, alone: dict[tuple, RunConfig], train: TrainConfig) -> list[RunConfig]:
    """The ``chain:`` block's cells (none without one): per cell of the source method alone,
    the source at ``source_steps``, then each chained method's cell that starts from it
    for the rest of train.steps. Sources come before the cells that start from them."""
    if spec is None:
        return []
    if spec.source_steps >= train.steps:
        raise ConfigError(f"chain.source_steps is {spec.source_steps}, train.steps {train.steps}: the chained "
                          "methods train train.steps minus the source's steps, so the source needs fewer")
    cells = []
    for (backbone, method, dataset, shots, seed), cell in alone.items():
        if method != spec.source:
            continue
        source = dataclasses.replace(cell, train=dataclasses.replace(train, steps=spec.source_steps),
                                     selection=_reused(cell.selection, f"{method} alone at {train.steps} steps, "
                                                       f"used for the chain's {spec.source_steps}-step source"))
        cells.append(source)
        for chained in spec.methods:
            base = alone.get((backbone, chained, dataset, shots, seed))
            if base is None:  # its lr is not chosen yet (selection), or it runs no such cell
                continue
            cells.append(dataclasses.replace(
                base, train=dataclasses.replace(train, steps=train.steps - spec.source_steps),
                init_from=source.config_hash,
                selection=_reused(base.selection, f"{chained} alone at {train.steps} steps, used for its "
                                  f"run chained from {spec.source}: no search of its own")))
    return cells


def _reused(selection: dict | None, note: str) -> dict | None:
    """A choice made for a method alone, on the record of a chain cell that reuses it."""
    return None if selection is None else {**selection, "chain": f"lr chosen for {note}"}


def resolved_method_settings(sweep: SweepConfig, method: str) -> tuple[type, dict]:
    """The method's class and every setting, defaults included (so that changing a
    default makes new cells instead of silently reusing old ones)."""
    base = method.partition(":")[0]
    values = dict(sweep.method_config.get(base) or {})
    if method != base:
        values.update(sweep.method_config.get(method) or {})
    method_cls, values = merge_variant(method, sweep.task, values)
    return method_cls, dataclasses.asdict(method_config(method_cls, values, f"method_config.{method}"))
