"""Few-shot classification (task ``fewshot-cls``, and any task without a section of its
own): accuracy per method and shot count for each dataset, training time relative to
the reference method, zero-shot against chance, figures, and ``summary.csv``."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pandas as pd

from tunebench.report import figures
from tunebench.report import table as t
from tunebench.report.chain import chain_table, own_tables
from tunebench.report.curves import curve_part
from tunebench.report.sections import Options, section
from tunebench.report.style import method_key

GROUP = ["task", "dataset", "backbone"]
LABELS = {"top1": "Top-1 accuracy", "top5": "Top-5 accuracy"}


def _num_classes(run: dict) -> int | None:
    config = run.get("config") if isinstance(run.get("config"), dict) else {}
    for value in (run["metrics"].get("num_classes"), config.get("num_classes")):
        if t.is_number(value) and value > 0:
            return int(value)
    return None


def summarise(runs) -> list[dict]:
    """One cell per (task, dataset, backbone, method, shots), in report order; its number
    of classes is the largest any run of the (task, dataset) names."""
    classes: dict[tuple, int] = {}
    for r in runs:
        if (n := _num_classes(r)) is not None:
            classes[r["task"], r["dataset"]] = max(n, classes.get((r["task"], r["dataset"]), n))
    cells = t.seed_cells(runs, [*GROUP, "method", "shots"])
    for c in cells:
        c["num_classes"] = classes.get((c["task"], c["dataset"]))
        if len(set(c["seeds"])) < len(c["seeds"]):
            print(f"warning: {c['method']} on {c['dataset']} ({c['shots']} shots) has several runs per seed "
                  f"(config hashes {', '.join(r['config_hash'] for r in c['runs'])}); all are averaged",
                  file=sys.stderr)
    return cells


def _spread(values) -> str:
    """'3' when all values agree, else 'min–max'."""
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}–{high}"


def _dataset_section(group: pd.DataFrame, metric: str) -> list[str]:
    task, dataset, backbone = group.iloc[0][GROUP]
    shots = sorted(group.shots.unique())
    body = []
    for method, mine in group.groupby("method", sort=False):
        at = {c["shots"]: c for c in mine.to_dict("records")}
        body.append([method, *(t.pm(at[s], metric) if s in at else "—" for s in shots), _spread(mine.n_seeds),
                     _spread(mine.trainable_params.map(t.count)), _spread(mine.trainable_percent.map(t.share)),
                     f"{mine.train_seconds_mean.mean():.1f}"])
    table = t.rows(body, ["Method", *(f"{s}-shot" for s in shots), "Seeds", "Trainable", "% trainable", "Train s"])
    return [f"## {dataset}", "", f"Task `{task}`, backbone `{backbone}`; {metric} accuracy in percent.", "",
            *t.markdown(table), ""]


def _relative_time_section(df: pd.DataFrame, reference: str) -> list[str]:
    keys = [*GROUP, "shots"]
    ref = df[(df.method == reference) & (df.train_seconds_mean > 0)][[*keys, "train_seconds_mean"]]
    lines = [f"## Training time relative to {reference}", ""]
    if ref.empty:
        return [*lines, f"No {reference} runs to compare with; table skipped.", ""]
    others = df[df.method != reference].merge(ref, on=keys, suffixes=("", "_ref"))
    others["ratio"] = others.train_seconds_mean / others.train_seconds_mean_ref
    ratios = others.pivot(index=keys, columns="method", values="ratio")
    ratios = ratios[sorted(ratios.columns, key=method_key)]
    joined = ref.set_index(keys).join(ratios).sort_index().reset_index()
    table = pd.DataFrame({"Dataset": joined.dataset, "Shots": joined.shots.map(str),
                          f"{reference} train s": joined.train_seconds_mean.map(lambda s: f"{s:.1f}"),
                          **{m: joined[m].map(t.ratio) for m in ratios.columns}})
    lines.append(f"Mean training seconds of each method divided by those of {reference} on the same dataset with "
                 f"the same shots (above 1× means slower than {reference}).")
    return [*lines, "", *t.markdown(table, "lr" + "r" * (table.shape[1] - 2)), ""]


def _zero_shot_section(cells: list[dict], metric: str) -> list[str]:
    body = []
    for c in cells:
        if c["method"] == "zero-shot":
            acc, n = 100 * c[f"{metric}_mean"], c["num_classes"]
            body.append([c["dataset"], f"{acc:.1f}", str(n), f"{100 / n:.1f}", t.ratio(acc / (100 / n))] if n
                        else [c["dataset"], f"{acc:.1f}", "?", "?", "—"])
    table = t.rows(body, ["Dataset", f"Zero-shot {metric} %", "Classes", "Chance %", "Zero-shot / chance"])
    return ["## Zero-shot vs chance", "", *t.markdown(table), ""] if body else []


def _figures(cells: list[dict], folder: Path, metric: str) -> list[tuple[str, Path]]:
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["task"], c["dataset"], c["backbone"]), []).append(c)
    per_dataset = Counter(dataset for _, dataset, _ in groups)
    panels = [(dataset if per_dataset[dataset] == 1 else f"{dataset} ({backbone}, {task})", groups[task, dataset, backbone])
              for task, dataset, backbone in sorted(groups)]
    common = {"y": metric, "ylabel": f"{LABELS.get(metric, metric)} (%)"}
    with figures.styled():
        out = [(title, figures.score_vs_cost(panels, folder / f"accuracy_vs_{name}.png", x=x, tick_label=tick,
                                             xlabel=xlabel, title=title, **common)) for name, x, tick, xlabel, title in (
            ("trainable_params", "trainable_params", figures.count_label, "Trainable parameters (count, log scale)",
             "Accuracy vs trainable parameters"),
            ("train_time", "train_seconds_mean", "{:g}".format, "Mean training time per run (s, log scale)",
             "Accuracy vs training time"))]
        for dataset in sorted(per_dataset):
            out.append((f"Few-shot accuracy on {dataset}", figures.score_vs_shots(
                [p for p in panels if p[1][0]["dataset"] == dataset], folder / f"fewshot_{figures.slug(dataset)}.png",
                xlabel="Training images per class (shots, log₂ scale)", title=f"Few-shot accuracy on {dataset}",
                **common)))
    return out


@section("fewshot-cls", position=0, fractions=("top1", "top5"))
def write(runs: list[dict], results: Path, options: Options) -> tuple[list[str], list[Path]]:
    metric = options.metric
    chain_lines = chain_table(runs, metric=metric, metric_name=f"{LABELS.get(metric, metric)} %")
    runs = own_tables(runs)  # chained runs (and their off-budget sources) have the table above only
    cells = summarise(runs) if runs else []
    summary = t.write_summary(cells, results / "summary.csv", [
        *GROUP, "method", "shots", "n_seeds", "seeds", *t.mean_std([metric, "train_seconds"]), "eval_seconds_mean",
        "feature_seconds_mean", "trainable_params", "total_params", "trainable_percent", "peak_memory_mb_mean",
        "images_per_second_mean"])
    if not cells:
        return [], [summary]
    df = pd.DataFrame(cells)
    lines = [line for _, group in df.groupby(GROUP, sort=True) for line in _dataset_section(group, metric)]
    lines += _relative_time_section(df, options.reference) + _zero_shot_section(cells, metric) + chain_lines
    curve_lines, curve_files = curve_part(runs, results, track="Classification", key=metric, metric_name=metric,
                                          ylabel=f"{LABELS.get(metric, metric)} (%)", slug="classification",
                                          heading="##")
    written = _figures(cells, results / "figures", metric)
    return ([*lines, *curve_lines, "## Figures", "", *figures.links(written, results)],
            [summary, *curve_files, *(p for _, p in written)])
