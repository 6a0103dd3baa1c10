"""Base-to-new generalisation (task ``base2new``) in the literature's form (CoCoOp,
Table 1): Base, New and H per method, averaged over datasets and per dataset, with the
training cost beside it, a CSV and figures.

Runs are grouped per (backbone, shots); methods that train nothing (zero-shot, stored
at 0 shots) join every group of their backbone as its baseline row. As in the
literature, H is the harmonic mean of the mean base and mean new accuracy (over seeds
for a dataset, over datasets for the average), not a mean of per-seed H. A method
without an answer for unseen classes (linear-probe) shows "—".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from tunebench.report import figures
from tunebench.report import table as t
from tunebench.report.curves import curve_part
from tunebench.report.sections import Options, section
from tunebench.report.style import method_key, style

REFERENCE = "cones"  # training time is compared with it (CoCoOp's cost is a finding)
BARS = (("Base", "#0072B2"), ("New", "#D55E00"), ("H", "#009E73"))  # methods are on the x axis here
ISO_H = (0.2, 0.4, 0.6, 0.8)


def summarise(runs) -> list[dict]:
    """One cell per (backbone, shots, dataset, method), with ``base``, ``new`` (None
    without an answer for new classes) and their harmonic mean ``h``."""
    cells = t.seed_cells(runs, ["backbone", "shots", "dataset", "method"])
    for c in cells:
        new = None if t.missing(c.get("new_mean")) else c["new_mean"]
        c.update(base=c["base_mean"], new=new, h=t.harmonic_mean(c["base_mean"], new))
    return cells


def groups_of(cells: list[dict]) -> dict[tuple[str, int], list[dict]]:
    """Cells per (backbone, shots), zero-shot joining each as its baseline rows."""
    return t.with_baselines(cells, ("backbone",), lambda c: (c["dataset"], method_key(c["method"])))


def averages(cells: list[dict]) -> list[dict]:
    """Per method, the mean over datasets of its base and new accuracy (the literature's
    "Average over N datasets"); methods missing a dataset of the group are left out."""
    df = pd.DataFrame(cells)
    datasets = sorted(df.dataset.unique())
    rows = []
    for method, mine in t.by_method(df, "method").groupby("method", sort=False):
        if sorted(mine.dataset) != datasets:
            continue
        new = None if mine.new.isna().any() else mine.new.mean()
        rows.append({"method": method, "base": mine.base.mean(), "new": new, "h": t.harmonic_mean(mine.base.mean(), new),
                     "train_seconds_mean": mine.train_seconds_mean.mean(),
                     "trainable_params": round(mine.trainable_params.mean())})
    return rows


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _times(seconds: float, reference: float | None) -> str:
    return "—" if reference is None or reference <= 0 or seconds <= 0 else t.ratio(seconds / reference)


def _average_table(cells: list[dict]) -> list[str]:
    rows = averages(cells)
    reference = next((r["train_seconds_mean"] for r in rows if r["method"] == REFERENCE), None)
    table = pd.DataFrame([[f"`{r['method']}`", _percent(r["base"]), _percent(r["new"]), _percent(r["h"]),
                           f"{r['trainable_params']:,}", f"{r['train_seconds_mean']:.1f}",
                           _times(r["train_seconds_mean"], reference)] for r in rows],
                         columns=["Method", "Base", "New", "H", "Trainable", "Train s", f"Train vs {REFERENCE}"])
    n = len({c["dataset"] for c in cells})
    return [f"#### Average over {n} dataset{'s' * (n != 1)}", "", *t.markdown(table), ""]


def _dataset_table(dataset: str, cells: list[dict]) -> list[str]:
    reference = next((c["train_seconds_mean"] for c in cells if c["method"] == REFERENCE), None)
    table = pd.DataFrame(
        [[f"`{c['method']}`", t.pm(c, "base"), t.pm(c, "new"), _percent(c["h"]), str(len(c["seeds"])),
          f"{c['trainable_params']:,}", t.share(c["trainable_percent"]), f"{c['train_seconds_mean']:.1f}",
          _times(c["train_seconds_mean"], reference), f"{c['eval_seconds_mean']:.1f}"] for c in cells],
        columns=["Method", "Base", "New", "H", "Seeds", "Trainable", "% trainable", "Train s", f"Train vs {REFERENCE}",
                 "Eval s"])
    return [f"#### {dataset}", "", *t.markdown(table), ""]


def _panels(cells: list[dict]) -> list[tuple[str, list[dict]]]:
    """(title, rows) for the average and each dataset; rows have method, base, new, h."""
    datasets = sorted({c["dataset"] for c in cells})
    n = len(datasets)
    panels = [(f"Average over {n} dataset{'s' * (n != 1)}", averages(cells))] if n > 1 else []
    return panels + [(d, [c for c in cells if c["dataset"] == d]) for d in datasets]


def _bars(panels, path: Path, title: str) -> Path:
    fig, axes = figures.grid(len(panels), width=6.0)
    width = 0.27
    for ax, (panel_title, rows) in zip(axes, panels, strict=False):
        rows = sorted(rows, key=lambda r: method_key(r["method"]))
        x = np.arange(len(rows))
        for offset, (name, colour) in zip((-width, 0.0, width), BARS, strict=True):
            shown = [(xi, 100 * r[name.lower()]) for xi, r in zip(x, rows, strict=True) if r[name.lower()] is not None]
            if shown:
                ax.bar([xi + offset for xi, _ in shown], [v for _, v in shown], width, color=colour)
        ax.set_xticks(x, [r["method"] for r in rows], rotation=40, ha="right")
        ax.set_ylim(0, 100)
        ax.set_ylabel("Top-1 accuracy (%)")
        ax.set_title(panel_title)
        ax.grid(axis="x", visible=False)
    names = [n for n, _ in BARS]
    return figures.finish(fig, {n: Patch(color=c) for n, c in BARS}, path, title, order=names.index, legend_title=None,
                          subtitle="mean over seeds; no New or H bar: no answer for unseen classes")


def _scatter(panels, path: Path, title: str) -> Path:
    fig, axes = figures.grid(len(panels))
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
        for r in sorted(rows, key=lambda r: method_key(r["method"])):
            if r["new"] is not None:
                colour, marker = style(r["method"])
                handles[r["method"]] = ax.plot(100 * r["base"], 100 * r["new"], color=colour, marker=marker,
                                               linestyle="none", markersize=9, markeredgecolor="white",
                                               markeredgewidth=0.6)[0]
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_xlabel("Base accuracy (%)")
        ax.set_ylabel("New accuracy (%)")
        ax.set_title(panel_title)
    return figures.finish(fig, handles, path, title, subtitle="mean over seeds; dotted: equal harmonic mean H")


def _figures(groups: dict, folder: Path) -> list[tuple[str, Path]]:
    out = []
    with figures.styled():
        for (backbone, shots), cells in groups.items():
            panels, where = _panels(cells), f"{backbone}, {shots} shots per base class"
            stem = folder / f"b2n_{figures.slug(backbone)}_{shots}shot"
            title = f"Base-to-new: Base, New and H ({where})"
            out.append((title, _bars(panels, stem.with_name(stem.name + "_base_new_h.png"), title)))
            title = f"Base-to-new: New vs Base ({where})"
            out.append((title, _scatter(panels, stem.with_name(stem.name + "_new_vs_base.png"), title)))
    return out


@section("base2new", position=40, metric="base", fractions=("base", "new", "h"))
def write(runs: list[dict], results: Path, options: Options) -> tuple[list[str], list[Path]]:
    if not runs:
        return [], []
    cells = summarise(runs)
    groups = groups_of(cells)
    written = _figures(groups, results / "figures")
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
    for (backbone, shots), group in groups.items():
        lines += [f"### {backbone}, {shots} shots per base class", "", *_average_table(group)]
        for dataset in sorted({c["dataset"] for c in group}):
            lines += _dataset_table(dataset, [c for c in group if c["dataset"] == dataset])
    lines += figures.links(written, results)
    curve_lines, curve_files = curve_part(runs, results, track="Base-to-new", key="h", metric_name="H",
                                          ylabel="H, harmonic mean of base and new accuracy (%)", slug="b2n",
                                          shots_unit="shots per base class")
    lines += ["", *curve_lines] if curve_lines else []
    summary = t.write_summary(cells, results / "summary_b2n.csv", [
        "backbone", "shots", "dataset", "method", "n_seeds", "seeds", "base_mean", "base_std", ("new_mean", "new"),
        "new_std", "h", "trainable_params", "total_params", "train_seconds_mean", "eval_seconds_mean"])
    return lines, [summary, *curve_files, *(path for _, path in written)]
