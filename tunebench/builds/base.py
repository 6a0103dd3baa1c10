"""Shared mechanics of built models (mini-clip, mini-det, ...): one builder per machine
under a file lock, and an all-or-nothing write of weights plus their recipe record."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from tunebench.models.checkpoints import file_digest


@contextmanager
def build_lock(path: Path):
    """One builder per machine: concurrent sweeps wait instead of building twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_build(target: Path, state: dict[str, torch.Tensor], record: dict) -> None:
    """Write into a temporary folder and rename: a crash never leaves half a model."""
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        save_file(state, str(staging / "weights.safetensors"))
        record["weights_sha256_16"] = file_digest(staging / "weights.safetensors")
        (staging / "recipe.json").write_text(json.dumps(record, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
