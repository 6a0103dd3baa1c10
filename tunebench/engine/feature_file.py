"""Feature rows on disk, read a batch at a time, so that a split of any size costs one
batch of memory.

A feature file is two ``.npy`` records back to back, as ``np.save`` writes them to one
open file: the sorted image indices (int64, shape (n,)), then their features (float32,
shape (n, F)), row i belonging to index i. ``np.load`` on an open handle reads the
first; the second is found by its ``.npy`` header. Rows are written in chunks as they
are computed and read with ``os.preadv`` into a fresh buffer per batch rather than
through a long-lived memory map: pages of a mapping that were touched count towards
the process's resident set (``ru_maxrss``) until unmapped, so a mapping read end to
end would grow with the file, while file reads leave the data in the page cache,
which belongs to no process.

``FeatureRows`` is a lazy, ordered selection of a file's rows: slicing it reads those
rows now (a tensor), indexing it with a mask or an index array gives a smaller
selection. It keeps its file open, so a writer that atomically replaces the path
afterwards does not change what it reads.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

DTYPE = np.dtype("<f4")


class FeatureFile:
    """An open feature file: its indices in memory (8 bytes a row), its rows on disk."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        handle.seek(0)
        self.indices = np.load(handle)
        version = np.lib.format.read_magic(handle)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise ValueError("not a feature file")
        shape, fortran, dtype = read_header[version](handle)
        if (dtype != DTYPE or fortran or len(shape) != 2 or self.indices.dtype != np.int64
                or self.indices.ndim != 1 or shape[0] != len(self.indices)):
            raise ValueError("not a feature file")
        self.offset = handle.tell()
        self.num_features = int(shape[1])
        if os.fstat(handle.fileno()).st_size != self.offset + len(self.indices) * self.row_bytes:
            raise ValueError("feature file is truncated")

    @classmethod
    def open(cls, path: Path) -> FeatureFile:
        handle = open(path, "rb")  # noqa: SIM115 - owned by the FeatureFile, closed with it
        try:
            return cls(handle)
        except Exception:
            handle.close()
            raise

    @property
    def row_bytes(self) -> int:
        return self.num_features * DTYPE.itemsize

    def read(self, positions: np.ndarray) -> np.ndarray:
        """Rows at ``positions`` (any order), one read per run of consecutive positions."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), self.num_features), dtype=DTYPE)
        if not len(positions):
            return out
        breaks = np.flatnonzero(np.diff(positions) != 1) + 1
        starts = np.concatenate([[0], breaks])
        stops = np.concatenate([breaks, [len(positions)]])
        view = memoryview(out).cast("B")
        for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
            want = (stop - start) * self.row_bytes
            where = self.offset + int(positions[start]) * self.row_bytes
            got = os.preadv(self.handle.fileno(), [view[start * self.row_bytes : stop * self.row_bytes]], where)
            if got != want:
                raise OSError(f"feature file {self.handle.name}: short read ({got} of {want} bytes)")
        return out

    def close(self) -> None:
        self.handle.close()

    def __del__(self) -> None:  # the last FeatureRows reading it is gone
        handle = getattr(self, "handle", None)
        if handle is not None:
            handle.close()


def write_rows(handle: BinaryIO, indices: np.ndarray, chunks: Iterable[np.ndarray | torch.Tensor]) -> None:
    """Write a feature file for ``indices`` into ``handle``, the rows arriving in chunks
    (in the order of ``indices``); the header needs the feature width, so it is written
    with the first chunk."""
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    np.save(handle, indices)
    written = 0
    for chunk in chunks:
        chunk = np.ascontiguousarray(chunk.numpy() if isinstance(chunk, torch.Tensor) else chunk, dtype=DTYPE)
        if written == 0:
            _header(handle, (len(indices), int(chunk.shape[1])))
        handle.write(chunk.data)
        written += len(chunk)
    if written == 0:  # no rows: still a valid (0, 0) array
        _header(handle, (0, 0))
    if written != len(indices):
        raise RuntimeError(f"{written} feature rows written for {len(indices)} indices")


def _header(handle: BinaryIO, shape: tuple[int, int]) -> None:
    np.lib.format.write_array_header_1_0(
        handle, {"descr": np.lib.format.dtype_to_descr(DTYPE), "fortran_order": False, "shape": shape})


class FeatureRows:
    """Rows of a feature file in a chosen order, read when sliced."""

    def __init__(self, file: FeatureFile, positions: np.ndarray) -> None:
        self.file = file
        self.positions = np.asarray(positions, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.positions), self.file.num_features)

    def __getitem__(self, key):
        """``rows[a:b]``: a float32 tensor read now; ``rows[mask]`` / ``rows[index array]``:
        a smaller ``FeatureRows`` (what a torch tensor's indexing gives, lazily)."""
        if isinstance(key, slice):
            return torch.from_numpy(self.file.read(self.positions[key]))
        if isinstance(key, int | np.integer):
            return torch.from_numpy(self.file.read(self.positions[[key]]))[0]
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        return FeatureRows(self.file, self.positions[np.asarray(key)])

    def tensor(self) -> torch.Tensor:
        """Every selected row in memory: for small selections (few-shot training rows)."""
        return torch.from_numpy(self.file.read(self.positions))


def stream_to_scratch(indices: np.ndarray, chunks: Iterable[torch.Tensor], directory: Path | None = None
                      ) -> FeatureRows:
    """Rows computed in chunks, kept in an anonymous file (unlinked at once, so nothing
    is left behind if the process dies) rather than in memory."""
    handle = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - owned by the FeatureFile
    try:
        write_rows(handle, np.arange(len(indices)), chunks)
        handle.flush()
        return FeatureRows(FeatureFile(handle), np.arange(len(indices)))
    except BaseException:
        handle.close()
        raise
