"""Scores that tasks compute and the report recomputes from run files: plain Python,
no torch (the report reads them without it).

- base-to-new's harmonic mean H;
- fidelity-vs-time curves: when a curve first reaches a level, and when two curves
  reach the same level. A curve is a list of checkpoints
  ``{"step", "train_seconds", "fidelity"}``.
"""

from __future__ import annotations


def harmonic_mean(base: float, new: float | None) -> float | None:
    """Base-to-new's single number H = 2·base·new / (base + new): None without a new
    score, 0 when both are 0."""
    if new is None:
        return None
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)


def seconds_to_threshold(curve: list[dict], threshold: float) -> float | None:
    """First train second at which fidelity reaches ``threshold`` on the checkpoint curve.

    Between a checkpoint below and the next at or above the threshold, time is
    interpolated linearly; a first checkpoint already above it gives its own time.
    """
    previous = None
    for point in sorted(curve, key=lambda p: p["step"]):
        if point["fidelity"] >= threshold:
            if previous is None or point["fidelity"] == previous["fidelity"]:
                return float(point["train_seconds"])
            share = (threshold - previous["fidelity"]) / (point["fidelity"] - previous["fidelity"])
            return float(previous["train_seconds"] + share * (point["train_seconds"] - previous["train_seconds"]))
        previous = point
    return None


def equal_fidelity(curve_a: list[dict], curve_b: list[dict]) -> tuple[float, float, float] | None:
    """(level, seconds of a, seconds of b): the highest fidelity both curves reach, and when
    each first reaches it. None when that level is no gain over either curve's start
    (e.g. one method never rises above its first checkpoint), where time says nothing."""
    if not curve_a or not curve_b:
        return None
    level = min(max(p["fidelity"] for p in curve_a), max(p["fidelity"] for p in curve_b))
    starts = [min(c, key=lambda p: p["step"])["fidelity"] for c in (curve_a, curve_b)]
    if level <= max(starts):
        return None
    return level, seconds_to_threshold(curve_a, level), seconds_to_threshold(curve_b, level)
