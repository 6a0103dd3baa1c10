"""Where tunebench keeps caches (built models, feature caches, few-shot split files)."""

from __future__ import annotations

import os
from pathlib import Path


def tunebench_cache_dir() -> Path:
    """$TUNEBENCH_CACHE_DIR, else $XDG_CACHE_HOME/tunebench, else ~/.cache/tunebench."""
    explicit = os.environ.get("TUNEBENCH_CACHE_DIR")
    if explicit:
        root = Path(explicit)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "tunebench"
    root.mkdir(parents=True, exist_ok=True)
    return root
