"""The results store: one JSON file per run, named by its config hash.

Writes are atomic (``paths.atomic_output``: temporary file in the same folder, then rename), so a crash or an
interrupted sweep never leaves half a file, and a stored result is never lost to a
later failure: a failed rerun of a finished cell is not attempted at all. A write that
fails for want of space or rights raises `StorageError` with one line; what a killed
writer leaves behind (``.NAME.XXXX.tmp``, files no record names) is removed by
`RunStore.remove_leftovers` at the next start, under the results-folder lock.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tunebench.errors import StorageError
from tunebench.paths import DISK_FULL, atomic_write_text, probe_writable

# The run-record format. Records written before the key existed carry no
# ``schema_version`` and read as 1. Bump it when a key changes meaning; the report reads
# every version from 1 up to this one and skips, with a warning, any other.
SCHEMA_VERSION = 1
REQUIRED_KEYS = (
    "task", "dataset", "method", "backbone", "shots", "seed", "status", "error",
    "config_hash", "train_seconds", "eval_seconds", "trainable_params", "total_params",
    "peak_memory_mb", "images_per_second", "metrics", "env",
)
# What the runner names its files: artifacts/HASH.safetensors, exports
# artifacts/HASH-NAME.safetensors, pictures/HASH-NAME.png.
_OWN_FILE = re.compile(r"^[0-9a-f]{16}(\.safetensors|-[A-Za-z0-9_.-]+\.(png|safetensors))$")


class RunStore:
    def __init__(self, results_dir: Path) -> None:
        self.results_dir = Path(results_dir)
        self.runs_dir = self.results_dir / "runs"
        self.artifacts_dir = self.results_dir / "artifacts"
        self.pictures_dir = self.results_dir / "pictures"

    @property
    def folders(self) -> tuple[Path, ...]:
        return (self.results_dir, self.runs_dir, self.artifacts_dir, self.pictures_dir)

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
        files += [export["path"] for export in (record.get("exports") or {}).values()]
        return files

    def write(self, record: dict) -> Path:
        missing = [k for k in REQUIRED_KEYS if k not in record]
        if missing:
            raise ValueError(f"run record lacks {missing}")
        path = self.path(record["config_hash"])
        atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
        return path

    def check_writable(self) -> None:
        """Stop with one line, before any cell runs, when results cannot be stored here."""
        for folder in self.folders:
            if folder.exists() and not folder.is_dir():
                raise StorageError(f"results path {folder} is a file, not a folder: pass another --results")
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            for folder in self.folders:
                if folder.is_dir():  # a missing artifacts/ or pictures/ is made in a writable parent
                    probe_writable(folder)
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise StorageError(f"disk full in results folder {self.results_dir}: "
                                   "free space and rerun") from exc
            raise StorageError(f"results folder {self.results_dir} is not writable "
                               f"({exc.strerror or exc}): make it writable or pass another --results") from exc

    def remove_leftovers(self) -> list[Path]:
        """Delete what killed writers left behind: temporary files, and artifacts or
        pictures that no record names. Call only while holding the results-folder lock,
        so that no live writer owns them."""
        stray = sorted(set(self._temporaries()) | set(self._orphans()))
        for path in stray:
            path.unlink(missing_ok=True)
        return stray

    def _temporaries(self) -> list[Path]:
        found = [p for folder in self.folders[1:] if folder.is_dir() for p in folder.glob(".*.tmp")]
        found += self.results_dir.glob(".tunebench-probe.*.tmp")
        found += self.artifacts_dir.glob(".tmp*")  # safetensors' own temporary files
        return found

    def _orphans(self) -> list[Path]:
        """Artifacts and pictures (by the runner's names) that no record, ok or failed,
        names; none at all while some record cannot be read, as it might name them."""
        named = self._named_files()
        if named is None:
            return []
        return [p for folder in (self.artifacts_dir, self.pictures_dir) if folder.is_dir()
                for p in folder.iterdir()
                if p.is_file() and _OWN_FILE.match(p.name)
                and p.relative_to(self.results_dir).as_posix() not in named]

    def _named_files(self) -> set[str] | None:
        """Every file any stored record names, or None when a record cannot be read."""
        named: set[str] = set()
        for path in self.runs_dir.glob("*.json"):
            try:
                record = json.loads(path.read_text())
                named.update(Path(p).as_posix() for p in self.files_of(record))
            except (OSError, ValueError, AttributeError, KeyError, TypeError):
                return None
        return named
