"""Real-size folders in bounded memory: peak RSS and feature-pass time against dataset
size, from ``results/memory/memory.json`` (written by ``make bench-memory``,
``tunebench/bench/memory_bench.py``), not from the run store.

Nothing is written when that file is absent, so a results folder without it gives the
same report as before this section existed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tunebench.report import figures
from tunebench.report import table as t
from tunebench.report.sections import Options, section

SOURCE = Path("memory") / "memory.json"
TARGET_RATIO = 1.5  # issue 16: peak RSS at the largest size within 1.5x of the smallest
PASS_NAMES = {"decode": "decode only, thread pool", "decode-serial": "decode only, one thread",
              "cold": "cold cell (features computed)", "warm": "warm cell (features cached)"}
COLOURS = {"decode": "tab:green", "decode-serial": "tab:olive", "cold": "tab:blue", "warm": "tab:orange"}


def _read(results: Path) -> dict | None:
    try:
        record = json.loads((results / SOURCE).read_text())
        pd.DataFrame(record["rows"])[["test_images", "pass", "wall_seconds", "cpu_per_wall", "peak_rss_mb"]]
        return record
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{results / SOURCE} is not a memory benchmark record ({exc}): "
                         "rerun `make bench-memory`") from exc


def _figure(rows: pd.DataFrame, path: Path) -> Path:
    with figures.styled():
        fig, (rss, seconds) = figures.grid(2)
        handles = {}
        for kind, group in rows.groupby("pass", sort=False):
            group = group.sort_values("test_images")
            line = {"color": COLOURS.get(kind), "marker": "o"}
            seconds.plot(group.test_images, group.wall_seconds, **line)
            handles[kind] = rss.plot(group.test_images, group.peak_rss_mb, **line)[0]
        rss.set(xlabel="Test images in the folder (log scale)", ylabel="Peak RSS of the process (MB)",
                title="Peak memory")
        rss.set_ylim(bottom=0)
        seconds.set(xlabel="Test images in the folder (log scale)", ylabel="Wall time (s, log scale)",
                    title="Time of the pass")
        seconds.set_yscale("log")
        for ax in (rss, seconds):
            figures.log_axis(ax, figures.count_label)
        fig.suptitle("Feature pass vs dataset size (imagefolder, zero-shot over every test image)\n"
                     "one fresh process per point", fontsize=12, linespacing=1.4)
        fig.legend(list(handles.values()), [PASS_NAMES.get(k, k) for k in handles], loc="outside right upper",
                   title="Pass", frameon=False)
        return figures.save(fig, path)


def _verdict(rows: pd.DataFrame) -> list[str]:
    cold = rows[rows["pass"] == "cold"].sort_values("test_images")
    lines = []
    if len(cold) >= 2:
        small, large = cold.iloc[0], cold.iloc[-1]
        ratio = large.peak_rss_mb / small.peak_rss_mb
        verdict = "within" if ratio <= TARGET_RATIO else "NOT within"
        lines.append(f"Peak RSS of the cold cell at {large.test_images:,} images is {ratio:.2f}× that at "
                     f"{small.test_images:,} ({verdict} the {TARGET_RATIO}× target).")
    pool = rows[rows["pass"] == "decode"].sort_values("test_images")
    if len(pool):
        biggest = pool.iloc[-1]
        lines.append(f"The decode-only pass keeps {biggest.cpu_per_wall:.2f} cores busy on average "
                     f"(CPU time / wall time at {biggest.test_images:,} images).")
    return [" ".join(lines), ""] if lines else []


@section("memory-bench", position=90, fractions=())
def write(runs: list[dict], results: Path, options: Options) -> tuple[list[str], list[Path]]:
    record = _read(results)
    if record is None:
        return [], []
    rows = pd.DataFrame(record["rows"])
    figure = _figure(rows, results / "figures" / "memory_vs_images.png")
    shown = rows.sort_values(["test_images", "pass"], key=lambda s: s.map(list(PASS_NAMES).index)
                             if s.name == "pass" else s, kind="stable")
    table = t.rows(([f"{r.test_images:,}", PASS_NAMES.get(r["pass"], r["pass"]), f"{r.peak_rss_mb:.0f}",
                     f"{r.wall_seconds:.1f}", f"{r.cpu_per_wall:.2f}",
                     "" if pd.isna(r.get("feature_seconds")) else f"{r.feature_seconds:.1f}",
                     "" if pd.isna(r.get("eval_seconds")) else f"{r.eval_seconds:.1f}"]
                    for _, r in shown.iterrows()),
                   ["Test images", "Pass", "Peak RSS MB", "Wall s", "CPU/wall", "Feature s", "Eval s"])
    machine = record.get("machine", {})
    lines = ["## Real-size folders in bounded memory", "",
             f"A synthetic `imagefolder:` dataset ({record['classes']} classes of 64-96 px JPEGs) with N test "
             f"images, through `{record['backbone']}` at {record['image_size']} px: a decode-only pass, then a "
             "zero-shot cell over every test image with an empty feature cache (*cold*: decode, encode, write) "
             "and again with it filled (*warm*). Each point is a fresh process; *Peak RSS* is its `ru_maxrss` "
             "(interpreter and model included), *CPU/wall* its CPU time over wall time (2.0 = two cores busy). "
             f"Measured by `{record['command']}` in {record['seconds']:.0f} s on "
             f"{machine.get('cpu_count', '?')} CPUs ({machine.get('cpu', 'cpu not recorded')}), "
             f"device {machine.get('device', '?')}, torch threads {machine.get('torch_threads', '?')}.", "",
             *_verdict(rows), *t.markdown(table, "llrrrrr"), "",
             *figures.links([("Peak memory and time vs dataset size", figure)], results)]
    return lines, [figure]
