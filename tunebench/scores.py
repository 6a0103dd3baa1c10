"""Scores that tasks compute and the report recomputes from run files: plain Python,
no torch (the report reads them without it).

- base-to-new's harmonic mean H;
- quality-vs-time curves: when a curve first reaches a level, when two curves reach
  the same level, the score at a given train time, and the mean curve over seeds. A
  curve is a list of checkpoints ``{"step", "train_seconds", KEY, ...}``; KEY is
  generation's ``fidelity`` unless named (``top1``, ``novel_bbox_ap``, ``mean_r1``).
"""

from __future__ import annotations


def harmonic_mean(base: float, new: float | None) -> float | None:
    """Base-to-new's single number H = 2·base·new / (base + new): None without a new
    score, 0 when both are 0."""
    if new is None:
        return None
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)


def _scored(curve: list[dict], key: str) -> list[dict]:
    """The checkpoints that have a number for ``key``, in step order."""
    return sorted((p for p in curve if isinstance(p.get(key), int | float)), key=lambda p: p["step"])


def seconds_to_threshold(curve: list[dict], threshold: float, key: str = "fidelity") -> float | None:
    """First train second at which ``key`` reaches ``threshold`` on the checkpoint curve.

    Between a checkpoint below and the next at or above the threshold, time is
    interpolated linearly; a first checkpoint already above it gives its own time.
    """
    previous = None
    for point in _scored(curve, key):
        if point[key] >= threshold:
            if previous is None or point[key] == previous[key]:
                return float(point["train_seconds"])
            share = (threshold - previous[key]) / (point[key] - previous[key])
            return float(previous["train_seconds"] + share * (point["train_seconds"] - previous["train_seconds"]))
        previous = point
    return None


def equal_fidelity(curve_a: list[dict], curve_b: list[dict], key: str = "fidelity") -> tuple[float, float, float] | None:
    """(level, seconds of a, seconds of b): the highest ``key`` both curves reach, and when
    each first reaches it. None when that level is no gain over either curve's start
    (e.g. one method never rises above its first checkpoint), where time says nothing."""
    curve_a, curve_b = _scored(curve_a, key), _scored(curve_b, key)
    if not curve_a or not curve_b:
        return None
    level = min(max(p[key] for p in curve_a), max(p[key] for p in curve_b))
    starts = [c[0][key] for c in (curve_a, curve_b)]
    if level <= max(starts):
        return None
    return level, seconds_to_threshold(curve_a, level, key), seconds_to_threshold(curve_b, level, key)


def score_at_seconds(curve: list[dict], seconds: float, key: str) -> float | None:
    """``key`` after ``seconds`` of training: linear between the checkpoints around it,
    the last checkpoint's score at or after its time is not extrapolated (None past the
    curve's end); before the first checkpoint, None."""
    points = _scored(curve, key)
    if not points or seconds < points[0]["train_seconds"] or seconds > points[-1]["train_seconds"]:
        return None
    for before, after in zip(points, points[1:], strict=False):
        if before["train_seconds"] <= seconds <= after["train_seconds"]:
            span = after["train_seconds"] - before["train_seconds"]
            share = 0.0 if span == 0 else (seconds - before["train_seconds"]) / span
            return float(before[key] + share * (after[key] - before[key]))
    return float(points[-1][key])  # one checkpoint, or ``seconds`` exactly at the end


def mean_curve(curves: list[list[dict]], key: str) -> list[dict]:
    """The checkpoint-wise mean over seeds: one point per step that every curve scored,
    with the mean train seconds and mean ``key``; empty when a curve is missing."""
    scored = [_scored(c, key) for c in curves]
    if not scored or not all(scored):
        return []
    steps = sorted(set.intersection(*({p["step"] for p in c} for c in scored)))
    at = [{p["step"]: p for p in c} for c in scored]
    return [{"step": s, "train_seconds": sum(a[s]["train_seconds"] for a in at) / len(at),
             key: sum(a[s][key] for a in at) / len(at)} for s in steps]
