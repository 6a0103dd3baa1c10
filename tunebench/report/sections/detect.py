"""The detection track (task ``detect``): COCO AP on novel and base classes per method
and shot count, the cost of each method, ConES against the input-side methods, figures,
and the pictures of each method's predictions.

Runs are grouped per (dataset, backbone); ``shots`` is annotated images per class.
"""

from __future__ import annotations

from pathlib import Path

from tunebench.report import figures
from tunebench.report import table as t
from tunebench.report.chain import chain_table, own_tables
from tunebench.report.curves import curve_part
from tunebench.report.sections import Options, section
from tunebench.report.style import method_key

METRIC = "novel_bbox_ap"  # what every detect run has; the headline metric
REFERENCE = "cones"  # train times are compared with it
INPUT_SIDE = ("coop", "textual-inversion")  # ConES's rivals that run the text encoder
DETAIL = ("novel_bbox_ap", "novel_bbox_ap50", "novel_bbox_ap75", "novel_segm_ap", "base_bbox_ap", "base_segm_ap")
DETAIL_NAMES = ("Novel box AP", "AP50", "AP75", "Novel mask AP", "Base box AP", "Base mask AP")


def summarise(runs) -> list[dict]:
    """One cell per (dataset, backbone, method, shots) with ``pictures``: (seed, path) of
    each seed's prediction picture."""
    return [{**c, "trainable_percent": c["trainable_percent"] or 0.0,
             "pictures": tuple((r["seed"], r["pictures"]["predictions"]) for r in c["runs"]
                               if isinstance(r.get("pictures"), dict) and "predictions" in r["pictures"])}
            for c in t.seed_cells(runs, ["dataset", "backbone", "method", "shots"])]


def _group_section(dataset: str, backbone: str, cells: list[dict]) -> list[str]:
    shots = sorted({c["shots"] for c in cells if c["shots"] > 0})
    columns = sorted({c["shots"] for c in cells})  # 0: methods that train nothing (zero-shot)
    methods = sorted({c["method"] for c in cells}, key=method_key)
    at = {(c["method"], c["shots"]): c for c in cells}
    seeds = {m: max(len(c["seeds"]) for c in cells if c["method"] == m) for m in methods}
    table = t.rows([[f"`{m}`", *(t.pm(at[m, k], METRIC) if (m, k) in at else "—" for k in columns),
                           str(seeds[m])] for m in methods], columns=["Method", *(f"{k}-shot" for k in columns), "Seeds"])
    lines = [f"### {dataset}, backbone `{backbone}`", "",
             "Novel-class box AP (%, COCO AP@[.5:.95]) by annotated images per class:", "", *t.markdown(table)]
    top = shots[-1] if shots else 0
    lines += ["", f"At {top} images per class: every COCO number (%), cost and size. *Train s* and *Eval s* "
              "are wall-clock per run (mean over seeds); frozen-detector regions are computed once into a "
              "shared cache and counted in neither.", ""]
    shown = [c for m in methods if (c := at.get((m, top)) or at.get((m, 0))) is not None]
    table = t.rows([[f"`{c['method']}`", *(t.pm(c, name) for name in DETAIL), t.count(c["trainable_params"]),
                           t.share(c["trainable_percent"]), f"{c['train_seconds_mean']:.1f}",
                           f"{c['eval_seconds_mean']:.1f}"] for c in shown],
                         columns=["Method", *DETAIL_NAMES, "Trainable", "% trainable", "Train s", "Eval s"])
    return [*lines, *t.markdown(table), "", *_versus_reference(at, shots), *_pictures(cells, top)]


def _versus_reference(at: dict, shots: list[int]) -> list[str]:
    """ConES against the methods that run the text encoder: AP difference and time ratio."""
    rivals = [m for m in INPUT_SIDE if any((m, k) in at for k in shots)]
    if not rivals or not any((REFERENCE, k) in at for k in shots):
        return []
    rows = []
    for k in shots:
        for rival in rivals:
            if (ref := at.get((REFERENCE, k))) is None or (other := at.get((rival, k))) is None:
                continue
            time = other["train_seconds_mean"] / ref["train_seconds_mean"] if ref["train_seconds_mean"] > 0 else None
            rows.append([str(k), f"`{rival}`", t.pm(ref, METRIC), t.pm(other, METRIC),
                         f"{100 * (ref[f'{METRIC}_mean'] - other[f'{METRIC}_mean']):+.1f}",
                         f"{float('nan') if time is None else time:.1f}×"])
    table = t.rows(rows, columns=["Shots", "Rival", f"{REFERENCE} AP", "Rival AP", "Δ AP (points)",
                                        "Rival time / cones"])
    return [f"`{REFERENCE}` against the input-side methods (novel box AP; time = rival's train s / "
            f"{REFERENCE}'s):", "", *t.markdown(table, "lrrrrr"), ""]


def _pictures(cells: list[dict], top: int) -> list[str]:
    shown = [f"- `{c['method']}` ({c['shots']}-shot, seed {c['pictures'][0][0]}): ![{c['method']}]({c['pictures'][0][1]})"
             for c in sorted(cells, key=lambda c: method_key(c["method"])) if c["shots"] in (top, 0) and c["pictures"]]
    if not shown:
        return []
    return ["Predictions on the first test images that hold a novel-class object "
            "(novel classes orange, base blue; score ≥ 0.3):", "", *shown, ""]


def _figures(groups: dict, folder: Path) -> list[tuple[str, Path]]:
    panels = [(f"{dataset} ({backbone})", group) for (dataset, backbone), group in groups.items()]
    common = {"y": METRIC, "ylabel": "Novel-class box AP (%)"}
    with figures.styled():
        return [
            ("Detection: novel box AP vs trainable parameters", figures.score_vs_cost(
                panels, folder / "detect_ap_vs_trainable_params.png", x="trainable_params",
                tick_label=figures.count_label, xlabel="Trainable parameters (count, log scale)",
                title="Detection: novel box AP vs trainable parameters", **common)),
            ("Detection: novel box AP vs training time", figures.score_vs_cost(
                panels, folder / "detect_ap_vs_train_time.png", x="train_seconds_mean", tick_label="{:g}".format,
                xlabel="Mean training time per run (s, log scale)", title="Detection: novel box AP vs training time",
                **common)),
            ("Detection: novel box AP vs shots", figures.score_vs_shots(
                panels, folder / "detect_ap_vs_shots.png", xlabel="Training images per class (shots, log₂ scale)",
                title="Detection: novel box AP vs annotated images per class", **common)),
        ]


@section("detect", position=20, metric=METRIC, fractions=("*_ap", "*_ap50", "*_ap75"))
def write(runs: list[dict], results: Path, options: Options) -> tuple[list[str], list[Path]]:
    if not runs:
        return [], []
    chain_lines = chain_table(runs, metric=METRIC, metric_name="Novel box AP", heading="###")
    runs = own_tables(runs)  # chained runs (and their off-budget sources) have the table above only
    cells = summarise(runs)
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["dataset"], c["backbone"]), []).append(c)
    groups = dict(sorted(groups.items()))
    written = _figures(groups, results / "figures")
    lines = ["## Detection track (task `detect`)", "",
             "Open-vocabulary detection and instance segmentation: a detector whose classes are "
             "text embeddings, tuned by each method on K annotated images per class (base and novel), "
             "scored with pycocotools on the test images. Novel classes were never seen when the "
             "detector was built; *novel box AP* is the headline.", "",
             *(line for (dataset, backbone), group in groups.items() for line in _group_section(dataset, backbone, group)),
             *chain_lines,
             "### Detection figures", "", *figures.links(written, results), ""]
    curve_lines, curve_files = curve_part(runs, results, track="Detection", key=METRIC, metric_name="novel box AP",
                                          ylabel="Novel-class box AP (%)", slug="detect",
                                          shots_unit="images per class")
    lines += curve_lines
    summary = t.write_summary(cells, results / "summary_detect.csv", [
        "dataset", "backbone", "method", "shots", "n_seeds", "seeds", "trainable_params", "total_params",
        "trainable_percent", ("train_seconds_mean", "train_seconds_mean", ".4f"),
        ("eval_seconds_mean", "eval_seconds_mean", ".4f"),
        *t.mean_std(sorted({m for c in cells for m in t.metric_names(c)}))])
    return lines, [summary, *curve_files, *(path for _, path in written)]
