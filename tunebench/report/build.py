"""The report step: rebuild tables, markdown and figures from ``results/runs/`` alone.

Nothing here trains. The outputs are a pure function of the run files: everything is
sorted, floats are formatted with fixed precision and no clock is read, so rebuilding
from the same runs gives byte-identical files (``make`` and ``git diff`` stay quiet).
Each task's runs go to its section (``tunebench.report.sections``); this module reads
the store, checks each record, and frames the sections with the reading guide, the
environment and the runs left out.

Metrics are fractions in [0, 1]; the markdown and figures show them in percent.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tunebench.bench.store import REQUIRED_KEYS
from tunebench.errors import TunebenchError
from tunebench.paths import atomic_write_text
from tunebench.registry import current_method_name
from tunebench.report.chain import summary_problem
from tunebench.report.checks import cost_problem, is_finite_number, metrics_problem, schema_problem
from tunebench.report.sections import Options, section_of, sections
from tunebench.report.style import method_key
from tunebench.report.table import markdown

_RUN_HINT = "run `make bench` (or `tunebench bench`) first"


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
    section = section_of(run)  # a track's runs are judged by its own headline metric
    metric = section.metric or metric
    for key in ("shots", "seed"):
        if not isinstance(run[key], int) or isinstance(run[key], bool):
            return f"{key} is not an integer"
    if run["status"] not in ("ok", "failed"):
        return f"unknown status {run['status']!r}"
    if problem := summary_problem(run):
        return problem
    if run["status"] == "failed":
        return None
    if not isinstance(run["metrics"], dict) or not is_finite_number(run["metrics"].get(metric)):
        return f"successful run without a numeric metrics[{metric!r}]"
    return metrics_problem(run["metrics"], section.fractions) or cost_problem(run)


def _as_shown(run: dict) -> dict:
    """A run as the report names it: its dataset by its short label where it has one
    (`pets-3f2a9c1b`, not imagefolder:/long/path/pets), and a renamed method by its current
    name (records from before the rename say generation ``lit``, newer ones ``unet-attn``)."""
    method = current_method_name(run["task"], run["method"])
    return {**run, "dataset": run.get("dataset_label", run["dataset"]), "method": method}


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
        else:  # named by its short label where it has one: `pets-3f2a9c1b`, not imagefolder:/long/path/pets
            (ok if run["status"] == "ok" else failed).append(_as_shown(run))
    if not ok and not failed:
        raise TunebenchError(f"none of the {len(paths)} files in {runs_dir} is a usable run result: {_RUN_HINT}")
    ok, superseded = _current(ok)
    for note in superseded:
        print(f"warning: leaving out {note}", file=sys.stderr)
    return Runs(tuple(ok), tuple(failed), tuple(skipped) + tuple(superseded))


def _cell_key(run: dict) -> tuple:
    """What one seed of one table cell is: two records with this key must not both count.
    A chained run (``init_from``) is a cell of its own beside the same method alone."""
    config = run.get("config") or {}
    train = config.get("train") or {}
    # The lr is what selection chooses: runs that differ only in it are one cell chosen
    # twice (the newest counts). Any other method or task setting makes another cell.
    # So does a chain's source, by method and steps (not by hash: a source whose lr was
    # chosen again is the same cell's source).
    settings = {k: v for k, v in (config.get("method_config") or {}).items() if k != "lr"}
    chained = run.get("init_from")
    source = (chained.get("method"), chained.get("steps")) if isinstance(chained, dict) else None
    return (run["task"], run["dataset"], run["backbone"], run["method"], run["shots"], run["seed"],
            train.get("steps"), _frozen(settings), _frozen(config.get("task_config") or {}), source)


def _frozen(value: dict) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _current(runs: list[dict]) -> tuple[list[dict], list[str]]:
    """The runs the tables use, and a note for each one left out. A run made under the
    fair protocol (``init`` in its config) supersedes one of the same cell made before it,
    and of several runs of one cell (another lr choice, another grid) the newest counts:
    averaging them would count a seed twice and mix protocols. Selection trials
    (``eval_split`` validation) are never results."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[_cell_key(run)].append(run)
    kept, notes = [], []
    for key in sorted(groups, key=repr):
        group = [r for r in groups[key] if (r.get("config") or {}).get("eval_split", "test") == "test"]
        # Membership by identity: records are dicts, and comparing them by value is slow.
        tests = {id(r) for r in group}
        notes += [f"{r['config_hash']}: a selection trial, not a result" for r in groups[key] if id(r) not in tests]
        protocol = [r for r in group if "init" in (r.get("config") or {})]
        fair = {id(r) for r in protocol}
        notes += [f"{r['config_hash']}: made before the fair protocol; superseded by a run of the same cell"
                  for r in group if protocol and id(r) not in fair]
        group = protocol or group
        group = sorted(group, key=lambda r: (str(r.get("finished_at", "")), r["config_hash"]))
        notes += [f"{r['config_hash']}: an older run of the same cell (seed {r['seed']}); the newest counts"
                  for r in group[:-1]]
        if group:
            kept.append(group[-1])
    order = {id(r): i for i, r in enumerate(runs)}
    return sorted(kept, key=lambda r: order[id(r)]), sorted(notes)


# ---- the frame around the sections ---------------------------------------------------


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


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


def _side_by_side_lines(runs) -> list[str]:
    """A note on times, only when some runs shared the machine with other cells
    (``tunebench bench --jobs N`` or Ray): cells side by side share cores and memory
    bandwidth, so their times are comparable only among runs made the same way."""
    shared: Counter[str] = Counter()
    for run in runs:
        executor = run.get("executor")
        if not isinstance(executor, dict) or not isinstance(executor.get("concurrent_cells"), int) \
                or executor["concurrent_cells"] < 2:
            continue
        hardware = (run["env"].get("hardware") if isinstance(run["env"], dict) else None) or {}
        how = (f"--jobs {executor.get('jobs')}" if executor.get("kind") == "local"
               else f"{executor.get('kind')}, {executor['concurrent_cells']} at once")
        shared[f"{how}, {hardware.get('torch_threads', '?')} torch thread(s) per cell"] += 1
    if not shared:
        return []
    ways = "; ".join(f"{count} with {how}" for how, count in sorted(shared.items()))
    return [f"- **Side by side:** {sum(shared.values())} of {len(runs)} runs shared the machine with "
            f"other cells ({_md_escape(ways)}). Their times compare only with runs made under the same "
            "jobs and threads (`executor` and `env.hardware.torch_threads` in each record), not with "
            "runs that had the machine to themselves; accuracy does not depend on it, except through "
            "the thread count (float sums in another order)."]


def _preamble(runs: Runs, metric: str) -> list[str]:
    return [
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
        *_environment_lines(runs.ok or runs.failed), *_side_by_side_lines(runs.ok), "",
    ]


def _protocol_lines(runs) -> list[str]:
    """Fairness on the record, per task: the start every method shared (``init``), how
    many trained runs had their lr chosen on validation data (``selection``), and how
    many runs predate the fair protocol (no ``init`` in their config), whose numbers are
    not comparable with the others: ConES and zero-shot then started from the template
    ensemble, and lrs were set by hand."""
    rows: dict[str, dict] = defaultdict(lambda: {"runs": 0, "inits": set(), "selected": 0, "before": 0})
    for run in runs:
        row = rows[run["task"]]
        row["runs"] += 1
        init = (run.get("config") or {}).get("init")
        if init is None:
            row["before"] += 1
        else:
            row["inits"].add(str(init))
        if isinstance(run.get("selection"), dict) and run["selection"].get("split") == "validation":
            row["selected"] += 1
    if not rows:
        return []
    table = pd.DataFrame([
        {"Task": task, "Runs": str(row["runs"]), "Start (init)": ", ".join(sorted(row["inits"])) or "-",
         "lr chosen on validation": str(row["selected"]), "Made before the fair protocol": str(row["before"])}
        for task, row in sorted(rows.items())])
    lines = ["## Fairness on the record", "",
             "Every method of a sweep starts from the same prompt information (`init`) and has its "
             "lr chosen by the same grid and rule on validation data that no final run trains or "
             "scores on (`selection` in each record; zero-shot and timing-only runs train nothing "
             "worth choosing for).", "", *markdown(table, "lrlrr"), ""]
    before = sum(row["before"] for row in rows.values())
    if before:
        lines += [f"{before} run(s) predate that protocol: ConES and zero-shot then started from the "
                  "template ensemble and lrs were set by hand, so they are not comparable with runs "
                  "under it; rerun their sweeps to replace them.", ""]
    return lines


def _left_out(runs: Runs) -> list[str]:
    lines = []
    if runs.failed:
        failed = pd.DataFrame(runs.failed).sort_values(
            ["dataset", "method", "shots", "seed", "config_hash"],
            key=lambda s: s.map(method_key) if s.name == "method" else s, kind="stable")
        table = pd.DataFrame({
            "Method": failed.method, "Dataset": failed.dataset, "Shots": failed.shots.map(str),
            "Seed": failed.seed.map(str),
            "Error": [_md_escape((str(e or "(no message)").strip().splitlines() or [""])[0]) for e in failed.error],
            "Run": [f"`{h}`" for h in failed.config_hash]})
        lines += ["## Failed runs", "", "Left out of every table and figure above.", "",
                  *markdown(table, "llrrll"), ""]
    if runs.skipped:
        lines += ["## Skipped run files", "",
                  "Not used: unreadable, from another record format, with values out of range, or "
                  "superseded by another run of the same cell.", ""]
        lines += [f"- `{_md_escape(s)}`" for s in runs.skipped] + [""]
    return lines


def build_report(results_dir: Path, *, reference_method: str = "cones", metric: str = "top1") -> ReportFiles:
    """Rebuild ``summary.csv``, the track CSVs, ``report.md`` and ``figures/`` from ``results_dir/runs``."""
    results_dir = Path(results_dir)
    runs = load_runs(results_dir / "runs", metric=metric)
    options = Options(reference=reference_method, metric=metric)
    by_section = defaultdict(list)
    for run in runs.ok:
        by_section[section_of(run).task].append(run)
    # A section writes its files only when it has runs (classification's summary.csv
    # always), so a classification-only store gives the same files as before the tracks.
    body, files = [], []
    for part in sections():
        lines, written = part.write(by_section[part.task], results_dir, options)
        body += lines
        files += written
    report_md = results_dir / "report.md"
    text = [*_preamble(runs, metric), *_protocol_lines(runs.ok), *(body or ["No successful runs yet.", ""]), *_left_out(runs)]
    atomic_write_text(report_md, "\n".join(text).rstrip("\n") + "\n")
    summary = results_dir / "summary.csv"  # classification's, written even without runs
    return ReportFiles(summary, report_md, tuple(f for f in files if f.suffix == ".png"),
                       tuple(f for f in files if f.suffix != ".png" and f != summary))
