"""Choosing each trained method's lr on validation data: ``tunebench select SWEEP``.

One protocol for every trained method (a sweep's ``selection:`` block, ``SelectionSpec``):
the same grid of multiples of the method's own default lr, scored at one pilot cell per
backbone × dataset × method (variant), on the task's validation split
(``RunConfig.eval_split == "validation"``: images no K-shot draw ever takes, never test
images), and chosen by the same rule. Methods that train nothing (zero-shot) are not
selected.

Trials are ordinary cells: they run through the sweep's executor and are stored, like
any cell, by config hash, but in a store of their own (``RESULTS/selection/runs``) that
the report never reads; a rerun therefore reads finished trials and runs only the
missing ones. Each choice is also written as one JSON file in
``RESULTS/selection/choices/`` (grid, score per lr, chosen lr, rule, metric, split, pilot
cell, trial hashes), and the final cells carry it as their ``selection``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunebench.bench.runner import SweepSummary, unique_cells
from tunebench.bench.store import RunStore
from tunebench.bench.sweep import (
    ChoiceKey,
    SelectionSpec,
    SweepConfig,
    expand,
    resolved_method_settings,
)
from tunebench.config import RunConfig
from tunebench.datasets import dataset_label
from tunebench.errors import ConfigError, TunebenchError
from tunebench.paths import atomic_write_text
from tunebench.registry import TASKS

SELECTION_DIR = "selection"  # under the results folder: results/selection/{runs,choices}
SPLIT = "validation"
# Runs a list of cells into a results folder with the sweep's executor (see cli.py).
Execute = Callable[[list[RunConfig], Path], SweepSummary]


@dataclass(frozen=True)
class SelectionPlan:
    spec: SelectionSpec
    metric: str  # the task's higher-is-better validation metric (its ``selection_metric``)
    # One list of trial cells per (backbone, dataset, method), in grid order (lr ascending).
    trials: dict[ChoiceKey, list[RunConfig]]
    # Keys whose dataset the task scores by another metric (``selection_metric_for``).
    metrics: dict[ChoiceKey, str] = dataclasses.field(default_factory=dict)

    @property
    def cells(self) -> list[RunConfig]:
        return [cell for cells in self.trials.values() for cell in cells]

    def metric_of(self, key: ChoiceKey) -> str:
        return self.metrics.get(key, self.metric)


def selection_store(results_dir: Path) -> RunStore:
    return RunStore(Path(results_dir) / SELECTION_DIR)


def plan_selection(sweep: SweepConfig) -> SelectionPlan | None:
    """The trial cells of a sweep's ``selection:`` block; None without one. Refuses, in one
    line, a task that names no validation metric."""
    spec = sweep.selection_spec
    if spec is None:
        return None
    metric = getattr(TASKS.get(sweep.task), "selection_metric", None)
    if metric is None:
        raise ConfigError(f"task {sweep.task} has no validation split to select on yet: remove the "
                          "selection: block and set each method's lr in method_config")
    datasets = [spec.pilot["dataset"]] if "dataset" in spec.pilot else sweep.datasets
    # Each method alone: chained cells (a chain: block) reuse their method's choice.
    pilot = expand(dataclasses.replace(sweep, shots=[spec.pilot["shots"]], seeds=[spec.pilot["seed"]],
                                       datasets=datasets, selection=None, chain=None))
    trials: dict[ChoiceKey, list[RunConfig]] = {}
    metrics: dict[ChoiceKey, str] = {}
    # A task may score some datasets by another metric (generation: CLIP-I for a subject of
    # your own, which no fidelity judge knows); most name one for all.
    per_dataset = getattr(TASKS.get(sweep.task), "selection_metric_for", None)
    for cell in pilot:
        method_cls, settings = resolved_method_settings(sweep, cell.method)
        if not method_cls.trains:
            continue
        default = settings["lr"]  # the method's own default: a set lr is refused with selection
        train = dataclasses.replace(cell.train, save_artifacts=False)  # a trial's tensors are not kept
        key = (cell.backbone, cell.dataset, cell.method)
        trials[key] = [
            dataclasses.replace(cell, train=train, eval_split=SPLIT,
                                method_config={**cell.method_config, "lr": _grid_value(default * factor)})
            for factor in spec.lr_factors
        ]
        if per_dataset is not None and (own := per_dataset(cell.dataset)) != metric:
            metrics[key] = own
    return SelectionPlan(spec, metric, trials, metrics)


def _grid_value(lr: float) -> float:
    """6 significant digits: 2e-3 × 3.16 is 0.00632, not 0.006320000000000001, in configs and hashes."""
    return float(f"{lr:.6g}")


def choose(grid: list[float], scores: list[float | None], rule: str) -> int:
    """The index of the chosen lr. ``max``: the highest score (None, a failed trial, never
    wins); among equal scores the smallest lr."""
    if rule != "max":
        raise ConfigError(f"unknown selection rule {rule!r}")
    scored = [i for i, s in enumerate(scores) if s is not None]
    if not scored:
        raise TunebenchError("no trial finished")
    return min(scored, key=lambda i: (-scores[i], grid[i]))


def stored_choices(plan: SelectionPlan, store: RunStore) -> dict[ChoiceKey, dict]:
    """The choice of every key whose trials all have a stored record (ok or failed)."""
    choices = {}
    for key, cells in plan.trials.items():
        records = [store.read(cell.config_hash) for cell in cells]
        if any(r is None for r in records):
            continue
        grid = [cell.method_config["lr"] for cell in cells]
        metric = plan.metric_of(key)
        scores = [_score(r, metric) for r in records]
        try:
            best = choose(grid, scores, plan.spec.rule)
        except TunebenchError:
            raise TunebenchError(f"every selection trial of {cells[0].method} on {cells[0].dataset} failed: "
                                 f"see their errors in {store.runs_dir}") from None
        choices[key] = {"grid": grid, "scores": scores, "chosen": grid[best], "score": scores[best],
                        "split": SPLIT, "rule": plan.spec.rule, "metric": metric,
                        "pilot": dict(plan.spec.pilot)}
    return choices


def _score(record: dict, metric: str) -> float | None:
    if record.get("status") != "ok":
        return None
    value = record.get("metrics", {}).get(metric)
    return float(value) if isinstance(value, int | float) else None


def run_selection(plan: SelectionPlan, results_dir: Path, execute: Execute) -> dict[ChoiceKey, dict]:
    """Run the missing trials (finished ones are read), write each choice as JSON and
    return the choices. The caller holds the results-folder lock."""
    store = selection_store(results_dir)
    store.check_writable()
    store.remove_leftovers()
    started = time.perf_counter()
    summary = execute(plan.cells, store.results_dir)
    minutes = (time.perf_counter() - started) / 60
    print(f"selection: {len(summary.ok)} trial(s) ran, {len(summary.skipped)} already finished, "
          f"{len(summary.failed)} failed (scored as no score), in {minutes:.1f} min")
    choices = stored_choices(plan, store)
    missing = [key for key in plan.trials if key not in choices]
    if missing:  # an executor that stored nothing for a trial: not a choice to guess at
        raise TunebenchError(f"{len(missing)} selection(s) lack trial records in {store.runs_dir}: rerun")
    for key, choice in choices.items():
        write_choice(store, key, choice, plan)
    return choices


def write_choice(store: RunStore, key: ChoiceKey, choice: dict, plan: SelectionPlan) -> Path:
    cells = plan.trials[key]
    first = cells[0]
    hashes = [cell.config_hash for cell in cells]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{first.task}_{first.method}_{dataset_label(first.dataset)}")
    digest = hashlib.sha256(" ".join(hashes).encode()).hexdigest()[:8]  # the backbone, settings, grid
    path = store.results_dir / "choices" / f"{name}_{digest}.json"
    record = {"task": first.task, "backbone": first.backbone, "dataset": first.dataset, "method": first.method,
              **choice, "lr_factors": plan.spec.lr_factors, "trials": hashes}
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def describe(choices: dict[ChoiceKey, dict]) -> list[str]:
    """One line per choice, for the terminal."""
    lines = []
    for (backbone, dataset, method), c in sorted(choices.items()):
        scores = ", ".join(f"{lr:g}: {'failed' if s is None else f'{s:.4f}'}"
                           for lr, s in zip(c["grid"], c["scores"], strict=True))
        lines.append(f"{method} on {dataset} ({backbone}): lr {c['chosen']:g} "
                     f"({c['metric']} on {c['split']} {c['score']:.4f}; {scores})")
    return lines


def placeholder_choices(plan: SelectionPlan) -> dict[ChoiceKey, dict]:
    """Each key's first grid lr as if chosen: the final cells but for their lr, to validate
    them before any trial runs."""
    return {key: {"chosen": cells[0].method_config["lr"]} for key, cells in plan.trials.items()}


def dry_run_lines(plan: SelectionPlan, sweep: SweepConfig | None, results_dir: Path) -> list[str]:
    """The trials (hash, lr, stored or not), then (``sweep`` given) the final cells whose
    lr the stored trials already choose."""
    store = selection_store(results_dir)
    lines = []
    for cell in plan.cells:
        state = "finished" if store.is_finished(cell.config_hash) else "to run"
        lines.append(f"{cell.config_hash}  selection trial: {cell.label}, lr {cell.method_config['lr']:g} ({state})")
    lines.append(f"{len(plan.cells)} selection trials")
    if sweep is None:
        return lines
    choices = stored_choices(plan, store)
    cells = unique_cells(expand(sweep, choices))
    lines += [f"{cell.config_hash}  {cell.label}" + (f", lr {cell.selection['chosen']:g} (selected)"
                                                     if cell.selection else "") for cell in cells]
    pending = len(plan.trials) - len(choices)
    lines.append(f"{len(cells)} cells" + (f", and those of {pending} dataset x method pair(s) whose lr is "
                                          "chosen when their trials have run" if pending else ""))
    return lines
