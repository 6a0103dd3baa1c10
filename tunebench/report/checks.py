"""What the report refuses to average: checks on a run record beyond its keys and types.

A record from a newer tunebench, a top-1 stored in percent, a NaN, or a parameter count
that is not a count would otherwise slip into a mean silently; the report skips such a
file with a warning naming it. Each check returns why a record cannot be used, or None.
"""

from __future__ import annotations

import math
from fnmatch import fnmatch

from tunebench.bench.store import SCHEMA_VERSION


def is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def schema_problem(run: dict) -> str | None:
    version = run.get("schema_version", 1)  # records from before the key are version 1
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEMA_VERSION:
        return f"unknown schema_version {version!r} (this tunebench reads 1 to {SCHEMA_VERSION})"
    return None


def _has_non_finite(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    return False


def metrics_problem(metrics: dict, fractions: tuple[str, ...]) -> str | None:
    """NaN or infinity anywhere; a metric matching a pattern in ``fractions`` (or any
    element of it, for a list) outside [0, 1], such as a top-1 stored as 87.5 percent;
    a negative ``*seconds*`` metric."""
    for name, value in sorted(metrics.items()):
        if _has_non_finite(value):
            return f"metrics[{name!r}] holds NaN or infinity"
        values = [v for v in (value if isinstance(value, list) else [value]) if is_finite_number(v)]
        if any(fnmatch(name, pattern) for pattern in fractions):
            outside = [v for v in values if not 0 <= v <= 1]
            if outside:
                return f"metrics[{name!r}] = {outside[0]!r} is outside [0, 1]"
        if "seconds" in name and any(v < 0 for v in values):
            return f"metrics[{name!r}] is a negative time"
    return None


def cost_problem(run: dict) -> str | None:
    """Parameter counts that are not counts (negative, fractional, more trainable than
    in total), and negative or non-numeric times, memory and throughput."""
    for key in ("trainable_params", "total_params"):
        count = run[key]
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            return f"{key} is not a non-negative integer ({count!r})"
    if run["trainable_params"] > run["total_params"]:
        return f"trainable_params {run['trainable_params']} exceed total_params {run['total_params']}"
    for key in ("train_seconds", "eval_seconds", "curve_eval_seconds", "feature_seconds", "peak_memory_mb",
                "images_per_second"):
        value = run.get(key)
        if value is None and key not in ("train_seconds", "eval_seconds"):
            continue  # not measured for this run
        if not is_finite_number(value) or value < 0:
            return f"{key} is not a non-negative number ({value!r})"
    return None
