"""Real-size folders in bounded memory: features go to disk and come back a batch at a
time, images are decoded by a thread pool, and neither changes a single bit of what
the tower sees or what evaluation counts."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tunebench.config import RunConfig, TrainConfig
from tunebench.datasets.base import ImageSource
from tunebench.datasets.imagefolder import image_folder
from tunebench.engine.decoding import image_batches
from tunebench.engine.features import FeatureCache
from tunebench.methods.base import ClassPrompts
from tunebench.methods.zero_shot import ZeroShot
from tunebench.tasks.classification import count_correct

CPU = torch.device("cpu")


def write_folder(root: Path, per_class: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(["circle", "square", "triangle"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(20 + c, 18, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def plain_features(backbone, source, indices, batch_size) -> torch.Tensor:
    """What the cache computed before it streamed: decode, preprocess, encode, in one loop."""
    with torch.no_grad():
        return torch.cat([backbone.encode_image_trunk(backbone.preprocess(source.load(indices[s : s + batch_size]), 16))
                          for s in range(0, len(indices), batch_size)])


def test_streamed_features_and_top1_match_the_in_memory_path(tmp_path, tiny_backbone):
    dataset = image_folder(write_folder(tmp_path / "shapes"), size=16)
    source, indices = dataset.train, np.arange(len(dataset.train))
    tiny_backbone.eval()
    expected = plain_features(tiny_backbone, source, indices, batch_size=8)

    cache = FeatureCache(tmp_path / "cache")
    options = dict(dataset="shapes", split="train", image_size=16, device=CPU, batch_size=8)
    first = cache.rows(tiny_backbone, source, indices[::3], **options)  # a part, then the rest merged in
    rows = cache.rows(tiny_backbone, source, indices, **options)
    assert torch.equal(first.tensor(), expected[::3])
    assert torch.equal(rows.tensor(), expected)  # bit for bit, after a merge
    assert torch.equal(rows[5:17], expected[5:17])
    mask = torch.from_numpy(source.labels == 1)
    assert torch.equal(rows[mask].tensor(), expected[mask])
    assert len(list(cache.root.glob("*.features"))) == 1 and not list(cache.root.glob(".*.tmp"))

    adapter = ZeroShot(tiny_backbone, ClassPrompts(dataset.classnames, dataset.templates), None)
    config = RunConfig(task="fewshot-cls", method="zero-shot", dataset="x", backbone="tiny-clip", shots=0, seed=0,
                       train=TrainConfig(eval_batch_size=5))
    labels = torch.from_numpy(source.labels)
    in_memory = count_correct(adapter, adapter.scorer, expected, labels, config, CPU)
    assert count_correct(adapter, adapter.scorer, rows, labels, config, CPU) == in_memory


class Generated(ImageSource):
    """``n`` images made from their index on request: the source itself holds nothing."""

    def __init__(self, n: int) -> None:
        self.labels = np.arange(n, dtype=np.int64) % 10

    def load(self, indices):
        return np.stack([np.full((16, 16, 3), i % 251, dtype=np.uint8) for i in indices])

    def identity(self, index: int) -> str:
        return f"generated[{index}]"

    @property
    def content_key(self) -> str:
        return f"generated-{len(self)}"


class WideTrunk(torch.nn.Module):
    """A stand-in tower with 4,096 features a row, so that holding every row shows."""

    content_id = "wide-trunk"

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(3 * 16 * 16, 4096, generator=torch.Generator().manual_seed(0)))

    def preprocess(self, images, image_size):
        return torch.from_numpy(images).float().div(255)

    def encode_image_trunk(self, pixels):
        return pixels.flatten(1) @ self.weight


def peak_rss_kb_during(work) -> int:
    """The resident-set peak that ``work()`` reaches above the RSS when it starts (Linux:
    /proc/self/clear_refs resets the peak)."""
    def status(key: str) -> int:
        return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))

    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("cannot reset the peak resident set here")
    before = status("VmRSS")
    work()
    return status("VmHWM") - before


def test_peak_memory_does_not_grow_with_the_dataset(tmp_path):
    """A cold feature pass plus a streamed read of 2,000 images peaks no higher than one
    of 200; holding the 2,000 rows (32 MB at this width) would show."""
    backbone, cache = WideTrunk().eval(), FeatureCache(tmp_path / "cache")

    def feature_pass(n: int) -> None:
        rows = cache.rows(backbone, Generated(n), np.arange(n), dataset=f"gen{n}", split="test",
                          image_size=16, device=CPU, batch_size=64)
        total = 0.0
        for start in range(0, len(rows), 64):
            total += float(rows[start : start + 64].sum())

    feature_pass(100)  # warm-up: allocator pools, thread arenas, lazy imports
    small = peak_rss_kb_during(lambda: feature_pass(200))
    large = peak_rss_kb_during(lambda: feature_pass(2000))
    assert large - small < 12_000, f"peak grew by {large - small} kB from 200 to 2,000 images"


class Rendezvous(ImageSource):
    """Each load waits until another load runs at the same time: serial decoding fails."""

    def __init__(self, n: int) -> None:
        self.labels = np.zeros(n, dtype=np.int64)
        self.barrier = threading.Barrier(2, timeout=10)

    def load(self, indices):
        self.barrier.wait()
        return np.stack([np.full((4, 4, 3), i, dtype=np.uint8) for i in indices])

    def identity(self, index: int) -> str:
        return str(index)

    content_key = "rendezvous"


def test_decoding_runs_in_more_than_one_worker():
    source = Rendezvous(64)
    batches = list(image_batches(source, np.arange(64), batch_size=32))  # two chunks per batch, side by side
    assert np.array_equal(np.concatenate(batches)[:, 0, 0, 0], np.arange(64))
    with pytest.raises(threading.BrokenBarrierError):  # the check can fail: one worker waits alone
        source.barrier = threading.Barrier(2, timeout=0.5)
        list(image_batches(source, np.arange(64), batch_size=32, workers=0))


def test_memory_report_section_reads_the_benchmark_record(tmp_path):
    """No record: no section (the report stays as it was). A record: table, verdict, figure."""
    import json

    from tunebench.report.sections import Options
    from tunebench.report.sections.memory import write

    assert write([], tmp_path, Options()) == ([], [])
    rows = [{"test_images": n, "pass": kind, "wall_seconds": n / 1000, "cpu_seconds": n / 600,
             "cpu_per_wall": 1.67, "peak_rss_mb": rss, "feature_seconds": 1.0 if kind == "cold" else None,
             "eval_seconds": 0.5 if kind in ("cold", "warm") else None}
            for n, rss in ((2000, 1000.0), (50000, 1600.0)) for kind in ("decode", "decode-serial", "cold", "warm")]
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.json").write_text(json.dumps(
        {"rows": rows, "command": "python -m tunebench.bench.memory_bench", "backbone": "mini-clip",
         "image_size": 64, "classes": 10, "seconds": 60.0, "machine": {"cpu_count": 2}}))
    lines, files = write([], tmp_path, Options())
    text = "\n".join(lines)
    assert "1.60× that at 2,000 (NOT within the 1.5× target)" in text
    assert "| 50,000 | cold cell (features computed) | 1600 |" in text
    assert [p.name for p in files] == ["memory_vs_images.png"] and files[0].is_file()
