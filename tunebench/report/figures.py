"""What every section's figures share: style, panel grid, legend, saving, and the two
common plots (a score against a cost on a log axis, and a score against data size).

Drawn with matplotlib's object API (no pyplot, so no global figure state or backend
switch) under the library's default style plus the settings below, whatever the user's
matplotlibrc says. PNGs are written without the "Software" tag, which carries the
matplotlib version, so the same cells give the same bytes. A cell is a row of
`table.seed_cells`; ``y`` names a metric, drawn in percent as mean ± 1 sample std.

A cell whose x value cannot sit on a log axis (zero trainable parameters, zero training
seconds, zero shots: zero-shot) is drawn as a dashed horizontal line with a ±std band.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import matplotlib.style
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

from tunebench.report.style import label, method_key, style

DPI = 150
RC = {
    "font.size": 11, "axes.titlesize": 12, "axes.titleweight": "bold", "axes.labelsize": 11,
    "legend.fontsize": 10, "xtick.labelsize": 10, "ytick.labelsize": 10, "axes.grid": True,
    "axes.grid.which": "both", "grid.linestyle": ":", "grid.alpha": 0.5, "axes.spines.top": False,
    "axes.spines.right": False, "lines.linewidth": 1.6, "lines.markersize": 7, "errorbar.capsize": 3,
}
SEEDS = "mean ± 1 sample std over seeds"


@contextmanager
def styled():
    with matplotlib.style.context(["default", RC]):
        yield


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "dataset"


def links(written: list[tuple[str, Path]], results: Path) -> list[str]:
    """Markdown image lines for (caption, path) pairs, relative to the results folder."""
    return [f"![{title}]({path.relative_to(results).as_posix()})\n" for title, path in written]


def grid(n_panels: int, *, width: float = 5.2, height: float = 4.0):
    ncols = min(n_panels, 3)
    nrows = math.ceil(n_panels / ncols)
    width += 0.8 * (n_panels == 1)  # room for the figure title beside the legend
    fig = Figure(figsize=(width * ncols + 2.0, height * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", bbox_inches="tight", pad_inches=0.12, metadata={"Software": None})
    return path


def finish(fig: Figure, handles: dict, path: Path, title: str, *, subtitle: str = SEEDS, order: Callable = method_key,
           last: tuple[str, ...] = (), legend_title: str | None = "Method") -> Path:
    """Figure title, one legend entry per handle (``order``ed, the names in ``last`` last), save."""
    names = sorted((n for n in handles if n not in last), key=order) + [n for n in last if n in handles]
    fig.suptitle(f"{title}\n{subtitle}", fontsize=12, linespacing=1.4)
    fig.legend([handles[n] for n in names], [label(n) for n in names], loc="outside right upper",
               title=legend_title, frameon=False)
    return save(fig, path)


def marker_handle(method: str, size: float = 8, **line) -> Line2D:
    colour, marker = style(method)
    return Line2D([], [], color=colour, marker=marker, markersize=size, markeredgecolor="white",
                  markeredgewidth=0.6, **line)


def reference_line(ax, c: dict, y: str):
    colour, _ = style(c["method"])
    mean, std = 100 * c[f"{y}_mean"], 100 * c[f"{y}_std"]
    if std > 0:
        ax.axhspan(mean - std, mean + std, color=colour, alpha=0.12, linewidth=0)
    return ax.axhline(mean, color=colour, linestyle="--", linewidth=1.4)


def log_axis(ax, tick_label: Callable[[float], str]) -> None:
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


def count_label(v: float) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if v >= size:
            return f"{v / size:g}{suffix}"
    return f"{v:g}"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both cost (x, lower is better) and score (y)."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def score_vs_cost(panels, path: Path, *, x: str, y: str, tick_label: Callable, xlabel: str, ylabel: str,
                  title: str, by_shots: bool = True, front: bool = False) -> Path:
    """One point per cell at (cost ``x``, score ``y``) on a log x axis, one panel per
    (title, cells). ``by_shots``: marker area grows with the shot count, so a method's
    points read as one family; ``front``: the Pareto front is drawn."""
    fig, axes = grid(len(panels))
    shots = sorted({c["shots"] for _, cells in panels for c in cells if c[x] > 0}) if by_shots else []
    size = {s: 5 + 2.0 * i for i, s in enumerate(shots)}
    handles = {}
    for ax, (panel_title, cells) in zip(axes[: len(panels)], panels, strict=True):
        points = []
        for c in sorted(cells, key=lambda c: (method_key(c["method"]), -c["shots"])):
            colour, marker = style(c["method"])
            if c[x] <= 0:
                handles[c["method"]] = reference_line(ax, c, y)
                continue
            points.append((c[x], 100 * c[f"{y}_mean"]))
            handles[c["method"]] = marker_handle(c["method"], linestyle="none")
            ax.errorbar(c[x], 100 * c[f"{y}_mean"], yerr=100 * c[f"{y}_std"], color=colour, marker=marker,
                        linestyle="none", markersize=size.get(c["shots"]), markeredgecolor="white",
                        markeredgewidth=0.6, elinewidth=1.2, alpha=0.9)
        if front and len(points) > 1:
            xs, ys = zip(*pareto_front(points), strict=True)
            handles["Pareto front"] = ax.plot(xs, ys, color="#777777", linewidth=1.0, linestyle="-",
                                              drawstyle="steps-post", zorder=0)[0]
        log_axis(ax, tick_label)
        ax.set_title(panel_title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if by_shots:
            ax.grid(True, which="minor", alpha=0.2)
    if shots:
        fig.legend([Line2D([], [], color="#777777", marker="o", linestyle="none", markersize=size[s]) for s in shots],
                   [str(s) for s in shots], loc="outside lower center", ncols=len(shots),
                   title="Training images per class (shots; marker size)", frameon=False)
    return finish(fig, handles, path, title, last=("Pareto front",))


def score_vs_shots(panels, path: Path, *, y: str, xlabel: str, ylabel: str, title: str,
                   panel_titles: bool = False) -> Path:
    """A curve per method over ``shots`` (log₂ axis), methods that train nothing as a
    line, and chance where the cells know their number of classes."""
    fig, axes = grid(len(panels))
    handles = {}
    for ax, (panel_title, cells) in zip(axes[: len(panels)], panels, strict=True):
        per_method: dict[str, list[dict]] = defaultdict(list)
        for c in cells:
            per_method[c["method"]].append(c)
        for method in sorted(per_method, key=method_key):
            colour, marker = style(method)
            curve = sorted((c for c in per_method[method] if c["shots"] > 0), key=lambda c: c["shots"])
            for c in per_method[method]:
                if c["shots"] <= 0:
                    handles[method] = reference_line(ax, c, y)
            if curve:
                handles[method] = ax.errorbar(
                    [c["shots"] for c in curve], [100 * c[f"{y}_mean"] for c in curve],
                    yerr=[100 * c[f"{y}_std"] for c in curve], color=colour, marker=marker,
                    markeredgecolor="white", markeredgewidth=0.6)
        classes = sorted({c.get("num_classes") for c in cells if c.get("num_classes")})
        if classes:
            handles["chance"] = ax.axhline(100 / classes[-1], color="#999999", linestyle=":", linewidth=1.4)
        shots = sorted({c["shots"] for c in cells if c["shots"] > 0})
        ax.set_xscale("log", base=2)
        if shots:
            ax.set_xticks(shots, labels=[str(s) for s in shots])
            ax.set_xlim(shots[0] / 1.4, shots[-1] * 1.4)
        ax.xaxis.set_minor_locator(NullLocator())
        if panel_titles or len(panels) > 1:  # a lone panel is already named by the figure title
            ax.set_title(panel_title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    return finish(fig, handles, path, title, last=("chance",))
