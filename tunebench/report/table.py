"""What every section shares: run records as one DataFrame, seed statistics per cell,
and the text of numbers, Markdown tables and CSV files.

Pure functions of their inputs, with fixed formatting, so reports stay byte-stable.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tunebench.bench.store import atomic_write_text
from tunebench.report.style import method_key

RUN_KEYS = ("task", "dataset", "backbone", "method", "shots", "seed", "config_hash")
COSTS = ("train_seconds", "eval_seconds", "feature_seconds", "peak_memory_mb", "images_per_second",
         "trainable_params", "total_params")


def is_number(value) -> bool:
    """A real number that is not a bool or NaN."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def frame(runs) -> pd.DataFrame:
    """One row per run: its keys, costs, every numeric metric by name (bools,
    strings and lists left out) and the record itself (column ``run``)."""
    rows = []
    for run in runs:
        metrics = {k: float(v) for k, v in run["metrics"].items() if is_number(v)}
        costs = {k: float(v) if is_number(v := run.get(k)) else None for k in COSTS}
        rows.append({**metrics, **costs, **{k: run[k] for k in RUN_KEYS}, "run": run})
    return pd.DataFrame(rows)


def seed_cells(runs, keys: list[str]) -> pd.DataFrame:
    """One row per ``keys`` with the runs in seed order: ``seeds``, ``runs``, and for every
    numeric column ``NAME_mean`` (over the runs that report it) and ``NAME_std`` (sample
    std, 0 for one value); parameter counts are rounded means."""
    df = frame(runs).sort_values(["seed", "config_hash"], kind="stable")
    groups = df.groupby(keys, sort=True)
    numeric = [c for c in df.columns if c not in (*RUN_KEYS, "run")]
    values = df[numeric].apply(pd.to_numeric, errors="coerce").groupby([df[k] for k in keys], sort=True)
    means, stds, counts = values.mean(), values.std(ddof=1), values.count()
    stds = stds.where(counts > 1, 0.0).where(counts > 0)
    out = pd.concat([means.add_suffix("_mean"), stds.add_suffix("_std")], axis=1)
    out["seeds"] = groups["seed"].agg(tuple)
    out["runs"] = groups["run"].agg(list)
    for count in ("trainable_params", "total_params"):
        out[count] = [round(v) for v in out.pop(f"{count}_mean")]
    out["trainable_percent"] = [100.0 * t / n if n else None for t, n in zip(out.trainable_params, out.total_params,
                                                                            strict=True)]
    steps = [{r.get("steps") for r in runs} for runs in out["runs"]]
    out["steps"] = pd.Series([s.pop() if len(s) == 1 else None for s in steps], index=out.index, dtype=object)
    return out.reset_index()


def metric_names(cell: dict) -> list[str]:
    """The metrics (not costs) a cell of `cells` has a mean of."""
    return sorted(k[:-5] for k, v in cell.items() if k.endswith("_mean") and k[:-5] not in COSTS and not missing(v))


def by_method(df: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """``df`` sorted by ``columns``, where ``method`` sorts in the report's method order."""
    return df.sort_values(list(columns), key=lambda s: s.map(method_key) if s.name == "method" else s,
                          kind="stable")


def harmonic_mean(base: float, new: float | None) -> float | None:
    """Base-to-new's single number H = 2·base·new / (base + new): None without a new
    score, 0 when both are 0."""
    if new is None:
        return None
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)


# ---- the text of numbers -----------------------------------------------------------------


def missing(value) -> bool:
    return value is None or value != value


def pm(cell, name: str, *, scale: float = 100, digits: int = 1) -> str:
    """A metric of a cell (a row of `seed_cells`): mean ± std, the mean alone for one seed, a
    dash where the metric is missing. Percent by default."""
    mean = cell.get(f"{name}_mean")
    if missing(mean):
        return "—"
    text = f"{scale * mean:.{digits}f}"
    return text if len(cell["seeds"]) == 1 else f"{text} ± {scale * cell[f'{name}_std']:.{digits}f}"


def share(percent: float | None) -> str:
    """A share of parameters: 0%, 0.0054%, 9.2%."""
    if missing(percent):
        return "—"
    if percent == 0:
        return "0%"
    return f"{percent:.1f}%" if percent >= 1 else f"{percent:#.2g}%"


def count(n: int) -> str:
    """5123 -> '5.1K', 23_200_000 -> '23.2M'."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:
            return f"{n / size:.1f}{suffix}"
    return str(n)


def ratio(r: float | None) -> str:
    if missing(r):
        return "—"
    return f"{r:.1f}×" if r >= 0.1 else f"{r:.2g}×"


def g6(value) -> str:
    """A CSV number: empty when missing, an int as is, else 6 significant digits."""
    if missing(value):
        return ""
    return str(value) if isinstance(value, int) else f"{value:.6g}"


# ---- tables and files -------------------------------------------------------------------


def markdown(table: pd.DataFrame, align: str | None = None) -> list[str]:
    """A DataFrame of strings as Markdown lines; ``align`` has one 'l' or 'r' per column
    (default: the first left, the rest right)."""
    align = align or "l" + "r" * (table.shape[1] - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    return ["| " + " | ".join(map(str, line)) + " |" for line in (table.columns, rule, *table.values.tolist())]


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    """A DataFrame of already formatted values as CSV, written atomically."""
    atomic_write_text(path, table.to_csv(index=False, lineterminator="\n"))
    return path


def seeds_text(seeds) -> str:
    return ";".join(map(str, seeds))
