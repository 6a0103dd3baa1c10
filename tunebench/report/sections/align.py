"""The alignment track (task ``align``): retrieval, transfer and knowledge tables,
LilT's headline question ("smallest preset within X% of full training") and figures.

Align runs are grouped per (backbone, dataset, pairs): ``shots`` holds the number of
training pairs. The reference for "full training" is the better of the runs that
update every parameter (``lit:all``: pretrained towers at the preset's lr scale;
``full-ft``: one lr for everything) in the same group; neither counts as a preset
that "matches" it.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from tunebench.report import figures
from tunebench.report import table as t
from tunebench.report.curves import curve_part
from tunebench.report.sections import Options, section
from tunebench.report.style import method_key

METRIC = "mean_r1"  # what every align run must have; the headline metric
FULL_TRAINING = ("lit:all", "full-ft")  # the better one present is "full training"
THRESHOLDS = (1, 5, 10, 25)  # "within X% of full training", as LilT asks
BUDGETS = (1.0, 7.0)  # "under X% of parameters trainable", LilT's two headline budgets
RETRIEVAL = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")
KNOWLEDGE = ("imagenet_agreement", "text_similarity_drift")
ZERO_SHOT_PREFIX = "zeroshot/"
R1_LABEL = "Mean R@1, image↔text (%)"


def summarise(runs) -> list[dict]:
    """One cell per (backbone, dataset, method, pairs); ``r1`` is the mean of the headline."""
    cells = t.seed_cells(runs, ["backbone", "dataset", "method", "shots"], ["backbone", "dataset", "shots", "method"])
    return [{**c, "r1": c[f"{METRIC}_mean"], "trainable_percent": c["trainable_percent"] or 0.0} for c in cells]


def groups_of(cells: list[dict]) -> dict[tuple, list[dict]]:
    """Cells per (backbone, dataset, pairs), zero-shot joining each as its baseline row."""
    return t.with_baselines(cells, ("backbone", "dataset"), lambda c: method_key(c["method"]))


def full_training(cells: list[dict]) -> dict | None:
    """The best all-parameters cell of one group (a tie to the first of FULL_TRAINING),
    or None when the group has none: with two ways of training everything, the weaker
    one would flatter every preset measured against it."""
    present = [c for c in cells if c["method"] in FULL_TRAINING]
    return max(present, key=lambda c: (c["r1"], -FULL_TRAINING.index(c["method"])), default=None)


def smallest_within(cells: list[dict], full: dict, percent: float) -> dict | None:
    """The cell with the fewest trainable parameters whose R@1 is at least
    (100 - percent)% of full training's; never an all-parameters run itself."""
    floor = (1 - percent / 100) * full["r1"]
    hits = [c for c in cells if c["method"] not in FULL_TRAINING and c["trainable_params"] > 0
            and c["r1"] >= floor]
    return min(hits, key=lambda c: (c["trainable_params"], method_key(c["method"])), default=None)


def best_under(cells: list[dict], full: dict, budget: float) -> dict | None:
    """The best-R@1 cell that trains some, but at most ``budget`` %, of the parameters."""
    hits = [c for c in cells if c["method"] not in FULL_TRAINING and 0 < c["trainable_percent"] <= budget]
    return max(hits, key=lambda c: (c["r1"], -c["trainable_params"]), default=None)


def _group_tables(group: tuple, cells: list[dict]) -> list[str]:
    backbone, dataset, pairs = group
    full = full_training(cells)
    steps = sorted({c["steps"] for c in cells if c["steps"]})
    budget = f", {'/'.join(map(str, steps))} steps each" if steps else ""
    table = t.rows(
        [[c["method"], t.share(c["trainable_percent"]), f"{c['trainable_params']:,}", t.pm(c, METRIC),
          *(t.pm(c, name) for name in RETRIEVAL), f"{100 * c['r1'] / full['r1']:.0f}%" if full and full["r1"] > 0 else "—",
          f"{c['train_seconds_mean']:.1f}", str(len(c["seeds"]))] for c in cells],
        columns=["Method", "% trainable", "Trainable", "Mean R@1", "I→T R@1", "R@5", "R@10", "T→I R@1", "R@5",
                 "R@10", "of full", "Train s", "Seeds"])
    lines = [
        f"### {dataset}, {backbone}, {pairs} training pairs", "",
        f"Held-out retrieval recall in percent (mean ± std over seeds){budget}. "
        "*of full*: mean R@1 as a share of full training's"
        + (f" (`{full['method']}`)." if full else " (no all-parameters run in this group)."), "",
        *t.markdown(table), "",
    ]
    transfer = sorted({k[:-5] for c in cells for k, v in c.items()
                       if k.startswith(ZERO_SHOT_PREFIX) and k.endswith("_mean") and v == v})
    knowledge = [k for k in KNOWLEDGE if any(not t.missing(c.get(f"{k}_mean")) for c in cells)]
    if transfer or knowledge:
        header = [*(f"Zero-shot {k[len(ZERO_SHOT_PREFIX):]} %" for k in transfer),
                  *("ImageNet agreement %" if k == "imagenet_agreement" else "Text drift" for k in knowledge)]
        drift = lambda c, k: "—" if t.missing(c.get(f"{k}_mean")) else f"{c[f'{k}_mean']:.4f}"  # noqa: E731
        table = t.rows([[c["method"], *(t.pm(c, k) for k in transfer),
                               *(t.pm(c, k) if k == "imagenet_agreement" else drift(c, k) for k in knowledge)]
                              for c in cells], columns=["Method", *header])
        lines += [
            "Transfer and knowledge kept: zero-shot top-1 on datasets never seen in alignment; "
            "*ImageNet agreement*: share of the probe photos whose ImageNet top-1 class is "
            "unchanged from the pretrained image tower; *Text drift*: mean absolute change of "
            "the pretrained text tower's pairwise sentence cosine similarities (0 = unchanged).", "",
            *t.markdown(table), "",
        ]
    return lines


def _headline(groups: dict[tuple, list[dict]]) -> list[str]:
    rows = []
    for (backbone, dataset, pairs), cells in groups.items():
        full = full_training(cells)
        if full is None or full["r1"] <= 0:
            continue
        row = [f"{dataset}, {backbone}, {pairs}", f"`{full['method']}` {100 * full['r1']:.1f}"]
        for percent in THRESHOLDS:
            hit = smallest_within(cells, full, percent)
            row.append(f"`{hit['method']}` ({t.share(hit['trainable_percent'])})" if hit else "none")
        for budget in BUDGETS:
            best = best_under(cells, full, budget)
            row.append(f"{100 * best['r1'] / full['r1']:.0f}% (`{best['method']}`)" if best else "—")
        rows.append(row)
    if not rows:
        return []
    table = t.rows(rows, columns=["Data, backbone, pairs", "Full training R@1",
                                        *(f"Smallest within {p}%" for p in THRESHOLDS),
                                        *(f"Best ≤ {b:g}% trainable, of full" for b in BUDGETS)])
    return [
        "### Headline: how few parameters match full training?", "",
        "For each group, the preset with the fewest trainable parameters whose mean R@1 is "
        "within X% of full training's (all parameters updated), and the best share of full "
        "training's R@1 reached while training at most 1% or 7% of the parameters.", "",
        *t.markdown(table, "l" * 2 + "l" * len(THRESHOLDS) + "r" * len(BUDGETS)), "",
    ]


def _by_backbone(groups, path: Path) -> Path:
    """Grouped bars: one group of bars per method, one bar per backbone."""
    fig, axes = figures.grid(len(groups), width=7.0)
    handles = {}
    colours = ["#0072B2", "#D55E00", "#009E73", "#CC79A7"]
    for ax, ((dataset, pairs), cells) in zip(axes[: len(groups)], groups.items(), strict=True):
        backbones = sorted({c["backbone"] for c in cells})
        methods = sorted({c["method"] for c in cells}, key=method_key)
        width = 0.8 / len(backbones)
        at = {(c["method"], c["backbone"]): c for c in cells}
        for b, backbone in enumerate(backbones):
            shown = [(m, at[method, backbone]) for m, method in enumerate(methods) if (method, backbone) in at]
            handles[backbone] = ax.bar([m + (b - (len(backbones) - 1) / 2) * width for m, _ in shown],
                                       [100 * c["r1"] for _, c in shown], width=width,
                                       yerr=[100 * c[f"{METRIC}_std"] for _, c in shown],
                                       color=colours[b % len(colours)], label=backbone)
        ax.set_xticks(range(len(methods)), labels=methods, rotation=30, ha="right")
        ax.grid(False, axis="x")
        ax.set_title(f"{dataset}, {pairs} pairs")
        ax.set_ylabel(R1_LABEL)
    return figures.finish(fig, handles, path, "Retrieval by backbone (model-size axis)", order=str,
                          legend_title="Backbone")


def _figures(cells: list[dict], folder: Path) -> list[tuple[str, Path]]:
    """Draw the align figures that the runs support; (caption, path) in a fixed order."""
    panels = [(f"{dataset}, {backbone}, {pairs} pairs", group)
              for (backbone, dataset, pairs), group in groups_of(cells).items()]
    out = []
    with figures.styled():
        for name, x, tick, xlabel, title in (
            ("trainable", "trainable_percent", "{:g}%".format, "Trainable parameters (% of model, log scale)",
             "Alignment: retrieval vs % trainable"),
            ("train_time", "train_seconds_mean", "{:g}".format, "Training time per run at fixed steps (s, log scale)",
             "Alignment: retrieval vs training time"),
        ):
            out.append((title, figures.score_vs_cost(panels, folder / f"align_r1_vs_{name}.png", x=x, y=METRIC,
                                                     tick_label=tick, xlabel=xlabel, ylabel=R1_LABEL, title=title,
                                                     by_shots=False, front=True)))
        series: dict[tuple, list[dict]] = defaultdict(list)
        for c in cells:  # only methods measured at more than one data size make a curve
            series[c["backbone"], c["dataset"]].append(c)
        sizes = {(key, m): len({c["shots"] for c in v if c["method"] == m}) for key, v in series.items() for m in
                 {c["method"] for c in v}}
        series = {key: [c for c in v if sizes[key, c["method"]] > 1] for key, v in sorted(series.items())
                  if len({c["shots"] for c in v}) > 1}
        if series := {k: v for k, v in series.items() if v}:
            out.append(("Alignment: retrieval vs data size", figures.score_vs_shots(
                [(f"{dataset}, {backbone}", v) for (backbone, dataset), v in series.items()],
                folder / "align_r1_vs_pairs.png", y=METRIC, xlabel="Training pairs (log₂ scale)", ylabel=R1_LABEL,
                title="Retrieval vs data size", panel_titles=True)))
        by_size: dict[tuple, list[dict]] = defaultdict(list)
        for c in cells:
            if c["shots"] > 0:  # zero-shot bars would only show two untrained towers
                by_size[c["dataset"], c["shots"]].append(c)
        if by_size := {k: v for k, v in sorted(by_size.items()) if len({c["backbone"] for c in v}) > 1}:
            out.append(("Alignment: retrieval by backbone", _by_backbone(by_size, folder / "align_r1_by_backbone.png")))
    return out


@section("align", position=10, metric=METRIC, fractions=(METRIC, "i2t_r*", "t2i_r*", "imagenet_agreement",
                                                          "zeroshot/*"))
def write(runs: list[dict], results: Path, options: Options) -> tuple[list[str], list[Path]]:
    if not runs:
        return [], []
    cells = summarise(runs)
    written = _figures(cells, results / "figures")
    groups = groups_of(cells)
    lines = [
        "## Alignment track (task `align`)", "",
        "Contrastive image–text alignment of two separately pretrained towers. *Mean R@1* "
        "averages image→text and text→image recall@1 on held-out pairs; every preset of a "
        "group trains for the same steps and batch size (fixed compute), so *Train s* "
        "compares the cost of one step.", "",
        *_headline(groups),
        *(line for group, group_cells in groups.items() for line in _group_tables(group, group_cells)),
        *figures.links(written, results),
    ]
    curve_lines, curve_files = curve_part(runs, results, track="Alignment", key=METRIC, metric_name="mean R@1",
                                          ylabel=R1_LABEL, slug="align", shots_unit="pairs")
    lines += curve_lines
    zero_shot = sorted({k[:-5] for c in cells for k in c if k.startswith(ZERO_SHOT_PREFIX) and k.endswith("_mean")})
    summary = t.write_summary(cells, results / "summary_align.csv", [
        "backbone", "dataset", "method", ("pairs", "shots"), "n_seeds", "seeds", "trainable_params", "total_params",
        "trainable_percent", "train_seconds_mean", "steps", *t.mean_std([METRIC, *RETRIEVAL, *KNOWLEDGE, *zero_shot])])
    return lines, [summary, *curve_files, *(path for _, path in written)]
