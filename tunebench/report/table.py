"""What every section shares: run records as one DataFrame, seed statistics per cell,
and the text of numbers, Markdown tables and CSV files.

Pure functions of their inputs, with fixed formatting, so reports stay byte-stable.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tunebench.paths import atomic_write_text
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


def seed_cells(runs, keys: list[str], order: list[str] | None = None) -> list[dict]:
    """One cell per ``keys``, sorted by ``order`` (default ``keys``; methods in the report's
    order), with its runs in seed order: ``seeds``, ``n_seeds``, ``runs``, ``steps`` (when
    all agree), parameter counts (rounded means), ``trainable_percent``, and for every
    numeric column ``NAME_mean`` (over the runs that report it) and ``NAME_std`` (sample
    std, 0 for one value)."""
    df = frame(runs).sort_values(["seed", "config_hash"], kind="stable")
    numeric = [c for c in df.columns if c not in (*RUN_KEYS, "run")]
    values = df[numeric].apply(pd.to_numeric, errors="coerce").groupby([df[k] for k in keys])
    means, stds, counts = values.mean(), values.std(ddof=1), values.count()
    out = pd.concat([means.add_suffix("_mean"), stds.where(counts > 1, 0.0).where(counts > 0).add_suffix("_std")],
                    axis=1)
    groups = df.groupby(keys)
    out["seeds"], out["runs"] = groups["seed"].agg(tuple), groups["run"].agg(list)
    out = out.reset_index()
    cells = by_method(out, *(order or keys)).to_dict("records")
    for c in cells:
        steps = {r.get("steps") for r in c["runs"]}
        c.update(n_seeds=len(c["seeds"]), steps=steps.pop() if len(steps) == 1 else None,
                 trainable_params=round(c.pop("trainable_params_mean")), total_params=round(c.pop("total_params_mean")))
        c["trainable_percent"] = 100.0 * c["trainable_params"] / c["total_params"] if c["total_params"] else None
    return cells


def with_baselines(cells: list[dict], key: tuple[str, ...], order) -> dict[tuple, list[dict]]:
    """Cells per (``key`` columns, shots), each group sorted by ``order``. Cells at 0 shots
    (methods that train nothing, e.g. zero-shot) join every group of their key as its
    baseline rows, and form a group of their own only where nothing trained."""
    groups: dict[tuple, list[dict]] = {}
    for c in sorted(cells, key=lambda c: c["shots"] == 0):  # trained groups first
        own = tuple(c[k] for k in key)
        homes = [g for g in groups if g[:-1] == own and g[-1] > 0] if c["shots"] == 0 else []
        for group in homes or [(*own, c["shots"])]:
            groups.setdefault(group, []).append(c)
    return {g: sorted(v, key=order) for g, v in sorted(groups.items())}


def metric_names(cell: dict) -> list[str]:
    """The metrics (not costs) a cell has a mean of."""
    return sorted(k[:-5] for k, v in cell.items() if k.endswith("_mean") and k[:-5] not in COSTS and not missing(v))


def by_method(df: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """``df`` sorted by ``columns``, where ``method`` sorts in the report's method order."""
    return df.sort_values(list(columns), key=lambda s: s.map(method_key) if s.name == "method" else s, kind="stable")


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


def text(value, spec: str = ".6g") -> str:
    """A CSV value: empty when missing, text as is, seeds joined by ';', a bool as 0/1, an int as is,
    else formatted by ``spec`` (6 significant digits)."""
    if missing(value):
        return ""
    if isinstance(value, str | tuple):
        return value if isinstance(value, str) else ";".join(map(str, value))
    return str(int(value)) if isinstance(value, bool | int) else f"{value:{spec}}"


# ---- tables and files -------------------------------------------------------------------


def markdown(table: pd.DataFrame, align: str | None = None) -> list[str]:
    """A DataFrame of strings as Markdown lines; ``align`` has one 'l' or 'r' per column
    (default: the first left, the rest right)."""
    align = align or "l" + "r" * (table.shape[1] - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    return ["| " + " | ".join(map(str, line)) + " |" for line in (table.columns, rule, *table.values.tolist())]


def rows(data, columns) -> pd.DataFrame:
    return pd.DataFrame(list(data), columns=list(columns))


def write_summary(cells: list[dict], path: Path, columns) -> Path:
    """One CSV row per cell, written atomically; ``columns`` holds cell keys, or (CSV
    name, key) or (CSV name, key, format spec) where they differ."""
    specs = [(c, c, ".6g") if isinstance(c, str) else (*c, ".6g")[:3] for c in columns]
    table = pd.DataFrame({name: [text(c.get(key), spec) for c in cells] for name, key, spec in specs})
    atomic_write_text(path, table.to_csv(index=False, lineterminator="\n"))
    return path


def mean_std(metrics) -> list[str]:
    return [f"{m}_{stat}" for m in metrics for stat in ("mean", "std")]
