"""Memory and time of a feature pass against dataset size (``make bench-memory``).

    python -m tunebench.bench.memory_bench                  # 2,000 / 10,000 / 50,000 images
    python -m tunebench.bench.memory_bench --sizes 200,1000 --out /tmp/memory   # a quick look

For each size it writes a synthetic ``imagefolder:`` dataset under a temporary folder
(10 classes of small JPEGs, 64-96 px; deleted afterwards, never committed): a few
training images per class and N test images. Then, each in a fresh process so that
one's memory cannot hide in another's peak:

- ``decode``: a decode-only pass over the N test images with the thread pool, and
  ``decode-serial`` with ``TUNEBENCH_DECODE_WORKERS=0`` (one image after another, as
  before the pool); CPU time over wall time shows how many cores decoding kept busy;
- ``cold``: a zero-shot ``fewshot-cls`` cell over all N test images
  (``test_per_class: null``) with an empty feature cache: decode, encode and write
  every feature, then score them streamed from disk;
- ``warm``: the same cell again: features read from the cache, scored streamed.

Peak memory is the child's own ``ru_maxrss`` (its whole life: interpreter, model and
all); wall and CPU time are measured in the child around the pass. The numbers go to
``results/memory/memory.json``; ``tunebench report`` turns them into a table and a
figure (``tunebench/report/sections/memory.py``). Timings only mean something on a
machine nothing else is using.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

DEFAULT_SIZES = (2_000, 10_000, 50_000)
CLASSES = 10
TRAIN_PER_CLASS = 4
PASSES = ("decode", "decode-serial", "cold", "warm")


# ---- the synthetic folder ------------------------------------------------------------


def _write_image(path: Path, number: int, label: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(number)
    side = 64 + (number * 7) % 33  # 64-96 px, sizes mixed as in a real folder
    coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    coarse[..., label % 3] //= 2  # a little class signal; the pixels' content is beside the point
    Image.fromarray(coarse).resize((side, side), Image.BILINEAR).save(path, quality=90)


def write_folder(root: Path, test_images: int, *, classes: int = CLASSES) -> Path:
    """``root/train/<class>/`` (a few images each) and ``root/test/<class>/`` (``test_images`` in all)."""
    jobs = []
    for label in range(classes):
        name = f"class_{label:02d}"
        for split, count in (("train", TRAIN_PER_CLASS), ("test", test_images // classes + (label < test_images % classes))):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            seed = 2 * (label * 10_000_000) + (split == "test")
            jobs += [(folder / f"{i:06d}.jpg", seed + 2 * i, label) for i in range(count)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(lambda job: _write_image(*job), jobs))
    return root


# ---- what a child process measures -----------------------------------------------------


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child_decode(folder: Path) -> dict:
    from tunebench.datasets import load_dataset
    from tunebench.engine.decoding import decode_workers, image_batches

    source = load_dataset(f"imagefolder:{folder}").test
    started, cpu = time.perf_counter(), _cpu_seconds()
    count = sum(len(batch) for batch in image_batches(source, np.arange(len(source)), 256))
    return {"wall_seconds": time.perf_counter() - started, "cpu_seconds": _cpu_seconds() - cpu,
            "images": count, "decode_workers": decode_workers()}


def _child_cell(folder: Path, work: Path, backbone: str, image_size: int) -> dict:
    import dataclasses

    from tunebench.bench.runner import Runner, backbone_version, validate_cells
    from tunebench.config import RunConfig, TrainConfig, method_config, task_config
    from tunebench.methods.base import merge_variant
    from tunebench.registry import TASKS, load_all

    load_all()
    method_cls, settings = merge_variant("zero-shot", "fewshot-cls", {})
    config = RunConfig(
        task="fewshot-cls", dataset=f"imagefolder:{folder}", method="zero-shot", backbone=backbone,
        shots=0, seed=0, train=TrainConfig(image_size=image_size, test_per_class=None),
        method_config=dataclasses.asdict(method_config(method_cls, settings, "method.zero-shot")),
        backbone_version=backbone_version(backbone, None),
        task_config=task_config(TASKS.get("fewshot-cls"), {}, "task"),
    )
    validate_cells([config])
    started, cpu = time.perf_counter(), _cpu_seconds()
    record = Runner(work / "results", force=True, cache_dir=work / "cache").run(config)
    if record["status"] != "ok":
        raise SystemExit(f"cell failed: {record['error']}")
    return {"wall_seconds": time.perf_counter() - started, "cpu_seconds": _cpu_seconds() - cpu,
            "feature_seconds": record["feature_seconds"], "eval_seconds": record["eval_seconds"],
            "top1": record["metrics"]["top1"], "images": record["metrics"]["test_images"],
            "hardware": record["env"]["hardware"]}


def _child(args) -> None:
    folder, work = Path(args.folder), Path(args.work)
    if args.child.startswith("decode"):
        result = _child_decode(folder)
    else:
        result = _child_cell(folder, work, args.backbone, args.image_size)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print("MEMORY-BENCH " + json.dumps(result))


# ---- the driver ----------------------------------------------------------------------


def _measure(kind: str, folder: Path, work: Path, args) -> dict:
    env = {**os.environ, "TUNEBENCH_NO_PROGRESS": "1"}
    if kind == "decode-serial":
        env["TUNEBENCH_DECODE_WORKERS"] = "0"
    command = [sys.executable, "-m", "tunebench.bench.memory_bench", "--child", kind, "--folder", str(folder),
               "--work", str(work), "--backbone", args.backbone, "--image-size", str(args.image_size)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("MEMORY-BENCH ")]
    if done.returncode or not lines:
        sys.stderr.write(done.stdout[-2000:] + done.stderr[-4000:])
        raise SystemExit(f"memory bench: the {kind} pass at {folder} failed (exit {done.returncode})")
    result = json.loads(lines[-1].removeprefix("MEMORY-BENCH "))
    result["cpu_per_wall"] = round(result["cpu_seconds"] / max(result["wall_seconds"], 1e-9), 2)
    for key in ("wall_seconds", "cpu_seconds"):
        result[key] = round(result[key], 2)
    return {"pass": kind, **result}


def run(args) -> Path:
    sizes = [int(s) for s in args.sizes.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="tunebench-memory-", dir=args.workdir))
    rows, hardware, started = [], {}, time.perf_counter()
    try:
        for size in sizes:
            folder = write_folder(scratch / f"images-{size}", size)
            work = scratch / f"work-{size}"
            for kind in PASSES:
                row = {"test_images": size, **_measure(kind, folder, work, args)}
                hardware = row.pop("hardware", None) or hardware
                rows.append(row)
                print(f"{size:>7,} images  {kind:<13} {row['wall_seconds']:>8.1f} s wall  "
                      f"{row['cpu_per_wall']:>5.2f} CPU/wall  {row['peak_rss_mb']:>8.1f} MB peak RSS", flush=True)
            shutil.rmtree(scratch / f"images-{size}")
            shutil.rmtree(work, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    import torch

    record = {
        "command": "python -m tunebench.bench.memory_bench " + " ".join(sys.argv[1:]),
        "backbone": args.backbone, "image_size": args.image_size, "classes": CLASSES,
        "train_images_per_class": TRAIN_PER_CLASS, "seconds": round(time.perf_counter() - started, 1),
        "machine": {**hardware, "python": platform.python_version(), "torch": torch.__version__},
        "rows": rows,
    }
    out = Path(args.out) / "memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out} ({record['seconds']:.0f} s); `tunebench report` draws it")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunebench.bench.memory_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="test images per folder, comma-separated")
    parser.add_argument("--out", default="results/memory", help="folder for memory.json (default results/memory)")
    parser.add_argument("--workdir", default=None, help="where the synthetic folders go (default: the system temp dir)")
    parser.add_argument("--backbone", default="mini-clip")
    parser.add_argument("--image-size", type=int, default=64, help="pixels fed to the tower (bench.yaml's 64)")
    parser.add_argument("--child", choices=PASSES, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
