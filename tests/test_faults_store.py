"""Fault injection on the results store (issue 15): two sweeps on one results folder,
folders that cannot be written, a full disk, what killed writers leave behind, the mode
of stored files and cells listed twice. Each test hits the fault as a user would."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tunebench.bench.cli import main
from tunebench.bench.lock import LOCK_NAME, results_lock
from tunebench.bench.store import REQUIRED_KEYS, RunStore
from tunebench.bench.sweep import expand, load_sweep
from tunebench.paths import atomic_output, atomic_write_text
from tunebench.registry import load_all

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = {"steps": 2, "batch_size": 8, "image_size": 16, "test_per_class": 6, "save_artifacts": True}
WAIT_S = 90  # no test waits longer on a subprocess than this


def write_sweep(path: Path, **overrides) -> Path:
    sweep = {"task": "fewshot-cls", "backbone": "tiny-clip", "datasets": ["tiny-shapes"],
             "methods": ["cones", "coop"], "shots": [1], "seeds": [1], "train": dict(TINY_TRAIN)}
    sweep.update(overrides)
    path.write_text(yaml.safe_dump(sweep))
    return path


def hashes_of(sweep: Path) -> set[str]:
    load_all()
    return {cell.config_hash for cell in expand(load_sweep(sweep))}


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def stored(results: Path) -> dict[str, dict]:
    """Every record by file name; each must parse (nothing half-written)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))}


def temporaries(results: Path) -> list[Path]:
    return [p for p in results.rglob(".*") if p.name.endswith(".tmp") or p.name.startswith(".tmp")]


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def subprocess_env() -> dict[str, str]:
    """Children import this checkout's tunebench and use the test's cache folder."""
    env = dict(os.environ, TUNEBENCH_NO_PROGRESS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def wait_for(condition: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def _one_finished_cell(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("finished")
    sweep = write_sweep(folder / "sweep.yaml", methods=["cones"])
    with pytest.MonkeyPatch.context() as patch:  # the conftest's cache, set before its fixture runs
        patch.setenv("TUNEBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        assert main(["bench", str(sweep), "--results", str(folder / "results"), "--no-report"]) == 0
    return sweep, folder / "results"


@pytest.fixture
def finished(_one_finished_cell, tmp_path) -> tuple[Path, Path]:
    """(sweep of one cones cell, a private results folder where that cell is stored)."""
    sweep, results = _one_finished_cell
    shutil.copytree(results, tmp_path / "results")
    return sweep, tmp_path / "results"


# ------------------------------------------------ item 3: one sweep per results folder

# Runs the real CLI, but its cells wait for a gate file: the sweep holds the results
# folder for as long as the test needs, without relying on how fast anything trains.
GATED_BENCH = """
import pathlib, sys, time
from tunebench.bench import runner
from tunebench.bench.cli import main

gate = pathlib.Path(sys.argv[1])
original = runner.Runner.run

def run_when_the_gate_opens(self, config, **kwargs):
    deadline = time.monotonic() + 90
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return original(self, config, **kwargs)

runner.Runner.run = run_when_the_gate_opens
sys.exit(main(sys.argv[2:]))
"""


def test_second_sweep_on_a_busy_results_folder_stops_with_one_line(tmp_path, capsys):
    """The first sweep is a subprocess; the second is this test process, the same CLI."""
    sweep, results, gate = write_sweep(tmp_path / "sweep.yaml"), tmp_path / "results", tmp_path / "gate"
    (tmp_path / "gated.py").write_text(GATED_BENCH)
    command = ["bench", str(sweep), "--results", str(results), "--no-report"]
    first = subprocess.Popen([sys.executable, str(tmp_path / "gated.py"), str(gate), *command],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        lock = results / LOCK_NAME
        assert wait_for(lambda: lock.is_file() and f'"pid": {first.pid}' in lock.read_text()), \
            "the first sweep never took the lock"
        second = main(command)
        gate.touch()
        out, err = first.communicate(timeout=WAIT_S)
    finally:
        gate.touch()
        if first.poll() is None:
            first.kill()
            first.wait()
    assert second == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"tunebench: error: results folder {results} is in use by pid {first.pid} on ")
    assert f"(tunebench bench {sweep}, since " in line
    assert line.endswith("wait for it to finish or use another --results")
    assert first.returncode == 0, err
    assert "2 ran, 0 already finished, 0 failed" in out
    assert set(stored(results)) == hashes_of(sweep)  # each cell stored once, by the first
    assert not temporaries(results) and not lock.exists()


def test_run_on_a_busy_results_folder_stops_before_running(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    with results_lock(results, "tunebench bench other.yaml"):
        code = main(["run", "--method", "cones", "--dataset", "tiny-shapes", "--backbone", "tiny-clip",
                     "--shots", "1", "--set", "train.steps=2", "--results", str(results)])
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"is in use by pid {os.getpid()} on " in line and "(tunebench bench other.yaml, since" in line
    assert not list(results.rglob("*.json"))


# --------------------------------------------------- item 4: filesystem faults up front


def test_results_path_that_is_a_file_stops_with_one_line(tmp_path, capsys):
    sweep, results = write_sweep(tmp_path / "sweep.yaml"), tmp_path / "results"
    results.write_text("my notes\n")
    assert main(["bench", str(sweep), "--results", str(results)]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"tunebench: error: results path {results} is a file, not a folder: pass another --results")
    assert results.read_text() == "my notes\n"


def test_cache_dir_that_is_a_file_stops_with_one_line(tmp_path, capsys, monkeypatch):
    sweep, results, cache = write_sweep(tmp_path / "sweep.yaml"), tmp_path / "results", tmp_path / "cache"
    cache.write_text("not a folder\n")
    monkeypatch.setenv("TUNEBENCH_CACHE_DIR", str(cache))
    assert main(["bench", str(sweep), "--results", str(results)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"tunebench: error: cannot use the cache folder {cache} (")
    assert line.endswith("set TUNEBENCH_CACHE_DIR to a writable folder")
    assert not results.exists()


@pytest.mark.parametrize(("code", "message"), [
    (errno.EROFS, "is not writable (Read-only file system): make it writable or pass another --results"),
    (errno.ENOSPC, "disk full in results folder"),
])
def test_unwritable_results_folder_stops_before_the_first_cell(finished, capsys, monkeypatch, code, message):
    """Root ignores permission bits, so a read-only mount and a full disk are simulated
    where files get created: every new file in the results folder fails."""
    _, results = finished
    sweep = write_sweep(results.parent / "sweep.yaml")  # cones is stored, coop would run
    before = snapshot(results)
    real_mkstemp = tempfile.mkstemp

    def failing_mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve().is_relative_to(results.resolve()):
            raise OSError(code, os.strerror(code))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", failing_mkstemp)
    assert main(["bench", str(sweep), "--results", str(results)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("tunebench: error: ") and message in line
    assert snapshot(results) == before  # coop never ran


def test_disk_full_mid_sweep_stops_with_one_line_and_resumes(tmp_path, capsys, monkeypatch):
    sweep = write_sweep(tmp_path / "sweep.yaml", methods=["cones", "coop", "linear-probe"])
    results = tmp_path / "results"
    record_syncs: list[str] = []
    real_fsync = os.fsync

    def fsync_until_the_disk_fills(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if f"{os.sep}runs{os.sep}" in target and ".json." in target:  # a record, not a probe
            record_syncs.append(target)
            if len(record_syncs) == 2:  # the second record does not fit
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_until_the_disk_fills)
    assert main(["bench", str(sweep), "--results", str(results)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"tunebench: error: disk full while writing {results / 'runs'}{os.sep}")
    assert line.endswith(".json: nothing half-written is left; free space and rerun to resume")
    (first,) = stored(results).values()  # the earlier record is intact, the failed one absent
    assert first["status"] == "ok"
    assert not temporaries(results)

    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed
    assert main(["bench", str(sweep), "--results", str(results), "--no-report"]) == 0
    assert "2 ran, 1 already finished, 0 failed" in capsys.readouterr().out
    records = stored(results)
    assert set(records) == hashes_of(sweep) and records[first["config_hash"]] == first
    named = {records[key]["artifact"]["path"] for key in records}
    assert {f"artifacts/{p.name}" for p in (results / "artifacts").iterdir()} == named


def test_full_cache_disk_stops_the_sweep_with_one_line(tmp_path, capsys, monkeypatch):
    """The feature cache fills its disk: one line that stops, not a failed cell per cell."""
    sweep = write_sweep(tmp_path / "sweep.yaml", methods=["cones", "linear-probe"])
    results, cache = tmp_path / "results", tmp_path / "cache"
    monkeypatch.setenv("TUNEBENCH_CACHE_DIR", str(cache))
    real_fsync = os.fsync

    def cache_disk_full(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target.startswith(str(cache / "features")) and target.endswith(".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", cache_disk_full)
    assert main(["bench", str(sweep), "--results", str(results)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"tunebench: error: disk full while writing {cache / 'features'}{os.sep}")
    assert not stored(results) and not temporaries(results)


# A real full disk: a 12 KiB tmpfs mounted on the results folder in a private user and
# mount namespace (no root needed), then grown to 4 MiB for the rerun. Prints "skip"
# where such namespaces are not allowed (e.g. some containers).
FULL_DISK = """
mount -t tmpfs -o size=12k tunebench-full "$RESULTS" 2>/dev/null || { echo skip; exit 0; }
python -m tunebench bench "$SWEEP" --results "$RESULTS" --no-report >"$OUT/full.out" 2>"$OUT/full.err"
echo $? >"$OUT/full.rc"
cp -a "$RESULTS/." "$OUT/after-full"
mount -o remount,size=4m "$RESULTS"
python -m tunebench bench "$SWEEP" --results "$RESULTS" --no-report >"$OUT/resume.out" 2>&1
echo $? >"$OUT/resume.rc"
cp -a "$RESULTS/." "$OUT/after-resume"
"""


def test_real_full_disk_stops_with_one_line_and_a_rerun_resumes(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    sweep = write_sweep(tmp_path / "sweep.yaml", methods=["cones", "coop", "linear-probe"])
    results, out = tmp_path / "results", tmp_path / "out"
    results.mkdir()
    out.mkdir()
    env = subprocess_env() | {"RESULTS": str(results), "SWEEP": str(sweep), "OUT": str(out),
                              "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    shell = subprocess.run(["unshare", "-Urm", "sh", "-c", FULL_DISK], env=env, capture_output=True,
                           text=True, timeout=2 * WAIT_S)
    if shell.returncode != 0 or "skip" in shell.stdout:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {shell.stderr.strip()[:200]}")
    assert (out / "full.rc").read_text().strip() == "2"
    line = one_error_line((out / "full.err").read_text())
    assert line.startswith(f"tunebench: error: disk full while writing {results}{os.sep}")
    assert line.endswith(": nothing half-written is left; free space and rerun to resume")
    partial = stored(out / "after-full")
    assert len(partial) < 3 and all(record["status"] == "ok" for record in partial.values())
    assert not temporaries(out / "after-full")

    assert (out / "resume.rc").read_text().strip() == "0", (out / "resume.out").read_text()
    assert f"{3 - len(partial)} ran, {len(partial)} already finished, 0 failed" in (out / "resume.out").read_text()
    records = stored(out / "after-resume")
    assert set(records) == hashes_of(sweep)
    assert all(records[key] == record for key, record in partial.items())  # kept as they were
    assert {f"artifacts/{p.name}" for p in (out / "after-resume" / "artifacts").iterdir()} == {
        record["artifact"]["path"] for record in records.values()}
    assert not temporaries(out / "after-resume")


# ------------------------------------------------------------------- item 6: leftovers

# Writes one record through the store while holding the results folder, and stalls in
# the middle of that write (the temporary file exists, nothing is renamed yet).
KILLED_WRITER = """
import json, os, sys, time
from pathlib import Path
from tunebench.bench.lock import claim_results

results, record = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
record["config_hash"] = "0" * 16

def stall(fd):
    time.sleep(90)

with claim_results(results, "tunebench bench killed.yaml") as store:
    os.fsync = stall  # after the start-up checks, which sync a probe file
    store.write(record)
"""


def test_kill_minus_9_during_a_write_leaves_nothing_after_the_next_start(finished, capsys):
    sweep, results = finished
    (record_file,) = (results / "runs").glob("*.json")
    before = snapshot(results / "runs")
    script = results.parent / "killed_writer.py"
    script.write_text(KILLED_WRITER)
    writer = subprocess.Popen([sys.executable, str(script), str(results), str(record_file)],
                              env=subprocess_env())
    try:
        stray = results / "runs"
        assert wait_for(lambda: writer.poll() is not None or any(stray.glob(".0000000000000000.json.*.tmp")))
        assert writer.poll() is None, "the writer ended before it could be killed mid-write"
        os.kill(writer.pid, signal.SIGKILL)
        assert writer.wait(timeout=WAIT_S) == -signal.SIGKILL
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert temporaries(results) and (results / LOCK_NAME).exists()  # what the kill left

    assert main(["bench", str(sweep), "--results", str(results), "--no-report"]) == 0
    captured = capsys.readouterr()
    assert "0 ran, 1 already finished" in captured.out  # the dead owner's lock did not block
    assert "removed 1 leftover file(s)" in captured.err
    assert not temporaries(results)
    assert snapshot(results / "runs") == before


def test_files_no_record_names_are_removed_at_start(finished, capsys):
    sweep, results = finished
    (record,) = stored(results).values()
    failed = dict(record, config_hash="2" * 16, status="failed", error="simulated",
                  pictures={"samples": f"pictures/{'2' * 16}-samples.png"})
    del failed["artifact"]
    RunStore(results).write(failed)
    kept = [results / record["artifact"]["path"], results / failed["pictures"]["samples"],
            results / "artifacts" / "notes.txt"]  # named by an ok / a failed record; not ours
    removed = [results / "artifacts" / f"{'1' * 16}.safetensors",  # its record was never written
               results / "pictures" / f"{'1' * 16}-samples.png",
               results / "artifacts" / ".tmpAb12Cd"]  # safetensors' own temporary file
    for path in kept[1:] + removed:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x")

    assert main(["bench", str(sweep), "--results", str(results), "--no-report"]) == 0
    assert "removed 3 leftover file(s)" in capsys.readouterr().err
    assert all(path.is_file() for path in kept)
    assert not any(path.exists() for path in removed)


def test_no_orphan_is_removed_while_a_record_cannot_be_read(tmp_path):
    store = RunStore(tmp_path)
    store.runs_dir.mkdir()
    (store.runs_dir / f"{'3' * 16}.json").write_text('{"status": "ok", "artifact": ')  # damaged
    store.artifacts_dir.mkdir()
    maybe_named = store.artifacts_dir / f"{'3' * 16}.safetensors"
    maybe_named.write_bytes(b"x")
    stray = store.runs_dir / f".{'4' * 16}.json.abcd1234.tmp"
    stray.write_text("{")
    assert store.remove_leftovers() == [stray]
    assert maybe_named.is_file()


def test_ray_staging_folder_of_a_dead_worker_is_removed_and_a_live_one_kept(tmp_path, monkeypatch):
    from tunebench.bench.worker import remove_stale_staging, staging_folder, staging_root

    monkeypatch.setenv("TUNEBENCH_STAGING_DIR", str(tmp_path / "staging"))
    with staging_folder() as live:
        (live / "artifacts").mkdir()
        # What a SIGKILLed worker leaves: its folder and a lock file nobody holds.
        dead = staging_root() / "cell-dead"
        dead.mkdir()
        (dead / "artifact.safetensors").write_bytes(b"x")
        dead.with_name("cell-dead.lock").touch()
        assert remove_stale_staging(staging_root()) == [dead]
        assert live.is_dir() and not dead.exists() and not dead.with_name("cell-dead.lock").exists()
        held = os.open(live.with_name(live.name + ".lock"), os.O_RDWR)  # a second process's view
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(held)
    assert not live.exists() and not list(staging_root().iterdir())


def test_ray_staging_is_node_local_not_in_the_cache(tmp_path, monkeypatch):
    from tunebench.bench.worker import STAGING_ENV, staging_root

    monkeypatch.delenv(STAGING_ENV, raising=False)
    monkeypatch.setenv("TUNEBENCH_CACHE_DIR", str(tmp_path / "nfs-cache"))
    root = staging_root()
    assert root.parent == Path(tempfile.gettempdir()) and root.name.startswith("tunebench-staging-")


# ------------------------------------------------------ item 8: file modes, repeated cells


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask-022", "umask-027"])
def test_store_files_get_the_mode_open_gives(tmp_path, umask):
    import torch
    from safetensors.torch import save_file

    previous = os.umask(umask)
    try:
        record = dict.fromkeys(REQUIRED_KEYS, None) | {"config_hash": "5" * 16, "status": "ok"}
        written = [RunStore(tmp_path).write(record)]
        atomic_write_text(tmp_path / "report.md", "# report\n")
        with atomic_output(tmp_path / "artifacts" / "a.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, tmp)  # replaces the file it is given, as 0600
        written += [tmp_path / "report.md", tmp_path / "artifacts" / "a.safetensors"]
        with open(tmp_path / "plain.txt", "w"):
            pass
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == expected
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in written} == {
        path.name: expected for path in written}


def test_a_cell_listed_twice_runs_once(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep.yaml", methods=["cones", "cones"], seeds=[1, 1])
    results = tmp_path / "results"
    assert main(["bench", str(sweep), "--results", str(results), "--no-report"]) == 0
    captured = capsys.readouterr()
    assert "1 ran, 0 already finished, 0 failed" in captured.out
    assert f"note: {sweep} lists 3 cell(s) more than once; each runs once" in captured.err
    assert len(stored(results)) == 1
    mask = os.umask(0)
    os.umask(mask)
    files = [*(results / "runs").glob("*.json"), *(results / "artifacts").iterdir()]
    assert len(files) == 2 and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o666 & ~mask}
