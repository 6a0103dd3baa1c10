"""Cost at scale: how each classification method's cost grows with the number of
classes, the text tower's size and the prompt length (``make bench-cost``, docs/cost.md).

It claims the classification runs on timing-only backbones (``cls-timing:*``, random
weights: ``metrics.timing_only``), so their scores never reach an accuracy table; they
record none anyway. A cell is (method, text tower, tokens per prompt, classes); its
numbers are medians over its runs: the engine's median seconds per training step, the
evaluation seconds and the peak memory. The axes are read from the cells themselves: a
table for every group in which one axis varies and the other two stay fixed.

The slope is the least-squares fit of log step time on log classes per method: about 0
is flat in the classes, about 1 linear.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.ticker import NullLocator

from tunebench.report import figures
from tunebench.report import table as t
from tunebench.report.sections import Options, section
from tunebench.report.style import method_key, style

PREFIX = "cls-timing:"
AXES = ("classes", "tower", "tokens")
AXIS_TITLES = {"classes": "number of classes", "tower": "text tower", "tokens": "tokens per prompt"}
CSV_COLUMNS = ("method", "tower", "text_params", "tokens", "classes", "runs", "step_seconds", "eval_seconds",
               "train_seconds", "peak_increase_mb", "peak_memory_mb", "trainable_params")


def is_cost_run(run: dict) -> bool:
    """A classification run on a timing-only backbone."""
    metrics = run.get("metrics")
    return run.get("task") == "fewshot-cls" and isinstance(metrics, dict) and metrics.get("timing_only") is True


def tower_of(backbone: str) -> str:
    """``cls-timing:bertbase-ctx32`` -> ``bertbase``."""
    return backbone.removeprefix(PREFIX).partition("-ctx")[0]


def _median(values) -> float | None:
    values = [float(v) for v in values if t.is_number(v)]
    return statistics.median(values) if values else None


def cells(runs: list[dict]) -> list[dict]:
    """One cell per (method, tower, tokens, classes): medians over its runs."""
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        m = r["metrics"]
        grouped[r["method"], tower_of(r["backbone"]), int(m["text_tokens"]), int(m["num_classes"])].append(r)
    out = []
    for (method, tower, tokens, classes), group in grouped.items():
        out.append({
            "method": method, "tower": tower, "tokens": tokens, "classes": classes, "runs": len(group),
            "text_params": int(group[0]["metrics"]["text_params"]),
            "step_seconds": _median(r.get("step_seconds") for r in group),
            "eval_seconds": _median(r["eval_seconds"] for r in group),
            "train_seconds": _median(r["train_seconds"] for r in group),
            "peak_memory_mb": _median(r["peak_memory_mb"] for r in group),
            # What the run itself added (its backbone copy, activations, optimizer state):
            # the absolute peak also holds every backbone the process loaded before.
            "peak_increase_mb": _median(r.get("peak_memory_increase_mb", r["peak_memory_mb"]) for r in group),
            "trainable_params": int(group[0]["trainable_params"]),
        })
    return sorted(out, key=lambda c: (method_key(c["method"]), c["text_params"], c["tower"], c["tokens"], c["classes"]))


def log_slope(xs, ys) -> float | None:
    """Least-squares slope of log y on log x; None without two distinct positive x."""
    points = [(x, y) for x, y in zip(xs, ys, strict=True) if t.is_number(y) and x > 0 and y > 0]
    if len({x for x, _ in points}) < 2:
        return None
    lx, ly = np.log([x for x, _ in points]), np.log([y for _, y in points])
    return float(np.polyfit(lx, ly, 1)[0])


def axis_groups(all_cells: list[dict], axis: str) -> dict[tuple, list[dict]]:
    """Cells grouped by the two other axes; in each group only the methods measured at two
    or more values of ``axis``, and only groups where some method is."""
    others = [a for a in AXES if a != axis]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for c in all_cells:
        groups[tuple(c[a] for a in others)].append(c)
    kept = {}
    for key, group in sorted(groups.items()):
        values: dict[str, set] = defaultdict(set)
        for c in group:
            values[c["method"]].add(c[axis])
        varying = [c for c in group if len(values[c["method"]]) > 1]
        if varying:
            kept[key] = varying
    return kept


def slopes(group: list[dict]) -> dict[str, float | None]:
    """Per method: the log-log slope of step time vs classes over ``group``."""
    per_method: dict[str, list[dict]] = defaultdict(list)
    for c in group:
        per_method[c["method"]].append(c)
    return {m: log_slope([c["classes"] for c in cs], [c["step_seconds"] for c in cs]) for m, cs in per_method.items()}


def _seconds(value) -> str:
    if t.missing(value):
        return "—"
    return f"{value:.3g}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _cell_text(c: dict | None) -> str:
    if c is None:
        return "—"
    return f"{_seconds(c['step_seconds'])} / {_seconds(c['eval_seconds'])} / {c['peak_increase_mb']:,.0f}"


def _axis_value(c: dict, axis: str) -> str:
    if axis == "tower":
        return f"{c['tower']} ({t.count(c['text_params'])})"
    return f"{c[axis]:,} {'classes' if axis == 'classes' else 'tokens'}"


def _group_title(key: tuple, axis: str) -> str:
    others = dict(zip([a for a in AXES if a != axis], key, strict=True))
    parts = []
    if "tower" in others:
        parts.append(f"{others['tower']} tower")
    if "classes" in others:
        parts.append(f"{others['classes']:,} classes")
    if "tokens" in others:
        parts.append(f"{others['tokens']} tokens per prompt")
    return ", ".join(parts)


def axis_table(key: tuple, group: list[dict], axis: str) -> list[str]:
    values = sorted({(c["text_params"], c[axis]) if axis == "tower" else (c[axis], c[axis]) for c in group})
    columns = [next(_axis_value(c, axis) for c in group if c[axis] == v) for _, v in values]
    fit = slopes(group) if axis == "classes" else {}
    body = []
    for method in sorted({c["method"] for c in group}, key=method_key):
        at = {c[axis]: c for c in group if c["method"] == method}
        row = [method, *(_cell_text(at.get(v)) for _, v in values)]
        if axis == "classes":
            row.append("—" if fit[method] is None else f"{fit[method]:.2f}")
        body.append(row)
    header = ["Method", *columns, *(["Slope"] if axis == "classes" else [])]
    return [f"**By {AXIS_TITLES[axis]}** ({_group_title(key, axis)}): step s / eval s / peak MB", "",
            *t.markdown(t.rows(body, header)), ""]


def _lines_figure(panels, path: Path, *, x: str, xlabel: str, title: str, tick_label) -> Path:
    """Step time against ``x`` on log-log axes, one line per method, one panel per group."""
    with figures.styled():
        fig, axes = figures.grid(len(panels))
        handles = {}
        for ax, (panel_title, group) in zip(axes[: len(panels)], panels, strict=True):
            per_method: dict[str, list[dict]] = defaultdict(list)
            for c in group:
                if t.is_number(c["step_seconds"]) and c["step_seconds"] > 0:
                    per_method[c["method"]].append(c)
            seen: set[tuple[str, str]] = set()
            for method in sorted(per_method, key=method_key):
                points = sorted(per_method[method], key=lambda c: c[x])
                colour, marker = style(method)
                # Two methods may share a colour and marker (cones and lit:lilt do): dash the later.
                dashed = (colour, marker) in seen
                seen.add((colour, marker))
                handles[method] = ax.plot([c[x] for c in points], [c["step_seconds"] for c in points], color=colour,
                                          marker=marker, markeredgecolor="white", markeredgewidth=0.6,
                                          linestyle="--" if dashed else "-")[0]
            ax.set_xscale("log")
            ax.set_yscale("log")
            ticks = sorted({c[x] for c in group})
            ax.set_xticks(ticks, labels=[tick_label(v) for v in ticks])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_title(panel_title)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("median seconds per training step")
        return figures.finish(fig, handles, path, title,
                              subtitle="timing only: random weights")


def _figures(all_cells: list[dict], results: Path) -> list[tuple[str, Path]]:
    written = []
    by_classes = axis_groups(all_cells, "classes")
    if by_classes:
        panels = [(_group_title(k, "classes"), g) for k, g in by_classes.items()]
        title = "Step time vs number of classes"
        written.append((title, _lines_figure(panels, results / "figures" / "cost_step_vs_classes.png",
                                             x="classes", xlabel="classes", title=title,
                                             tick_label=lambda v: f"{v:,}")))
    by_tower = axis_groups(all_cells, "tower")
    if by_tower:
        panels = [(_group_title(k, "tower"), g) for k, g in by_tower.items()]
        title = "Step time vs text-tower size"
        written.append((title, _lines_figure(panels, results / "figures" / "cost_step_vs_text_params.png",
                                             x="text_params", xlabel="text-tower parameters", title=title,
                                             tick_label=t.count)))
    return written


def _slope_sentence(all_cells: list[dict]) -> list[str]:
    lines = []
    for key, group in axis_groups(all_cells, "classes").items():
        fit = {m: s for m, s in slopes(group).items() if s is not None}
        if fit:
            listed = ", ".join(f"{m} {s:.2f}" for m, s in sorted(fit.items(), key=lambda kv: method_key(kv[0])))
            lines += [f"Measured slopes of step time vs classes ({_group_title(key, 'classes')}): {listed}.", ""]
    return lines


@section("cost", position=60, fractions=(), metric="num_classes", claims=is_cost_run)
def write(runs: list[dict], results: Path, options: Options) -> tuple[list[str], list[Path]]:
    if not runs:
        return [], []
    all_cells = cells(runs)
    lines = [
        "## Cost at scale (timing only)", "",
        "How each method's cost grows with the work: runs on `cls-timing:*` backbones (random weights, "
        "a toy image tower, a text tower of real size) and `synthetic:N` datasets (N ImageNet class names, "
        "random images). They record costs only, never a score. A cell reads *step s / eval s / peak MB*: "
        "the median seconds of one training step (steps after the first), the seconds of evaluation (the "
        "class side encoded once, or per image for CoCoOp, and every test image scored) and the peak "
        "memory the run added to what the process held when it started (its copy of the backbone "
        "included; `summary_cost.csv` also has the absolute peak); — where a method takes no training "
        "step (zero-shot). *Slope* is the "
        "least-squares slope of log step time on log classes: about 0 is flat, about 1 linear in the "
        "classes. Timings are comparable within this section only, on the hardware above.", "",
    ]
    for axis in AXES:
        for key, group in axis_groups(all_cells, axis).items():
            lines += axis_table(key, group, axis)
    lines += _slope_sentence(all_cells)
    written = _figures(all_cells, results)
    lines += figures.links(written, results)
    csv = t.write_summary(all_cells, results / "summary_cost.csv", CSV_COLUMNS)
    lines += ["Every cell, with train seconds and trainable parameters: `summary_cost.csv`.", ""]
    return lines, [csv, *(path for _, path in written)]

