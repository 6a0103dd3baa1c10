"""Honest measurement: wall-clock with device sync, per-run peak memory, provenance."""

from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import torch


def synchronize(device: torch.device) -> None:
    """CUDA kernels run asynchronously: wait for them before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Accumulates seconds over ``with watch.measure():`` blocks; ``paused()`` inside one
    leaves its own time out (quality checkpoints scored in the middle of training)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self._since: float | None = None  # start of the running stretch; None: not running

    @contextmanager
    def measure(self):
        synchronize(self.device)
        self._since = time.perf_counter()
        try:
            yield
        finally:
            self._stop()

    @contextmanager
    def paused(self):
        """The block's time is not counted; outside ``measure`` there is nothing to pause."""
        if self._since is None:
            yield
            return
        self._stop()
        try:
            yield
        finally:
            synchronize(self.device)
            self._since = time.perf_counter()

    @property
    def elapsed(self) -> float:
        """Seconds counted so far, the running stretch included."""
        running = 0.0 if self._since is None else time.perf_counter() - self._since
        return self.seconds + running

    def _stop(self) -> None:
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._since
        self._since = None


def release_free_memory() -> None:
    """Hand freed heap back to the OS between runs, so one run's RSS peak does not
    carry over into the next run's measurement (glibc keeps freed memory otherwise)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory of one run.

    CUDA: ``max_memory_allocated`` after a reset (tensors only, not the allocator cache).
    CPU: the process's resident set size, sampled every 10 ms by a thread, because the
    kernel's own high-water mark (ru_maxrss) cannot be reset between runs in one process.
    """

    def __init__(self, device: torch.device, interval: float = 0.01) -> None:
        self.device = device
        self.interval = interval
        self.peak_bytes = 0
        self.start_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        elif Path("/proc/self/statm").exists():
            self.start_bytes = self.peak_bytes = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.device.type == "cuda" else "cpu_peak_rss_sampled"

    @property
    def megabytes(self) -> float:
        return round(self.peak_bytes / 2**20, 1)

    @property
    def increase_megabytes(self) -> float:
        """Peak above what was resident when the run started (backbone, caches, earlier runs)."""
        return round(max(0, self.peak_bytes - self.start_bytes) / 2**20, 1)


_PACKAGES = ("torch", "torchvision", "timm", "transformers", "open_clip_torch", "numpy", "tunebench")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: torch.device) -> dict:
    """Commit, package versions and hardware, recorded with every run."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    status = _git("status", "--porcelain", "--untracked-files=no")
    hardware = {
        "device": str(device),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        hardware["gpu"] = props.name
        hardware["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
    return {
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(status) if status is not None else None,
        "python": platform.python_version(),
        "versions": versions,
        "hardware": hardware,
    }
