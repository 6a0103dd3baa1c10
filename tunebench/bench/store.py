"""The results store: one JSON file per run, named by its config hash.

Writes are atomic (temporary file in the same folder, then rename), so a crash or an
interrupted sweep never leaves half a file, and a stored result is never lost to a
later failure: a failed rerun of a finished cell is not attempted at all.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

# The run-record format. Records written before the key existed carry no
# ``schema_version`` and read as 1. Bump it when a key changes meaning; the report reads
# every version from 1 up to this one and skips, with a warning, any other.
SCHEMA_VERSION = 1
REQUIRED_KEYS = (
    "task", "dataset", "method", "backbone", "shots", "seed", "status", "error",
    "config_hash", "train_seconds", "eval_seconds", "trainable_params", "total_params",
    "peak_memory_mb", "images_per_second", "metrics", "env",
)


@contextmanager
def atomic_output(path: Path):
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunStore:
    def __init__(self, results_dir: Path) -> None:
        self.results_dir = Path(results_dir)
        self.runs_dir = self.results_dir / "runs"
        self.artifacts_dir = self.results_dir / "artifacts"
        self.pictures_dir = self.results_dir / "pictures"

    def path(self, config_hash: str) -> Path:
        return self.runs_dir / f"{config_hash}.json"

    def read(self, config_hash: str) -> dict | None:
        try:
            return json.loads(self.path(config_hash).read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def is_finished(self, config_hash: str) -> bool:
        record = self.read(config_hash)
        return bool(record) and record.get("status") == "ok"

    def files_of(self, record: dict) -> list[str]:
        """Paths (relative to the results folder) of the files a record names."""
        files = list((record.get("pictures") or {}).values())
        if record.get("artifact"):
            files.append(record["artifact"]["path"])
        return files

    def write(self, record: dict) -> Path:
        missing = [k for k in REQUIRED_KEYS if k not in record]
        if missing:
            raise ValueError(f"run record lacks {missing}")
        path = self.path(record["config_hash"])
        atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
        return path
