"""Run a sweep's cells on a Ray cluster: one Ray task per cell, results stored by the driver.

``tunebench bench SWEEP --executor ray`` starts Ray on this machine (or joins
``--ray-address``) and keeps at most ``--ray-workers`` cells running at once. The
division of work keeps the run store the single source of the report:

- a worker runs the cell with the ordinary ``Runner`` and *returns* its record and its
  artifact bytes; it writes nothing under the results folder, so workers need no shared
  filesystem with the driver, and a worker killed mid-cell leaves nothing behind there.
  It stages the cell's files in ``TMP/tunebench-ray-staging-UID/cell-*``, removed when the cell
  ends; a killed worker's folder is removed by the next cell on its node, and by the
  driver after the sweep on the driver's node;
- the driver writes each artifact, then its record, atomically (``RunStore.write``),
  exactly once per cell, with the runner's rules: a finished hash is not submitted and a
  failed rerun never replaces a stored ``ok`` result;
- a worker that dies (killed, out of memory, node lost) makes Ray retry the cell up to
  ``max_retries`` times; after that the cell is stored as ``failed`` with the reason;
- bad input (``ConfigError``/``DataError`` in a worker) stops the sweep with one line,
  as it does in-process; an interrupted driver cancels its running cells, and a rerun of
  the same command skips what was stored and redoes the rest.

Caches stay per node (``TUNEBENCH_CACHE_DIR`` or ~/.cache/tunebench there): feature
files and few-shot splits are written under a file lock or by atomic rename, and the
mini-clip build takes a lock, so cells running side by side on one node share them safely.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import secrets
import shutil
import signal
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tunebench.bench.runner import (
    SweepSummary,
    cell_keys,
    describe_error,
    store_record,
    unique_cells,
)
from tunebench.bench.store import REQUIRED_KEYS, RunStore
from tunebench.config import RunConfig
from tunebench.engine.progress import progress
from tunebench.errors import ConfigError, DataError, StorageError
from tunebench.paths import atomic_output

RAY_MISSING = "Ray is not installed: pip install 'tunebench[ray]'"
# Test-only hook: when this names a file that does not exist yet, the first cell attempt
# that sees it creates the file and SIGKILLs its own worker process, so tests can show
# what a worker dying mid-sweep does. Never set it outside tests.
KILL_MARKER_ENV = "TUNEBENCH_TEST_KILL_MARKER"


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


# ---------------------------------------------------------------- worker side

_WORKER_RUNNERS: dict[str, object] = {}


def _worker_runner():
    """One Runner per worker process and cache folder, so the pristine backbone is loaded
    once per worker instead of once per cell. Each cell points its store at a private
    staging folder (see staging_folder): the runner saves the cell's files there, and
    the cell hands their bytes back to the driver."""
    from tunebench.bench.runner import Runner

    key = str(staging_root())
    if key not in _WORKER_RUNNERS:
        _WORKER_RUNNERS[key] = Runner(staging_root(), force=True)
    return _WORKER_RUNNERS[key]


# Tests point this at a folder of their own; workers inherit it from the driver.
STAGING_ENV = "TUNEBENCH_STAGING_DIR"


def staging_root() -> Path:
    """Where this node's workers stage cell files: node-local temp space, one folder per
    user. Not the cache folder: that may be on NFS, where ``flock`` (which tells a live
    cell's folder from a dead one's) may not hold."""
    base = os.environ.get(STAGING_ENV) or tempfile.gettempdir()
    return Path(base) / f"tunebench-ray-staging-{os.getuid()}"


@contextmanager
def staging_folder() -> Iterator[Path]:
    """A private folder for one cell's files, removed when the cell ends.

    Beside it, ``<folder>.lock`` stays ``flock``ed while the cell runs; the kernel drops
    that lock when the worker dies, which is how remove_stale_staging tells a dead
    worker's folder from a live one. The lock exists, held, before the folder does."""
    root = staging_root()
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(root)
    handle, lock = _held_lock(root)
    folder = lock.with_suffix("")
    try:
        folder.mkdir()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            lock.unlink(missing_ok=True)
    finally:
        os.close(handle)


def _held_lock(root: Path) -> tuple[int, Path]:
    """A new ``cell-*.lock`` in ``root``, locked by us. A cleaner may take a lock file in
    the instant between its creation and our flock and delete it: then we start again."""
    while True:
        lock = root / f"cell-{secrets.token_hex(6)}.lock"
        try:
            handle = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        fcntl.flock(handle, fcntl.LOCK_EX)
        if _same_file(handle, lock):
            return handle, lock
        os.close(handle)


def _same_file(handle: int, path: Path) -> bool:
    try:
        return os.fstat(handle).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


def remove_stale_staging(root: Path) -> list[Path]:
    """Delete staging folders whose worker died mid-cell (their lock is free), with their
    lock files; a lock that cannot be tested is left alone."""
    removed = []
    for lock in sorted(root.glob("cell-*.lock")):
        try:
            handle = os.open(lock, os.O_RDWR)
        except OSError:
            continue  # removed by its owner meanwhile
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not _same_file(handle, lock):
                continue  # another cleaner got there first
            folder = lock.with_suffix("")
            shutil.rmtree(folder, ignore_errors=True)
            lock.unlink(missing_ok=True)
            removed.append(folder)
        except OSError:
            continue  # a live cell's (BlockingIOError), or a lock we cannot test
        finally:
            os.close(handle)
    return removed


def _kill_hook_for_tests() -> None:
    marker = os.environ.get(KILL_MARKER_ENV)
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # an earlier attempt already died: this one runs normally
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def run_cell(config: RunConfig, threads: int) -> tuple[dict, dict[str, bytes]]:
    """Body of one Ray task: run the cell, return (record, {relative path: bytes}) for the
    files it made (artifact, pictures), which the driver writes."""
    import torch

    from tunebench.registry import load_all

    load_all()
    torch.set_num_threads(threads)
    runner = _worker_runner()
    with staging_folder() as folder:
        _kill_hook_for_tests()  # dies mid-cell, leaving a staging folder to clean
        runner.store = RunStore(folder)
        record = runner.run(config, write=False)
        files = {relative: (folder / relative).read_bytes() for relative in runner.store.files_of(record)}
    return record, files


# ---------------------------------------------------------------- driver side


def lost_cell_record(config: RunConfig, error: str) -> dict:
    """A failed record for a cell whose worker never returned one (it has every key the
    store requires; numbers it could not measure are null)."""
    import torch

    from tunebench.engine.measure import environment

    record = dict.fromkeys(REQUIRED_KEYS)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    record.update(
        cell_keys(config), config=config.to_dict(), status="failed",
        error=error, metrics={}, finished_at=now,
        env=environment(torch.device("cpu")),  # the driver's: the worker is gone
    )
    return record


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


def _store(store: RunStore, config: RunConfig, record: dict, files: dict[str, bytes]) -> None:
    """Files first, then the record: a stored record never names a missing file."""
    if record["status"] == "ok":
        for relative, data in files.items():
            with atomic_output(store.results_dir / relative) as tmp:
                Path(tmp).write_bytes(data)
    store_record(store, record, config.label)


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
    todo = deque()
    for config in cells:
        if store.is_finished(config.config_hash) and not force:
            summary.skipped.append(config.config_hash)
        else:
            todo.append(config)
    if not todo:
        return summary

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
            while todo and len(running) < options.workers:
                config = todo.popleft()
                resources = cell_resources(config, cluster_has_gpu=cluster_has_gpu,
                                           cpus=options.cpus_per_cell)
                ref = task.options(runtime_env=runtime_env, **resources).remote(
                    config, options.cpus_per_cell)
                running[ref] = config
            bar.set_postfix(ok=len(summary.ok), failed=len(summary.failed),
                            running=len(running), skipped=len(summary.skipped))
            (ref,), _ = ray.wait(list(running), num_returns=1)
            config = running.pop(ref)
            record, files = _collect(ray, ref, config, attempts=1 + options.max_retries)
            record.setdefault("executor", {"kind": "ray", "concurrent_cells": options.workers})
            _store(store, config, record, files)
            if record["status"] == "ok":
                summary.ok.append(config.config_hash)
            else:
                summary.failed.append(config.config_hash)
                print(f"FAILED {config.label}: {record['error']}", file=sys.stderr)
            bar.update(1)
            if on_record is not None:
                on_record(record)
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
