"""The shared runner: one cell in, one stored record out, for any method and task.

It loads (and keeps) the pristine backbone, gives each run a private copy, measures
peak memory around the whole run, and writes a record whether the run succeeded or
failed. It never names a method: what differs between methods lives in the adapters.
"""

from __future__ import annotations

import copy
import datetime as dt
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunebench.bench.chain import ChainSource, chain_order, check_chains, load_source
from tunebench.bench.store import SCHEMA_VERSION, RunStore
from tunebench.config import RunConfig
from tunebench.datasets import dataset_label
from tunebench.engine.features import FeatureCache
from tunebench.engine.measure import PeakMemory, environment, release_free_memory
from tunebench.engine.progress import progress
from tunebench.engine.training import resolve_device, seed_everything
from tunebench.errors import ConfigError, DataError, StorageError, TunebenchError
from tunebench.methods.base import resolve_method
from tunebench.paths import atomic_output, atomic_write_bytes, tunebench_cache_dir
from tunebench.registry import BACKBONES, TASKS
from tunebench.tasks.base import TaskContext


def backbone_version(name: str, pretrained: str | None) -> str | None:
    """A cheap fingerprint of the backbone's weights, part of every run's config hash."""
    builder, _ = BACKBONES.resolve(name)
    parts = [getattr(builder, "version", None)]
    if pretrained:
        path = Path(pretrained).expanduser()
        if path.exists():
            stat = path.stat()
            parts.append(f"{stat.st_size}-{int(stat.st_mtime)}")
    parts = [p for p in parts if p]
    return "/".join(parts) or None


def describe_error(exc: BaseException) -> str:
    """One line a user can act on."""
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return "out of memory: lower train.batch_size / train.eval_batch_size or train.image_size"
    if isinstance(exc, TunebenchError):
        return str(exc).splitlines()[0]
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"


def cell_keys(config: RunConfig) -> dict:
    """The keys that name a cell, first in every record (finished, failed or lost)."""
    return {
        "schema_version": SCHEMA_VERSION, "task": config.task, "dataset": config.dataset,
        # What the report calls the dataset: `pets-3f2a9c1b` for imagefolder:/long/path/pets.
        "dataset_label": dataset_label(config.dataset),
        "method": config.method, "backbone": config.backbone, "shots": config.shots,
        "seed": config.seed, "config_hash": config.config_hash,
        # Fairness, on the record: the start every method shared and where it was scored.
        "init": config.init, "eval_split": config.eval_split,
    }


def refresh_selection(store: RunStore, config: RunConfig) -> None:
    """A finished cell met again under another selection (a new grid, rule or pilot that
    chose the same lr, so the same hash) keeps its result, but its record must say how its
    lr was chosen now: only that provenance is rewritten. Every executor calls this for the
    cells it skips."""
    record = store.read(config.config_hash)
    if record is None or record.get("selection") == config.selection:
        return
    record["selection"] = config.selection
    record.setdefault("config", {})["selection"] = config.selection
    store.write(record)


def store_record(store: RunStore, record: dict, label: str) -> None:
    """Write a cell's record, unless it is a failed rerun of a finished cell (kept as is)."""
    if record["status"] == "failed" and store.is_finished(record["config_hash"]):
        print(f"rerun of {label} failed ({record['error']}); the stored result is kept",
              file=sys.stderr)
        return
    store.write(record)


@dataclass
class SweepSummary:
    ok: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class Runner:
    def __init__(self, results_dir: Path, *, force: bool = False, cache_dir: Path | None = None,
                 executor: dict | None = None):
        self.store = RunStore(results_dir)
        self.force = force
        self.executor = executor  # how the cell ran, stored as the record's ``executor``
        self.features = FeatureCache((cache_dir or tunebench_cache_dir()) / "features")
        self._backbones: dict[tuple[str, str | None], torch.nn.Module] = {}

    def _pristine_backbone(self, config: RunConfig):
        key = (config.backbone, config.pretrained)
        if key not in self._backbones:
            built = _CHECKED.pop(key, None)  # validation already built it from the checkpoint
            if built is None:
                builder, argument = BACKBONES.resolve(config.backbone)
                built = builder(argument, pretrained=config.pretrained)
            self._backbones[key] = built.eval()
        return self._backbones[key]

    def run(self, config: RunConfig, *, write: bool = True, source: ChainSource | None = None) -> dict | None:
        """Run one cell; returns its record, or None when it was already finished.

        ``write=False`` only returns the record: a remote executor's driver stores it.
        A chained cell (``init_from``) starts from ``source`` when given (a driver loaded
        it: a worker's store is a staging folder), else from its source in this store.
        """
        key = config.config_hash
        if self.store.is_finished(key) and not self.force:
            refresh_selection(self.store, config)
            return None
        task = TASKS.get(config.task)()
        device = resolve_device(config.train.device)
        started = dt.datetime.now(dt.timezone.utc)
        record = {
            **cell_keys(config), "config": config.to_dict(), "status": "failed", "error": None,
            "train_seconds": None, "eval_seconds": None, "feature_seconds": None,
            "trainable_params": None, "total_params": None, "peak_memory_mb": None,
            "images_per_second": None, "metrics": {}, "steps": None,
            "started_at": started.isoformat(timespec="seconds"),
            "selection": config.selection,
        }
        memory = PeakMemory(device)
        try:
            # Bad input about the source stops here, before anything is stored; a source
            # whose run failed (SourceFailed) makes this cell a stored failure.
            source = source or load_source(self.store, config)
            if source is not None:  # honest accounting: the source's steps and seconds, on the record
                record["init_from"] = dict(source.summary)
            pristine = self._pristine_backbone(config)  # before seeding: its build uses the RNG
            release_free_memory()
            with memory:
                seed_everything(config.seed)
                backbone = copy.deepcopy(pristine).to(device)
                context = TaskContext(backbone=backbone, device=device, features=self.features,
                                      start=None if source is None else source.tensors)
                result = task.run(config, context)
            adapter = result.adapter
            record.update(
                backbone_content_id=backbone.content_id,
                train_seconds=round(result.train_seconds, 4),
                eval_seconds=round(result.eval_seconds, 4),
                feature_seconds=round(result.feature_seconds, 4),
                trainable_params=adapter.trainable_count(),
                total_params=adapter.total_count(),
                trainable_names=sorted(n for n, _ in adapter.trainable_named_parameters()),
                images_per_second=(
                    round(result.images_seen / result.train_seconds, 2)
                    if result.images_seen and result.train_seconds > 0 else None
                ),
                metrics=result.metrics,
                steps=result.steps,
                image_input=result.image_input,
                **result.extra,
            )
            if config.train.save_artifacts:
                record["artifact"] = self._save_artifact(key, adapter)
                exports = self._save_exports(key, adapter)
                if exports:  # only methods that have an ecosystem form (generation's)
                    record["exports"] = exports
            if result.pictures:
                record["pictures"] = self._save_pictures(key, result.pictures)
            record["status"] = "ok"
        except (KeyboardInterrupt, ConfigError, DataError, StorageError):
            # Not results: an interrupted cell is redone on rerun, and bad input (a
            # corrupt image, a wrong setting) or a full disk stops with one line before
            # anything is stored.
            raise
        except Exception as exc:  # a failing cell is recorded, and the sweep goes on
            record["error"] = describe_error(exc)
            record["traceback"] = traceback.format_exc(limit=8)
        record["peak_memory_mb"] = memory.megabytes
        record["peak_memory_increase_mb"] = memory.increase_megabytes
        record["peak_memory_kind"] = memory.kind
        record["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        record["env"] = environment(device)
        if self.executor is not None:
            record["executor"] = dict(self.executor)
        if write:
            store_record(self.store, record, config.label)
        return record

    def _save_pictures(self, key: str, pictures: dict[str, bytes]) -> dict[str, str]:
        """Each picture atomically, before the record that names it is written."""
        paths = {}
        for name, data in sorted(pictures.items()):
            path = self.store.pictures_dir / f"{key}-{name}.png"
            with atomic_output(path) as tmp:
                Path(tmp).write_bytes(data)
            paths[name] = path.relative_to(self.store.results_dir).as_posix()
        return paths

    def _save_artifact(self, key: str, adapter) -> dict:
        from safetensors.torch import save

        tensors = adapter.artifact()
        path = self.store.artifacts_dir / f"{key}.safetensors"
        atomic_write_bytes(path, save(tensors))  # see atomic_write_bytes: a full disk stops the sweep
        return {"path": str(path.relative_to(self.store.results_dir)), "bytes": path.stat().st_size,
                "tensors": len(tensors)}

    def _save_exports(self, key: str, adapter) -> dict:
        """The adapter's exports (what it learned in the form a standard pipeline loads)
        beside the artifact, as artifacts/<hash>-<name>.safetensors, metadata included."""
        from safetensors.torch import save

        saved = {}
        for name, (tensors, metadata) in sorted(adapter.exports().items()):
            path = self.store.artifacts_dir / f"{key}-{name}.safetensors"
            atomic_write_bytes(path, save(tensors, metadata=metadata))
            saved[name] = {"path": str(path.relative_to(self.store.results_dir)),
                           "bytes": path.stat().st_size, "tensors": len(tensors)}
        return saved


def validate_cells(configs: list[RunConfig], store: RunStore | None = None) -> None:
    """Fail before anything runs when a cell names something unknown or cannot run; a
    chained cell's source is looked for among ``configs``, then in ``store``."""
    for config in configs:
        method_cls, _ = resolve_method(config.method, config.task)
        if method_cls.trains and config.shots < 1:
            raise ConfigError(f"{config.method} trains, so it needs shots >= 1, got {config.shots}")
        builder, _ = BACKBONES.resolve(config.backbone)
        TASKS.get(config.task)().validate(config)
        check = getattr(builder, "check", None)
        if check is not None:  # e.g. mini-t2i not built, an image size open_clip cannot take
            check(config)
    check_chains(configs, store)
    for backbone, pretrained in dict.fromkeys((c.backbone, c.pretrained) for c in configs if c.pretrained):
        check_checkpoint(backbone, pretrained)


# Backbones built from --pretrained while validating, handed to the first Runner that
# needs them, so that a sweep loads each checkpoint once, not once to check and again to run.
_CHECKED: dict[tuple[str, str], torch.nn.Module] = {}


def check_checkpoint(backbone: str, pretrained: str) -> None:
    """Build the backbone from ``pretrained`` once, so that a missing, corrupt or
    mismatched checkpoint stops the sweep as bad input instead of failing every cell.
    Builders raise ConfigError for checkpoints they cannot use; anything else is
    reported the same way."""
    builder, argument = BACKBONES.resolve(backbone)
    try:
        _CHECKED[backbone, pretrained] = builder(argument, pretrained=pretrained)
    except TunebenchError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot load {backbone} from --pretrained {pretrained}: "
                          f"{describe_error(exc)}") from exc


def unique_cells(configs: list[RunConfig]) -> list[RunConfig]:
    """Each cell once (a sweep may list a method, seed or dataset twice), in order.
    Both executors run only these, so a repeat is never counted as already finished."""
    cells: dict[str, RunConfig] = {}
    for config in configs:
        cells.setdefault(config.config_hash, config)
    return list(cells.values())


def run_sweep(configs: list[RunConfig], runner: Runner) -> SweepSummary:
    """One cell after another, each chained cell after its source (``chain_order``)."""
    summary = SweepSummary()
    bar = progress(chain_order(unique_cells(configs)), desc="sweep", unit="run")
    for config in bar:
        record = runner.run(config)
        if record is None:
            summary.skipped.append(config.config_hash)
        elif record["status"] == "ok":
            summary.ok.append(config.config_hash)
        else:
            summary.failed.append(config.config_hash)
            print(f"FAILED {config.label}: {record['error']}", file=sys.stderr)
        bar.set_postfix(ok=len(summary.ok), failed=len(summary.failed), skipped=len(summary.skipped))
    return summary
