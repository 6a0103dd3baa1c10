"""Where tunebench keeps caches (built models, feature caches, few-shot split files),
and the write probe that results and cache folders pass before a sweep starts."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from tunebench.errors import StorageError

_FIX = "set TUNEBENCH_CACHE_DIR to a writable folder"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def probe_writable(folder: Path) -> None:
    """Create, fill, sync and delete a small file in ``folder``: raises OSError when the
    folder is read-only, not ours to write, or on a full disk."""
    fd, tmp = tempfile.mkstemp(prefix=".tunebench-probe.", suffix=".tmp", dir=folder)
    try:
        os.write(fd, b"\0" * 4096)
        os.fsync(fd)
    finally:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)


def tunebench_cache_dir() -> Path:
    """$TUNEBENCH_CACHE_DIR, else $XDG_CACHE_HOME/tunebench, else ~/.cache/tunebench."""
    explicit = os.environ.get("TUNEBENCH_CACHE_DIR")
    if explicit:
        root = Path(explicit)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "tunebench"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a file where the folder should be
        raise StorageError(f"cannot use the cache folder {root} ({exc.strerror or exc}): {_FIX}") from exc
    return root


def check_cache_writable() -> Path:
    """The cache folder, after proving a file can be written there (before a sweep starts)."""
    root = tunebench_cache_dir()
    try:
        probe_writable(root)
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise StorageError(f"disk full in the cache folder {root}: free space or {_FIX}") from exc
        raise StorageError(f"the cache folder {root} is not writable ({exc.strerror or exc}): {_FIX}") from exc
    return root
