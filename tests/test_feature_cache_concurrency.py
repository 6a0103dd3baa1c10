"""Concurrent cells (Ray workers, or two `tunebench` processes) share one feature cache:
writers of one file must neither corrupt it nor drop each other's rows."""

from __future__ import annotations

import multiprocessing

import numpy as np
import torch

WORKERS = 6


def _request(root: str, start: int, queue, barrier) -> None:
    """In a child process: ask the shared cache for an overlapping slice of rows."""
    from tunebench.datasets import load_dataset
    from tunebench.engine.features import FeatureCache
    from tunebench.models.tiny import build_tiny_clip

    torch.set_num_threads(1)
    backbone = build_tiny_clip().eval()
    source = load_dataset("tiny-shapes").train
    indices = np.arange(start, start + 12)
    barrier.wait(timeout=240)  # every process asks at the same moment: the writers race
    features = FeatureCache(root).get(backbone, source, indices, dataset="tiny-shapes", split="train",
                                      image_size=16, device=torch.device("cpu"), batch_size=4)
    queue.put((start, features.numpy()))


def test_concurrent_writers_keep_every_row(tmp_path):
    from tunebench.datasets import load_dataset
    from tunebench.engine.features import FeatureCache
    from tunebench.models.tiny import build_tiny_clip

    context = multiprocessing.get_context("spawn")  # fresh interpreters, like Ray workers
    queue, barrier = context.Queue(), context.Barrier(WORKERS)
    starts = [4 * i for i in range(WORKERS)]  # rows 0-11, 4-15, 8-19, 12-23: each overlaps
    processes = [context.Process(target=_request, args=(str(tmp_path), s, queue, barrier)) for s in starts]
    for p in processes:
        p.start()
    got = dict(queue.get(timeout=300) for _ in processes)
    for p in processes:
        p.join(timeout=60)
        assert p.exitcode == 0

    # The file holds the union of every request, and each answer matches a fresh encode.
    backbone = build_tiny_clip().eval()
    source = load_dataset("tiny-shapes").train
    cache = FeatureCache(tmp_path)
    path = cache.file_for(backbone, source, "tiny-shapes", "train", 16)
    stored_file = cache.open(path)
    have, stored = stored_file.indices, stored_file.read(np.arange(len(stored_file.indices)))
    assert list(have) == list(range(4 * (WORKERS - 1) + 12))
    fresh = FeatureCache(tmp_path / "fresh").get(
        backbone, source, have, dataset="tiny-shapes", split="train", image_size=16,
        device=torch.device("cpu"),
    )
    torch.testing.assert_close(torch.from_numpy(stored), fresh, rtol=1e-4, atol=1e-5)
    for start, features in got.items():
        torch.testing.assert_close(torch.from_numpy(features), fresh[start : start + 12], rtol=1e-4, atol=1e-5)
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written copy left behind
