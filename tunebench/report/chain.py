"""ConES then fine-tuning (chaining): the table that sets chained runs beside each method
alone at equal total steps, and which runs a track's own tables leave out.

A chained run's record says where it started (``init_from``: the source run's hash,
method, steps and train seconds; see ``bench/chain.py``). Its row counts both stages:
*steps* are the source's plus its own, *train s* the source's training seconds plus its
own, and it is compared with each method alone at that many steps, on the chained runs'
seeds. The chained runs are kept out of a track's other tables, and so are their source
runs where those ran at a step budget the rest of their table cell does not use (a
50-step ConES source beside the 100-step ConES runs), so no table averages two budgets.
"""

from __future__ import annotations

from collections import defaultdict

import pandas as pd

from tunebench.report import table as t
from tunebench.report.style import method_key

TITLE = "ConES then fine-tuning (chaining)"
_CELL = ("task", "dataset", "backbone", "method", "shots")


def summary_problem(run: dict) -> str | None:
    """Why a record's ``init_from`` cannot be read (None when it has none or it can)."""
    if "init_from" not in run:
        return None
    info = run["init_from"]
    if not (isinstance(info, dict) and isinstance(info.get("hash"), str) and isinstance(info.get("method"), str)
            and isinstance(info.get("steps"), int) and t.is_number(info.get("train_seconds"))):
        return "init_from is not {hash, method, steps, train_seconds}"
    return None


def is_chained(run: dict) -> bool:
    return isinstance(run.get("init_from"), dict)


def steps_of(run: dict) -> int | None:
    """The run's own steps (its train.steps; the record's ``steps`` for older records)."""
    train = (run.get("config") or {}).get("train") or {}
    return train.get("steps", run.get("steps"))


def own_tables(runs: list[dict]) -> list[dict]:
    """The runs a track's own tables show: not the chained ones, and not their sources at
    a step budget that no other run of the source's table cell has (see the module)."""
    sources = {r["init_from"]["hash"] for r in runs if is_chained(r)}
    alone = [r for r in runs if not is_chained(r)]
    budgets: dict[tuple, set] = defaultdict(set)
    for r in alone:
        if r["config_hash"] not in sources:
            budgets[tuple(r[k] for k in _CELL)].add(steps_of(r))
    return [r for r in alone if r["config_hash"] not in sources
            or not (budget := budgets[tuple(r[k] for k in _CELL)]) or steps_of(r) in budget]


def _rows(runs: list[dict], metric: str) -> list[dict]:
    """One row per run of the comparison: the chained runs, and each method alone at their
    total steps on their seeds (its source method and every method chained from it)."""
    chained = [r for r in runs if is_chained(r)]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in chained:
        total = steps_of(r) + r["init_from"]["steps"]
        groups[r["task"], r["dataset"], r["backbone"], r["shots"], r["init_from"]["method"], total].append(r)
    rows = []
    for (task, dataset, backbone, shots, source, total), group in groups.items():
        where = {"task": task, "dataset": dataset, "backbone": backbone, "shots": shots, "total": total}
        seeds = {r["seed"] for r in group}
        for r in group:
            rows.append({**where, "kind": 1, "rank": method_key(r["method"])[0], "row": f"{source} → {r['method']}",
                         "steps": f"{r['init_from']['steps']} + {steps_of(r)}", "seed": r["seed"],
                         "seconds": r["train_seconds"] + r["init_from"]["train_seconds"],
                         "value": r["metrics"].get(metric)})
        methods = {source, *(r["method"] for r in group)}
        for r in runs:
            if (not is_chained(r) and r["method"] in methods and r["seed"] in seeds and steps_of(r) == total
                    and (r["task"], r["dataset"], r["backbone"], r["shots"]) == (task, dataset, backbone, shots)):
                rows.append({**where, "kind": 0, "rank": method_key(r["method"])[0], "row": r["method"],
                             "steps": str(total), "seed": r["seed"], "seconds": r["train_seconds"],
                             "value": r["metrics"].get(metric)})
    return rows


def chain_table(runs: list[dict], *, metric: str, metric_name: str, percent: bool = True,
                heading: str = "##", what: str = "Dataset") -> list[str]:
    """The chaining table of a track's runs (none when no run is chained): per dataset (or
    concept) and shots, each method alone and each chained pair, with total steps, total
    train seconds and ``metric`` (mean ± std over seeds)."""
    rows = _rows(runs, metric)
    if not rows:
        return []
    df = pd.DataFrame(rows)
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    keys = ["dataset", "backbone", "shots", "total", "kind", "rank", "row", "steps"]  # alone first
    cells = df.groupby(keys, sort=True).agg(mean=("value", "mean"), std=("value", "std"),
                                            n=("value", "count"), seconds=("seconds", "mean"),
                                            seeds=("seed", "nunique")).reset_index()
    scale, digits = (100, 1) if percent else (1, 3)

    def score(c) -> str:
        if t.missing(c["mean"]):
            return "—"
        text = f"{scale * c['mean']:.{digits}f}"
        return text if c["n"] < 2 else f"{text} ± {scale * c['std']:.{digits}f}"

    backbones = cells.backbone.nunique() > 1
    table = pd.DataFrame({
        what: [f"{d} ({b})" if backbones else d for d, b in zip(cells.dataset, cells.backbone, strict=True)],
        "Shots": cells.shots.map(str), "Method": cells.row, "Steps": cells.steps,
        "Train s": cells.seconds.map(lambda s: f"{s:.1f}" if s >= 1 else f"{s:.2f}"),
        metric_name: [score(c) for c in cells.to_dict("records")], "Seeds": cells.seeds.map(str)})
    return [f"{heading} {TITLE}", "",
            "ConES's searched embeddings seeding a fine-tuning stage, compared at equal total steps: "
            "`source → method` started from a finished source run (`init_from`) and trained the rest of the "
            "steps; each method alone ran all of them. *Steps* and *Train s* count both stages (the source's "
            "training seconds are added to the chained run's); the chained runs use the lr chosen for their "
            "method alone, with no search of their own. Means ± std over the chained runs' seeds; a method "
            "alone is shown where it has runs at those steps on those seeds.", "",
            *t.markdown(table, "lrlrrrr"), ""]
