"""Pieces every track's report section shares: per-seed statistics of run metrics and
markdown formatting. Pure functions of their inputs, so reports stay byte-stable."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterator


def is_number(value) -> bool:
    """A real, finite-or-not (NaN excluded) number that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def seed_statistics(runs: list[dict]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample std (0 for one run) of every numeric metric over ``runs``; a
    metric missing from some runs is averaged over the runs that report it."""
    names = sorted({k for r in runs for k, v in r["metrics"].items() if is_number(v)})
    means, stds = {}, {}
    for name in names:
        values = [float(r["metrics"][name]) for r in runs if is_number(r["metrics"].get(name))]
        means[name] = statistics.fmean(values)
        stds[name] = statistics.stdev(values) if len(values) > 1 else 0.0
    return means, stds


def seed_groups(runs, key: Callable[[dict], tuple]) -> Iterator[tuple[tuple, list[dict], dict]]:
    """Runs grouped by ``key(run)``, each group in seed order, with the fields every
    track's cell shares: seeds, metric means and stds, mean times, parameter counts."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[key(run)].append(run)
    for name, group in groups.items():
        group.sort(key=lambda r: (r["seed"], r["config_hash"]))
        means, stds = seed_statistics(group)
        yield name, group, dict(
            seeds=tuple(r["seed"] for r in group), means=means, stds=stds,
            train_seconds_mean=mean_of(group, "train_seconds"),
            eval_seconds_mean=mean_of(group, "eval_seconds"),
            trainable_params=round(mean_of(group, "trainable_params")),
            total_params=round(mean_of(group, "total_params")),
        )


def mean_of(runs: list[dict], key: str) -> float:
    return statistics.fmean(float(r[key]) for r in runs)


def percent_cell(cell, name: str) -> str:
    """A metric of a cell (with ``means``, ``stds``, ``seeds``) in percent: mean ± std,
    the mean alone for one seed, a dash where the metric is missing."""
    if cell is None or name not in cell.means:
        return "—"
    mean, std = 100 * cell.means[name], 100 * cell.stds[name]
    return f"{mean:.1f}" if len(cell.seeds) == 1 else f"{mean:.1f} ± {std:.1f}"


def share(percent: float) -> str:
    """A share of parameters: 0%, 0.0054%, 9.2%."""
    if percent == 0:
        return "0%"
    return f"{percent:.1f}%" if percent >= 1 else f"{percent:#.2g}%"


def markdown_table(header, rows, align: str) -> list[str]:
    """``align`` has one 'l' or 'r' per column."""
    rule = ["---" if a == "l" else "---:" for a in align]
    return ["| " + " | ".join(line) + " |" for line in (header, rule, *rows)]
