"""The base-to-new track's part of the report, in the literature's form (CoCoOp,
Table 1): Base, New and H per method, averaged over datasets and per dataset, with
the training cost beside it, a CSV and figures.

Runs of task ``base2new`` are grouped per (backbone, shots); methods that train
nothing (zero-shot, stored at 0 shots) join every group of their backbone as its
baseline row. As in the literature, H is the harmonic mean of the mean base and mean
new accuracy (over seeds for a dataset, over datasets for the average), not a mean of
per-seed H. A method without an answer for unseen classes (linear-probe) shows "—".
A pure function of the run files, like the rest of the report.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tunebench.bench.report_common import (
    markdown_table,
    percent_cell,
    seed_groups,
    share,
)
from tunebench.paths import atomic_write_text
from tunebench.scores import harmonic_mean

TASK = "base2new"
METRIC = "base"  # every base2new run has it; "new" and "h" are None for linear-probe
# Metrics that are fractions in [0, 1] (fnmatch patterns); a run outside is not read.
FRACTIONS = ("base", "new", "h")
REFERENCE = "cones"  # training time is compared with it (CoCoOp's cost is a finding)


def method_key(method: str) -> tuple[int, str]:
    from tunebench.bench.report import method_sort_key  # one method order for the whole report

    return method_sort_key(method)


@dataclass(frozen=True)
class B2NCell:
    """All successful seeds of one (backbone, shots, dataset, method)."""

    backbone: str
    shots: int
    dataset: str
    method: str
    seeds: tuple[int, ...]
    means: dict[str, float]
    stds: dict[str, float]
    train_seconds_mean: float
    eval_seconds_mean: float
    trainable_params: int
    total_params: int

    @property
    def base(self) -> float:
        return self.means[METRIC]

    @property
    def new(self) -> float | None:
        return self.means.get("new")

    @property
    def h(self) -> float | None:
        return harmonic_mean(self.base, self.new)


@dataclass(frozen=True)
class Average:
    """One method's mean over the datasets of a group (only if it ran on every one)."""

    method: str
    base: float
    new: float | None
    train_seconds_mean: float
    trainable_params: int

    @property
    def h(self) -> float | None:
        return harmonic_mean(self.base, self.new)


def summarise(runs) -> list[B2NCell]:
    cells = [
        B2NCell(backbone=backbone, shots=shots, dataset=dataset, method=method, **shared)
        for (backbone, shots, dataset, method), _, shared in seed_groups(
            runs, lambda r: (r["backbone"], r["shots"], r["dataset"], r["method"]))
    ]
    cells.sort(key=lambda c: (c.backbone, c.shots, c.dataset, method_key(c.method)))
    return cells


def groups_of(cells: list[B2NCell]) -> dict[tuple[str, int], list[B2NCell]]:
    """Cells per (backbone, shots); untrained cells (0 shots) join every trained group of
    their backbone, and form a group of their own only where nothing trained."""
    groups: dict[tuple, list[B2NCell]] = defaultdict(list)
    for c in cells:
        if c.shots > 0:
            groups[c.backbone, c.shots].append(c)
    for c in cells:
        if c.shots == 0:
            homes = [g for g in groups if g[0] == c.backbone and g[1] > 0]
            for group in homes or [(c.backbone, 0)]:
                groups[group].append(c)
    return {g: sorted(v, key=lambda c: (c.dataset, method_key(c.method))) for g, v in sorted(groups.items())}


def averages(cells: list[B2NCell]) -> list[Average]:
    """Per method, the mean over datasets of its base and new accuracy (the literature's
    "Average over N datasets"); methods missing a dataset of the group are left out."""
    datasets = sorted({c.dataset for c in cells})
    by_method: dict[str, list[B2NCell]] = defaultdict(list)
    for c in cells:
        by_method[c.method].append(c)
    rows = []
    for method in sorted(by_method, key=method_key):
        mine = by_method[method]
        if sorted(c.dataset for c in mine) != datasets:
            continue
        news = [c.new for c in mine]
        rows.append(Average(
            method=method, base=statistics.fmean(c.base for c in mine),
            new=None if None in news else statistics.fmean(news),
            train_seconds_mean=statistics.fmean(c.train_seconds_mean for c in mine),
            trainable_params=round(statistics.fmean(c.trainable_params for c in mine)),
        ))
    return rows


# ---- formatting ----------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _times(seconds: float, reference: float | None) -> str:
    if reference is None or reference <= 0 or seconds <= 0:
        return "—"
    ratio = seconds / reference
    return f"{ratio:.1f}×" if ratio >= 0.1 else f"{ratio:.2g}×"


def _average_table(cells: list[B2NCell]) -> list[str]:
    rows = averages(cells)
    reference = next((r.train_seconds_mean for r in rows if r.method == REFERENCE), None)
    body = [[f"`{r.method}`", _percent(r.base), _percent(r.new), _percent(r.h), f"{r.trainable_params:,}",
             f"{r.train_seconds_mean:.1f}", _times(r.train_seconds_mean, reference)] for r in rows]
    header = ["Method", "Base", "New", "H", "Trainable", "Train s", f"Train vs {REFERENCE}"]
    n = len({c.dataset for c in cells})
    return [f"#### Average over {n} dataset{'s' * (n != 1)}", "",
            *markdown_table(header, body, "l" + "r" * (len(header) - 1)), ""]


def _dataset_table(dataset: str, cells: list[B2NCell]) -> list[str]:
    reference = next((c.train_seconds_mean for c in cells if c.method == REFERENCE), None)
    body = [[f"`{c.method}`", percent_cell(c, "base"), percent_cell(c, "new"), _percent(c.h), str(len(c.seeds)),
             f"{c.trainable_params:,}", share(100 * c.trainable_params / c.total_params) if c.total_params else "—",
             f"{c.train_seconds_mean:.1f}", _times(c.train_seconds_mean, reference), f"{c.eval_seconds_mean:.1f}"]
            for c in cells]
    header = ["Method", "Base", "New", "H", "Seeds", "Trainable", "% trainable", "Train s",
              f"Train vs {REFERENCE}", "Eval s"]
    return [f"#### {dataset}", "", *markdown_table(header, body, "l" + "r" * (len(header) - 1)), ""]


def render_section(cells: list[B2NCell], figure_links: list[tuple[str, str]]) -> list[str]:
    """Markdown lines for the base-to-new track; empty without base2new runs."""
    if not cells:
        return []
    lines = [
        "## Base-to-new generalisation (task `base2new`)", "",
        "CoCoOp's protocol: classes in label order, the first half (rounded up) are *base*, the "
        "rest *new*. Each method trains on K shots of the base classes only, then is scored on the "
        "base classes' test images among the base classes (*Base*) and on the new classes' test "
        "images among the new classes (*New*), which it knows only by name. *H* is the harmonic mean "
        "of mean Base and mean New, as in the literature's tables; accuracies in percent, mean ± "
        "sample std over seeds. \"—\": the method has no answer for classes it never trained on "
        "(linear-probe). *Train vs cones*: training time relative to cones on the same cells; "
        "*Eval s* includes encoding the new classes' prompts (for cocoop, per test image).", "",
    ]
    for (backbone, shots), group in groups_of(cells).items():
        lines += [f"### {backbone}, {shots} shots per base class", ""]
        lines += _average_table(group)
        by_dataset: dict[str, list[B2NCell]] = defaultdict(list)
        for c in group:
            by_dataset[c.dataset].append(c)
        for dataset in sorted(by_dataset):
            lines += _dataset_table(dataset, by_dataset[dataset])
    if figure_links:
        lines += [f"![{title}]({link})\n" for title, link in figure_links]
    return lines


def write_summary_csv(cells: list[B2NCell], path: Path) -> None:
    header = ["backbone", "shots", "dataset", "method", "n_seeds", "seeds", "base_mean", "base_std",
              "new_mean", "new_std", "h", "trainable_params", "total_params", "train_seconds_mean",
              "eval_seconds_mean"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)

    def number(value: float | None) -> str:
        return "" if value is None else f"{value:.6g}"

    for c in cells:
        writer.writerow([
            c.backbone, c.shots, c.dataset, c.method, len(c.seeds), ";".join(map(str, c.seeds)),
            number(c.base), number(c.stds[METRIC]), number(c.new), number(c.stds.get("new")), number(c.h),
            c.trainable_params, c.total_params, number(c.train_seconds_mean), number(c.eval_seconds_mean),
        ])
    atomic_write_text(path, buffer.getvalue())


def write_section(runs: list[dict], results_dir: Path) -> tuple[list[str], list[Path]]:
    """The track-section interface (see ``report.TRACK_SECTIONS``)."""
    from tunebench.bench import figures_b2n

    cells = summarise(runs)
    if not cells:
        return [], []
    written = figures_b2n.write_figures(groups_of(cells), results_dir / "figures")
    links = [(title, path.relative_to(results_dir).as_posix()) for title, path in written]
    summary_csv = results_dir / "summary_b2n.csv"
    write_summary_csv(cells, summary_csv)
    return render_section(cells, links), [summary_csv, *(path for _, path in written)]
