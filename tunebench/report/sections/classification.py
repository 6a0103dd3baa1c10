"""Few-shot classification (task ``fewshot-cls``, and any task without a section of its
own): accuracy per method and shot count for each dataset, training time relative to
the reference method, zero-shot against chance, figures, and ``summary.csv``."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from tunebench.report import figures
from tunebench.report.sections import Options, section
from tunebench.report.style import method_key
from tunebench.report.table import (
    by_method,
    count,
    g6,
    is_number,
    markdown,
    pm,
    ratio,
    seed_cells,
    seeds_text,
    share,
    write_csv,
)

GROUP = ["task", "dataset", "backbone"]
ZERO_SHOT = "zero-shot"
LABELS = {"top1": "Top-1 accuracy", "top5": "Top-5 accuracy"}


def _num_classes(run: dict) -> int | None:
    config = run.get("config") if isinstance(run.get("config"), dict) else {}
    for value in (run["metrics"].get("num_classes"), config.get("num_classes")):
        if is_number(value) and value > 0:
            return int(value)
    return None


def summarise(runs) -> pd.DataFrame:
    """One row per (task, dataset, backbone, method, shots), in report order; the number
    of classes is the largest any run of the (task, dataset) names."""
    df = by_method(seed_cells(runs, [*GROUP, "method", "shots"]), *GROUP, "method", "shots").reset_index(drop=True)
    classes = pd.DataFrame([(r["task"], r["dataset"], _num_classes(r)) for r in runs], columns=["task", "dataset", "n"])
    df["num_classes"] = [int(n) if n == n else None
                         for n in df[["task", "dataset"]].merge(classes.groupby(["task", "dataset"]).n.max(),
                                                                on=["task", "dataset"], how="left").n]
    for c in df.to_dict("records"):
        if len(set(c["seeds"])) < len(c["seeds"]):
            print(f"warning: {c['method']} on {c['dataset']} ({c['shots']} shots) has several runs per seed "
                  f"(config hashes {', '.join(r['config_hash'] for r in c['runs'])}); all are averaged",
                  file=sys.stderr)
    return df


def _spread(values) -> str:
    """'3' when all values agree, else 'min–max'."""
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}–{high}"


def _dataset_section(group: pd.DataFrame, metric: str) -> list[str]:
    task, dataset, backbone = group.iloc[0][GROUP]
    shots = sorted(group.shots.unique())
    rows = []
    for method, mine in group.groupby("method", sort=False):
        at = {c["shots"]: c for c in mine.to_dict("records")}
        rows.append([method, *(pm(at[s], metric) if s in at else "—" for s in shots),
                     _spread(mine.seeds.map(len)), _spread(mine.trainable_params.map(count)),
                     _spread(mine.trainable_percent.map(share)), f"{mine.train_seconds_mean.mean():.1f}"])
    table = pd.DataFrame(rows, columns=["Method", *(f"{s}-shot" for s in shots), "Seeds", "Trainable",
                                        "% trainable", "Train s"])
    return [f"## {dataset}", "", f"Task `{task}`, backbone `{backbone}`; {metric} accuracy in percent.", "",
            *markdown(table), ""]


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
    table = ref.set_index(keys).join(ratios).sort_index().reset_index()
    body = pd.DataFrame({"Dataset": table.dataset, "Shots": table.shots.map(str),
                         f"{reference} train s": table.train_seconds_mean.map(lambda s: f"{s:.1f}"),
                         **{m: table[m].map(ratio) for m in ratios.columns}})
    lines.append(f"Mean training seconds of each method divided by those of {reference} on the same dataset with "
                 f"the same shots (above 1× means slower than {reference}).")
    return [*lines, "", *markdown(body, "lr" + "r" * (body.shape[1] - 2)), ""]


def _zero_shot_section(df: pd.DataFrame, metric: str) -> list[str]:
    rows = []
    for c in df[df.method == ZERO_SHOT].to_dict("records"):
        acc, n = 100 * c[f"{metric}_mean"], c["num_classes"]
        rows.append([c["dataset"], f"{acc:.1f}", str(n), f"{100 / n:.1f}", ratio(acc / (100 / n))] if n
                    else [c["dataset"], f"{acc:.1f}", "?", "?", "—"])
    if not rows:
        return []
    table = pd.DataFrame(rows, columns=["Dataset", f"Zero-shot {metric} %", "Classes", "Chance %",
                                        "Zero-shot / chance"])
    return ["## Zero-shot vs chance", "", *markdown(table), ""]


def _figures(df: pd.DataFrame, folder: Path, metric: str) -> list[tuple[str, Path]]:
    groups = [(key, g.to_dict("records")) for key, g in df.groupby(GROUP, sort=True)]
    per_dataset = pd.Series([dataset for (_, dataset, _), _ in groups]).value_counts()
    panels = [(dataset if per_dataset[dataset] == 1 else f"{dataset} ({backbone}, {task})", group)
              for (task, dataset, backbone), group in groups]
    ylabel = f"{LABELS.get(metric, metric)} (%)"
    out = []
    with figures.styled():
        for name, x, tick, xlabel, title in (
            ("trainable_params", "trainable_params", figures.count_label, "Trainable parameters (count, log scale)",
             "Accuracy vs trainable parameters"),
            ("train_time", "train_seconds_mean", lambda v: f"{v:g}", "Mean training time per run (s, log scale)",
             "Accuracy vs training time"),
        ):
            out.append((title, figures.score_vs_cost(
                panels, folder / f"accuracy_vs_{name}.png", x=x, y=metric, tick_label=tick, xlabel=xlabel,
                ylabel=ylabel, title=title)))
        for dataset in sorted(per_dataset.index):
            title = f"Few-shot accuracy on {dataset}"
            out.append((title, figures.score_vs_shots(
                [p for p in panels if p[1][0]["dataset"] == dataset], folder / f"fewshot_{figures.slug(dataset)}.png",
                y=metric, xlabel="Training images per class (shots, log₂ scale)", ylabel=ylabel, title=title)))
    return out


def write_summary_csv(df: pd.DataFrame, path: Path, metric: str) -> Path:
    columns = [f"{metric}_mean", f"{metric}_std", "train_seconds_mean", "train_seconds_std", "eval_seconds_mean",
               "feature_seconds_mean", "trainable_params", "total_params", "trainable_percent",
               "peak_memory_mb_mean", "images_per_second_mean"]
    table = pd.DataFrame({"task": df.task, "dataset": df.dataset, "backbone": df.backbone, "method": df.method,
                          "shots": df.shots, "n_seeds": df.seeds.map(len), "seeds": df.seeds.map(seeds_text),
                          **{c: [g6(v) for v in df[c].tolist()] if c in df else "" for c in columns}})
    return write_csv(table, path)


@section("fewshot-cls", position=0, fractions=("top1", "top5"))
def write(runs: list[dict], results: Path, options: Options) -> tuple[list[str], list[Path]]:
    metric = options.metric
    df = summarise(runs) if runs else pd.DataFrame(columns=[*GROUP, "method", "shots", "seeds"])
    summary = write_summary_csv(df, results / "summary.csv", metric)
    if df.empty:
        return [], [summary]
    lines = [line for _, group in df.groupby(GROUP, sort=True) for line in _dataset_section(group, metric)]
    lines += _relative_time_section(df, options.reference) + _zero_shot_section(df, metric)
    written = _figures(df, results / "figures", metric)
    lines += ["## Figures", "", *figures.links(written, results)]
    return lines, [summary, *(path for _, path in written)]
