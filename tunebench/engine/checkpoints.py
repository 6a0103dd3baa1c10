"""Quality checkpoints during training: what a run scores at 1/8, 1/4, 1/2 and all of its
steps (and at the start), with the train clock paused.

One budget of steps favours the methods that converge fastest; a curve of quality
against train seconds lets the report give a verdict at equal time as well as at equal
steps. The engine's step loop (``Optimization.steps``) calls ``Checkpoints.evaluate``
at each step in ``at`` (``k`` means after ``k`` updates: 0 is the start, the last the
end, after the parameters' finite check), inside ``clock.paused()``, so scoring never
counts as training time. ``QualityCurve`` times each scoring apart instead: the last is
the run's ``eval_seconds`` (pixel-path methods that must re-encode test images pay that
there), the earlier ones its ``curve_eval_seconds``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tunebench.engine.measure import Stopwatch

FRACTIONS = (0.0, 1 / 8, 1 / 4, 1 / 2, 1.0)


def checkpoint_steps(total: int, fractions: Iterable[float] = FRACTIONS) -> tuple[int, ...]:
    """The update counts to score at: ``floor(f * total)`` per fraction, sorted, each once
    (a 3-step run scores at 0, 1 and 3)."""
    return tuple(sorted({math.floor(f * total) for f in fractions}))


@dataclass(frozen=True)
class Checkpoints:
    """What ``Optimization.steps`` runs at checkpoints: ``evaluate(step)`` with ``clock``
    (the run's train clock) paused, at ``at`` (None: ``checkpoint_steps`` of the run)."""

    evaluate: Callable[[int], None]
    clock: Stopwatch
    at: tuple[int, ...] | frozenset[int] | None = None

    def steps(self, total: int) -> frozenset[int]:
        return frozenset(checkpoint_steps(total) if self.at is None else self.at)

    def run(self, step: int) -> None:
        with self.clock.paused():
            self.evaluate(step)


class QualityCurve:
    """A task's quality curve: ``score()`` (the task's whole test scoring, returning its
    metrics dict) at every checkpoint; each point keeps the step, the train seconds so far
    and the metrics named in ``keys``. ``final`` is the last scoring's full metrics: the
    run's own, so the curve's last point is the final score by construction, and the end
    of training is scored once.

    Each scoring is timed on its own clock. The last one is the run's evaluation
    (``final_seconds``, what a run without a curve spends on its one scoring), the others
    are the curve's price (``curve_seconds``): kept apart, so that a run's eval seconds
    compare across methods whether or not they draw a curve."""

    def __init__(self, score: Callable[[], dict], keys: Iterable[str], *, train_clock: Stopwatch) -> None:
        self.score, self.keys = score, tuple(keys)
        self.train_clock = train_clock
        self.points: list[dict] = []
        self.final: dict | None = None
        self.scoring_seconds: list[float] = []  # one per point

    def __call__(self, step: int) -> None:
        clock = Stopwatch(self.train_clock.device)
        with clock.measure():
            metrics = self.score()
        self.scoring_seconds.append(clock.seconds)
        self.final = metrics
        self.points.append({"step": step, "train_seconds": round(self.train_clock.elapsed, 4),
                            **{key: metrics.get(key) for key in self.keys}})

    @property
    def final_seconds(self) -> float:
        return self.scoring_seconds[-1] if self.scoring_seconds else 0.0

    @property
    def curve_seconds(self) -> float:
        return sum(self.scoring_seconds[:-1])

    def checkpoints(self) -> Checkpoints:
        return Checkpoints(evaluate=self, clock=self.train_clock)


def eval_costs(eval_clock: Stopwatch, curve: QualityCurve | None) -> tuple[float, dict]:
    """A run's ``eval_seconds`` (``eval_clock``'s scoring plus the curve's final one) and
    the record keys the curve adds (``curve_eval_seconds``: its other checkpoints)."""
    if curve is None:
        return eval_clock.seconds, {}
    return eval_clock.seconds + curve.final_seconds, {"curve_eval_seconds": round(curve.curve_seconds, 4)}


def wants_curve(config, *, trains: bool, scores: bool = True) -> bool:
    """Curves are drawn for runs scored on test data that train and have scores to draw
    (``eval_split`` "validation" runs only choose a learning rate; timing-only backbones
    have no scores)."""
    return trains and scores and getattr(config, "eval_split", "test") == "test"
