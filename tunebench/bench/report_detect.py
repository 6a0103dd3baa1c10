"""The detection track's part of the report: COCO AP on novel and base classes per
method and shot count, the cost of each method, ConES against the input-side methods,
figures, and the pictures of each method's predictions.

Runs of task ``detect`` are grouped per (dataset, backbone); ``shots`` is annotated
images per class. A pure function of the run files, like the rest of the report.
"""

from __future__ import annotations

import csv
import io
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

TASK = "detect"
METRIC = "novel_bbox_ap"  # what every detect run has; the headline metric
# Metrics that are fractions in [0, 1] (fnmatch patterns); a run outside is not read.
FRACTIONS = ("*_ap", "*_ap50", "*_ap75")
REFERENCE = "cones"  # train times are compared with it
INPUT_SIDE = ("coop", "textual-inversion")  # ConES's rivals that run the text encoder
METHOD_ORDER = ("zero-shot", "cones", "coop", "textual-inversion", "lit:heads", "lit", "full-ft")
DETAIL = ("novel_bbox_ap", "novel_bbox_ap50", "novel_bbox_ap75", "novel_segm_ap", "base_bbox_ap", "base_segm_ap")
DETAIL_NAMES = ("Novel box AP", "AP50", "AP75", "Novel mask AP", "Base box AP", "Base mask AP")


def method_key(method: str) -> tuple[int, str]:
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return rank, method


@dataclass(frozen=True)
class DetectCell:
    """All successful seeds of one (dataset, backbone, method, shots)."""

    dataset: str
    backbone: str
    method: str
    shots: int
    seeds: tuple[int, ...]
    means: dict[str, float]
    stds: dict[str, float]
    train_seconds_mean: float
    eval_seconds_mean: float
    trainable_params: int
    total_params: int
    pictures: tuple[tuple[int, str], ...]  # (seed, relative path)

    @property
    def group(self) -> tuple[str, str]:
        return self.dataset, self.backbone

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / self.total_params if self.total_params else 0.0

    # The headline metric, as the shared figure helpers (figures.py) read it off a cell.
    @property
    def metric_mean(self) -> float:
        return self.means[METRIC]

    @property
    def metric_std(self) -> float:
        return self.stds[METRIC]

    num_classes = None  # no chance line: AP has no chance level


def summarise(runs) -> list[DetectCell]:
    cells = [
        DetectCell(
            dataset=dataset, backbone=backbone, method=method, shots=shots, **shared,
            pictures=tuple((r["seed"], r["pictures"]["predictions"]) for r in group
                           if isinstance(r.get("pictures"), dict) and "predictions" in r["pictures"]),
        )
        for (dataset, backbone, method, shots), group, shared in seed_groups(
            runs, lambda r: (r["dataset"], r["backbone"], r["method"], r["shots"]))
    ]
    cells.sort(key=lambda c: (c.group, method_key(c.method), c.shots))
    return cells


def groups_of(cells) -> dict[tuple, list[DetectCell]]:
    groups: dict[tuple, list[DetectCell]] = defaultdict(list)
    for c in cells:
        groups[c.group].append(c)
    return dict(sorted(groups.items()))


# ---- formatting ----------------------------------------------------------------------


def _ap(cell: DetectCell | None, name: str = METRIC) -> str:  # the headline by default
    return percent_cell(cell, name)


def _count(n: int) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.1f}{suffix}"
    return str(n)


def _group_section(group: tuple, cells: list[DetectCell]) -> list[str]:
    dataset, backbone = group
    shots = sorted({c.shots for c in cells if c.shots > 0})
    columns = sorted({c.shots for c in cells})  # 0: methods that train nothing (zero-shot)
    methods = sorted({c.method for c in cells}, key=method_key)
    at = {(c.method, c.shots): c for c in cells}
    lines = [f"### {dataset}, backbone `{backbone}`", "",
             "Novel-class box AP (%, COCO AP@[.5:.95]) by annotated images per class:", ""]
    rows = []
    for method in methods:
        seeds = max((len(c.seeds) for c in cells if c.method == method), default=0)
        rows.append([f"`{method}`", *[_ap(at.get((method, k))) for k in columns], str(seeds)])
    lines += markdown_table(["Method", *[f"{k}-shot" for k in columns], "Seeds"], rows, "l" + "r" * (len(columns) + 1))
    top = shots[-1] if shots else 0
    lines += ["", f"At {top} images per class: every COCO number (%), cost and size. *Train s* and *Eval s* "
              "are wall-clock per run (mean over seeds); frozen-detector regions are computed once into a "
              "shared cache and counted in neither.", ""]
    rows = []
    for method in methods:
        cell = at.get((method, top)) or at.get((method, 0))
        if cell is None:
            continue
        rows.append([f"`{method}`", *[_ap(cell, name) for name in DETAIL], _count(cell.trainable_params),
                     share(cell.trainable_percent), f"{cell.train_seconds_mean:.1f}",
                     f"{cell.eval_seconds_mean:.1f}"])
    lines += markdown_table(["Method", *DETAIL_NAMES, "Trainable", "% trainable", "Train s", "Eval s"], rows,
                    "l" + "r" * (len(DETAIL) + 4))
    lines += [""] + _versus_reference(at, shots) + _pictures(cells, top)
    return lines


def _versus_reference(at: dict, shots: list[int]) -> list[str]:
    """ConES against the methods that run the text encoder: AP difference and time ratio."""
    rivals = [m for m in INPUT_SIDE if any((m, k) in at for k in shots)]
    if not rivals or not any((REFERENCE, k) in at for k in shots):
        return []
    rows = []
    for k in shots:
        ref = at.get((REFERENCE, k))
        if ref is None:
            continue
        for rival in rivals:
            other = at.get((rival, k))
            if other is None:
                continue
            ratio = other.train_seconds_mean / ref.train_seconds_mean if ref.train_seconds_mean > 0 else float("nan")
            rows.append([str(k), f"`{rival}`", _ap(ref), _ap(other),
                         f"{100 * (ref.metric_mean - other.metric_mean):+.1f}", f"{ratio:.1f}×"])
    return [f"`{REFERENCE}` against the input-side methods (novel box AP; time = rival's train s / "
            f"{REFERENCE}'s):", "",
            *markdown_table(["Shots", "Rival", f"{REFERENCE} AP", "Rival AP", "Δ AP (points)", "Rival time / cones"],
                    rows, "lrrrrr"), ""]


def _pictures(cells: list[DetectCell], top: int) -> list[str]:
    shown = []
    for cell in sorted(cells, key=lambda c: method_key(c.method)):
        if cell.shots in (top, 0) and cell.pictures:
            seed, path = cell.pictures[0]
            shown.append(f"- `{cell.method}` ({cell.shots}-shot, seed {seed}): ![{cell.method}]({path})")
    if not shown:
        return []
    return ["Predictions on the first test images that hold a novel-class object "
            "(novel classes orange, base blue; score ≥ 0.3):", "",
            *shown, ""]


def render_section(cells: list[DetectCell], figure_links: list[tuple[str, str]]) -> list[str]:
    if not cells:
        return []
    lines = ["## Detection track (task `detect`)", "",
             "Open-vocabulary detection and instance segmentation: a detector whose classes are "
             "text embeddings, tuned by each method on K annotated images per class (base and novel), "
             "scored with pycocotools on the test images. Novel classes were never seen when the "
             "detector was built; *novel box AP* is the headline.", ""]
    for group, group_cells in groups_of(cells).items():
        lines += _group_section(group, group_cells)
    if figure_links:
        lines += ["### Detection figures", ""]
        lines += [f"![{title}]({link})\n" for title, link in figure_links]
    return lines


def write_summary_csv(cells: list[DetectCell], path: Path) -> None:
    metrics = sorted({k for c in cells for k in c.means})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "backbone", "method", "shots", "n_seeds", "seeds", "trainable_params",
                     "total_params", "trainable_percent", "train_seconds_mean", "eval_seconds_mean",
                     *[f"{m}_{s}" for m in metrics for s in ("mean", "std")]])
    for c in cells:
        values = []
        for m in metrics:
            values += [f"{c.means[m]:.6g}", f"{c.stds[m]:.6g}"] if m in c.means else ["", ""]
        writer.writerow([c.dataset, c.backbone, c.method, c.shots, len(c.seeds), ";".join(map(str, c.seeds)),
                         c.trainable_params, c.total_params, f"{c.trainable_percent:.6g}",
                         f"{c.train_seconds_mean:.4f}", f"{c.eval_seconds_mean:.4f}", *values])
    atomic_write_text(path, buffer.getvalue())


def write_section(runs: list[dict], results_dir: Path) -> tuple[list[str], list[Path]]:
    """The track-section interface (see ``report.TRACK_SECTIONS``)."""
    from tunebench.bench import figures_detect

    cells = summarise(runs)
    if not cells:
        return [], []
    written = figures_detect.write_figures(cells, results_dir / "figures")
    links = [(title, path.relative_to(results_dir).as_posix()) for title, path in written]
    summary_csv = results_dir / "summary_detect.csv"
    write_summary_csv(cells, summary_csv)
    return render_section(cells, links), [summary_csv, *(path for _, path in written)]
