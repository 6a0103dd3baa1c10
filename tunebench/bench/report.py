"""The report step: rebuild tables, markdown and figures from ``results/runs/`` alone.

Nothing here trains or imports torch, so the report can be regenerated anywhere from
the JSON run store. The outputs are a pure function of the run files: everything is
sorted, floats are formatted with fixed precision and no clock is read, so rebuilding
from the same runs gives byte-identical files (``make`` and ``git diff`` stay quiet).

Metrics are fractions in [0, 1]; the markdown and figures show them in percent.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tunebench.bench import figures, report_align, report_b2n, report_detect, report_gen
from tunebench.bench.report_checks import (
    cost_problem,
    is_finite_number,
    metrics_problem,
    schema_problem,
)
from tunebench.bench.store import REQUIRED_KEYS
from tunebench.errors import TunebenchError
from tunebench.paths import atomic_write_text

# Cheapest to most expensive; methods not named here follow alphabetically.
METHOD_ORDER = ("zero-shot", "linear-probe", "cones", "coop", "cocoop", "textual-inversion", "lit", "full-ft")
ZERO_SHOT = "zero-shot"
# Classification metrics that are fractions in [0, 1] (fnmatch patterns, as the tracks' FRACTIONS).
FRACTIONS = ("top1", "top5")
_RUN_HINT = "run `make bench` (or `tunebench bench`) first"


def method_sort_key(method: str) -> tuple[int, str]:
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return rank, method


@dataclass(frozen=True)
class ReportFiles:
    """Paths written by `build_report`."""

    summary_csv: Path
    report_md: Path
    figures: tuple[Path, ...]
    track_tables: tuple[Path, ...] = ()  # each track's own summary CSV

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.summary_csv, *self.track_tables, self.report_md, *self.figures)


@dataclass(frozen=True)
class Runs:
    ok: tuple[dict, ...]
    failed: tuple[dict, ...]
    skipped: tuple[str, ...]  # "file name: reason", for files that could not be used


@dataclass(frozen=True)
class Cell:
    """All successful seeds of one (task, dataset, backbone, method, shots)."""

    task: str
    dataset: str
    backbone: str
    method: str
    shots: int
    seeds: tuple[int, ...]
    metric_mean: float
    metric_std: float  # sample standard deviation (ddof=1); 0 for a single seed
    train_seconds_mean: float
    train_seconds_std: float
    eval_seconds_mean: float
    feature_seconds_mean: float | None
    trainable_params: int
    total_params: int
    peak_memory_mb_mean: float | None
    images_per_second_mean: float | None
    num_classes: int | None

    @property
    def group(self) -> tuple[str, str, str]:
        return self.task, self.dataset, self.backbone

    @property
    def trainable_percent(self) -> float | None:
        return 100.0 * self.trainable_params / self.total_params if self.total_params else None


# ---- reading the run store -----------------------------------------------------------


def _problem(run, metric: str) -> str | None:
    """Why a parsed run file cannot be used, or None when it can."""
    if not isinstance(run, dict):
        return "not a JSON object"
    if problem := schema_problem(run):
        return problem
    missing = [key for key in REQUIRED_KEYS if key not in run]
    if missing:
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        return f"missing keys {', '.join(missing[:4])}{more}"
    for key in ("task", "dataset", "method", "backbone"):
        if not isinstance(run[key], str):
            return f"{key} is not a string"
    if "dataset_label" in run and not (isinstance(run["dataset_label"], str) and run["dataset_label"]):
        return "dataset_label is not a non-empty string"
    section = _section_for(run["task"])
    if section is not None:  # a track's runs are judged by its own headline metric
        metric = section.METRIC
    for key in ("shots", "seed"):
        if not isinstance(run[key], int) or isinstance(run[key], bool):
            return f"{key} is not an integer"
    if run["status"] not in ("ok", "failed"):
        return f"unknown status {run['status']!r}"
    if run["status"] == "failed":
        return None
    if not isinstance(run["metrics"], dict) or not is_finite_number(run["metrics"].get(metric)):
        return f"successful run without a numeric metrics[{metric!r}]"
    fractions = FRACTIONS if section is None else section.FRACTIONS
    return metrics_problem(run["metrics"], fractions) or cost_problem(run)


def load_runs(runs_dir: Path, *, metric: str = "top1") -> Runs:
    """Read every ``*.json`` in ``runs_dir``; unusable files are warned about and skipped."""
    paths = sorted(Path(runs_dir).glob("*.json")) if Path(runs_dir).is_dir() else []
    if not paths:
        raise TunebenchError(f"no run results in {runs_dir}: {_RUN_HINT}")
    ok, failed, skipped = [], [], []
    for path in paths:
        try:
            run = json.loads(path.read_text())
            problem = _problem(run, metric)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            problem = f"unreadable JSON ({type(exc).__name__})"
        if problem:
            print(f"warning: skipping {path.name}: {problem}", file=sys.stderr)
            skipped.append(f"{path.name}: {problem}")
        else:
            (ok if run["status"] == "ok" else failed).append(_named_by_label(run))
    if not ok and not failed:
        raise TunebenchError(
            f"none of the {len(paths)} files in {runs_dir} is a usable run result: {_RUN_HINT}"
        )
    return Runs(tuple(ok), tuple(failed), tuple(skipped))


def _named_by_label(run: dict) -> dict:
    """The run with ``dataset`` set to its short label where it has one: every table,
    heading and figure file then says `pets-3f2a9c1b`, not imagefolder:/long/path/pets."""
    return {**run, "dataset": run["dataset_label"]} if "dataset_label" in run else run


# ---- aggregation ---------------------------------------------------------------------


def _mean(values) -> float | None:
    values = [v for v in values if is_finite_number(v)]
    return statistics.fmean(values) if values else None


def _std(values) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _num_classes(run: dict) -> int | None:
    config = run.get("config") if isinstance(run.get("config"), dict) else {}
    for value in (run["metrics"].get("num_classes"), config.get("num_classes")):
        if is_finite_number(value) and value > 0:
            return int(value)
    return None


def summarise(ok_runs, metric: str = "top1") -> list[Cell]:
    """One `Cell` per (task, dataset, backbone, method, shots), in report order."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in ok_runs:
        key = (run["task"], run["dataset"], run["backbone"], run["method"], run["shots"])
        groups[key].append(run)
    classes_by_dataset: dict[tuple, set[int]] = defaultdict(set)
    for run in ok_runs:
        if (n := _num_classes(run)) is not None:
            classes_by_dataset[run["task"], run["dataset"]].add(n)
    cells = []
    for (task, dataset, backbone, method, shots), runs in groups.items():
        runs.sort(key=lambda r: (r["seed"], r["config_hash"]))  # fixed summation order
        seeds = tuple(r["seed"] for r in runs)
        if len(set(seeds)) < len(seeds):
            print(
                f"warning: {method} on {dataset} ({shots} shots) has several runs per seed "
                f"(config hashes {', '.join(r['config_hash'] for r in runs)}); all are averaged",
                file=sys.stderr,
            )
        scores = [float(r["metrics"][metric]) for r in runs]
        train = [float(r["train_seconds"]) for r in runs]
        classes = sorted(classes_by_dataset[task, dataset])
        cells.append(Cell(
            task=task, dataset=dataset, backbone=backbone, method=method, shots=shots,
            seeds=seeds,
            metric_mean=statistics.fmean(scores), metric_std=_std(scores),
            train_seconds_mean=statistics.fmean(train), train_seconds_std=_std(train),
            eval_seconds_mean=_mean(r["eval_seconds"] for r in runs),
            feature_seconds_mean=_mean(r.get("feature_seconds") for r in runs),
            trainable_params=round(statistics.fmean(r["trainable_params"] for r in runs)),
            total_params=round(statistics.fmean(r["total_params"] for r in runs)),
            peak_memory_mb_mean=_mean(r["peak_memory_mb"] for r in runs),
            images_per_second_mean=_mean(r["images_per_second"] for r in runs),
            num_classes=classes[-1] if classes else None,
        ))
    cells.sort(key=lambda c: (c.group, method_sort_key(c.method), c.shots))
    return cells


# ---- formatting helpers --------------------------------------------------------------


def _csv_number(value) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}"


def human_count(n: int) -> str:
    """5123 -> '5.1K', 23_200_000 -> '23.2M'."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:
            return f"{n / size:.1f}{suffix}"
    return str(n)


def _percent_share(p: float | None) -> str:
    if p is None:
        return "—"
    if p == 0:
        return "0%"
    if p >= 1:
        return f"{p:.1f}%"
    return f"{p:#.2g}%"  # small shares keep two significant digits: 0.20%, 0.0041%


def _accuracy(cell: Cell) -> str:
    if len(cell.seeds) == 1:
        return f"{100 * cell.metric_mean:.1f}"
    return f"{100 * cell.metric_mean:.1f} ± {100 * cell.metric_std:.1f}"


def _ratio(r: float) -> str:
    return f"{r:.1f}×" if r >= 0.1 else f"{r:.2g}×"


def _spread(values) -> str:
    """'3' when all values agree, else 'min–max'."""
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}–{high}"


def _table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    """A markdown table; ``align`` has one 'l' or 'r' per column."""
    assert len(align) == len(header), (header, align)
    rule = ["---" if a == "l" else "---:" for a in align]
    return ["| " + " | ".join(line) + " |" for line in (header, rule, *rows)]


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ---- outputs -------------------------------------------------------------------------


def write_summary_csv(cells: list[Cell], path: Path, metric: str) -> None:
    header = [
        "task", "dataset", "backbone", "method", "shots", "n_seeds", "seeds",
        f"{metric}_mean", f"{metric}_std", "train_seconds_mean", "train_seconds_std",
        "eval_seconds_mean", "feature_seconds_mean", "trainable_params", "total_params",
        "trainable_percent", "peak_memory_mb_mean", "images_per_second_mean",
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for c in cells:
        writer.writerow([
            c.task, c.dataset, c.backbone, c.method, c.shots, len(c.seeds),
            ";".join(str(s) for s in c.seeds),
            *(_csv_number(v) for v in (
                c.metric_mean, c.metric_std, c.train_seconds_mean, c.train_seconds_std,
                c.eval_seconds_mean, c.feature_seconds_mean, c.trainable_params,
                c.total_params, c.trainable_percent, c.peak_memory_mb_mean,
                c.images_per_second_mean,
            )),
        ])
    atomic_write_text(path, buffer.getvalue())


def _environment_lines(runs) -> list[str]:
    """Hardware and software of the runs; where runs differ, distinct values joined by ' / '."""
    hardware: dict[str, set[str]] = defaultdict(set)
    software: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        env = run["env"] if isinstance(run["env"], dict) else {}
        for key, value in (env.get("hardware") or {}).items():
            if value is not None:
                hardware[key].add(str(value))
        for key, value in (env.get("versions") or {}).items():
            if value is not None:
                software[key].add(str(value))
        if env.get("python"):
            software["python"].add(str(env["python"]))
        if env.get("commit"):
            software["commit"].add(str(env["commit"])[:12] + (" (dirty)" if env.get("dirty") else ""))
    first = ("device", "gpu", "gpu_memory_gb", "cpu", "cpu_count", "torch_threads", "platform")
    hw_keys = [k for k in first if k in hardware] + sorted(set(hardware) - set(first))
    sw_keys = [k for k in ("python", "torch") if k in software]
    sw_keys += sorted(set(software) - {"python", "torch", "commit"}) + ["commit"] * ("commit" in software)
    hw = "; ".join(f"{k}: {' / '.join(sorted(hardware[k]))}" for k in hw_keys) or "not recorded"
    sw = "; ".join(f"{k} {' / '.join(sorted(software[k]))}" for k in sw_keys) or "not recorded"
    return [f"- **Hardware:** {_md_escape(hw)}", f"- **Software:** {_md_escape(sw)}"]


def _dataset_section(group_cells: list[Cell], metric: str) -> list[str]:
    task, dataset, backbone = group_cells[0].group
    shots = sorted({c.shots for c in group_cells})
    by_method: dict[str, dict[int, Cell]] = defaultdict(dict)
    for c in group_cells:
        by_method[c.method][c.shots] = c
    header = ["Method", *(f"{s}-shot" for s in shots), "Seeds", "Trainable", "% trainable", "Train s"]
    rows = []
    for method in sorted(by_method, key=method_sort_key):
        row_cells = list(by_method[method].values())
        rows.append([
            method,
            *(_accuracy(by_method[method][s]) if s in by_method[method] else "—" for s in shots),
            _spread([len(c.seeds) for c in row_cells]),
            _spread([human_count(c.trainable_params) for c in row_cells]),
            _spread([_percent_share(c.trainable_percent) for c in row_cells]),
            f"{statistics.fmean(c.train_seconds_mean for c in row_cells):.1f}",
        ])
    return [
        f"## {dataset}", "",
        f"Task `{task}`, backbone `{backbone}`; {metric} accuracy in percent.", "",
        *_table(header, rows, "l" + "r" * (len(header) - 1)), "",
    ]


def _relative_time_section(cells: list[Cell], reference: str) -> list[str]:
    lines = [f"## Training time relative to {reference}", ""]
    index = {(c.group, c.method, c.shots): c for c in cells}
    keys = sorted({(c.group, c.shots) for c in cells})
    rows, methods = [], set()
    for group, shots in keys:
        ref = index.get((group, reference, shots))
        if ref is None or ref.train_seconds_mean <= 0:
            continue
        others = {
            c.method: c.train_seconds_mean / ref.train_seconds_mean
            for c in cells if c.group == group and c.shots == shots and c.method != reference
        }
        methods.update(others)
        rows.append((group[1], shots, ref.train_seconds_mean, others))
    if not rows:
        return [*lines, f"No {reference} runs to compare with; table skipped.", ""]
    ordered = sorted(methods, key=method_sort_key)
    body = [
        [dataset, str(shots), f"{seconds:.1f}", *(_ratio(o[m]) if m in o else "—" for m in ordered)]
        for dataset, shots, seconds, o in rows
    ]
    header = ["Dataset", "Shots", f"{reference} train s", *ordered]
    lines.append(
        f"Mean training seconds of each method divided by those of {reference} on the same "
        f"dataset with the same shots (above 1× means slower than {reference})."
    )
    return [*lines, "", *_table(header, body, "lr" + "r" * (len(header) - 2)), ""]


def _zero_shot_section(cells: list[Cell], metric: str) -> list[str]:
    rows = []
    for c in cells:
        if c.method != ZERO_SHOT:
            continue
        acc = 100 * c.metric_mean
        if c.num_classes:
            chance = 100 / c.num_classes
            rows.append([c.dataset, f"{acc:.1f}", str(c.num_classes), f"{chance:.1f}", _ratio(acc / chance)])
        else:
            rows.append([c.dataset, f"{acc:.1f}", "?", "?", "—"])
    if not rows:
        return []
    header = ["Dataset", f"Zero-shot {metric} %", "Classes", "Chance %", "Zero-shot / chance"]
    return ["## Zero-shot vs chance", "", *_table(header, rows, "lrrrr"), ""]


def _failed_section(failed, skipped) -> list[str]:
    lines = []
    if failed:
        rows = [
            [r["method"], r["dataset"], str(r["shots"]), str(r["seed"]),
             _md_escape((str(r["error"] or "(no message)").strip().splitlines() or [""])[0]),
             f"`{r['config_hash']}`"]
            for r in sorted(failed, key=lambda r: (r["dataset"], method_sort_key(r["method"]),
                                                   r["shots"], r["seed"], r["config_hash"]))
        ]
        lines += ["## Failed runs", "", "Left out of every table and figure above.", ""]
        lines += _table(["Method", "Dataset", "Shots", "Seed", "Error", "Run"], rows, "llrrll") + [""]
    if skipped:
        lines += ["## Skipped run files", "",
                  "Not read: unreadable, from another record format, or with values out of range.", ""]
        lines += [f"- `{_md_escape(s)}`" for s in skipped] + [""]
    return lines


def render_markdown(
    cells: list[Cell], runs: Runs, figure_links: list[tuple[str, str]], *, reference: str, metric: str,
    align_lines: list[str] = (),  # the track sections' lines, after the classification part
) -> str:
    lines = [
        "# tunebench results", "",
        "**How to read this.** Each table row is a tuning method; an accuracy cell is the mean "
        f"± sample standard deviation (ddof = 1) of {metric} over seeds, in percent, for that "
        "number of training images per class (shots); a cell from a single seed shows no ±. "
        "Zero-shot trains nothing and sits in the 0-shot column. *Seeds* counts successful runs per "
        "cell. *Trainable* counts the parameters the method updates and *% trainable* divides "
        "it by all parameters of the model, frozen ones included. *Train s* is the wall-clock "
        "time of training in seconds (mean over the cells of the row) on the hardware below; "
        "it excludes evaluation and the one-off computation of frozen image features for the "
        "shared cache (`feature_seconds_mean` in `summary.csv`, which also lists memory and "
        "throughput). Failed runs are listed at the end and left out of every number. Where "
        "runs differ in hardware or versions, the distinct values are joined by ' / '.", "",
        *_environment_lines(runs.ok or runs.failed), "",
    ]
    if not cells and not align_lines:
        lines += ["No successful runs yet.", ""]
    groups: dict[tuple, list[Cell]] = defaultdict(list)
    for c in cells:
        groups[c.group].append(c)
    for group in sorted(groups):
        lines += _dataset_section(groups[group], metric)
    if cells:
        lines += _relative_time_section(cells, reference)
        lines += _zero_shot_section(cells, metric)
    if figure_links:
        lines += ["## Figures", ""]
        lines += [f"![{title}]({link})\n" for title, link in figure_links]
    lines += align_lines
    lines += _failed_section(runs.failed, runs.skipped)
    return "\n".join(lines).rstrip("\n") + "\n"


# Tracks whose runs get their own part of the report. Each is a module with
#   TASK    the task name whose runs it owns
#   METRIC  the metric every successful run of that task must have
#   FRACTIONS  fnmatch patterns of its metrics that are fractions in [0, 1]
#   write_section(runs, results_dir) -> (markdown lines, written files)
# Runs of any other task are few-shot classification tables (metric top1).
TRACK_SECTIONS = (report_align, report_detect, report_gen, report_b2n)


def _section_for(task: str):
    return next((s for s in TRACK_SECTIONS if s.TASK == task), None)


def build_report(
    results_dir: Path, *, reference_method: str = "cones", metric: str = "top1"
) -> ReportFiles:
    """Rebuild ``summary.csv``, ``report.md`` and ``figures/`` from ``results_dir/runs``."""
    results_dir = Path(results_dir)
    runs = load_runs(results_dir / "runs", metric=metric)
    cells = summarise([r for r in runs.ok if _section_for(r["task"]) is None], metric)
    summary_csv = results_dir / "summary.csv"
    write_summary_csv(cells, summary_csv, metric)
    written = figures.write_figures(cells, results_dir / "figures", metric=metric, method_key=method_sort_key)
    links = [(title, path.relative_to(results_dir).as_posix()) for title, path in written]
    paths = [path for _, path in written]
    # Each track writes its own tables, CSV and figures, only when it has runs, so a
    # classification-only store gives the same files as before the tracks existed.
    track_lines: list[str] = []
    tables: list[Path] = []
    for section in TRACK_SECTIONS:
        lines, files = section.write_section([r for r in runs.ok if r["task"] == section.TASK], results_dir)
        track_lines += lines
        paths += [f for f in files if f.suffix == ".png"]
        tables += [f for f in files if f.suffix != ".png"]
    report_md = results_dir / "report.md"
    atomic_write_text(report_md, render_markdown(
        cells, runs, links, reference=reference_method, metric=metric, align_lines=track_lines,
    ))
    return ReportFiles(summary_csv, report_md, tuple(paths), tuple(tables))
