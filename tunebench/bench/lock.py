"""One sweep per results folder at a time.

`claim_results` checks that the results and cache folders can be written, takes an
exclusive ``flock`` on ``RESULTS/.tunebench.lock`` for the whole sweep, and only then
removes what killed writers left behind. The kernel releases a ``flock`` when its
owner dies, so a killed sweep never leaves a stale lock; the file also names its owner
(pid, host, command, start time) so that a second sweep can say who holds the folder.
``tunebench report`` takes no lock: it only reads runs and writes its files atomically.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from tunebench.bench.store import RunStore
from tunebench.errors import StorageError
from tunebench.paths import check_cache_writable

LOCK_NAME = ".tunebench.lock"


@contextmanager
def claim_results(results_dir: Path, command: str) -> Iterator[RunStore]:
    """Check the folders, lock the results folder and clean it; yield its store."""
    check_cache_writable()
    store = RunStore(results_dir)
    store.check_writable()
    with results_lock(store.results_dir, command):
        removed = store.remove_leftovers()
        if removed:
            print(f"removed {len(removed)} leftover file(s) of an interrupted run from "
                  f"{store.results_dir} (temporary files, files no record names)", file=sys.stderr)
        yield store


@contextmanager
def results_lock(results_dir: Path, command: str) -> Iterator[None]:
    """Hold ``RESULTS/.tunebench.lock``; raise StorageError at once when another process does."""
    path = Path(results_dir) / LOCK_NAME
    handle = _acquire(path, results_dir)
    try:
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                 "since": dt.datetime.now().astimezone().isoformat(timespec="seconds")}
        handle.truncate(0)
        handle.write(json.dumps(owner) + "\n")
        handle.flush()
        yield
    finally:
        # Unlinked while still locked: a process waiting on this file then finds it
        # gone and retries on the new one (see _acquire), so two never both hold it.
        path.unlink(missing_ok=True)
        handle.close()


def _acquire(path: Path, results_dir: Path) -> IO[str]:
    while True:
        try:
            handle = open(path, "a+")
        except OSError as exc:
            raise StorageError(f"cannot create the lock file {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StorageError(f"results folder {results_dir} is in use by {_owner(path)}: "
                               "wait for it to finish or use another --results") from None
        if _same_file(handle, path):
            return handle
        handle.close()  # the previous owner removed it between our open and lock


def _same_file(handle: IO[str], path: Path) -> bool:
    try:
        on_disk, held = os.stat(path), os.fstat(handle.fileno())
    except FileNotFoundError:
        return False
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def _owner(path: Path) -> str:
    """Who holds the lock, as its file tells (it may not have written it yet)."""
    try:
        owner = json.loads(path.read_text())
        return f"pid {owner['pid']} on {owner['host']} ({owner['command']}, since {owner['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another tunebench process"
