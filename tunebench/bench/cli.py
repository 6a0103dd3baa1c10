"""Command line: ``tunebench list | build | run | select | bench | report | gpu-check`` (also ``python -m tunebench``)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields
from pathlib import Path

from tunebench.errors import ConfigError, TunebenchError

DEFAULT_RESULTS = Path("results")
# The ``executor`` of a record made in this process (`run`, `bench --jobs 1`).
ONE_AT_A_TIME = {"kind": "local", "jobs": 1, "concurrent_cells": 1}


LIST_KINDS = ("methods", "tasks", "backbones", "datasets", "builds")
DEFAULT_SHOTS, DEFAULT_SEED = 4, 1
# Written out so that `run --help` needs no imports; tests check it names every
# registered backbone.
BACKBONE_HELP = (
    "model to tune (default mini-clip). Classification and align: mini-clip, tiny-clip, "
    "lite0-minilm, lite2-minilm, open_clip:ARCH, hf-clip:FOLDER, towers:FILE.yaml; classification "
    "timing only: cls-timing:TOWER; detect: mini-det, "
    "tiny-detector, det:NAME; generation: mini-t2i, tiny-t2i, diffusers:PATH, "
    "t2i-timing:TEXT-UNET. `tunebench list -v backbones` describes each"
)


def _list(args) -> None:
    from tunebench.registry import BACKBONES, BUILDS, DATASETS, METHODS, TASKS, load_all

    load_all()
    registries = {"methods": METHODS, "tasks": TASKS, "backbones": BACKBONES, "datasets": DATASETS,
                  "builds": BUILDS}
    for kind in [args.kind] if args.kind else list(registries):
        if not args.kind:
            print(f"# {registries[kind].kind}s")
        if kind == "methods":
            _list_methods(args.verbose)
        else:
            _list_registry(registries[kind], args.verbose)


def _list_methods(verbose: bool) -> None:
    """The method × task matrix: which tasks each method serves (its ``tasks``)."""
    from tunebench.registry import METHODS, RENAMED_METHODS, TASKS

    tasks = TASKS.names()
    width = max(len(n) for n in METHODS.names()) + 2
    print("method".ljust(width) + "  ".join(tasks))
    for name in METHODS.names():
        served = METHODS.entry(name).by_task
        print(name.ljust(width) + "  ".join(("yes" if t in served else "-").ljust(len(t)) for t in tasks).rstrip())
    for (task, old), new in sorted(RENAMED_METHODS.items()):
        print(f"({old} on {task}: the former name of {new}, kept for stored results)")
    if not verbose:
        return
    for name in METHODS.names():
        for cls in METHODS.entry(name).classes:
            print(f"\n{name} [{', '.join(t for t in cls.tasks)}]: {cls.summary}")
            _print_fields(cls.config_class)


def _list_registry(registry, verbose: bool) -> None:
    for name in registry.names():
        entry = registry.entry(name)
        summary = getattr(entry, "summary", "") or (entry.__doc__ or "").strip().split("\n")[0]
        print(f"{name:20s} {summary}" if verbose else name)
        config_class = getattr(entry, "config_class", None)
        if verbose and config_class is not None:
            _print_fields(config_class)


def _print_fields(config_class) -> None:
    for f in fields(config_class):
        default = f.default_factory() if callable(f.default_factory) else f.default
        print(f"    {f.name} = {default!r}: {f.metadata.get('help', '')}")


def _build(args) -> None:
    from tunebench.registry import BUILDS, load_all

    load_all()
    print(BUILDS.get(args.model)(force=args.force))


def _parse_value(text: str):
    """A --set value read as in a sweep file: ``50`` is a number, ``null`` is None."""
    from tunebench.config import load_settings_yaml

    return load_settings_yaml(text)


def _run(args) -> None:
    import dataclasses

    from tunebench.bench.lock import claim_results
    from tunebench.bench.runner import Runner, backbone_version, validate_cells
    from tunebench.bench.store import RunStore
    from tunebench.config import (
        RunConfig,
        TrainConfig,
        build_dataclass,
        method_config,
        task_config,
    )
    from tunebench.engine.training import resolve_device
    from tunebench.methods.base import merge_variant
    from tunebench.registry import TASKS, load_all

    load_all()
    train, method_settings, task_settings = {}, {}, {}
    for item in args.set or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r} (e.g. --set train.steps=50)")
        key, value = item.split("=", 1)
        scope, _, name = key.partition(".")
        if scope == "train" and name:
            train[name] = _parse_value(value)
        elif scope == "method" and name:
            method_settings[name] = _parse_value(value)
        elif scope == "task" and name:
            task_settings[name] = _parse_value(value)
        else:
            raise ConfigError(f"--set key must start with train., method. or task., got {key!r}")
    method_cls, method_settings = merge_variant(args.method, args.task, method_settings)
    method_settings = dataclasses.asdict(method_config(method_cls, method_settings, f"method.{args.method}"))
    shots, seed = _shots_and_seed(args, trains=method_cls.trains)
    config = RunConfig(
        task=args.task, dataset=args.dataset, method=args.method, backbone=args.backbone,
        shots=shots, seed=seed, train=build_dataclass(TrainConfig, train, "train"),
        method_config=method_settings, pretrained=args.pretrained,
        backbone_version=backbone_version(args.backbone, args.pretrained),
        task_config=task_config(TASKS.get(args.task), task_settings, "task"),
        init_from=args.init_from, source_steps=args.source_steps,
    )
    validate_cells([config], RunStore(args.results))  # a chained run's source: in the results folder
    resolve_device(config.train.device)  # a GPU that is not there: one line, before the store is touched
    with claim_results(args.results, f"tunebench run --method {args.method} --dataset {args.dataset}"):
        record = Runner(args.results, force=args.force, executor=ONE_AT_A_TIME).run(config)
    if record is None:
        print(f"already finished: {Runner(args.results).store.path(config.config_hash)} (use --force to rerun)")
        return
    _print_record(record)
    if record["status"] != "ok":
        raise TunebenchError(f"run failed: {record['error']}")


def _shots_and_seed(args, *, trains: bool) -> tuple[int, int]:
    """A method that uses no training data is one cell, 0-shot with seed 0, as in sweeps."""
    if trains:
        return (DEFAULT_SHOTS if args.shots is None else args.shots,
                DEFAULT_SEED if args.seed is None else args.seed)
    if args.shots or args.seed:
        print(f"note: {args.method} uses no training data, so --shots and --seed are ignored "
              "(stored as 0-shot, seed 0)", file=sys.stderr)
    return 0, 0


def _print_record(record: dict) -> None:
    top1 = record["metrics"].get("top1")
    print(
        f"{record['method']} on {record['dataset']} ({record['shots']}-shot, seed {record['seed']}): "
        f"{record['status']}"
        + (f", top-1 {top1:.4f}" if top1 is not None else "")
        + (f", train {record['train_seconds']:.2f} s, eval {record['eval_seconds']:.2f} s"
           if record["status"] == "ok" else "")
        + (f", trainable {record['trainable_params']:,} of {record['total_params']:,}"
           if record["status"] == "ok" else "")
    )


def _check_executor_flags(args) -> None:
    ray_flags = [args.ray_address, args.ray_workers, args.ray_cpus_per_cell]
    if args.executor != "ray" and any(flag is not None for flag in ray_flags):
        raise ConfigError("--ray-address, --ray-workers and --ray-cpus-per-cell need --executor ray")
    if args.executor == "ray" and (args.jobs is not None or args.threads is not None):
        raise ConfigError("--jobs and --threads are for --executor local; Ray takes --ray-workers "
                          "and --ray-cpus-per-cell")
    from tunebench.bench.parallel import check_jobs

    check_jobs(1 if args.jobs is None else args.jobs, args.threads)  # before the results folder is touched


def _bench(args) -> None:
    from tunebench.bench.lock import claim_results
    from tunebench.bench.runner import unique_cells, validate_cells
    from tunebench.bench.selection import plan_selection
    from tunebench.bench.store import RunStore
    from tunebench.bench.sweep import expand, load_sweep
    from tunebench.registry import load_all

    _check_executor_flags(args)
    load_all()
    sweep = load_sweep(args.sweep)
    plan = plan_selection(sweep)
    if plan is not None:
        _select_then_bench(args, sweep, plan)
        return
    listed = expand(sweep)
    cells = unique_cells(listed)
    if len(cells) < len(listed):
        print(f"note: {args.sweep} lists {len(listed) - len(cells)} cell(s) more than once; "
              "each runs once", file=sys.stderr)
    validate_cells(cells, RunStore(args.results))
    if args.dry_run:
        for cell in cells:
            print(f"{cell.config_hash}  {cell.label}")
        print(f"{len(cells)} cells")
        return
    _check_ray(args)
    with claim_results(args.results, f"tunebench bench {args.sweep}"):
        _bench_cells(args, cells)


def _check_ray(args) -> None:
    if args.executor == "ray":
        from tunebench.bench.executors import import_ray

        import_ray()  # a missing Ray stops here, before the results folder is touched


def _select(args) -> None:
    """``tunebench select SWEEP``: run (or read) the selection trials and print each choice."""
    from tunebench.bench.selection import plan_selection
    from tunebench.bench.sweep import load_sweep
    from tunebench.registry import load_all

    _check_executor_flags(args)
    load_all()
    plan = plan_selection(load_sweep(args.sweep))
    if plan is None:
        raise ConfigError(f"{args.sweep} has no selection: block: add one (see docs/configuration.md)")
    _select_then_bench(args, None, plan)


def _select_then_bench(args, sweep, plan) -> None:
    """The selection trials, then (``sweep`` given: ``bench``) the final cells with the chosen lrs."""
    from tunebench.bench import selection
    from tunebench.bench.lock import claim_results
    from tunebench.bench.runner import unique_cells, validate_cells
    from tunebench.bench.store import RunStore
    from tunebench.bench.sweep import expand

    validate_cells(unique_cells(plan.cells))
    if sweep is not None:  # the final cells as they will be, but for the lr: bad input stops here
        validate_cells(unique_cells(expand(sweep, selection.placeholder_choices(plan))), RunStore(args.results))
    if args.dry_run:
        print("\n".join(selection.dry_run_lines(plan, sweep, args.results)))
        return
    _check_ray(args)
    command = f"tunebench {'bench' if sweep is not None else 'select'} {args.sweep}"
    with claim_results(args.results, command):
        started = time.perf_counter()
        choices = selection.run_selection(plan, args.results, lambda cells, folder: _execute(cells, folder, args))
        selecting = time.perf_counter() - started
        print("\n".join(selection.describe(choices)))
        if sweep is None:
            return
        started = time.perf_counter()
        try:
            _bench_cells(args, unique_cells(expand(sweep, choices)))
        finally:
            print(f"time: selection {selecting / 60:.1f} min ({len(plan.cells)} trials), "
                  f"final runs {(time.perf_counter() - started) / 60:.1f} min")


def _bench_cells(args, cells: list) -> None:
    """Run the (validated, de-duplicated) cells, then report; the caller holds the results-folder lock."""
    from tunebench.bench.chain import check_chains
    from tunebench.bench.store import RunStore

    check_chains(cells, RunStore(args.results))  # with the chosen lrs: each chained cell's exact source
    started = time.perf_counter()
    summary = _execute(cells, args.results, args)
    minutes = (time.perf_counter() - started) / 60
    print(
        f"sweep {args.sweep}: {len(summary.ok)} ran, {len(summary.skipped)} already finished, "
        f"{len(summary.failed)} failed, in {minutes:.1f} min"
    )
    if not args.no_report:
        _report(args)
    if summary.failed:
        raise TunebenchError(f"{len(summary.failed)} run(s) failed; their errors are in {args.results}/runs")


def _execute(cells: list, results: Path, args):
    """Run cells into the results folder ``results`` with the executor the flags name."""
    if args.executor == "ray":
        from tunebench.bench.executors import RayOptions, run_sweep_ray

        given = {"address": args.ray_address, "workers": args.ray_workers,
                 "cpus_per_cell": args.ray_cpus_per_cell}
        options = RayOptions(**{k: v for k, v in given.items() if v is not None})
        return run_sweep_ray(cells, results, force=args.force, options=options)
    if (args.jobs or 1) > 1:
        from tunebench.bench.parallel import run_sweep_local

        return run_sweep_local(cells, results, jobs=args.jobs, threads=args.threads, force=args.force)
    return _run_in_process(cells, results, args)


def _run_in_process(cells: list, results: Path, args):
    """``--jobs 1``: one cell after another in this process, on torch's own thread count
    unless ``--threads`` sets one (for this sweep only)."""
    import torch

    from tunebench.bench.runner import Runner, run_sweep

    runner = Runner(results, force=args.force, executor=ONE_AT_A_TIME)
    before = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return run_sweep(cells, runner)
    finally:
        torch.set_num_threads(before)


def _report(args) -> None:
    from tunebench.report.build import build_report

    files = build_report(Path(args.results), reference_method=args.reference)
    for path in files.paths:
        print(path)


def _gpu_check(args) -> int:
    import torch

    from tunebench.bench.gpucheck import DEFAULT_RESULTS as GPU_RESULTS
    from tunebench.bench.gpucheck import RESULT_FILE, failed_parts, gpu_check
    from tunebench.bench.lock import claim_results

    tiny, results = args.tiny, args.results
    if results is not None and results.resolve() == DEFAULT_RESULTS.resolve():
        raise ConfigError(f"gpu-check writes a results folder of its own (default {GPU_RESULTS}): its small "
                          f"task cells must not mix with the sweeps' runs in {DEFAULT_RESULTS}/")
    if not torch.cuda.is_available() and not tiny:
        print("gpu-check: no CUDA GPU on this machine: running the --tiny dry pass on the CPU instead "
              "(toy sizes, nothing written); run `make gpu-check` on a GPU for the numbers", flush=True)
        tiny, results = True, None
    elif not tiny and results is None:
        results = GPU_RESULTS
    if results is None:
        summary = gpu_check(None, tiny=tiny)
    else:
        from tunebench.report.build import build_report

        with claim_results(results, "tunebench gpu-check"):
            summary = gpu_check(results, tiny=tiny)
            try:
                build_report(results)
            except TunebenchError as exc:  # e.g. every task cell failed: no runs to report
                print(f"gpu-check: no report: {exc}", file=sys.stderr)
        print(f"wrote {results / RESULT_FILE} and {results / 'report.md'}")
    failed = failed_parts(summary)
    print(f"gpu-check: {len(summary['parts']) - len(failed)} of {len(summary['parts'])} parts passed or skipped "
          f"in {summary['wall_seconds']} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags of the commands that run a sweep's cells (select, bench)."""
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="results folder (default: results)")
    p.add_argument("--force", action="store_true", help="rerun finished cells too")
    p.add_argument("--dry-run", action="store_true",
                   help="list the cells (and selection trials) with their hashes, run nothing")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: on this machine (--jobs cells at once); ray: one Ray task per cell "
                        "(see docs/cluster.md)")
    p.add_argument("--jobs", type=int,
                   help="local: cells run at once, each in a worker process (default 1: one after "
                        "another in this process, as the committed results ran); times of cells that "
                        "shared the machine compare only with cells run under the same --jobs and --threads")
    p.add_argument("--threads", type=int,
                   help="local: torch threads per cell (default: cores / jobs; with --jobs 1 torch's "
                        "own default). Float sums depend on it, so coop and full-ft top-1 do too")
    p.add_argument("--ray-address", help="join this Ray cluster (e.g. auto or ray://HEAD:10001); "
                                         "default: start Ray on this machine")
    p.add_argument("--ray-workers", type=int, help="cells running at once (default 2)")
    p.add_argument("--ray-cpus-per-cell", type=int,
                   help="CPUs (and torch threads) each cell asks for (default 1); CUDA cells also get 1 GPU")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunebench",
        description="Compare tuning methods for vision-language models with measured numbers.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered methods, tasks, backbones, datasets, builds")
    p.add_argument("kind", nargs="?", choices=LIST_KINDS, help="what to list (default: all of them)")
    p.add_argument("-v", "--verbose", action="store_true", help="one-line summaries and method settings")
    p.set_defaults(func=_list)

    p = sub.add_parser("build", help="build and cache a model (`tunebench list builds`; mini-clip: ~6 min on 2 cores)")
    p.add_argument("model", help="what to build: mini-clip, or see `tunebench list builds`")
    p.add_argument("--force", action="store_true", help="rebuild even when cached")
    p.set_defaults(func=_build)

    p = sub.add_parser("run", help="run one cell and store its result")
    p.add_argument("--method", required=True,
                   help="see `tunebench list methods`; lit:PRESET picks a lit preset")
    p.add_argument("--dataset", required=True, help="see `tunebench list datasets`; imagefolder:PATH for "
                   "your own, coop:DATA/NAME for CoOp's dataset folders, subject:PATH for your own subject (generation)")
    p.add_argument("--task", default="fewshot-cls",
                   help="fewshot-cls (default), base2new, align, detect or generation; see `tunebench list -v tasks`")
    p.add_argument("--backbone", default="mini-clip", help=BACKBONE_HELP)
    p.add_argument("--pretrained", help="local checkpoint for the backbone (open_clip: a state dict file)")
    p.add_argument("--shots", type=int,
                   help=f"training images per class (fewshot-cls, detect), reference images (generation) or "
                        f"training pairs (align); default {DEFAULT_SHOTS}, and 0 for methods that train "
                        "nothing (zero-shot)")
    p.add_argument("--seed", type=int,
                   help=f"seed of the few-shot draw and of training; default {DEFAULT_SEED}, "
                        "and 0 for methods that train nothing")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a setting, e.g. --set train.steps=50 --set method.lr=1e-3 "
                        "--set task.zero_shot_per_class=50 (repeatable)")
    p.add_argument("--init-from", metavar="METHOD|HASH",
                   help="start from a finished run in --results (chaining: docs/configuration.md): a method "
                        "(cones: its run of the same task, dataset, backbone, shots, seed and settings) or a "
                        "run's 16-hex config hash")
    p.add_argument("--source-steps", type=int,
                   help="with --init-from METHOD: that run's train.steps (default: this run's own)")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="results folder (default: results)")
    p.add_argument("--force", action="store_true", help="rerun even when a finished result exists")
    p.set_defaults(func=_run)

    p = sub.add_parser("select", help="choose each trained method's lr on validation data (the sweep's "
                       "selection: block); trials are stored in RESULTS/selection/")
    p.add_argument("sweep", type=Path, help="sweep YAML with a selection: block (e.g. bench.yaml)")
    _add_run_flags(p)
    p.set_defaults(func=_select)

    p = sub.add_parser("bench", help="run every cell of a sweep file (selection: block: after choosing "
                       "each trained method's lr), then rebuild the report")
    p.add_argument("sweep", type=Path, help="sweep YAML (e.g. bench.yaml)")
    _add_run_flags(p)
    p.add_argument("--no-report", action="store_true", help="do not rebuild the report afterwards")
    p.add_argument("--reference", default="cones", help="method that train times are compared to")
    p.set_defaults(func=_bench)

    p = sub.add_parser("report", help="rebuild tables and figures from the stored runs (no training)")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="results folder (default: results)")
    p.add_argument("--reference", default="cones", help="method that train times are compared to")
    p.set_defaults(func=_report)

    p = sub.add_parser(
        "gpu-check", help="check every task's CUDA + bf16 path and measure throughput, MFU and step times on "
        "one GPU (a few minutes; docs/gpu-check.md); without a GPU, a --tiny dry pass",
        description="Parts: autocast (bf16 on CUDA), tasks (one small cell per task through the runner; "
        "peak memory from the CUDA allocator), peak-memory (reset per run), full-ft (images/s and MFU on "
        "open_clip:ViT-B-16, random weights, 224 px, largest batch <= 256), classes-1000 (ConES vs CoOp step "
        "time at 1,000 classes), sd-64 (ConES vs textual inversion on an SD-proportioned random pipeline, "
        "64x64 latents). Each part records its own failure and the others go on; exit status 1 if any failed. "
        "Without a CUDA GPU it says so and runs the --tiny pass instead, writing nothing. See docs/gpu-check.md.")
    p.add_argument("--tiny", action="store_true",
                   help="toy sizes, same code (the CPU dry pass; seconds); writes nothing unless --results is given")
    p.add_argument("--results", type=Path,
                   help="folder for gpu-check.json, the task cells' records (runs/) and report.md "
                        "(default: results-gpu; with --tiny, a temporary folder that is dropped)")
    p.set_defaults(func=_gpu_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        code = args.func(args)
    except TunebenchError as exc:
        print(f"tunebench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tunebench: interrupted; finished runs are stored, rerun to do the rest", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
