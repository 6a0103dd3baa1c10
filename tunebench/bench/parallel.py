"""Run a sweep's cells side by side on this machine: ``tunebench bench SWEEP --jobs N``.

Up to N cells run at once, each in a worker process of its own (started with ``spawn``,
so no worker inherits the parent's torch threads or locks) with ``cores // N`` torch
threads unless ``--threads`` says otherwise. The division of work is the Ray
executor's (``worker.py``): a worker runs a cell with the ordinary ``Runner`` in a
private staging folder and returns its record and file bytes; only this process, which
holds the results-folder lock, writes under the results folder, each cell's files and
then its record, atomically. Hence:

- a cell that raises is stored as ``failed`` by the runner, as in-process; a worker
  that dies (killed, out of memory) has its cell stored as ``failed`` with the reason,
  and a fresh worker takes the next cell;
- bad input (``ConfigError``, ``DataError``, ``StorageError`` in a worker) stops the
  sweep with its one line; Ctrl-C stops the workers (they ignore SIGINT themselves, so
  the parent decides) and stores nothing of the cells still running, so a rerun of the
  same command skips what was stored and redoes the rest;
- the caches cells share (image features, few-shot split files, built models,
  generated data sets) are written under ``flock`` or by atomic rename, which hold
  across processes (``tests/test_feature_cache_concurrency.py``).

Each record says ``executor: {kind: local, jobs: N, concurrent_cells: C}``, C being the
most cells that ran at once while it ran (itself included), and its torch thread count
is ``env.hardware.torch_threads``: its times are comparable with those of cells run
under the same jobs and threads only.

Order (``Schedule``): cells whose cost is not known yet go first, one per method
group, so the costs are learnt early; then the longest first by the mean train + eval
seconds of their group (this sweep's cells and the results folder's stored ones), so
that the sweep does not end on one long cell while the other cores idle. Among equals,
a cell on a dataset no running cell uses goes first, so that two cells do not wait on
one dataset's feature-cache lock while the other dataset's features could be computed.
A chained cell (``init_from``) starts only after its source cell of the same sweep has
finished (``chain.Waits``); this process loads the source and sends it with the cell.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import wait
from pathlib import Path

from tunebench.bench.chain import ChainSource, Waits
from tunebench.bench.runner import SweepSummary, describe_error, refresh_selection, unique_cells
from tunebench.bench.store import RunStore
from tunebench.bench.worker import (
    finish_cell,
    lost_cell_record,
    remove_stale_staging,
    run_cell,
    source_for,
    staging_root,
)
from tunebench.config import RunConfig
from tunebench.engine.progress import progress
from tunebench.errors import ConfigError, DataError, StorageError

# Errors a worker hands back by name, to be raised by the parent: they stop the sweep.
_STOPPING = {cls.__name__: cls for cls in (ConfigError, DataError, StorageError)}


def available_cores() -> int:
    """The cores this process may run on (a container or taskset may allow fewer than exist)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_cell(jobs: int, threads: int | None = None) -> int:
    """Torch threads for each of ``jobs`` cells running at once: ``threads`` when given,
    else an equal share of the cores (at least 1)."""
    return threads if threads is not None else max(1, available_cores() // jobs)


def check_jobs(jobs: int, threads: int | None) -> None:
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1 (cells run at once), got {jobs}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1 (torch threads per cell), got {threads}")


# ---------------------------------------------------------------- order of the cells


def cost_group(config: dict) -> str:
    """Cells that differ only in dataset, shots and seed (and, chained, in which run of
    those they start from) cost about the same: one group."""
    return json.dumps({k: v for k, v in config.items() if k not in ("dataset", "shots", "seed", "init_from")},
                      sort_keys=True, default=str)


def stored_seconds(store: RunStore) -> dict[str, list[float]]:
    """Train + eval seconds of the stored ``ok`` records, by cost group."""
    seconds: dict[str, list[float]] = defaultdict(list)
    for path in sorted(store.runs_dir.glob("*.json")):
        try:
            record = json.loads(path.read_text())
            if record.get("status") == "ok" and isinstance(record.get("config"), dict):
                seconds[cost_group(record["config"])].append(
                    float(record["train_seconds"] or 0) + float(record["eval_seconds"] or 0))
        except (OSError, ValueError, TypeError, KeyError):
            continue  # an unreadable record only costs the schedule a guess
    return seconds


class Schedule:
    """Which pending cell to start next (see the module's docstring)."""

    def __init__(self, cells: list[RunConfig], known: dict[str, list[float]] | None = None) -> None:
        self.pending = list(cells)
        self.seconds: dict[str, list[float]] = defaultdict(list, {k: list(v) for k, v in (known or {}).items()})
        self._group = {c.config_hash: cost_group(c.to_dict()) for c in cells}
        self._running_groups: Counter[str] = Counter()
        self._running_datasets: Counter[str] = Counter()
        self._waits = Waits(cells)

    def ready(self) -> bool:
        """Whether a pending cell may start now (a chained cell waits for its source)."""
        return any(self._waits.ready(c) for c in self.pending)

    def estimate(self, config: RunConfig) -> float | None:
        seconds = self.seconds.get(self._group[config.config_hash])
        return sum(seconds) / len(seconds) if seconds else None

    def _priority(self, position: int, config: RunConfig) -> tuple:
        group = self._group[config.config_hash]
        estimate = self.estimate(config)
        probe = estimate is None and not self._running_groups[group]
        return (probe, float("inf") if estimate is None else estimate,
                -self._running_datasets[config.dataset], -position)

    def take(self) -> RunConfig:
        """The next cell to start, among those that may start now (see ``ready``)."""
        ready = [i for i, c in enumerate(self.pending) if self._waits.ready(c)]
        position = max(ready, key=lambda i: self._priority(i, self.pending[i]))
        config = self.pending.pop(position)
        self._running_groups[self._group[config.config_hash]] += 1
        self._running_datasets[config.dataset] += 1
        return config

    def finished(self, config: RunConfig, seconds: float) -> None:
        group = self._group[config.config_hash]
        self._running_groups[group] -= 1
        self._running_datasets[config.dataset] -= 1
        self.seconds[group].append(seconds)
        self._waits.finished(config)


# ---------------------------------------------------------------- worker processes


def _worker_main(connection, threads: int) -> None:
    """A worker: run each cell it is sent, send back what happened; stop at None or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    os.environ["TUNEBENCH_NO_PROGRESS"] = "1"  # the parent's bar counts the cells
    while True:
        try:
            config = connection.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if config is None:
            return
        config, source = config
        try:
            reply = ("done", *run_cell(config, threads, source))
        except tuple(_STOPPING.values()) as exc:
            reply = ("stop", type(exc).__name__, str(exc))
        except Exception as exc:  # outside the runner's own guard, e.g. the staging folder
            reply = ("raised", describe_error(exc))
        try:
            connection.send(reply)
        except (BrokenPipeError, OSError):
            return


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Start children with SIGINT ignored: an ignored signal stays ignored across exec, so
    a Ctrl-C during a worker's start-up does not print its traceback."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals cannot be changed here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Worker:
    def __init__(self, context, threads: int) -> None:
        self.connection, child_end = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child_end, threads),
                                       name="tunebench-cell")
        with _sigint_ignored():
            self.process.start()
        child_end.close()
        self.cell: RunConfig | None = None
        self.concurrent = 0
        self.started = 0.0

    def start(self, config: RunConfig, source: ChainSource | None = None) -> None:
        self.cell, self.concurrent, self.started = config, 0, time.perf_counter()
        try:
            self.connection.send((config, source))
        except OSError:
            pass  # it died between cells: reply() finds it gone and the cell is stored failed

    def reply(self) -> tuple:
        """What the worker sent for its cell, or ("lost", reason) when it died without."""
        try:
            return self.connection.recv()
        except (EOFError, OSError):
            self.process.join(timeout=10)
            code = self.process.exitcode
            how = (f"killed by signal {-code}" + (" (out of memory?)" if code == -signal.SIGKILL else "")
                   if code is not None and code < 0 else f"exit code {code}")
            return ("lost", f"worker process died mid-cell ({how})")

    def close(self) -> None:
        """Stop the worker: at once when it is mid-cell (interrupted sweep), else politely."""
        if self.cell is None and self.process.is_alive():
            try:
                self.connection.send(None)
            except OSError:
                pass
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.connection.close()


def run_sweep_local(
    configs: list[RunConfig],
    results_dir: Path,
    *,
    jobs: int,
    threads: int | None = None,
    force: bool = False,
    on_record: Callable[[dict], None] | None = None,
) -> SweepSummary:
    """Run the cells in up to ``jobs`` worker processes; ``on_record`` is called after each
    record is stored. The caller holds the results-folder lock."""
    check_jobs(jobs, threads)
    threads = threads_per_cell(jobs, threads)
    store = RunStore(results_dir)
    summary = SweepSummary()
    todo = []
    for config in unique_cells(configs):
        if store.is_finished(config.config_hash) and not force:
            refresh_selection(store, config)
            summary.skipped.append(config.config_hash)
        else:
            todo.append(config)
    if not todo:
        return summary
    schedule = Schedule(todo, stored_seconds(store))
    context = multiprocessing.get_context("spawn")
    workers: list[_Worker] = []
    bar = progress(total=len(todo) + len(summary.skipped), initial=len(summary.skipped),
                   desc=f"sweep ({jobs} jobs)", unit="run")

    def next_cell() -> tuple[RunConfig, ChainSource | None] | None:
        """The next cell that may start, with its loaded source when chained; a cell whose
        source failed is stored failed here, without a worker."""
        while schedule.ready():
            config = schedule.take()
            source, failed = source_for(store, config)
            if failed is None:
                return config, source
            failed["executor"] = {"kind": "local", "jobs": jobs, "concurrent_cells": 0}
            finish_cell(store, config, failed, {}, summary, on_record)
            schedule.finished(config, 0.0)
            bar.update(1)
        return None

    try:
        while schedule.pending or any(w.cell for w in workers):
            for worker in workers:
                if worker.cell is None and (cell := next_cell()) is not None:
                    worker.start(*cell)
            while len(workers) < jobs and (cell := next_cell()) is not None:  # only as many workers as cells
                workers.append(_Worker(context, threads))
                workers[-1].start(*cell)
            running = [w for w in workers if w.cell is not None]
            if not running:  # the cells left had failed sources: stored above, without a worker
                if schedule.pending:  # a source cell is never waiting itself, so this is a bug
                    raise RuntimeError("cells wait for source cells that are neither pending nor running")
                continue
            for worker in running:
                worker.concurrent = max(worker.concurrent, len(running))
            bar.set_postfix(ok=len(summary.ok), failed=len(summary.failed), running=len(running),
                            skipped=len(summary.skipped))
            ready = set(wait([w.connection for w in running] + [w.process.sentinel for w in running]))
            for worker in running:
                if worker.connection not in ready and worker.process.sentinel not in ready:
                    continue
                config, reply = worker.cell, worker.reply()
                if reply[0] == "stop":
                    raise _STOPPING[reply[1]](reply[2])
                worker.cell = None
                if reply[0] == "done":
                    record, files = reply[1], reply[2]
                elif reply[0] == "raised":
                    record, files = lost_cell_record(config, f"cell raised in its worker: {reply[1]}"), {}
                else:  # lost: its replacement starts with the next cell
                    record, files = lost_cell_record(config, reply[1]), {}
                    worker.close()
                    workers.remove(worker)
                record["executor"] = {"kind": "local", "jobs": jobs, "concurrent_cells": worker.concurrent}
                finish_cell(store, config, record, files, summary, on_record)
                measured = (record.get("train_seconds") or 0) + (record.get("eval_seconds") or 0)
                schedule.finished(config, measured or time.perf_counter() - worker.started)
                bar.update(1)
    finally:
        # Interrupted or stopped by bad input: the cells still running are dropped
        # unstored, so a rerun redoes exactly them.
        bar.close()
        for worker in workers:
            worker.close()
        remove_stale_staging(staging_root())  # what killed workers left
    return summary
