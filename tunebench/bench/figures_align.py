"""Alignment-track figures: mean R@1 against % trainable (with the Pareto front), against
training time, against the number of training pairs, and per backbone.

Same conventions as `figures`: matplotlib's object API, fixed style, PNGs without the
version tag so the same runs give the same bytes.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.style
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from tunebench.bench import figures as base
from tunebench.bench.report_align import groups_of, method_key

if TYPE_CHECKING:
    from tunebench.bench.report_align import AlignCell

# Enough distinct (colour, marker) pairs for every preset; full training is black, as
# full-ft is in the classification figures, and zero-shot grey.
_PALETTE = [
    ("#0072B2", "s"), ("#56B4E9", "X"), ("#009E73", "^"), ("#44AA99", ">"), ("#D55E00", "o"),
    ("#CC79A7", "D"), ("#E69F00", "v"), ("#882255", "h"), ("#999933", "<"), ("#332288", "p"),
]
_FIXED = {"zero-shot": ("#555555", "*"), "lit:all": ("#000000", "P"), "full-ft": ("#000000", "P")}
R1_LABEL = "Mean R@1, image↔text (%)"


def styles_for(methods) -> dict[str, tuple[str, str]]:
    rest = sorted((m for m in set(methods) if m not in _FIXED), key=method_key)
    styles = {m: _FIXED[m] for m in methods if m in _FIXED}
    styles.update({m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(rest)})
    return styles


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both cost (x, lower is better) and score (y)."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def _panel_title(group: tuple) -> str:
    backbone, dataset, pairs = group
    return f"{dataset}, {backbone}, {pairs} pairs"


def _r1_scatter(groups, path: Path, *, x_of, tick_label, xlabel, title, styles, front: bool):
    fig, axes = base._grid(len(groups))
    handles = {}
    for ax, (group, cells) in zip(axes[: len(groups)], groups.items(), strict=True):
        points = []
        for c in cells:
            colour, marker = styles[c.method]
            x, y, err = x_of(c), 100 * c.r1, 100 * c.stds["mean_r1"]
            if x <= 0:  # zero-shot trains nothing: a reference line, not a point
                if err > 0:
                    ax.axhspan(y - err, y + err, color=colour, alpha=0.12, linewidth=0)
                handles[c.method] = ax.axhline(y, color=colour, linestyle="--", linewidth=1.4)
                continue
            points.append((x, y))
            ax.errorbar(x, y, yerr=err, color=colour, marker=marker, linestyle="none",
                        markeredgecolor="white", markeredgewidth=0.6, elinewidth=1.2, alpha=0.9)
            handles[c.method] = Line2D([], [], color=colour, marker=marker, linestyle="none",
                                       markersize=8, markeredgecolor="white", markeredgewidth=0.6)
        if front and len(points) > 1:
            xs, ys = zip(*pareto_front(points), strict=True)
            handles["Pareto front"] = ax.plot(xs, ys, color="#777777", linewidth=1.0,
                                              linestyle="-", drawstyle="steps-post", zorder=0)[0]
        base._log_axis(ax, tick_label)
        ax.set_title(_panel_title(group))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(R1_LABEL)
    order = lambda m: (1, "") if m == "Pareto front" else (0, *method_key(m))  # noqa: E731
    base._finish(fig, handles, order, path, title)


def _r1_vs_pairs(series, path: Path, *, styles):
    fig, axes = base._grid(len(series))
    handles = {}
    for ax, ((backbone, dataset), cells) in zip(axes[: len(series)], series.items(), strict=True):
        by_method: dict[str, list[AlignCell]] = defaultdict(list)
        for c in cells:
            by_method[c.method].append(c)
        for method in sorted(by_method, key=method_key):
            colour, marker = styles[method]
            curve = sorted(by_method[method], key=lambda c: c.pairs)
            handles[method] = ax.errorbar(
                [c.pairs for c in curve], [100 * c.r1 for c in curve],
                yerr=[100 * c.stds["mean_r1"] for c in curve], color=colour, marker=marker,
                markeredgecolor="white", markeredgewidth=0.6,
            )
        pairs = sorted({c.pairs for c in cells})
        ax.set_xscale("log", base=2)
        ax.set_xticks(pairs, labels=[str(p) for p in pairs])
        ax.set_xlim(pairs[0] / 1.4, pairs[-1] * 1.4)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_title(f"{dataset}, {backbone}")
        ax.set_xlabel("Training pairs (log₂ scale)")
        ax.set_ylabel(R1_LABEL)
    base._finish(fig, handles, method_key, path, "Retrieval vs data size")


def _r1_by_backbone(groups, path: Path):
    """Grouped bars: one group of bars per method, one bar per backbone."""
    fig, axes = base._grid(len(groups), width=7.0)
    handles = {}
    colours = ["#0072B2", "#D55E00", "#009E73", "#CC79A7"]
    for ax, ((dataset, pairs), cells) in zip(axes[: len(groups)], groups.items(), strict=True):
        backbones = sorted({c.backbone for c in cells})
        methods = sorted({c.method for c in cells}, key=method_key)
        width = 0.8 / len(backbones)
        by_key = {(c.method, c.backbone): c for c in cells}
        for b, backbone in enumerate(backbones):
            xs, ys, errs = [], [], []
            for m, method in enumerate(methods):
                if (c := by_key.get((method, backbone))) is not None:
                    xs.append(m + (b - (len(backbones) - 1) / 2) * width)
                    ys.append(100 * c.r1)
                    errs.append(100 * c.stds["mean_r1"])
            handles[backbone] = ax.bar(xs, ys, width=width, yerr=errs,
                                       color=colours[b % len(colours)], label=backbone)
        ax.set_xticks(range(len(methods)), labels=methods, rotation=30, ha="right")
        ax.grid(False, axis="x")
        ax.set_title(f"{dataset}, {pairs} pairs")
        ax.set_ylabel(R1_LABEL)
    base._finish(fig, handles, lambda b: b, path, "Retrieval by backbone (model-size axis)",
                 legend_title="Backbone")


def write_figures(cells: list[AlignCell], figures_dir: Path) -> list[tuple[str, Path]]:
    """Draw the align figures that the runs support; (caption, path) in a fixed order."""
    if not cells:
        return []
    styles = styles_for({c.method for c in cells})
    groups = groups_of(cells)
    out = []
    with matplotlib.style.context(["default", base._RC]):
        path = figures_dir / "align_r1_vs_trainable.png"
        _r1_scatter(groups, path, x_of=lambda c: c.trainable_percent,
                    tick_label=lambda v: f"{v:g}%", xlabel="Trainable parameters (% of model, log scale)",
                    title="Alignment: retrieval vs % trainable", styles=styles, front=True)
        out.append(("Alignment: retrieval vs % trainable", path))
        path = figures_dir / "align_r1_vs_train_time.png"
        _r1_scatter(groups, path, x_of=lambda c: c.train_seconds_mean, tick_label=lambda v: f"{v:g}",
                    xlabel="Training time per run at fixed steps (s, log scale)",
                    title="Alignment: retrieval vs training time", styles=styles, front=True)
        out.append(("Alignment: retrieval vs training time", path))
        series: dict[tuple, list[AlignCell]] = defaultdict(list)
        for c in cells:
            series[c.backbone, c.dataset].append(c)
        series = {k: v for k, v in sorted(series.items()) if len({c.pairs for c in v}) > 1}
        if series:
            # Only methods measured at more than one data size make a curve.
            for key, group_cells in series.items():
                sizes = defaultdict(set)
                for c in group_cells:
                    sizes[c.method].add(c.pairs)
                series[key] = [c for c in group_cells if len(sizes[c.method]) > 1]
            series = {k: v for k, v in series.items() if v}
        if series:
            path = figures_dir / "align_r1_vs_pairs.png"
            _r1_vs_pairs(series, path, styles=styles)
            out.append(("Alignment: retrieval vs data size", path))
        by_size: dict[tuple, list[AlignCell]] = defaultdict(list)
        for c in cells:
            if c.pairs > 0:  # zero-shot bars would only show two untrained towers
                by_size[c.dataset, c.pairs].append(c)
        by_size = {k: v for k, v in sorted(by_size.items()) if len({c.backbone for c in v}) > 1}
        if by_size:
            path = figures_dir / "align_r1_by_backbone.png"
            _r1_by_backbone(by_size, path)
            out.append(("Alignment: retrieval by backbone", path))
    return out
