"""The runner, sweep, store and CLI end to end on tiny data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from tunebench.bench.cli import main
from tunebench.bench.store import REQUIRED_KEYS

TINY_TRAIN = {"steps": 4, "batch_size": 8, "image_size": 16, "test_per_class": 6, "save_artifacts": True}


def write_sweep(path: Path, **overrides) -> Path:
    sweep = {
        "task": "fewshot-cls", "backbone": "tiny-clip", "datasets": ["tiny-shapes"],
        "methods": ["zero-shot", "cones", "coop"], "shots": [1, 2], "seeds": [1, 2],
        "train": dict(TINY_TRAIN),
    }
    sweep.update(overrides)
    path.write_text(yaml.safe_dump(sweep))
    return path


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the hash of its bytes."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def runs(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]


def test_tiny_sweep_end_to_end_then_skips_finished(tmp_path, capsys):
    results = tmp_path / "results"
    sweep = write_sweep(tmp_path / "sweep.yaml")
    assert main(["bench", str(sweep), "--results", str(results)]) == 0
    records = runs(results)
    # zero-shot runs once per dataset; the two trained methods run shots × seeds each.
    assert len(records) == 1 + 2 * 2 * 2
    for record in records:
        assert set(REQUIRED_KEYS) <= set(record)
        assert record["status"] == "ok", record["error"]
        assert 0.0 <= record["metrics"]["top1"] <= 1.0
        assert record["env"]["versions"]["torch"]
        assert (results / record["artifact"]["path"]).is_file()
    cones = [r for r in records if r["method"] == "cones"]
    assert all(r["trainable_params"] == 4 * 24 and r["image_input"] == "cached-features" for r in cones)
    assert (results / "report.md").is_file() and (results / "summary.csv").is_file()

    before = snapshot(results / "runs")
    capsys.readouterr()
    assert main(["bench", str(sweep), "--results", str(results), "--no-report"]) == 0
    assert "0 ran, 9 already finished" in capsys.readouterr().out
    assert snapshot(results / "runs") == before


def test_failing_run_is_recorded_and_sweep_goes_on(tmp_path, capsys):
    results = tmp_path / "results"
    sweep = write_sweep(
        tmp_path / "sweep.yaml", methods=["linear-probe", "cones"], shots=[1], seeds=[1],
        method_config={"linear-probe": {"lr": 1e30}},  # diverges: a NaN/inf loss
    )
    assert main(["bench", str(sweep), "--results", str(results), "--no-report"]) == 2
    by_method = {r["method"]: r for r in runs(results)}
    assert by_method["cones"]["status"] == "ok"
    failed = by_method["linear-probe"]
    assert failed["status"] == "failed"
    assert "lower this method's lr" in failed["error"] and "\n" not in failed["error"]
    assert "1 failed" in capsys.readouterr().out


def test_failed_rerun_keeps_the_stored_result(tmp_path, monkeypatch):
    from tunebench.bench.runner import Runner
    from tunebench.config import RunConfig, TrainConfig
    from tunebench.tasks.classification import FewShotClassification

    config = RunConfig(task="fewshot-cls", dataset="tiny-shapes", method="cones", backbone="tiny-clip",
                       shots=1, seed=1, train=TrainConfig(**TINY_TRAIN))
    runner = Runner(tmp_path / "results")
    assert runner.run(config)["status"] == "ok"
    stored = runner.store.path(config.config_hash).read_bytes()

    def broken(self, config, context):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(FewShotClassification, "run", broken)
    forced = Runner(tmp_path / "results", force=True).run(config)
    assert forced["status"] == "failed" and "simulated crash" in forced["error"]
    assert runner.store.path(config.config_hash).read_bytes() == stored


@pytest.mark.parametrize(
    ("sweep_overrides", "message"),
    [
        ({"methods": ["cones", "cnoes-typo"]}, "Did you mean"),
        ({"datasets": ["no-such-data"]}, "unknown dataset"),
        ({"backbone": "no-such-backbone"}, "unknown backbone"),
        ({"task": "no-such-task"}, "unknown task"),
        ({"train": {"stepz": 3}}, "valid: steps"),
        ({"method_config": {"cones": {"learning_rate": 1}}}, "valid: lr"),
        ({"method_config": {"lit": {}}}, "method_config names methods not in"),
        ({"methods": ["coop"], "method_config": {"coop": {"n_ctx": 0}}}, "n_ctx must be >= 1"),
        ({"train": 5}, "train must be a mapping"),
        ({"shots": []}, "non-empty list"),
    ],
)
def test_bad_sweep_gives_one_line_and_leaves_results(tmp_path, capsys, sweep_overrides, message):
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    (results / "runs" / "existing.json").write_text('{"kept": true}\n')
    before = snapshot(results)
    sweep = write_sweep(tmp_path / "sweep.yaml", **sweep_overrides)
    assert main(["bench", str(sweep), "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert snapshot(results) == before


def test_malformed_yaml(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [cones\nshots: 1:\n")
    assert main(["bench", str(bad), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML at line" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    code = main(["run", "--method", "cones", "--dataset", "tiny-shapes", "--backbone", "tiny-clip",
                 "--pretrained", str(tmp_path / "nope.safetensors"), "--results", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoint not found" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r" / "runs").exists() or not list((tmp_path / "r" / "runs").iterdir())


def test_unreadable_image_stops_with_one_line(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "pets"
    for name in ("cat", "dog"):
        (folder / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (20, 20), (40 * i, 80, 120)).save(folder / name / f"{i}.png")
    # Every dog image: which ones are drawn, held out for validation or tested depends on seeds.
    for i in range(4):
        (folder / "dog" / f"{i}.png").write_bytes(b"this is not a png")
    results = tmp_path / "r"
    code = main(["run", "--method", "cones", "--dataset", f"imagefolder:{folder}", "--backbone", "tiny-clip",
                 "--shots", "2", "--set", "train.steps=2", "--set", "train.image_size=16",
                 "--set", "train.val_per_class=1", "--results", str(results)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "cannot read image" in err and "/dog/" in err and len(err.splitlines()) == 1
    assert snapshot(results / "runs") == {}


def test_report_regenerates_identically(tmp_path):
    results = tmp_path / "results"
    sweep = write_sweep(tmp_path / "sweep.yaml", methods=["zero-shot", "cones", "linear-probe"], seeds=[1, 2])
    assert main(["bench", str(sweep), "--results", str(results)]) == 0
    first = {k: v for k, v in snapshot(results).items() if not k.startswith(("runs", "artifacts"))}
    for path in [results / "report.md", results / "summary.csv", *(results / "figures").glob("*.png")]:
        path.unlink()
    assert main(["report", "--results", str(results)]) == 0
    second = {k: v for k, v in snapshot(results).items() if not k.startswith(("runs", "artifacts"))}
    assert first == second and any(k.endswith(".png") for k in first)


@pytest.mark.parametrize("method", ["zero-shot", "cones", "coop", "textual-inversion", "lit", "linear-probe"])
def test_open_clip_path_on_tiny_config(tmp_path, method, capsys):
    pytest.importorskip("open_clip")
    code = main(["run", "--method", method, "--dataset", "tiny-shapes", "--backbone", "open_clip:tiny-open-clip",
                 "--shots", "2", "--set", "train.steps=3", "--set", "train.image_size=32",
                 "--set", "train.test_per_class=4", "--results", str(tmp_path / "r")])
    out = capsys.readouterr()
    assert code == 0, out.err
    (record,) = runs(tmp_path / "r")
    assert record["status"] == "ok" and record["backbone"] == "open_clip:tiny-open-clip"


def test_list_prints_one_name_per_line(capsys):
    assert main(["list", "methods"]) == 0
    names = capsys.readouterr().out.split()
    assert {"cones", "coop", "textual-inversion", "lit", "full-ft", "zero-shot", "linear-probe"} <= set(names)


def test_a_skipped_cell_records_the_selection_that_chose_it_now(tmp_path):
    """A finished cell met again under another selection that chose the same lr (the same
    hash) keeps its result; its record's selection is brought up to date."""
    from tunebench.bench.runner import refresh_selection
    from tunebench.bench.store import RunStore
    from tunebench.config import RunConfig

    store = RunStore(tmp_path / "results")
    old = {"grid": [1e-3, 1e-2], "chosen": 1e-2, "split": "validation", "pilot": {"shots": 4, "seed": 1}}
    new = {**old, "pilot": {"dataset": "tiny-shapes", "shots": 4, "seed": 1}}
    config = RunConfig(task="fewshot-cls", dataset="tiny-shapes", method="cones", backbone="tiny-clip",
                       shots=4, seed=1, selection=new)
    record = {"task": "fewshot-cls", "dataset": "tiny-shapes", "method": "cones", "backbone": "tiny-clip",
              "shots": 4, "seed": 1, "status": "ok", "error": None, "config_hash": config.config_hash,
              "train_seconds": 1.0, "eval_seconds": 0.1, "trainable_params": 1, "total_params": 2,
              "peak_memory_mb": 1.0, "images_per_second": None, "metrics": {"top1": 0.5}, "env": {},
              "selection": old, "config": {**config.to_dict(), "selection": old}}
    store.write(record)
    refresh_selection(store, config)
    stored = store.read(config.config_hash)
    assert stored["selection"] == new and stored["config"]["selection"] == new
    assert stored["metrics"] == {"top1": 0.5}
