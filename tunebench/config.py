"""Run and training configs: frozen, validated, hashed.

A run is fully described by a ``RunConfig``; the hash of its canonical JSON names the
result file, so a finished cell is recognised on rerun and a changed setting makes a
new cell instead of overwriting an old one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from tunebench.errors import ConfigError
from tunebench.registry import current_method_name, stored_method_name

# numpy.random.seed takes 0 .. 2**32 - 1; every run seeds numpy with its cell's seed.
SEED_LIMIT = 2**32
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
# The prompt information every class or concept representation starts from, set once
# per sweep (fairness: the same start for every method). single: each class's first
# template ("a photo of a {}."); ensemble: the mean over all of the dataset's templates.
INITS = ("single", "ensemble")
# Where a cell is scored: final runs on test data; hyper-parameter selection trials on
# the task's validation split, which no final run trains or scores on.
EVAL_SPLITS = ("test", "validation")


@dataclass(frozen=True)
class TrainConfig:
    """Settings shared by every method in a sweep (the loop, not the method)."""

    steps: int = field(default=100, metadata={"help": "optimizer steps per run"})
    batch_size: int = field(default=16, metadata={"help": "images per step (capped at the train-set size)"})
    warmup_steps: int = field(default=10, metadata={"help": "linear warm-up before the cosine decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0 = off)"})
    image_size: int = field(default=64, metadata={"help": "pixels per side fed to the image tower"})
    test_per_class: int | None = field(default=100, metadata={"help": "fixed test images per class (null = all)"})
    val_per_class: int = field(default=20, metadata={
        "help": "validation images per class for lr selection: held out of the train pool (fixed seed, "
                "never drawn as shots), or taken from the dataset's own validation list"})
    eval_batch_size: int = field(default=256, metadata={"help": "images per batch when evaluating"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 autocast on CUDA) | fp32 | bf16"})
    save_artifacts: bool = field(default=True, metadata={"help": "save each run's trained tensors"})

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "image_size", "eval_batch_size", "val_per_class"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.grad_clip < 0:
            raise ConfigError("train.warmup_steps and train.grad_clip must be >= 0")
        if self.test_per_class is not None and self.test_per_class < 1:
            raise ConfigError("train.test_per_class must be >= 1 or null")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"train.precision must be auto, fp32 or bf16, got {self.precision!r}")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N (e.g. cuda:0), got {self.device!r}")


_ADDED_LATER = ("task_config", "init_from", "source_steps")
# A run named by its config hash (``init_from``), as the results store names its files.
RUN_HASH = re.compile(r"[0-9a-f]{16}")
METHOD_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


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
    init: str = "single"
    eval_split: str = "test"
    # How the method's settings were chosen (grid, chosen value, validation score, split):
    # written into the run record, never part of the hash (the chosen value itself is in
    # method_config, so a different choice is a different cell).
    selection: dict | None = None
    # Chaining (bench/chain.py): the finished run this one starts from, by method name
    # (``cones``: the run of the same task, dataset, backbone, shots, seed, init and train
    # settings at ``source_steps`` steps, in the same results folder) or by its 16-hex
    # config hash. Part of the hash when set; left out while unset (``_ADDED_LATER``).
    init_from: str | None = None
    source_steps: int | None = None

    def __post_init__(self) -> None:
        # A renamed method's old name (generation's ``lit``) is stored under its new one,
        # so records, the report and the CLI show one name; the hash keeps the old one.
        object.__setattr__(self, "method", current_method_name(self.task, self.method))
        if not is_integer(self.shots) or self.shots < 0:
            raise ConfigError(f"shots must be a whole number >= 0, got {_shown(self.shots)}")
        if not is_seed(self.seed):
            raise ConfigError(f"seed must be a whole number from 0 to {SEED_LIMIT - 1}, got {_shown(self.seed)}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, got {_shown(self.init)}")
        if self.eval_split not in EVAL_SPLITS:
            raise ConfigError(f"eval_split must be one of {', '.join(EVAL_SPLITS)}, got {_shown(self.eval_split)}")
        self._check_chain()

    def _check_chain(self) -> None:
        """``init_from`` is a method name or a run hash; ``source_steps`` goes with a name
        only, and defaults to this run's own ``train.steps`` (written out, so that the
        two spellings of one source are one cell)."""
        if self.init_from is None:
            if self.source_steps is not None:
                raise ConfigError("source_steps is set without init_from: name the method to start from "
                                  "(init_from: cones), or drop source_steps")
            return
        if not isinstance(self.init_from, str) or not (
                RUN_HASH.fullmatch(self.init_from) or METHOD_NAME.fullmatch(self.init_from)):
            raise ConfigError(f"init_from must be a method name (e.g. cones) or a run's 16-hex config hash, "
                              f"got {_shown(self.init_from)}")
        if RUN_HASH.fullmatch(self.init_from):
            if self.source_steps is not None:
                raise ConfigError(f"source_steps is set, but init_from names run {self.init_from} by its hash, "
                                  "which has its own steps: drop source_steps")
            return
        steps = self.train.steps if self.source_steps is None else self.source_steps
        if not is_integer(steps) or steps < 1:
            raise ConfigError(f"source_steps must be a whole number >= 1, got {_shown(steps)}")
        object.__setattr__(self, "source_steps", steps)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def config_hash(self) -> str:
        identity = self.to_dict()
        del identity["selection"]  # a record of how, not a setting: see the field
        # Fields added after results were stored are left out while unset, so that
        # those results keep their hashes and are not rerun for nothing.
        for name in _ADDED_LATER:
            if not identity[name]:
                del identity[name]
        # A method renamed after its results were stored hashes under its old name.
        identity["method"] = stored_method_name(self.task, self.method)
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        label = f"{self.method} on {self.dataset}, {self.shots}-shot, seed {self.seed}"
        if self.init_from is None:
            return label
        if RUN_HASH.fullmatch(self.init_from):
            return f"{label}, from run {self.init_from}"
        return f"{label}, from {self.init_from} ({self.source_steps} steps)"


def build_dataclass(cls, values: dict | None, where: str | Path):
    """Instantiate a config dataclass from a dict, naming unknown and invalid fields.

    Each value is first converted to its field's declared type (see ``typed_value``).
    ``where`` names the settings in messages: a scope such as ``train`` gives
    ``train.steps``; a file (a ``Path``) gives ``bench.yaml: steps``.
    """
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping of settings, got {type(values).__name__}")
    values = dict(values)
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown} in {where}; valid: {', '.join(valid)}")
    hints = typing.get_type_hints(cls)
    values = {name: typed_value(value, hints[name], _setting_name(where, name)) for name, value in values.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _setting_name(where: str | Path, name: str) -> str:
    return f"{where}: {name}" if isinstance(where, Path) else f"{where}.{name}"


# ---- typed settings -----------------------------------------------------------------
# Settings arrive from YAML files and --set as whatever PyYAML made of them: ``1e-3``
# is a string there (YAML 1.1 floats need a dot), ``2.5`` may reach an integer field.
# Each value is converted to its field's declared type or refused in one line.

def typed_value(value: Any, hint: Any, setting: str) -> Any:
    """``value`` as the type ``hint`` declares; a ConfigError naming ``setting`` otherwise.

    float: ints and numeric strings (``"1e-3"``); an int is kept as an int, so that a
      setting written ``1`` keeps the config hash it always had.
    int: ints, and integral floats or numeric strings (``1e3``); not 2.5, not booleans.
    bool: only true and false (see ``load_settings_yaml`` for ``yes``/``no``).
    str: only strings. list, dict: only those. ``X | None``: also null.
    Types without a rule here are passed as given.
    """
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return _typed_union(value, typing.get_args(hint), setting)
    convert = _CONVERTERS.get(typing.get_origin(hint) or hint)
    return value if convert is None else convert(value, setting)


def _typed_union(value: Any, options: tuple, setting: str) -> Any:
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is not type(None):
            try:
                return typed_value(value, option, setting)
            except ConfigError:
                continue
    expected = " or ".join(_EXPECTED.get(typing.get_origin(o) or o, getattr(o, "__name__", str(o))) for o in options)
    raise ConfigError(f"{setting} must be {expected}, got {_shown(value)}")


def _to_bool(value: Any, setting: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{setting} must be true or false, got {_shown(value)}")


def _to_int(value: Any, setting: str) -> int:
    if is_integer(value):
        return value
    number = _finite_number(value)
    if number is not None and number.is_integer():
        return int(number)
    raise ConfigError(f"{setting} must be a whole number, got {_shown(value)}")


def _to_float(value: Any, setting: str) -> float | int:
    if is_integer(value):
        return value  # kept as given: converting would change the hash of existing cells
    number = _finite_number(value)
    if number is None:
        raise ConfigError(f"{setting} must be a number (e.g. 0.001 or 1e-3), got {_shown(value)}")
    return number


def _exactly(kind: type, expected: str):
    """A converter that takes values of ``kind`` as they are and refuses anything else."""
    def convert(value: Any, setting: str):
        if isinstance(value, kind):
            return value
        raise ConfigError(f"{setting} must be {expected}, got {_shown(value)}")
    return convert


_CONVERTERS = {
    bool: _to_bool, int: _to_int, float: _to_float,
    str: _exactly(str, "text (put it in quotes)"),
    list: _exactly(list, "a list (e.g. [a, b])"),
    dict: _exactly(dict, "a mapping of settings"),
}
_EXPECTED = {bool: "true or false", int: "a whole number", float: "a number", str: "text",
             list: "a list", dict: "a mapping", type(None): "null"}


def _finite_number(value: Any) -> float | None:
    """A finite float from a float or a numeric string; None for anything else."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


def _shown(value: Any) -> str:
    """A value as the user wrote it in YAML (null, true), strings quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)


def is_integer(value: Any) -> bool:
    """An int that is not a bool (``True`` is an int in Python, not a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_seed(value: Any) -> bool:
    return is_integer(value) and 0 <= value < SEED_LIMIT


class _SettingsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that only true and false are booleans."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_SettingsLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SettingsLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_settings_yaml(text: str) -> Any:
    """YAML as settings are read from sweep files and --set.

    YAML 1.1 also reads yes/no/on/off as booleans; here they stay words, so that a
    boolean setting given ``yes`` is refused in one line instead of guessed at, and a
    text setting given ``no`` keeps the word.
    """
    return yaml.load(text, Loader=_SettingsLoader)  # a SafeLoader: builds plain data only


def method_config(method_cls, values: dict | None, where: str):
    return build_dataclass(method_cls.config_class, values, where)


def task_config(task_cls, values: dict | None, where: str = "task_config") -> dict:
    """A task's settings with defaults filled in ({} for tasks that have none).

    A setting declared with ``metadata={"added_later": True}`` is left out while it holds
    its default: cells stored before the setting existed keep their hashes (as
    ``_ADDED_LATER`` does for RunConfig's own fields), and the task, which reads its
    settings through ``build_dataclass``, gets the default back."""
    config_class = getattr(task_cls, "config_class", None)
    if config_class is None:
        if values:
            raise ConfigError(f"{where}: task {task_cls.__name__} takes no settings")
        return {}
    resolved = dataclasses.asdict(build_dataclass(config_class, values, where))
    for f in fields(config_class):
        if f.metadata.get("added_later") and resolved[f.name] == _default_of(f):
            del resolved[f.name]
    return resolved


def _default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
