"""Images for a feature pass, decoded by a pool of threads one batch ahead of the tower.

``source.load`` on a folder decodes and resizes one file after another; alone, that
keeps one core busy while the tower waits. Here each batch is cut into small chunks
that pool threads load at once, and the next batch is decoded while the tower encodes
the current one. Threads are enough: PIL releases the GIL while it decodes, converts
and resizes, so the workers run on every core (the memory benchmark's decode-only
pass checks this as CPU time over wall time). The batches are the ones a plain loop
would give, row for row, so the tower sees the same inputs and gives the same
features. At most two batches of pixels exist at a time, whatever the dataset size.

``TUNEBENCH_DECODE_WORKERS`` sets the pool size (0: decode in the calling thread, one
batch at a time, as before the pool); the default follows the cell's torch thread
count, at least 2 and at most 8.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from tunebench.datasets.base import ImageSource

CHUNK = 16  # images per pool task: small enough to balance, large enough to amortise


def decode_workers() -> int:
    configured = os.environ.get("TUNEBENCH_DECODE_WORKERS", "").strip()
    if configured:
        return max(0, int(configured))
    return min(8, max(2, torch.get_num_threads()))


def image_batches(source: ImageSource, indices: np.ndarray, batch_size: int,
                  workers: int | None = None) -> Iterator[np.ndarray]:
    """``source.load`` of each ``batch_size`` slice of ``indices``, in order."""
    indices = np.asarray(indices, dtype=np.int64)
    starts = range(0, len(indices), batch_size)
    workers = decode_workers() if workers is None else workers
    if workers == 0:
        for start in starts:
            yield source.load(indices[start : start + batch_size])
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tunebench-decode") as pool:
        def submit(start: int) -> list[Future]:
            batch = indices[start : start + batch_size]
            return [pool.submit(source.load, batch[s : s + CHUNK]) for s in range(0, len(batch), CHUNK)]

        pending = submit(0) if len(indices) else []
        try:
            for start in starts:
                current = pending
                pending = submit(start + batch_size) if start + batch_size < len(indices) else []
                parts = [future.result() for future in current]
                yield parts[0] if len(parts) == 1 else np.concatenate(parts)
        finally:
            for future in pending:  # the consumer stopped early (or failed): drop the look-ahead
                future.cancel()
