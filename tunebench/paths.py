"""Where tunebench keeps caches (built models, feature caches, few-shot split files),
the write probe that results and cache folders pass before a sweep starts, and atomic
writes (temporary file beside the target, then rename) for results and caches alike."""

from __future__ import annotations

import errno
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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


def _new_temporary(path: Path) -> Path:
    """A new empty file beside ``path``, created as ``open()`` creates files (0666 less
    the umask; mkstemp's 0600 would hide stored results from other users)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def storage_error(path: Path, exc: OSError) -> StorageError:
    """One line for an OS error while writing ``path``."""
    if exc.errno in DISK_FULL:
        return StorageError(f"disk full while writing {path}: nothing half-written is left; "
                            "free space and rerun to resume")
    reason = exc.strerror or type(exc).__name__
    return StorageError(f"cannot write {path}: {reason}; make the folder writable or choose another one")


@contextmanager
def atomic_output(path: Path) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temporary(path)
        mode = tmp.stat().st_mode & 0o777
        try:
            yield str(tmp)
            os.chmod(tmp, mode)  # a writer that replaces the file (safetensors does) leaves 0600
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise storage_error(path, exc) from exc


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``data`` to ``path`` atomically. Serialise first and write here: a library writer
    (safetensors' save_file, torch.save) reports a full disk as its own exception type,
    which would reach the runner as a failed cell instead of one line that stops."""
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp, open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
