"""Base-to-new figures, one pair per (backbone, shots) group: Base / New / H bars per
method, and New against Base with lines of equal H, one panel for the average over
datasets and one per dataset. Same conventions as `figures` (object API, fixed style,
deterministic PNGs)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib.style
import numpy as np
from matplotlib.patches import Patch

from tunebench.bench import figures as base
from tunebench.bench.report_b2n import B2NCell, averages, method_key

# Okabe–Ito colours for the three numbers (methods are on the x axis here).
BARS = (("Base", "#0072B2"), ("New", "#D55E00"), ("H", "#009E73"))
ISO_H = (0.2, 0.4, 0.6, 0.8)


def _panels(cells: list[B2NCell]) -> list[tuple[str, list]]:
    """(title, rows) for the average and each dataset; rows have method, base, new, h."""
    by_dataset: dict[str, list[B2NCell]] = defaultdict(list)
    for c in cells:
        by_dataset[c.dataset].append(c)
    n = len(by_dataset)
    panels = [(f"Average over {n} dataset{'s' * (n != 1)}", averages(cells))] if n > 1 else []
    return panels + [(dataset, by_dataset[dataset]) for dataset in sorted(by_dataset)]


def _bars(panels, path: Path, title: str) -> None:
    fig, axes = base._grid(len(panels), width=6.0)
    width = 0.27
    for ax, (panel_title, rows) in zip(axes, panels, strict=False):
        rows = sorted(rows, key=lambda r: method_key(r.method))
        x = np.arange(len(rows))
        for offset, (name, colour) in zip((-width, 0.0, width), BARS, strict=True):
            values = [getattr(r, name.lower()) for r in rows]
            shown = [(xi, 100 * v) for xi, v in zip(x, values, strict=True) if v is not None]
            if shown:
                ax.bar([xi + offset for xi, _ in shown], [v for _, v in shown], width, color=colour)
        ax.set_xticks(x, [r.method for r in rows], rotation=40, ha="right")
        ax.set_ylim(0, 100)
        ax.set_ylabel("Top-1 accuracy (%)")
        ax.set_title(panel_title)
        ax.grid(axis="x", visible=False)
    fig.suptitle(f"{title}\nmean over seeds; no New or H bar: no answer for unseen classes",
                 fontsize=12, linespacing=1.4)
    fig.legend([Patch(color=c) for _, c in BARS], [n for n, _ in BARS], loc="outside right upper", frameon=False)
    _save(fig, path)


def _scatter(panels, path: Path, title: str) -> None:
    fig, axes = base._grid(len(panels))
    styles = base.method_styles(sorted({r.method for _, rows in panels for r in rows}))
    handles = {}
    grid = np.linspace(1, 100, 400)
    for ax, (panel_title, rows) in zip(axes, panels, strict=False):
        for h in ISO_H:  # new = h·base / (2·base − h), where that is a valid accuracy
            b = grid[2 * grid > 100 * h]
            n = 100 * h * b / (2 * b - 100 * h)
            keep = n <= 100
            ax.plot(b[keep], n[keep], color="#BBBBBB", linewidth=0.9, linestyle=":")
            ax.annotate(f"H={100 * h:.0f}", (100, 100 * h * 100 / (200 - 100 * h)), fontsize=8, color="#888888",
                        ha="right", va="bottom")
        for r in sorted(rows, key=lambda r: method_key(r.method)):
            if r.new is None:
                continue
            colour, marker = styles[r.method]
            handles[r.method] = ax.plot(100 * r.base, 100 * r.new, color=colour, marker=marker, linestyle="none",
                                        markersize=9, markeredgecolor="white", markeredgewidth=0.6)[0]
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_xlabel("Base accuracy (%)")
        ax.set_ylabel("New accuracy (%)")
        ax.set_title(panel_title)
    methods = sorted(handles, key=method_key)
    fig.suptitle(f"{title}\nmean over seeds; dotted: equal harmonic mean H", fontsize=12, linespacing=1.4)
    fig.legend([handles[m] for m in methods], methods, loc="outside right upper", title="Method", frameon=False)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=base.DPI, format="png", bbox_inches="tight", pad_inches=0.12,
                metadata={"Software": None})


def write_figures(groups: dict[tuple[str, int], list[B2NCell]], figures_dir: Path) -> list[tuple[str, Path]]:
    out = []
    with matplotlib.style.context(["default", base._RC]):
        for (backbone, shots), cells in groups.items():
            panels = _panels(cells)
            where = f"{backbone}, {shots} shots per base class"
            stem = f"b2n_{base._slug(backbone)}_{shots}shot"
            path = figures_dir / f"{stem}_base_new_h.png"
            _bars(panels, path, f"Base-to-new: Base, New and H ({where})")
            out.append((f"Base-to-new: Base, New and H ({where})", path))
            path = figures_dir / f"{stem}_new_vs_base.png"
            _scatter(panels, path, f"Base-to-new: New vs Base ({where})")
            out.append((f"Base-to-new: New vs Base ({where})", path))
    return out
