"""Detection-track figures: novel-class box AP against trainable parameters, against
training time, and against annotated images per class. The classification figures'
helpers draw them (same styles per method, same deterministic PNGs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.style

from tunebench.bench import figures as base
from tunebench.bench.report_detect import METRIC, groups_of, method_key

if TYPE_CHECKING:
    from tunebench.bench.report_detect import DetectCell


def write_figures(cells: list[DetectCell], figures_dir: Path) -> list[tuple[str, Path]]:
    if not cells:
        return []
    styles = base.method_styles(sorted({c.method for c in cells}))
    panels = [(f"{dataset} ({backbone})", group) for (dataset, backbone), group in groups_of(cells).items()]
    common = {"metric": METRIC, "styles": styles, "order": method_key}
    out = []
    with matplotlib.style.context(["default", base._RC]):
        path = figures_dir / "detect_ap_vs_trainable_params.png"
        base._accuracy_vs_cost(panels, path, x_of=lambda c: c.trainable_params, tick_label=base._count_label,
                               xlabel="Trainable parameters (count, log scale)",
                               title="Detection: novel box AP vs trainable parameters", **common)
        out.append(("Detection: novel box AP vs trainable parameters", path))
        path = figures_dir / "detect_ap_vs_train_time.png"
        base._accuracy_vs_cost(panels, path, x_of=lambda c: c.train_seconds_mean, tick_label=lambda v: f"{v:g}",
                               xlabel="Mean training time per run (s, log scale)",
                               title="Detection: novel box AP vs training time", **common)
        out.append(("Detection: novel box AP vs training time", path))
        path = figures_dir / "detect_ap_vs_shots.png"
        base._fewshot(panels, path, title="Detection: novel box AP vs annotated images per class", **common)
        out.append(("Detection: novel box AP vs shots", path))
    return out
