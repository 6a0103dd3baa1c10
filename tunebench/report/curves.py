"""Verdicts at more than one budget, from the quality curves runs record
(``metrics["curve"]``: the score at 0, 1/8, 1/4, 1/2 and all of the steps, with the
train seconds so far; ``engine/checkpoints.py``).

A track's section calls ``curve_part`` with its runs and headline key. Runs are grouped
by (task, dataset, backbone, shots, steps); per method the curves are averaged over
seeds checkpoint by checkpoint (``scores.mean_curve``). Per group:

- **equal steps**: each method's final score (its last checkpoint, the run's own
  score); the best leads;
- **equal time**: each method's score at T, the largest train-seconds budget every
  method reached (the shortest of the methods' total times), interpolated along its
  curve; the best there leads;
- seconds until a method first reaches 90 % of the best method's final score.

Records without a curve (older runs, runs that train nothing) are left out of this
part only. Everything is sorted and formatted with fixed precision, so rebuilding gives
the same bytes.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from tunebench.report import figures
from tunebench.report import table as t
from tunebench.report.style import method_key, style
from tunebench.scores import mean_curve, score_at_seconds, seconds_to_threshold

SHARE_OF_BEST = 0.9  # "seconds to reach 90 % of the best method's final score"
GROUP = ("task", "dataset", "backbone", "shots", "steps")


def _curve(run: dict, key: str) -> list[dict]:
    points = run["metrics"].get("curve")
    if not isinstance(points, list):
        return []
    return [p for p in points if isinstance(p, dict) and t.is_number(p.get(key))
            and t.is_number(p.get("train_seconds")) and isinstance(p.get("step"), int)]


def method_curves(runs: list[dict], key: str) -> dict[tuple, dict[str, dict]]:
    """Per group (``GROUP``): per method, ``{"curve": mean curve, "seeds": n}``; methods
    sorted in the report's order, groups sorted by their key."""
    found: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run in sorted(runs, key=lambda r: (r["seed"], r["config_hash"])):
        if points := _curve(run, key):
            found[tuple(run.get(k) for k in GROUP)][run["method"]].append(points)
    out = {}
    for group in sorted(found, key=_sort_key):
        methods = {m: {"curve": mean_curve(curves, key), "seeds": len(curves)}
                   for m, curves in sorted(found[group].items(), key=lambda item: method_key(item[0]))}
        methods = {m: v for m, v in methods.items() if v["curve"]}
        if methods:
            out[group] = methods
    return out


def verdict(methods: dict[str, dict], key: str) -> dict:
    """Equal steps, equal time and time-to-90%-of-best for one group's mean curves."""
    final = {m: v["curve"][-1][key] for m, v in methods.items()}
    total = {m: v["curve"][-1]["train_seconds"] for m, v in methods.items()}
    equal_time = min(total.values())
    at_time = {m: score_at_seconds(v["curve"], equal_time, key) for m, v in methods.items()}
    best = max(final.values())
    threshold = SHARE_OF_BEST * best
    return {
        "final": final, "total": total, "equal_time": equal_time, "at_time": at_time, "threshold": threshold,
        "to_threshold": {m: seconds_to_threshold(v["curve"], threshold, key) for m, v in methods.items()},
        "steps_leader": _leader(final), "time_leader": _leader(at_time),
    }


def _leader(scores: dict[str, float | None]) -> str | None:
    """The best-scoring method, the earlier in the report's order on a tie; None if none scored."""
    leader = None
    for method, score in scores.items():  # in the report's method order
        if score is not None and (leader is None or score > scores[leader]):
            leader = method
    return leader


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _lead(scores: dict[str, float | None], leader: str, metric_name: str) -> str:
    """"`cones` leads with 74.0% top1 (next `coop` 61.0%)"."""
    others = [(m, s) for m, s in scores.items() if s is not None and m != leader]
    text = f"`{leader}` leads with {_percent(scores[leader])} {metric_name}"
    if others:
        m, s = max(others, key=lambda item: item[1])
        text += f" (next `{m}` {_percent(s)})"
    return text


def _title(group: tuple, shots_unit: str, *, with_task: bool) -> str:
    task, dataset, backbone, shots, steps = group
    return f"{dataset}, {backbone}, {shots} {shots_unit}, {steps} steps" + (f" ({task})" if with_task else "")


def _sort_key(group: tuple) -> tuple:
    return tuple((0, v, "") if t.is_number(v) else (1, 0, str(v)) for v in group)


def _group_lines(title: str, steps, methods: dict, found: dict, *, metric_name: str) -> list[str]:
    time_leader = found["time_leader"]
    headline = (
        f"- **{title}.** At equal steps ({steps}), {_lead(found['final'], found['steps_leader'], metric_name)}. "
        f"At equal time ({found['equal_time']:.2f} s of training, the most every method reached), "
        + (f"{_lead(found['at_time'], time_leader, metric_name)}." if time_leader else "no method had a score yet.")
    )
    rows = t.rows([[
        f"`{m}`", str(v["seeds"]), _percent(found["final"][m]), _percent(found["at_time"][m]),
        "never" if found["to_threshold"][m] is None else f"{found['to_threshold'][m]:.2f}",
        f"{found['total'][m]:.2f}",
    ] for m, v in methods.items()], columns=[
        "Method", "Seeds", f"Final ({steps} steps)", f"At {found['equal_time']:.2f} s",
        f"s to {100 * found['threshold']:.1f}% (90% of best)", "Train s (all steps)"])
    return [headline, "", *t.markdown(rows), ""]


def _figure(curves: dict[tuple, dict], verdicts: dict[tuple, dict], titles: dict[tuple, str], path: Path, *,
            key: str, ylabel: str, title: str) -> Path:
    fig, axes = figures.grid(len(curves))
    handles = {}
    for ax, (group, methods) in zip(axes[: len(curves)], curves.items(), strict=True):
        later = [p["train_seconds"] for v in methods.values() for p in v["curve"] if p["step"] > 0]
        floor = min(later) / 3 if later else 1e-3  # the start may take ~0 s: drawn at the left edge
        for method, v in methods.items():
            colour, marker = style(method)
            xs = [max(p["train_seconds"], floor) for p in v["curve"]]
            ax.plot(xs, [100 * p[key] for p in v["curve"]], color=colour, marker=marker,
                    markeredgecolor="white", markeredgewidth=0.6)
            handles[method] = figures.marker_handle(method)
        handles["equal time"] = ax.axvline(max(verdicts[group]["equal_time"], floor), color="#999999",
                                           linestyle=":", linewidth=1.2)
        figures.log_axis(ax, "{:g}".format)
        ax.set_title(titles[group])
        ax.set_xlabel("Training time (s, log scale; scoring not counted)")
        ax.set_ylabel(ylabel)
    return figures.finish(fig, handles, path, title, last=("equal time",),
                          subtitle="mean over seeds at 0, 1/8, 1/4, 1/2 and all steps\n"
                                   "(a start left of the axis is drawn on its edge)")


def curve_part(runs: list[dict], results: Path, *, track: str, key: str, metric_name: str, ylabel: str,
               slug: str, shots_unit: str = "shots", heading: str = "###") -> tuple[list[str], list[Path]]:
    """Markdown lines (under a ``heading`` of that level) and files (one figure, one CSV)
    for a track's quality curves; nothing when no run has a curve of ``key``."""
    curves = method_curves(runs, key)
    if not curves:
        return [], []
    verdicts = {group: verdict(methods, key) for group, methods in curves.items()}
    with_task = len({group[0] for group in curves}) > 1
    titles = {group: _title(group, shots_unit, with_task=with_task) for group in curves}
    title = f"{track}: {metric_name} vs training time"
    with figures.styled():
        figure = _figure(curves, verdicts, titles, results / "figures" / f"{slug}_vs_train_time_curve.png",
                         key=key, ylabel=ylabel, title=title)
    lines = [
        f"{heading} {track}: verdicts at equal steps and at equal time", "",
        f"Each trained run scores {metric_name} at 0, 1/8, 1/4, 1/2 and all of its steps with the train clock "
        "paused (scoring is evaluation time). Per method, the mean over seeds at each checkpoint. *Final*: "
        "after all steps (equal steps); *At T s*: interpolated at T, the shortest total training time of "
        "the methods, i.e. the largest budget every method reached (equal time); *s to X%*: train seconds "
        "until the mean curve first reaches 90% of the best final score, interpolated. Runs without a curve "
        "(older records, methods that train nothing) are not in this part.", "",
    ]
    for group, methods in curves.items():
        lines += _group_lines(titles[group], group[-1], methods, verdicts[group], metric_name=metric_name)
    lines += figures.links([(title, figure)], results)
    rows = [{"task": g[0], "dataset": g[1], "backbone": g[2], "shots": g[3], "steps": g[4], "method": m,
             "seeds": v["seeds"], "final": verdicts[g]["final"][m], "equal_time_seconds": verdicts[g]["equal_time"],
             "at_equal_time": verdicts[g]["at_time"][m], "seconds_to_90pct_of_best": verdicts[g]["to_threshold"][m],
             "train_seconds": verdicts[g]["total"][m]}
            for g, methods in curves.items() for m, v in methods.items()]
    summary = t.write_summary(rows, results / f"summary_{slug}_curves.csv", list(rows[0]))
    return [*lines, ""], [summary, figure]
