"""``tunebench gpu-check``: every task's CUDA + bf16 path, and three measurements at scale.

Parts, each in its own try/except so that one broken part records a one-line failure
and the others still give their numbers (docs/gpu-check.md):

  autocast        the tasks' autocast (train.precision auto) gives bf16 on CUDA, fp32 on CPU
  tasks           one small cell per task through the shared Runner (classification:
                  cones, coop, full-ft; align: lit:projection; detect: cones; generation:
                  cones, textual-inversion), on the tiny registered models and in-memory
                  data; each must finish, and its peak_memory_kind must be the CUDA
                  allocator's on a GPU (the RSS sampler on CPU)
  peak-memory     (CUDA only) the runner resets the allocator's peak per run: after a
                  1 GiB tensor is freed, a tiny cell must report far less than 1 GiB, and
                  exactly torch.cuda.max_memory_allocated
  full-ft         images/s and model FLOPs utilisation of full fine-tuning on
                  open_clip:ViT-B-16 (random weights, 224 px), at the largest batch that
                  fits, from 256 halving on out-of-memory
  classes-1000    ConES vs CoOp train-step time at 1,000 classes (ImageNet's names), the
                  same backbone, cached image features
  sd-64           ConES vs textual-inversion train-step time on a Stable-Diffusion-
                  proportioned random pipeline at 64 × 64 latents (models/sd_timing.py)

MFU = FLOPs of one training step (forward + backward, counted by torch's
FlopCounterMode on that step: matmuls, convolutions, attention) × steps per second /
the GPU's dense bf16 peak (``PEAK_BF16``). Every clock is read after a device sync
(engine.measure.Stopwatch); the first steps are warm-up and not timed.

``--tiny`` runs the same code with toy sizes (tiny-open-clip at 32 px, 20 classes, a
toy SD-shaped pipeline): the CPU dry pass ``make gpu-check`` falls back to, and a test.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tunebench.bench.runner import Runner, describe_error, validate_cells
from tunebench.config import RunConfig, TrainConfig, method_config, task_config
from tunebench.engine.measure import PeakMemory, Stopwatch, environment, release_free_memory
from tunebench.engine.training import autocast_for, seed_everything
from tunebench.genmethods.base import ConceptPrompts
from tunebench.methods.base import ClassPrompts, resolve_method
from tunebench.models.sd_timing import sd_proportioned_model
from tunebench.paths import atomic_write_text
from tunebench.registry import BACKBONES, TASKS, load_all
from tunebench.tasks.classification import train_classifier
from tunebench.tasks.generation import GenerationSettings, train_concept

RESULT_FILE = "gpu-check.json"
DEFAULT_RESULTS = Path("results-gpu")
SCHEMA = 1

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets (they
# print the 2:4-sparse figure, twice these). The first entry whose words all appear in
# torch.cuda.get_device_name() wins, so a specific name precedes its family's.
PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835.5),  # H200 NVL: 1,671 sparse
    ("H200", 989.5),  # H200 SXM: 1,979 sparse
    ("H100 NVL", 835.5),  # H100 NVL: 1,671 sparse
    ("H100 PCIe", 756.5),  # H100 PCIe: 1,513 sparse
    ("H100", 989.5),  # H100 SXM: 1,979 sparse
    ("A100", 312.0),  # A100 (SXM and PCIe): 624 sparse
    ("L40S", 362.05),  # L40S: 733 sparse
)


def peak_bf16_tflops(device_name: str) -> float | None:
    """The table's peak for a device name, or None (MFU is then left out, and said so)."""
    for words, tflops in PEAK_BF16:
        if all(word in device_name for word in words.split()):
            return tflops
    return None


@dataclass(frozen=True)
class Sizes:
    """What the measurements run on: real sizes on a GPU, toy ones for ``--tiny``."""

    arch: str  # open_clip architecture (random weights)
    image_size: int
    max_batch: int  # full-ft starts here and halves on out-of-memory
    ft_classes: int  # class prompts full-ft encodes each step (its text tower trains too)
    many_classes: int  # ConES vs CoOp
    class_batch: int  # images per ConES / CoOp step (CoOp's paper: 32)
    sd_tiny: bool
    sd_batch: int
    sd_references: int
    steps: int  # timed steps per measurement
    warmup: int  # untimed steps before them
    task_steps: int  # steps of each task cell


FULL = Sizes(arch="ViT-B-16", image_size=224, max_batch=256, ft_classes=10, many_classes=1000, class_batch=32,
             sd_tiny=False, sd_batch=8, sd_references=5, steps=50, warmup=5, task_steps=20)
TINY = Sizes(arch="tiny-open-clip", image_size=32, max_batch=8, ft_classes=4, many_classes=20, class_batch=4,
             sd_tiny=True, sd_batch=2, sd_references=2, steps=2, warmup=1, task_steps=2)


def imagenet_classnames(count: int) -> list[str]:
    """The first ``count`` ImageNet-1k class names (each synset's first name)."""
    from timm.data import ImageNetInfo

    return [d.split(",")[0].strip() for d in ImageNetInfo().label_descriptions()[:count]]


# ---- parts ----------------------------------------------------------------------------


def check_autocast(device: torch.device, sizes: Sizes, work: Path) -> dict:
    """What ``train.precision: auto`` (the default every sweep uses) autocasts to here."""
    x = torch.ones(4, 4, device=device)
    with autocast_for(device, TrainConfig().precision):
        dtype = (x @ x).dtype
    expected = torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype != expected:
        raise AssertionError(f"precision auto gave {dtype} on {device.type}, expected {expected}")
    return {"matmul_dtype": str(dtype).removeprefix("torch.")}


def _cell(task: str, dataset: str, method: str, backbone: str, shots: int, steps: int, *,
          image_size: int = 16, task_settings: dict | None = None) -> RunConfig:
    cls, variant = resolve_method(method, task)
    return RunConfig(
        task=task, dataset=dataset, method=method, backbone=backbone, shots=shots, seed=1,
        train=TrainConfig(steps=steps, batch_size=8, warmup_steps=1, image_size=image_size,
                          eval_batch_size=64, save_artifacts=False),
        method_config=dataclasses.asdict(method_config(cls, variant, method)),
        task_config=task_config(TASKS.get(task), task_settings),
    )


GENERATION_SMOKE = {"judge": "tiny", "clip_backbone": "tiny-clip", "clip_image_size": 16, "samples_per_prompt": 2,
                    "curve_samples_per_prompt": 1, "sampling_steps": 2, "real_images": 4, "timing_repeats": 1,
                    "checkpoints": [0.0, 1.0]}


def task_cells(steps: int) -> list[RunConfig]:
    """One small cell per task (and per way a classification method reaches the towers)."""
    align = {"zero_shot_datasets": ["tiny-shapes"], "zero_shot_per_class": 5}
    detect = {"test_images": 6, "images_per_batch": 4, "pictures": 1, "picture_min_score": 0.3}
    return [
        *(_cell("fewshot-cls", "tiny-shapes", m, "tiny-clip", 4, steps) for m in ("cones", "coop", "full-ft")),
        _cell("align", "tiny-scenes", "lit:projection", "tiny-clip", 40, steps, task_settings=align),
        _cell("detect", "tiny-det", "cones", "tiny-detector", 2, steps, task_settings=detect),
        *(_cell("generation", "concept:zebra", m, "tiny-t2i", 3, steps, task_settings=GENERATION_SMOKE)
          for m in ("cones", "textual-inversion")),
    ]


def _expected_memory_kind(device: torch.device) -> str:
    return "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss_sampled"


def run_tasks(device: torch.device, sizes: Sizes, work: Path) -> dict:
    """Each task's cell through the Runner (records in WORK/runs); all must pass."""
    cells = [dataclasses.replace(c, train=dataclasses.replace(c.train, device=device.type))
             for c in task_cells(sizes.task_steps)]
    validate_cells(cells)
    rows, problems = [], []
    with tempfile.TemporaryDirectory(prefix="tunebench-gpu-check-cache-") as cache:  # not in the results
        runner = Runner(work, force=True, cache_dir=Path(cache))
        for config in cells:
            rows.append(_task_row(runner, config, device, problems))
    if problems:
        raise PartFailed(f"{len(problems)} of {len(cells)} cells: " + "; ".join(problems), cells=rows)
    return {"cells": rows}


def _task_row(runner: Runner, config: RunConfig, device: torch.device, problems: list[str]) -> dict:
    started = time.perf_counter()
    record = runner.run(config)
    if record["status"] != "ok":
        problems.append(f"{config.task}/{config.method}: {record['error']}")
    elif record["peak_memory_kind"] != _expected_memory_kind(device):
        problems.append(f"{config.task}/{config.method}: peak memory from {record['peak_memory_kind']}")
    return {"task": config.task, "method": config.method, "backbone": config.backbone,
            "seconds": round(time.perf_counter() - started, 2),
            "status": record["status"], "error": record["error"], "config_hash": config.config_hash,
            "train_seconds": record["train_seconds"], "peak_memory_mb": record["peak_memory_mb"],
            "peak_memory_kind": record["peak_memory_kind"]}


def check_peak_memory(device: torch.device, sizes: Sizes, work: Path) -> dict:
    """A tiny cell after a freed 1 GiB tensor: its peak must be its own (reset per run)."""
    if device.type != "cuda":
        raise _Skip("no CUDA device: the runner measures RSS here")
    big = torch.empty(2**30, dtype=torch.uint8, device=device)
    before = torch.cuda.max_memory_allocated(device) / 2**20
    del big
    config = dataclasses.replace(task_cells(sizes.task_steps)[0], train=TrainConfig(
        steps=sizes.task_steps, batch_size=8, warmup_steps=1, image_size=16, save_artifacts=False, device="cuda"))
    with tempfile.TemporaryDirectory(prefix="tunebench-gpu-check-cache-") as cache:
        record = Runner(work, force=True, cache_dir=Path(cache)).run(config, write=False)
    allocator = torch.cuda.max_memory_allocated(device) / 2**20
    if record["status"] != "ok":
        raise AssertionError(f"the probe cell failed: {record['error']}")
    if record["peak_memory_kind"] != "cuda_max_allocated" or not record["peak_memory_mb"] < before / 2:
        raise AssertionError(f"peak_memory_mb {record['peak_memory_mb']} ({record['peak_memory_kind']}) after a "
                             f"freed {before:.0f} MB peak: not reset per run")
    if abs(record["peak_memory_mb"] - allocator) > 1.0:
        raise AssertionError(f"peak_memory_mb {record['peak_memory_mb']} is not the allocator's {allocator:.1f}")
    return {"peak_before_mb": round(before, 1), "cell_peak_memory_mb": record["peak_memory_mb"],
            "allocator_max_mb": round(allocator, 1)}


def _open_clip(arch: str, device: torch.device):
    builder, argument = BACKBONES.resolve(f"open_clip:{arch}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights": intended, these runs time steps only
        return builder(argument).to(device)


def _adapter(method: str, backbone, classnames: list[str]):
    cls, variant = resolve_method(method)
    return cls(backbone, ClassPrompts(tuple(classnames), ("a photo of a {}.",)),
               method_config(cls, variant, method)).to(backbone.logit_scale.device)


def _train(adapter, inputs, labels, *, pixels: bool, steps: int, batch: int, device) -> None:
    train_classifier(adapter, inputs, labels, pixels=pixels, seed=1, device=device, label="gpu-check",
                     config=TrainConfig(steps=steps, batch_size=batch, warmup_steps=0, grad_clip=1.0))


def _timed_steps(adapter, inputs, labels, *, pixels: bool, sizes: Sizes, batch: int, device) -> float:
    """Seconds per step over ``sizes.steps`` steps, after ``sizes.warmup`` untimed ones."""
    _train(adapter, inputs, labels, pixels=pixels, steps=sizes.warmup, batch=batch, device=device)
    watch = Stopwatch(device)
    with watch.measure():
        _train(adapter, inputs, labels, pixels=pixels, steps=sizes.steps, batch=batch, device=device)
    return watch.seconds / sizes.steps


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError)


def full_ft_throughput(device: torch.device, sizes: Sizes, work: Path) -> dict:
    """Full fine-tuning images/s on pixels already on the device (the model's speed, not
    the input pipeline's), and its MFU."""
    from torch.utils.flop_counter import FlopCounterMode

    seed_everything(0)
    backbone = _open_clip(sizes.arch, device)
    adapter = _adapter("full-ft", backbone, imagenet_classnames(sizes.ft_classes))
    batch, tried = sizes.max_batch, []
    while True:
        inputs = labels = None
        try:
            inputs = torch.randn(batch, 3, sizes.image_size, sizes.image_size, device=device)
            labels = torch.randint(0, sizes.ft_classes, (batch,))
            _train(adapter, inputs, labels, pixels=True, steps=1, batch=batch, device=device)
            break
        except Exception as exc:
            if not _is_oom(exc) or batch == 1:
                raise
            tried.append(batch)
            del inputs, labels
            adapter.zero_grad(set_to_none=True)
            release_free_memory()
            batch //= 2
    with FlopCounterMode(display=False) as counter:
        _train(adapter, inputs, labels, pixels=True, steps=1, batch=batch, device=device)
    flops = counter.get_total_flops()
    with PeakMemory(device) as memory:
        seconds = _timed_steps(adapter, inputs, labels, pixels=True, sizes=sizes, batch=batch, device=device)
    result = {"backbone": f"open_clip:{sizes.arch}", "weights": "random", "image_size": sizes.image_size,
              "classes": sizes.ft_classes, "batch": batch, "batches_out_of_memory": tried,
              "step_seconds": round(seconds, 6), "images_per_second": round(batch / seconds, 2),
              "step_flops": flops, "achieved_tflops": round(flops / seconds / 1e12, 3),
              "peak_memory_mb": memory.megabytes, "peak_memory_kind": memory.kind}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_bf16_tflops(name) if device.type == "cuda" else None
    result["peak_bf16_tflops"] = peak
    result["mfu"] = round(flops / seconds / (peak * 1e12), 4) if peak else None
    if peak is None:
        result["mfu_note"] = f"no bf16 peak known for {name!r} (PEAK_BF16 in bench/gpucheck.py): MFU omitted"
    return result


def classes_step_time(device: torch.device, sizes: Sizes, work: Path) -> dict:
    """ConES vs CoOp step time at ``many_classes`` classes, on cached-feature batches."""
    seed_everything(0)
    backbone = _open_clip(sizes.arch, device)
    names = imagenet_classnames(sizes.many_classes)
    with torch.no_grad():
        width = backbone.encode_image_trunk(
            torch.zeros(1, 3, sizes.image_size, sizes.image_size, device=device)).shape[-1]
    features = torch.randn(4 * sizes.class_batch, width, device=device)
    labels = torch.randint(0, len(names), (len(features),))
    result = {"backbone": f"open_clip:{sizes.arch}", "weights": "random", "classes": len(names),
              "batch": sizes.class_batch, "image_input": "cached-features"}
    for method in ("cones", "coop"):
        adapter = _adapter(method, backbone, names)
        with PeakMemory(device) as memory:
            seconds = _timed_steps(adapter, features, labels, pixels=False, sizes=sizes,
                                   batch=sizes.class_batch, device=device)
        result[method] = {"step_seconds": round(seconds, 6), "trainable_params": adapter.trainable_count(),
                          "peak_memory_mb": memory.megabytes}
        del adapter
        release_free_memory()
    result["coop_over_cones"] = round(result["coop"]["step_seconds"] / result["cones"]["step_seconds"], 2)
    return result


def sd_step_time(device: torch.device, sizes: Sizes, work: Path) -> dict:
    """ConES vs textual inversion, the generation task's own training step (train_concept)."""
    seed_everything(0)
    model = sd_proportioned_model(tiny=sizes.sd_tiny, device=device)
    settings = GenerationSettings()
    prompts = ConceptPrompts("horse", tuple(settings.train_templates))
    latents = torch.randn(sizes.sd_references, model.latent_channels, model.latent_size, model.latent_size,
                          device=device)
    result = {"model": model.content_id, "latent_size": model.latent_size, "batch": sizes.sd_batch,
              "text_encoder_params": sum(p.numel() for p in model.text_encoder.parameters()),
              "unet_params": sum(p.numel() for p in model.unet.parameters()), "prompt_tokens": model.max_length}
    for method in ("cones", "textual-inversion"):
        cls, variant = resolve_method(method, "generation")
        config = RunConfig(task="generation", dataset="concept:zebra", method=method, backbone=model.content_id,
                           shots=sizes.sd_references, seed=1,
                           train=TrainConfig(steps=sizes.warmup + sizes.steps, batch_size=sizes.sd_batch,
                                             warmup_steps=1, save_artifacts=False))
        adapter = cls(model, prompts, method_config(cls, variant, method)).to(device)
        with PeakMemory(device) as memory:
            # train_concept leaves its first step out of the median; the rest warm up too.
            outcome = train_concept(adapter, latents, torch.arange(len(prompts.prompts)), config=config,
                                    settings=settings, watch=Stopwatch(device), checkpoints=set(),
                                    on_checkpoint=lambda step: None)
        result[method] = {"step_seconds": round(outcome["step_seconds"], 6),
                          "trainable_params": adapter.trainable_count(), "peak_memory_mb": memory.megabytes}
        del adapter
        release_free_memory()
    ti, cones = result["textual-inversion"]["step_seconds"], result["cones"]["step_seconds"]
    result["textual_inversion_over_cones"] = round(ti / cones, 2)
    return result


class _Skip(Exception):
    """A part that does not apply on this device (recorded as skipped, not failed)."""


class PartFailed(Exception):
    """A failed check that still has numbers to keep (recorded with the failure)."""

    def __init__(self, message: str, **details) -> None:
        super().__init__(message)
        self.details = details


PARTS: tuple[tuple[str, Callable[[torch.device, Sizes, Path], dict]], ...] = (
    ("autocast", check_autocast),
    ("tasks", run_tasks),
    ("peak-memory", check_peak_memory),
    ("full-ft", full_ft_throughput),
    ("classes-1000", classes_step_time),
    ("sd-64", sd_step_time),
)


def run_part(name: str, part, device: torch.device, sizes: Sizes, work: Path) -> dict:
    started = time.perf_counter()
    try:
        entry = {"name": name, "status": "ok", **part(device, sizes, work)}
    except _Skip as skip:
        entry = {"name": name, "status": "skipped", "note": str(skip)}
    except PartFailed as failure:
        entry = {"name": name, "status": "failed", "error": str(failure), **failure.details}
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one broken part must not lose the others' numbers
        entry = {"name": name, "status": "failed", "error": describe_error(exc)}
    if device.type == "cuda":  # the next part starts from an empty allocator cache
        torch.cuda.synchronize(device)
        release_free_memory()
    entry["seconds"] = round(time.perf_counter() - started, 2)
    status = entry["status"] + (f": {entry.get('error') or entry.get('note')}" if entry["status"] != "ok" else "")
    print(f"gpu-check {name}: {status} ({entry['seconds']} s)", flush=True)
    return entry


def gpu_check(results: Path | None, *, tiny: bool, device: torch.device | None = None) -> dict:
    """Run every part; write RESULTS/gpu-check.json (and the task cells' records in
    RESULTS/runs) when ``results`` is given, else into a temporary folder dropped after."""
    load_all()
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = TINY if tiny else FULL
    started = dt.datetime.now(dt.timezone.utc)
    clock = time.perf_counter()
    threads = torch.get_num_threads()
    if tiny and device.type == "cpu":
        torch.set_num_threads(1)  # toy sizes gain nothing from a second thread, and wait for a busy core
    with tempfile.TemporaryDirectory(prefix="tunebench-gpu-check-") as scratch:
        work = Path(results) if results is not None else Path(scratch)
        try:
            parts = [run_part(name, part, device, sizes, work) for name, part in PARTS]
        finally:
            torch.set_num_threads(threads)
        summary = {
            "schema": SCHEMA, "tiny": tiny, "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "started_at": started.isoformat(timespec="seconds"),
            "wall_seconds": round(time.perf_counter() - clock, 1),
            "sizes": dataclasses.asdict(sizes), "parts": parts, "env": environment(device),
        }
        if results is not None:
            atomic_write_text(work / RESULT_FILE, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def failed_parts(summary: dict) -> list[str]:
    return [p["name"] for p in summary["parts"] if p["status"] == "failed"]
