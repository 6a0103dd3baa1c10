"""Chaining: a run that starts from another finished run's result (``init_from``).

ConES claims that its searched class (or concept) embeddings can seed a later
fine-tuning stage. A chained cell names its source in ``RunConfig.init_from``: a method
name (``cones``: the run of that method in the same results folder with the same task,
dataset, backbone and weights, shots, seed, init, task settings and train settings, at
``source_steps`` steps, by default the chained cell's own) or a run's 16-hex config
hash. The source's identity is part of the chained cell's hash: a sweep's ``chain:``
block names each source by its hash, so a source that changes (another lr) makes new
chained cells.

The contract, on each side:

- a source method turns its saved artifact into what it hands on (``chain_tensors``:
  classification ConES its normalised class embeddings, generation ConES its concept
  state), so a source run must have saved its artifact (``train.save_artifacts``);
- a method that can start from one names the methods it starts from (``chains_from``)
  and takes their tensors in ``start_from``;
- a task that builds its adapters through ``tasks.base.with_start`` says ``chains = True``
  (fewshot-cls, detect, generation).

This module is the shared code between them: ``check_chains`` before anything runs (each
refusal one line, nothing stored), ``load_source`` when a chained cell runs (by the
runner in process; by the driver for worker processes and Ray, which hands the tensors
to the worker, as workers write nothing and read no results folder), and ``Waits`` /
``chain_order``, by which every executor runs a source cell before the cells that start
from it. A source that is missing, of a method the chained one cannot start from, of
another backbone, dataset, shots, seed or init, or without an artifact is bad input; a
source whose run failed makes the chained cell fail (stored, with the reason), as any
failing cell does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from tunebench.bench.store import RunStore
from tunebench.config import RUN_HASH, RunConfig
from tunebench.errors import ConfigError, TunebenchError
from tunebench.methods.base import resolve_method
from tunebench.registry import METHODS, TASKS

# What a source must share with the run that starts from it (its config's keys).
IDENTITY = ("task", "dataset", "backbone", "pretrained", "backbone_version", "shots", "seed", "init",
            "task_config")
# Train settings that may differ between a source found by name and its chained run.
FREE_TRAIN = ("steps", "save_artifacts")


@dataclass(frozen=True)
class ChainSource:
    """A chained cell's source, loaded: ``summary`` is the chained record's ``init_from``
    ({hash, method, steps, train_seconds}); ``tensors`` what the source hands on."""

    summary: dict
    tensors: dict[str, torch.Tensor]


class SourceFailed(TunebenchError):
    """The source's run failed: the chained cell fails with it (a stored failure, not bad input)."""


def chaining_tasks() -> list[str]:
    return [name for name in TASKS.names() if getattr(TASKS.get(name), "chains", False)]


def check_can_chain(config: RunConfig) -> type:
    """The chained cell's method class, or a one-line refusal: a task that cannot start a
    run from another, a method that cannot, or a source method it cannot start from."""
    if not getattr(TASKS.get(config.task), "chains", False):
        raise ConfigError(f"{config.label}: the {config.task} task cannot start a run from another (init_from); "
                          f"tasks that can: {', '.join(chaining_tasks())}")
    method_cls, _ = resolve_method(config.method, config.task)
    if not method_cls.chains_from:
        able = [n for n in METHODS.names_for(config.task) if METHODS.for_task(n, config.task).chains_from]
        raise ConfigError(f"method {config.method!r} cannot start from another run (init_from): it has no "
                          f"start_from; on {config.task}, {', '.join(able) or 'none'} can")
    if not RUN_HASH.fullmatch(config.init_from) and config.init_from not in method_cls.chains_from:
        raise ConfigError(f"init_from {config.init_from!r}: {config.method} starts from runs of "
                          f"{', '.join(method_cls.chains_from)} only")
    return method_cls


def _matches(source: dict, config: RunConfig) -> bool:
    """``source`` (a config as stored) is the run ``init_from: NAME`` names for ``config``."""
    train = source.get("train") or {}
    return (source.get("method") == config.init_from and source.get("eval_split", "test") == "test"
            and not source.get("init_from") and _differs(source, config) is None
            and train.get("steps") == config.source_steps and not _train_differs(train, config))


def _train_differs(train: dict, config: RunConfig) -> bool:
    """Whether a source's train settings differ from ``config``'s beyond what a chained run
    may change (its steps, whether it saves artifacts: FREE_TRAIN)."""
    free = dict.fromkeys(FREE_TRAIN)
    return {**train, **free} != {**config.to_dict()["train"], **free}


def _differs(source: dict, config: RunConfig) -> str | None:
    """The first identity key on which ``source`` (a config as stored) differs from ``config``."""
    mine = config.to_dict()
    return next((key for key in IDENTITY if source.get(key) != mine[key]), None)


def _check_source(config: RunConfig, source: dict, source_hash: str, method_cls: type) -> None:
    """Refuse, in one line, a source ``config`` cannot start from."""
    name = f"init_from {config.init_from}" + ("" if source_hash == config.init_from else f" (run {source_hash})")
    if source.get("method") not in method_cls.chains_from:
        raise ConfigError(f"{name}: that run is {source.get('method')!r}, and {config.method} starts from runs of "
                          f"{', '.join(method_cls.chains_from)} only")
    if source.get("eval_split", "test") != "test":
        raise ConfigError(f"{name}: that run is a selection trial (scored on validation data): start from a final run")
    key = _differs(source, config)
    if key is None and source.get("train") is not None and _train_differs(source["train"], config):
        key = "train"  # a source named by hash is compared on its train settings too
    if key is not None:
        theirs, mine = source.get(key), config.to_dict()[key]
        what = f"another {key}" if isinstance(mine, dict) else f"{key} {theirs!r}, this one {mine!r}"
        raise ConfigError(f"{name}: that run has {what}; a chained run starts from a run of the same task, "
                          "dataset, backbone (and weights), shots, seed, init and task settings")


def _stored(store: RunStore) -> Iterable[dict]:
    for path in sorted(store.runs_dir.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("config"), dict):
            yield record


def stored_source(store: RunStore, config: RunConfig) -> dict:
    """The stored record of ``config``'s source, or a one-line refusal (none, or several by name)."""
    if RUN_HASH.fullmatch(config.init_from):
        record = store.read(config.init_from)
        if record is None:
            raise ConfigError(f"init_from {config.init_from}: no run with that hash in {store.runs_dir}: run it "
                              f"first, or name the source by its method (init_from: cones)")
        return record
    found = [r for r in _stored(store) if _matches(r["config"], config)]
    if not found:
        raise ConfigError(
            f"init_from {config.init_from}: no {config.init_from} run in {store.runs_dir} with this run's task, "
            f"dataset, backbone, shots, seed, init and train settings at {config.source_steps} steps: run it first "
            f"(tunebench run --method {config.init_from} --dataset {config.dataset} --shots {config.shots} "
            f"--seed {config.seed} --set train.steps={config.source_steps}), or name a run by its hash")
    finished = [r for r in found if r.get("status") == "ok"]
    if len(finished) > 1:
        raise ConfigError(f"init_from {config.init_from}: {len(finished)} finished runs match "
                          f"({', '.join(sorted(r['config_hash'] for r in finished))}): name one by its hash")
    return (finished or found)[0]


def artifact_path(store: RunStore, record: dict) -> Path:
    """The source's saved artifact, or a one-line refusal saying how to get one."""
    artifact = record.get("artifact") or {}
    path = store.results_dir / artifact["path"] if artifact.get("path") else None
    if path is None or not path.is_file():
        missing = f" ({artifact['path']} is missing)" if path is not None else ""
        raise ConfigError(f"source run {record.get('config_hash')} ({record.get('method')} on {record.get('dataset')}) "
                          f"has no saved artifact{missing}: rerun it with train.save_artifacts: true and --force, "
                          "then this one")
    return path


def load_source(store: RunStore, config: RunConfig) -> ChainSource | None:
    """The loaded source of a chained cell (None for a cell that is not chained). Bad input
    raises ConfigError; a source whose run failed raises SourceFailed."""
    if config.init_from is None:
        return None
    from safetensors.torch import load_file

    method_cls = check_can_chain(config)
    record = stored_source(store, config)
    source_hash = record.get("config_hash", config.init_from)
    _check_source(config, record["config"], source_hash, method_cls)
    if record.get("status") != "ok":
        raise SourceFailed(f"its source run {source_hash} ({record.get('method')}) failed: "
                           f"{record.get('error') or 'no error recorded'}; rerun that first")
    artifact = load_file(artifact_path(store, record))
    source_cls, _ = resolve_method(record["method"], config.task)
    try:
        tensors = source_cls.chain_tensors(artifact)
    except KeyError as exc:
        raise ConfigError(f"source run {source_hash}'s artifact lacks {exc}: it was saved by another version; "
                          "rerun it with --force, then this one") from None
    summary = {"hash": source_hash, "method": record["method"], "steps": record.get("steps"),
               "train_seconds": record.get("train_seconds")}
    return ChainSource(summary, tensors)


# ---- before anything runs ------------------------------------------------------------------


def planned_source(config: RunConfig, cells: Iterable[RunConfig]) -> RunConfig | None:
    """The cell among ``cells`` that ``config`` starts from, if it is one of them."""
    if config.init_from is None:
        return None
    if RUN_HASH.fullmatch(config.init_from):
        return next((c for c in cells if c.config_hash == config.init_from), None)
    found = {c.config_hash: c for c in cells if _matches(c.to_dict(), config)}
    if len(found) > 1:
        raise ConfigError(f"{config.label}: init_from {config.init_from} matches {len(found)} cells of this sweep "
                          f"({', '.join(sorted(found))}): name one by its hash")
    return next(iter(found.values()), None)


def check_chains(cells: list[RunConfig], store: RunStore | None = None) -> None:
    """Refuse, before any cell runs, a chained cell that cannot run: its task or method
    cannot chain, or its source (a cell of the same sweep, else a run stored in ``store``)
    is missing, of another method, backbone, dataset, shots, seed or init, failed, or
    saves or saved no artifact. Without ``store``, sources outside ``cells`` are checked
    when the cell runs."""
    for config in cells:
        if config.init_from is None:
            continue
        method_cls = check_can_chain(config)
        planned = planned_source(config, cells)
        if planned is not None:
            _check_source(config, planned.to_dict(), planned.config_hash, method_cls)
            if not planned.train.save_artifacts:
                raise ConfigError(f"{config.label} starts from {planned.label}, which saves no artifact: "
                                  "set train.save_artifacts: true")
            # A source already stored is skipped, not rerun: its artifact must be there (a
            # fresh clone has the records but not results/artifacts/, which git ignores).
            stored = store.read(planned.config_hash) if store is not None else None
            if stored is not None and stored.get("status") == "ok" and not store.is_finished(config.config_hash):
                artifact_path(store, stored)
            continue
        if store is None:
            continue
        record = stored_source(store, config)
        _check_source(config, record["config"], record.get("config_hash", config.init_from), method_cls)
        if record.get("status") != "ok":
            raise ConfigError(f"init_from {config.init_from}: source run {record.get('config_hash')} failed "
                              f"({record.get('error') or 'no error recorded'}): rerun it first")
        artifact_path(store, record)


# ---- order ---------------------------------------------------------------------------------


def sources_in(cells: list[RunConfig]) -> dict[str, str]:
    """Chained cell hash -> the hash of the cell among ``cells`` it starts from (sources
    that are not among them, e.g. stored already, are left out)."""
    out = {}
    for config in cells:
        source = planned_source(config, cells)
        if source is not None:
            out[config.config_hash] = source.config_hash
    return out


def chain_order(cells: list[RunConfig]) -> list[RunConfig]:
    """``cells`` in their order, except that a source comes before the cells that start from it."""
    after = sources_in(cells)
    by_hash = {c.config_hash: c for c in cells}
    placed: dict[str, RunConfig] = {}

    def place(config: RunConfig) -> None:
        if config.config_hash in placed:
            return
        if config.config_hash in after:
            place(by_hash[after[config.config_hash]])
        placed[config.config_hash] = config

    for config in cells:
        place(config)
    return list(placed.values())


class Waits:
    """For executors that run cells side by side: which cells still wait for a source
    cell of the same sweep to finish (ok or failed)."""

    def __init__(self, cells: list[RunConfig]) -> None:
        self.source = sources_in(cells)
        self.unfinished = {c.config_hash for c in cells}

    def ready(self, config: RunConfig) -> bool:
        return self.source.get(config.config_hash) not in self.unfinished

    def finished(self, config: RunConfig) -> None:
        self.unfinished.discard(config.config_hash)
