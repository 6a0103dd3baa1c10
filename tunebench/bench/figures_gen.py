"""Generation-track figures: fidelity against training time (one panel per backbone and
concept), and the ConES / textual-inversion step-time ratio against the text encoder's
share of a textual-inversion step.

Same conventions as `figures`: matplotlib's object API, fixed style, PNGs without the
version tag so the same runs give the same bytes.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.style
from matplotlib.lines import Line2D

from tunebench.bench import figures as base
from tunebench.bench.report_gen import method_key

if TYPE_CHECKING:
    from tunebench.bench.report_gen import GenCell, ShareRow

_DASHES = ["--", "-", ":", "-."]  # one line style per K, ascending


def _finish(fig, handles: dict, order, path: Path, title: str, subtitle: str, legend_title: str) -> None:
    names = sorted(handles, key=order)
    fig.suptitle(f"{title}\n{subtitle}", fontsize=12, linespacing=1.4)
    fig.legend([handles[n] for n in names], names, loc="outside right upper", title=legend_title, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=base.DPI, format="png", bbox_inches="tight", pad_inches=0.12,
                metadata={"Software": None})


def _fidelity_vs_time(cells: list[GenCell], path: Path) -> None:
    panels: dict[tuple, list[GenCell]] = defaultdict(list)
    for c in cells:
        if c.curve():
            panels[c.backbone, c.concept].append(c)
    panels = dict(sorted(panels.items()))
    styles = base.method_styles(sorted({c.method for group in panels.values() for c in group}))
    shots = sorted({c.shots for group in panels.values() for c in group})
    dash = {k: _DASHES[i % len(_DASHES)] for i, k in enumerate(shots)}
    fig, axes = base._grid(len(panels))
    handles = {}
    for ax, ((backbone, concept), group) in zip(axes[: len(panels)], panels.items(), strict=True):
        for c in sorted(group, key=lambda c: (method_key(c.method), c.shots)):
            colour, marker = styles[c.method]
            xs, ys = zip(*c.curve(), strict=True)
            ax.plot(xs, [100 * y for y in ys], color=colour, marker=marker, linestyle=dash[c.shots],
                    markeredgecolor="white", markeredgewidth=0.6)
            handles[c.method] = Line2D([], [], color=colour, marker=marker, markersize=8,
                                       markeredgecolor="white", markeredgewidth=0.6)
        thresholds = sorted({c.threshold for c in group if c.threshold is not None})
        for t in thresholds:
            handles["threshold"] = ax.axhline(100 * t, color="#999999", linestyle=":", linewidth=1.2)
        ax.set_ylim(-3, 103)
        ax.set_title(f"{concept}, {backbone}")
        ax.set_xlabel("Training time (s; checkpoints scored with the clock paused)")
        ax.set_ylabel("Fidelity: samples judged the concept (%)")
    if len(shots) > 1:
        fig.legend([Line2D([], [], color="#555555", linestyle=dash[k]) for k in shots],
                   [str(k) for k in shots], loc="outside lower center", ncols=len(shots),
                   title="Reference images K (line style)", frameon=False)
    order = lambda m: (1, "") if m == "threshold" else (0, *method_key(m))  # noqa: E731
    _finish(fig, handles, order, path, "Generation: fidelity vs training time",
            "mean over seeds at each checkpoint", "Method")


def _ratio_vs_share(rows: list[ShareRow], path: Path) -> None:
    fig, axes = base._grid(1, width=5.0)
    ax = axes[0]
    ax.plot([0, 1], [1, 0], color="#999999", linestyle="--", linewidth=1.2)
    handles = {"1 − share (text encoder removed)": ax.lines[-1]}
    palette = ["#D55E00", "#0072B2", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#882255", "#999933"]
    for i, r in enumerate(rows):
        colour = palette[i % len(palette)]
        marker = "o" if not r.timing_only else "s"
        ax.plot([r.share], [r.ratio], color=colour, marker=marker, linestyle="none", markersize=9,
                markeredgecolor="white", markeredgewidth=0.6)
        label = f"{r.backbone}{' (timing only)' if r.timing_only else ''}"
        handles[label] = Line2D([], [], color=colour, marker=marker, linestyle="none", markersize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.15)
    ax.set_xlabel("Text encoder fwd+bwd, share of a textual-inversion step")
    ax.set_ylabel("ConES / textual-inversion step time")
    names = sorted(handles, key=lambda m: (0, "") if m.startswith("1 −") else (1, m))
    # The upper right is empty (a ratio near 1 needs a small share): the legend goes there.
    ax.legend([handles[n] for n in names], names, loc="upper right", title="Backbone", fontsize=9)
    fig.suptitle("When ConES pays off\nstep-time ratio vs the text encoder's share (medians per backbone)",
                 fontsize=12, linespacing=1.4)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=base.DPI, format="png", bbox_inches="tight", pad_inches=0.12,
                metadata={"Software": None})


def write_figures(cells: list[GenCell], rows: list[ShareRow], figures_dir: Path) -> list[tuple[str, Path]]:
    """(caption, path) of each figure the runs support, in a fixed order."""
    out = []
    with matplotlib.style.context(["default", base._RC]):
        if any(c.curve() for c in cells):
            path = figures_dir / "gen_fidelity_vs_train_time.png"
            _fidelity_vs_time(cells, path)
            out.append(("Generation: fidelity vs training time", path))
        if rows:
            path = figures_dir / "gen_step_ratio_vs_text_share.png"
            _ratio_vs_share(rows, path)
            out.append(("Generation: ConES / TI step time vs text-encoder share", path))
    return out
