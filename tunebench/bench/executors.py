"""Run a sweep's cells on a Ray cluster: one Ray task per cell, results stored by the driver.

``tunebench bench SWEEP --executor ray`` starts Ray on this machine (or joins
``--ray-address``) and keeps at most ``--ray-workers`` cells running at once. The
division of work keeps the run store the single source of the report:

- a worker runs the cell with the ordinary ``Runner`` and *returns* its record and its
  artifact bytes; it writes nothing under the results folder, so workers need no shared
  filesystem with the driver, and a worker killed mid-cell leaves nothing behind there.
  It stages the cell's files in ``TMP/tunebench-staging-UID/cell-*`` (``worker.py``, shared
  with the local ``--jobs`` executor), removed when the cell ends; a killed worker's
  folder is removed by the next cell on its node, and by the driver after the sweep on
  the driver's node;
- the driver writes each artifact, then its record, atomically (``RunStore.write``),
  exactly once per cell, with the runner's rules: a finished hash is not submitted and a
  failed rerun never replaces a stored ``ok`` result;
- a worker that dies (killed, out of memory, node lost) makes Ray retry the cell up to
  ``max_retries`` times; after that the cell is stored as ``failed`` with the reason;
- a chained cell (``init_from``) is submitted once its source cell has finished, with
  the source's tensors, which the driver loads from the results folder (``chain.py``);
- bad input (``ConfigError``/``DataError`` in a worker) stops the sweep with one line,
  as it does in-process; an interrupted driver cancels its running cells, and a rerun of
  the same command skips what was stored and redoes the rest.

Caches stay per node (``TUNEBENCH_CACHE_DIR`` or ~/.cache/tunebench there): feature
files and few-shot splits are written under a file lock or by atomic rename, and the
mini-clip build takes a lock, so cells running side by side on one node share them safely.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunebench.bench.chain import Waits
from tunebench.bench.runner import SweepSummary, describe_error, refresh_selection, unique_cells
from tunebench.bench.store import RunStore
from tunebench.bench.worker import (
    finish_cell,
    lost_cell_record,
    remove_stale_staging,
    run_cell,
    source_for,
    staging_root,
)
from tunebench.config import RunConfig
from tunebench.engine.progress import progress
from tunebench.errors import ConfigError, DataError, StorageError

RAY_MISSING = "Ray is not installed: pip install 'tunebench[ray]'"


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: start Ray on this machine for this sweep
    workers: int = 2  # cells running at once
    cpus_per_cell: int = 1  # Ray CPUs (and torch threads) per cell
    max_retries: int = 2  # re-runs of a cell whose worker died, before it is stored as failed

    def __post_init__(self) -> None:
        if self.workers < 1 or self.cpus_per_cell < 1:
            raise ConfigError("--ray-workers and --ray-cpus-per-cell must be >= 1")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {self.max_retries}")


def import_ray():
    """Ray, imported only when the ray executor is asked for (it is an optional extra)."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(RAY_MISSING) from exc
    return ray


def check_devices(configs: list[RunConfig]) -> None:
    """A Ray task sees only the GPU Ray gives it, so a cell cannot name a GPU index."""
    for config in configs:
        device = config.train.device
        if device.startswith("cuda:"):
            raise ConfigError(
                f"{config.label}: train.device {device!r} names a GPU index; on Ray use "
                "device: auto or cuda (each cell gets the one GPU Ray assigns it)"
            )


def cell_resources(config: RunConfig, *, cluster_has_gpu: bool, cpus: int) -> dict:
    """What one cell asks Ray for: a whole GPU when it runs on CUDA, else CPUs only.

    ``device: auto`` resolves against the cluster, not the driver: the head node often
    has no GPU while the workers do.
    """
    device = config.train.device
    wants_gpu = device == "cuda" or (device == "auto" and cluster_has_gpu)
    return {"num_cpus": cpus, "num_gpus": 1 if wants_gpu else 0}


# ---------------------------------------------------------------- driver side


def _collect(ray, ref, config: RunConfig, attempts: int) -> tuple[dict, dict[str, bytes]]:
    """The finished task's result, or a failed record saying why there is none."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ConfigError | DataError | StorageError):
            raise cause from None  # bad input or a full disk: stop with its one line, as in-process
        reason = describe_error(cause) if isinstance(cause, BaseException) else describe_error(exc)
        return lost_cell_record(config, f"cell raised in its worker: {reason}"), {}
    except ray.exceptions.RayError as exc:
        reason = describe_error(exc)
        return lost_cell_record(config, f"worker lost after {attempts} attempt(s): {reason}"), {}


def _forwarded_environment() -> dict[str, str]:
    """The driver's TUNEBENCH_* settings (cache folder, test hooks) for the workers.

    Workers draw no progress bars: Ray would interleave every worker's bars in the
    driver's terminal, and the driver's own bar already counts finished, running and
    failed cells."""
    forwarded = {k: v for k, v in os.environ.items() if k.startswith("TUNEBENCH_")}
    forwarded["TUNEBENCH_NO_PROGRESS"] = "1"
    return forwarded


def _connect(ray, options: RayOptions) -> bool:
    """Join the cluster; returns True when this call started Ray (and must stop it)."""
    if ray.is_initialized():
        return False
    if not options.address:
        ray.init(include_dashboard=False, logging_level="warning")
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < options.cpus_per_cell:
            # Ray would keep such tasks pending forever on a fixed local machine.
            ray.shutdown()
            raise ConfigError(f"--ray-cpus-per-cell {options.cpus_per_cell} exceeds this "
                              f"machine's {cpus:g} CPUs")
        return True
    try:
        ray.init(address=options.address, logging_level="warning")
    except ConnectionError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot join the Ray cluster at {options.address!r}: {reason}") from exc
    return True


def run_sweep_ray(
    configs: list[RunConfig],
    results_dir: Path,
    *,
    force: bool = False,
    options: RayOptions | None = None,
    on_record: Callable[[dict], None] | None = None,
) -> SweepSummary:
    """Run the cells as Ray tasks; ``on_record`` is called after each record is stored."""
    options = options or RayOptions()
    ray = import_ray()
    check_devices(configs)
    store = RunStore(results_dir)
    summary = SweepSummary()
    cells = unique_cells(configs)
    todo: list[RunConfig] = []
    for config in cells:
        if store.is_finished(config.config_hash) and not force:
            refresh_selection(store, config)
            summary.skipped.append(config.config_hash)
        else:
            todo.append(config)
    if not todo:
        return summary
    waits = Waits(todo)  # a chained cell is submitted after its source cell has finished

    started_ray = _connect(ray, options)
    cluster_has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    # Worker death is retried by Ray itself; an exception raised by the cell is not
    # (the runner already turns ordinary failures into failed records).
    task = ray.remote(max_retries=options.max_retries, retry_exceptions=False)(run_cell)
    runtime_env = {"env_vars": _forwarded_environment()}
    running: dict = {}
    bar = progress(total=len(cells), initial=len(summary.skipped), desc="sweep (ray)", unit="run")
    try:
        while todo or running:
            while len(running) < options.workers and (config := next(
                    (c for c in todo if waits.ready(c)), None)) is not None:
                todo.remove(config)
                source, failed = source_for(store, config)  # the driver reads the results folder
                if failed is not None:  # its source failed: stored failed, not submitted
                    failed["executor"] = {"kind": "ray", "concurrent_cells": options.workers}
                    finish_cell(store, config, failed, {}, summary, on_record)
                    waits.finished(config)
                    bar.update(1)
                    continue
                resources = cell_resources(config, cluster_has_gpu=cluster_has_gpu,
                                           cpus=options.cpus_per_cell)
                ref = task.options(runtime_env=runtime_env, **resources).remote(
                    config, options.cpus_per_cell, source)
                running[ref] = config
            if not running:
                if todo:  # a source cell is never waiting itself, so this is a bug
                    raise RuntimeError("cells wait for source cells that are neither pending nor running")
                break
            bar.set_postfix(ok=len(summary.ok), failed=len(summary.failed),
                            running=len(running), skipped=len(summary.skipped))
            (ref,), _ = ray.wait(list(running), num_returns=1)
            config = running.pop(ref)
            record, files = _collect(ray, ref, config, attempts=1 + options.max_retries)
            record.setdefault("executor", {"kind": "ray", "concurrent_cells": options.workers})
            finish_cell(store, config, record, files, summary, on_record)
            waits.finished(config)
            bar.update(1)
    except BaseException:
        # Interrupted, or stopped by bad input: nothing of the running cells is stored,
        # so a rerun redoes exactly them.
        for ref in running:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()
        if started_ray:
            ray.shutdown()
        remove_stale_staging(staging_root())  # of workers on this node that were killed
    return summary
