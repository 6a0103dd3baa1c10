"""The alignment track's part of the report: retrieval, transfer and knowledge tables,
LilT's headline question ("smallest preset within X% of full training") and figures.

Align runs (task ``align``) are grouped per (backbone, dataset, pairs): ``shots`` holds
the number of training pairs. The reference for "full training" is the run that updates
every parameter (``lit:all``, else ``full-ft``) in the same group. Like the rest of the
report this is a pure function of the run files: no clock, fixed formatting and order.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tunebench.bench.report_common import (
    markdown_table,
    mean_of,
    percent_cell,
    seed_statistics,
    share,
)
from tunebench.paths import atomic_write_text

TASK = "align"
METRIC = "mean_r1"  # what every align run must have; the headline metric
# Metrics that are fractions in [0, 1] (fnmatch patterns); a run outside is not read.
FRACTIONS = ("mean_r1", "i2t_r*", "t2i_r*", "imagenet_agreement", "zeroshot/*")
FULL_TRAINING = ("lit:all", "full-ft")  # first present one is "full training"
THRESHOLDS = (1, 5, 10, 25)  # "within X% of full training", as LilT asks
BUDGETS = (1.0, 7.0)  # "under X% of parameters trainable", LilT's two headline budgets
# Cheapest to most expensive, as the presets add groups; unknown methods follow by name.
METHOD_ORDER = (
    "zero-shot", "lit:projection", "lit:layernorm", "lit:bitfit", "lit:norms", "lit:lilt",
    "lit:attention", "lit:lit", "lit", "lit:all", "full-ft",
)
RETRIEVAL = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")
KNOWLEDGE = ("imagenet_agreement", "text_similarity_drift")
ZERO_SHOT_PREFIX = "zeroshot/"


def method_key(method: str) -> tuple[int, str]:
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return rank, method


@dataclass(frozen=True)
class AlignCell:
    """All successful seeds of one (backbone, dataset, method, pairs)."""

    backbone: str
    dataset: str
    method: str
    pairs: int
    seeds: tuple[int, ...]
    means: dict[str, float]  # metric -> mean over the seeds that report it
    stds: dict[str, float]  # metric -> sample std (0 for one seed)
    train_seconds_mean: float
    trainable_params: int
    total_params: int
    steps: int | None

    @property
    def group(self) -> tuple[str, str, int]:
        return self.backbone, self.dataset, self.pairs

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / self.total_params if self.total_params else 0.0

    @property
    def r1(self) -> float:
        return self.means[METRIC]


def summarise(runs) -> list[AlignCell]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[run["backbone"], run["dataset"], run["method"], run["shots"]].append(run)
    cells = []
    for (backbone, dataset, method, pairs), group in groups.items():
        group.sort(key=lambda r: (r["seed"], r["config_hash"]))
        means, stds = seed_statistics(group)
        steps = {r.get("steps") for r in group}
        cells.append(AlignCell(
            backbone=backbone, dataset=dataset, method=method, pairs=pairs,
            seeds=tuple(r["seed"] for r in group), means=means, stds=stds,
            train_seconds_mean=mean_of(group, "train_seconds"),
            trainable_params=round(mean_of(group, "trainable_params")),
            total_params=round(mean_of(group, "total_params")),
            steps=steps.pop() if len(steps) == 1 else None,
        ))
    cells.sort(key=lambda c: (c.group, method_key(c.method)))
    return cells


def full_training(cells: list[AlignCell]) -> AlignCell | None:
    """The all-parameters cell of one group, or None when the group has none."""
    by_method = {c.method: c for c in cells}
    return next((by_method[m] for m in FULL_TRAINING if m in by_method), None)


def smallest_within(cells: list[AlignCell], full: AlignCell, percent: float) -> AlignCell | None:
    """The cell with the fewest trainable parameters whose R@1 is at least
    (100 - percent)% of full training's; never full training itself."""
    floor = (1 - percent / 100) * full.r1
    hits = [c for c in cells if c is not full and c.trainable_params > 0 and c.r1 >= floor]
    return min(hits, key=lambda c: (c.trainable_params, method_key(c.method)), default=None)


def best_under(cells: list[AlignCell], full: AlignCell, budget: float) -> AlignCell | None:
    """The best-R@1 cell that trains some, but at most ``budget`` %, of the parameters."""
    hits = [c for c in cells if c is not full and 0 < c.trainable_percent <= budget]
    return max(hits, key=lambda c: (c.r1, -c.trainable_params), default=None)


# ---- formatting ----------------------------------------------------------------------



def groups_of(cells) -> dict[tuple, list[AlignCell]]:
    """Cells per (backbone, dataset, pairs). Runs that train nothing (zero-shot, 0 pairs)
    join every group of their backbone and dataset as its baseline row; they form a group
    of their own only where nothing was trained."""
    groups: dict[tuple, list[AlignCell]] = defaultdict(list)
    untrained = [c for c in cells if c.pairs == 0]
    for c in cells:
        if c.pairs > 0:
            groups[c.group].append(c)
    for c in untrained:
        homes = [g for g in groups if g[:2] == c.group[:2]]
        for group in homes or [c.group]:
            groups[group].append(c)
    return {g: sorted(v, key=lambda c: method_key(c.method)) for g, v in sorted(groups.items())}


def _group_tables(group: tuple, cells: list[AlignCell]) -> list[str]:
    backbone, dataset, pairs = group
    full = full_training(cells)
    steps = sorted({c.steps for c in cells if c.steps})
    budget = f", {'/'.join(map(str, steps))} steps each" if steps else ""
    header = ["Method", "% trainable", "Trainable", "Mean R@1", "I→T R@1", "R@5", "R@10",
              "T→I R@1", "R@5", "R@10", "of full", "Train s", "Seeds"]
    rows = []
    for c in cells:
        rows.append([
            c.method, share(c.trainable_percent), f"{c.trainable_params:,}", percent_cell(c, METRIC),
            *(percent_cell(c, name) for name in RETRIEVAL),
            f"{100 * c.r1 / full.r1:.0f}%" if full and full.r1 > 0 else "—",
            f"{c.train_seconds_mean:.1f}", str(len(c.seeds)),
        ])
    lines = [
        f"### {dataset}, {backbone}, {pairs} training pairs", "",
        f"Held-out retrieval recall in percent (mean ± std over seeds){budget}. "
        "*of full*: mean R@1 as a share of full training's"
        + (f" (`{full.method}`)." if full else " (no all-parameters run in this group)."), "",
        *markdown_table(header, rows, "l" + "r" * (len(header) - 1)), "",
    ]
    transfer = sorted({k for c in cells for k in c.means if k.startswith(ZERO_SHOT_PREFIX)})
    knowledge = [k for k in KNOWLEDGE if any(k in c.means for c in cells)]
    if transfer or knowledge:
        header = ["Method", *(f"Zero-shot {k[len(ZERO_SHOT_PREFIX):]} %" for k in transfer)]
        header += ["ImageNet agreement %" if k == "imagenet_agreement" else "Text drift" for k in knowledge]
        rows = []
        for c in cells:
            row = [c.method, *(percent_cell(c, k) for k in transfer)]
            for k in knowledge:
                if k == "imagenet_agreement":
                    row.append(percent_cell(c, k))
                else:
                    row.append(f"{c.means[k]:.4f}" if k in c.means else "—")
            rows.append(row)
        lines += [
            "Transfer and knowledge kept: zero-shot top-1 on datasets never seen in alignment; "
            "*ImageNet agreement*: share of the probe photos whose ImageNet top-1 class is "
            "unchanged from the pretrained image tower; *Text drift*: mean absolute change of "
            "the pretrained text tower's pairwise sentence cosine similarities (0 = unchanged).", "",
            *markdown_table(header, rows, "l" + "r" * (len(header) - 1)), "",
        ]
    return lines


def _headline(groups: dict[tuple, list[AlignCell]]) -> list[str]:
    rows = []
    for (backbone, dataset, pairs), cells in groups.items():
        full = full_training(cells)
        if full is None or full.r1 <= 0:
            continue
        where = f"{dataset}, {backbone}, {pairs}"
        row = [where, f"`{full.method}` {100 * full.r1:.1f}"]
        for percent in THRESHOLDS:
            hit = smallest_within(cells, full, percent)
            row.append(f"`{hit.method}` ({share(hit.trainable_percent)})" if hit else "none")
        for budget in BUDGETS:
            best = best_under(cells, full, budget)
            row.append(f"{100 * best.r1 / full.r1:.0f}% (`{best.method}`)" if best else "—")
        rows.append(row)
    if not rows:
        return []
    header = ["Data, backbone, pairs", "Full training R@1",
              *(f"Smallest within {p}%" for p in THRESHOLDS),
              *(f"Best ≤ {b:g}% trainable, of full" for b in BUDGETS)]
    return [
        "### Headline: how few parameters match full training?", "",
        "For each group, the preset with the fewest trainable parameters whose mean R@1 is "
        "within X% of full training's (all parameters updated), and the best share of full "
        "training's R@1 reached while training at most 1% or 7% of the parameters.", "",
        *markdown_table(header, rows, "l" * 2 + "l" * len(THRESHOLDS) + "r" * len(BUDGETS)), "",
    ]


def render_section(cells: list[AlignCell], figure_links: list[tuple[str, str]]) -> list[str]:
    """Markdown lines for the alignment track; empty without align runs."""
    if not cells:
        return []
    groups = groups_of(cells)
    lines = [
        "## Alignment track (task `align`)", "",
        "Contrastive image–text alignment of two separately pretrained towers. *Mean R@1* "
        "averages image→text and text→image recall@1 on held-out pairs; every preset of a "
        "group trains for the same steps and batch size (fixed compute), so *Train s* "
        "compares the cost of one step.", "",
        *_headline(groups),
    ]
    for group, group_cells in groups.items():
        lines += _group_tables(group, group_cells)
    if figure_links:
        lines += [f"![{title}]({link})\n" for title, link in figure_links]
    return lines


def write_summary_csv(cells: list[AlignCell], path: Path) -> None:
    metrics = [METRIC, *RETRIEVAL, *KNOWLEDGE]
    metrics += sorted({k for c in cells for k in c.means if k.startswith(ZERO_SHOT_PREFIX)})
    header = ["backbone", "dataset", "method", "pairs", "n_seeds", "seeds", "trainable_params",
              "total_params", "trainable_percent", "train_seconds_mean", "steps"]
    header += [f"{m}_{stat}" for m in metrics for stat in ("mean", "std")]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for c in cells:
        row = [c.backbone, c.dataset, c.method, c.pairs, len(c.seeds), ";".join(map(str, c.seeds)),
               c.trainable_params, c.total_params, f"{c.trainable_percent:.6g}",
               f"{c.train_seconds_mean:.6g}", c.steps if c.steps is not None else ""]
        for m in metrics:
            row += [f"{c.means[m]:.6g}", f"{c.stds[m]:.6g}"] if m in c.means else ["", ""]
        writer.writerow(row)
    atomic_write_text(path, buffer.getvalue())


def write_section(runs: list[dict], results_dir: Path) -> tuple[list[str], list[Path]]:
    """The track-section interface (see ``report.TRACK_SECTIONS``): write this track's
    CSV and figures under ``results_dir`` and return its markdown lines and the files."""
    from tunebench.bench import figures_align

    cells = summarise(runs)
    if not cells:
        return [], []
    written = figures_align.write_figures(cells, results_dir / "figures")
    links = [(title, path.relative_to(results_dir).as_posix()) for title, path in written]
    summary_csv = results_dir / "summary_align.csv"
    write_summary_csv(cells, summary_csv)
    return render_section(cells, links), [summary_csv, *(path for _, path in written)]
