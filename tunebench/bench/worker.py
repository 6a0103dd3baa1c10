"""One cell in a worker process, and its result stored by the driver.

Shared by the two executors that run cells outside the sweep's own process: Ray
(``executors.py``) and local worker processes (``parallel.py``). A worker runs the cell
with the ordinary ``Runner`` in a private staging folder and *returns* its record and
the bytes of the files it made; only the driver writes under the results folder
(``store_cell``: files first, then the record, each atomically, once per cell), so a
worker killed mid-cell leaves nothing behind there.

Staging folders live in node-local temp space, ``TMP/tunebench-staging-UID/cell-*``,
one per running cell, removed when the cell ends; a killed worker's folder is removed
by the next cell on its node, and by the driver after the sweep.
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunebench.bench.chain import ChainSource, SourceFailed, load_source
from tunebench.bench.runner import cell_keys, store_record
from tunebench.bench.store import REQUIRED_KEYS, RunStore
from tunebench.config import RunConfig
from tunebench.paths import atomic_output

# Test-only hook: when this names a file that does not exist yet, the first cell attempt
# that sees it creates the file and SIGKILLs its own worker process, so tests can show
# what a worker dying mid-sweep does. Never set it outside tests.
KILL_MARKER_ENV = "TUNEBENCH_TEST_KILL_MARKER"


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
    return Path(base) / f"tunebench-staging-{os.getuid()}"


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


def run_cell(config: RunConfig, threads: int, source: ChainSource | None = None) -> tuple[dict, dict[str, bytes]]:
    """Body of one cell in a worker (a Ray task, or a local worker process): run it, return (record, {relative path: bytes}) for the
    files it made (artifact, exports, pictures), which the driver writes. A chained cell
    gets its ``source`` from the driver (``source_for``): the worker reads no results folder."""
    import torch

    from tunebench.registry import load_all

    load_all()
    torch.set_num_threads(threads)
    runner = _worker_runner()
    with staging_folder() as folder:
        _kill_hook_for_tests()  # dies mid-cell, leaving a staging folder to clean
        runner.store = RunStore(folder)
        record = runner.run(config, write=False, source=source)
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


def source_for(store: RunStore, config: RunConfig) -> tuple[ChainSource | None, dict | None]:
    """For a driver, before it hands a cell to a worker: (the chained cell's loaded source,
    None), or (None, the failed record to store) when that source's run failed. Bad input
    about the source raises ConfigError, which stops the sweep."""
    try:
        return load_source(store, config), None
    except SourceFailed as exc:
        return None, lost_cell_record(config, str(exc))


def store_cell(store: RunStore, config: RunConfig, record: dict, files: dict[str, bytes]) -> None:
    """Files first, then the record: a stored record never names a missing file."""
    if record["status"] == "ok":
        for relative, data in files.items():
            with atomic_output(store.results_dir / relative) as tmp:
                Path(tmp).write_bytes(data)
    store_record(store, record, config.label)


def finish_cell(store: RunStore, config: RunConfig, record: dict, files: dict[str, bytes], summary,
                on_record=None) -> None:
    """What either executor does with a cell's outcome: store it, count it in ``summary``
    (a SweepSummary), say a failure on stderr, and hand the record to ``on_record``."""
    store_cell(store, config, record, files)
    if record["status"] == "ok":
        summary.ok.append(config.config_hash)
    else:
        summary.failed.append(config.config_hash)
        print(f"FAILED {config.label}: {record['error']}", file=sys.stderr)
    if on_record is not None:
        on_record(record)
