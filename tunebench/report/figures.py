"""Report figures: accuracy against cost, and few-shot curves, one panel per dataset.

Drawn with matplotlib's object API (no pyplot, so no global figure state or backend
switch) under the library's default style plus the settings below, whatever the user's
matplotlibrc says. PNGs are written without the "Software" tag, which carries the
matplotlib version, so the same cells give the same bytes.

A cell whose x value cannot sit on a log axis (zero trainable parameters, zero training
seconds, zero shots: zero-shot) is drawn as a dashed horizontal line with a ±std band.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import matplotlib.style
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

if TYPE_CHECKING:
    from tunebench.bench.report import Cell

DPI = 150
_RC = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 11,
    "legend.fontsize": 10,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "axes.grid": True,
    "axes.grid.which": "both",
    "grid.linestyle": ":",
    "grid.alpha": 0.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.6,
    "lines.markersize": 7,
    "errorbar.capsize": 3,
}

# Okabe–Ito colours (safe for colour-blind readers); one colour and marker per method,
# the same in every figure. Methods not listed take the spare styles alphabetically.
_FIXED = {
    "zero-shot": ("#555555", "*"),
    "linear-probe": ("#0072B2", "s"),
    "cones": ("#D55E00", "o"),
    "coop": ("#009E73", "^"),
    "cocoop": ("#117733", "H"),  # a darker green: CoOp's kin
    "textual-inversion": ("#CC79A7", "D"),
    "lit": ("#E69F00", "v"),
    "full-ft": ("#000000", "P"),
}
_SPARE = [("#56B4E9", "X"), ("#882255", "h"), ("#999933", "<"), ("#44AA99", ">"), ("#332288", "p")]

METRIC_LABELS = {"top1": "Top-1 accuracy", "top5": "Top-5 accuracy", "novel_bbox_ap": "Novel-class box AP"}


def method_styles(methods: list[str]) -> dict[str, tuple[str, str]]:
    """(colour, marker) per method: fixed for known methods, spare ones in name order."""
    spare = sorted(m for m in set(methods) if m not in _FIXED)
    styles = {m: _FIXED[m] for m in methods if m in _FIXED}
    styles.update({m: _SPARE[i % len(_SPARE)] for i, m in enumerate(spare)})
    return styles


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "dataset"


def _panels(cells: list[Cell]) -> list[tuple[str, list[Cell]]]:
    """(title, cells) per (task, dataset, backbone); the title names the backbone and task
    only when one dataset appears under several."""
    groups: dict[tuple, list[Cell]] = defaultdict(list)
    for c in cells:
        groups[c.group].append(c)
    per_dataset = defaultdict(int)
    for _task, dataset, _backbone in groups:
        per_dataset[dataset] += 1
    panels = []
    for task, dataset, backbone in sorted(groups):
        title = dataset if per_dataset[dataset] == 1 else f"{dataset} ({backbone}, {task})"
        panels.append((title, groups[task, dataset, backbone]))
    return panels


def _grid(n_panels: int, *, width: float = 5.2, height: float = 4.0):
    ncols = min(n_panels, 3)
    nrows = math.ceil(n_panels / ncols)
    width += 0.8 * (n_panels == 1)  # room for the figure title beside the legend
    fig = Figure(figsize=(width * ncols + 2.0, height * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def _reference_line(ax, cell: Cell, colour: str, label: str):
    y, std = 100 * cell.metric_mean, 100 * cell.metric_std
    if std > 0:
        ax.axhspan(y - std, y + std, color=colour, alpha=0.12, linewidth=0)
    return ax.axhline(y, color=colour, linestyle="--", linewidth=1.4, label=label)


def _finish(
    fig: Figure, handles: dict, order: Callable, path: Path, title: str, legend_title: str = "Method"
) -> None:
    methods = sorted(handles, key=order)
    fig.suptitle(f"{title}\nmean ± 1 sample std over seeds", fontsize=12, linespacing=1.4)
    fig.legend(
        [handles[m] for m in methods], methods, loc="outside right upper",
        title=legend_title, frameon=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(
        path, dpi=DPI, format="png", bbox_inches="tight", pad_inches=0.12, metadata={"Software": None}
    )


def _log_axis(ax, tick_label: Callable[[float], str]) -> None:
    """Log x with labelled decades only, spanning at least two decades so that a narrow
    range still shows two readable ticks rather than crowded minor labels."""
    ax.set_xscale("log")
    ax.margins(x=0.15)
    low, high = ax.get_xlim()
    if high / low < 100:
        centre = math.sqrt(low * high)
        ax.set_xlim(centre / 10, centre * 10)
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: tick_label(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _count_label(v: float) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if v >= size:
            return f"{v / size:g}{suffix}"
    return f"{v:g}"


def _accuracy_vs_cost(
    panels, path: Path, *, x_of: Callable, tick_label: Callable, xlabel: str, title: str,
    metric: str, styles: dict, order: Callable,
) -> None:
    fig, axes = _grid(len(panels))
    # Marker area grows with the shot count, so a method's points read as one family.
    shots = sorted({c.shots for _, cells in panels for c in cells if x_of(c) > 0})
    size = {s: 5 + 2.0 * i for i, s in enumerate(shots)}
    handles = {}
    for ax, (panel_title, cells) in zip(axes[: len(panels)], panels, strict=True):
        for c in sorted(cells, key=lambda c: (order(c.method), -c.shots)):
            colour, marker = styles[c.method]
            x = x_of(c)
            if x <= 0:
                handles[c.method] = _reference_line(ax, c, colour, c.method)
                continue
            handles[c.method] = Line2D(  # legend entry at a common size
                [], [], color=colour, marker=marker, linestyle="none", markersize=8,
                markeredgecolor="white", markeredgewidth=0.6,
            )
            ax.errorbar(
                x, 100 * c.metric_mean, yerr=100 * c.metric_std, color=colour, marker=marker,
                linestyle="none", markersize=size[c.shots], markeredgecolor="white",
                markeredgewidth=0.6, elinewidth=1.2, alpha=0.9, label=c.method,
            )
        _log_axis(ax, tick_label)
        ax.set_title(panel_title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} (%)")
        ax.grid(True, which="minor", alpha=0.2)
    if shots:
        fig.legend(
            [Line2D([], [], color="#777777", marker="o", linestyle="none", markersize=size[s]) for s in shots],
            [str(s) for s in shots], loc="outside lower center", ncols=len(shots),
            title="Training images per class (shots; marker size)", frameon=False,
        )
    _finish(fig, handles, order, path, title)


def _fewshot(panels, path: Path, *, title: str, metric: str, styles: dict, order: Callable) -> None:
    fig, axes = _grid(len(panels))
    handles = {}
    for ax, (panel_title, cells) in zip(axes[: len(panels)], panels, strict=True):
        by_method: dict[str, list[Cell]] = defaultdict(list)
        for c in cells:
            by_method[c.method].append(c)
        for method in sorted(by_method, key=order):
            colour, marker = styles[method]
            curve = sorted((c for c in by_method[method] if c.shots > 0), key=lambda c: c.shots)
            for c in by_method[method]:
                if c.shots <= 0:
                    handles[method] = _reference_line(ax, c, colour, method)
            if curve:
                handles[method] = ax.errorbar(
                    [c.shots for c in curve], [100 * c.metric_mean for c in curve],
                    yerr=[100 * c.metric_std for c in curve], color=colour, marker=marker,
                    markeredgecolor="white", markeredgewidth=0.6, label=method,
                )
        classes = sorted({c.num_classes for c in cells if c.num_classes})
        if classes:
            handles["chance"] = ax.axhline(
                100 / classes[-1], color="#999999", linestyle=":", linewidth=1.4, label="chance"
            )
        shots = sorted({c.shots for c in cells if c.shots > 0})
        ax.set_xscale("log", base=2)
        if shots:
            ax.set_xticks(shots, labels=[str(s) for s in shots])
            ax.set_xlim(shots[0] / 1.4, shots[-1] * 1.4)
        ax.xaxis.set_minor_locator(NullLocator())
        if len(panels) > 1:  # a lone panel is already named by the figure title
            ax.set_title(panel_title)
        ax.set_xlabel("Training images per class (shots, log₂ scale)")
        ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} (%)")
    _finish(fig, handles, lambda m: (1, "") if m == "chance" else (0, *order(m)), path, title)


def write_figures(
    cells: list[Cell], figures_dir: Path, *, metric: str, method_key: Callable
) -> list[tuple[str, Path]]:
    """Draw every figure; returns (caption, path) pairs in a fixed order."""
    if not cells:
        return []
    styles = method_styles(sorted({c.method for c in cells}))
    panels = _panels(cells)
    common = {"metric": metric, "styles": styles, "order": method_key}
    out = []
    with matplotlib.style.context(["default", _RC]):
        path = figures_dir / "accuracy_vs_trainable_params.png"
        _accuracy_vs_cost(
            panels, path, x_of=lambda c: c.trainable_params, tick_label=_count_label,
            xlabel="Trainable parameters (count, log scale)",
            title="Accuracy vs trainable parameters", **common,
        )
        out.append(("Accuracy vs trainable parameters", path))
        path = figures_dir / "accuracy_vs_train_time.png"
        _accuracy_vs_cost(
            panels, path, x_of=lambda c: c.train_seconds_mean, tick_label=lambda v: f"{v:g}",
            xlabel="Mean training time per run (s, log scale)",
            title="Accuracy vs training time", **common,
        )
        out.append(("Accuracy vs training time", path))
        by_dataset: dict[str, list] = defaultdict(list)
        for panel in panels:
            by_dataset[panel[1][0].dataset].append(panel)
        for dataset in sorted(by_dataset):
            path = figures_dir / f"fewshot_{_slug(dataset)}.png"
            _fewshot(by_dataset[dataset], path, title=f"Few-shot accuracy on {dataset}", **common)
            out.append((f"Few-shot accuracy on {dataset}", path))
    return out
