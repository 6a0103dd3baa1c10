"""Fault injection, kept as tests: typed settings and bad input stop with one line
before anything is written to the results folder (issue 15, items 1, 5 and 8)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch
import yaml

from tunebench.bench.cli import main, make_parser
from tunebench.bench.runner import validate_cells
from tunebench.bench.sweep import expand, load_sweep
from tunebench.config import (
    RunConfig,
    TrainConfig,
    build_dataclass,
    method_config,
    task_config,
)
from tunebench.errors import ConfigError
from tunebench.methods.base import resolve_method
from tunebench.registry import BACKBONES, METHODS, TASKS, load_all

load_all()

REPO = Path(__file__).resolve().parents[1]
TINY_SETS = ["--set", "train.steps=2", "--set", "train.batch_size=8", "--set", "train.image_size=16",
             "--set", "train.test_per_class=4", "--set", "train.save_artifacts=false"]


def run_cli(tmp_path: Path, *args: str, method: str = "cones", dataset: str = "tiny-shapes",
            backbone: str = "tiny-clip") -> int:
    return main(["run", "--method", method, "--dataset", dataset, "--backbone", backbone,
                 "--results", str(tmp_path / "results"), *args])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("tunebench: error: ")
    return err


def stored(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "results" / "runs").glob("*.json"))]


def assert_nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "results").exists()


def write_sweep(tmp_path: Path, text: str) -> Path:
    base = ("task: fewshot-cls\nbackbone: tiny-clip\ndatasets: [tiny-shapes]\n"
            "train: {steps: 2, batch_size: 8, image_size: 16, test_per_class: 4, save_artifacts: false}\n")
    path = tmp_path / "sweep.yaml"
    path.write_text(base + text)
    return path


def bench(tmp_path: Path, text: str) -> int:
    return main(["bench", str(write_sweep(tmp_path, text)), "--results", str(tmp_path / "results"),
                 "--no-report"])


# ---- 1. typed settings --------------------------------------------------------------------
def test_set_lr_in_scientific_notation_runs(tmp_path, capsys):
    assert run_cli(tmp_path, "--shots", "1", "--set", "method.lr=1e-2", *TINY_SETS) == 0, capsys.readouterr().err
    (record,) = stored(tmp_path)
    assert record["status"] == "ok"
    assert record["config"]["method_config"]["lr"] == 0.01


def test_yaml_lr_in_scientific_notation_is_the_same_cell_as_decimal(tmp_path):
    cells = {}
    for text in ("1e-3", "0.001"):
        path = write_sweep(tmp_path, f"methods: [cones]\nshots: [1]\nseeds: [1]\nmethod_config: {{cones: {{lr: {text}}}}}\n")
        (cells[text],) = expand(load_sweep(path))
    assert cells["1e-3"].method_config["lr"] == 0.001
    assert cells["1e-3"].config_hash == cells["0.001"].config_hash


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.steps=2.5", "train.steps must be a whole number, got 2.5"),
        ("train.steps=abc", "train.steps must be a whole number, got 'abc'"),
        ("train.steps=true", "train.steps must be a whole number, got true"),
        ("train.save_artifacts=yes", "train.save_artifacts must be true or false, got 'yes'"),
        ("train.save_artifacts=1", "train.save_artifacts must be true or false, got 1"),
        ("train.test_per_class=many", "train.test_per_class must be a whole number or null, got 'many'"),
        ("train.grad_clip=.inf", "train.grad_clip must be a number"),
        ("train.device=5", "train.device must be text"),
        ("method.lr=fast", "method.cones.lr must be a number (e.g. 0.001 or 1e-3), got 'fast'"),
    ],
)
def test_mistyped_setting_is_one_line(tmp_path, capsys, setting, message):
    assert run_cli(tmp_path, "--set", setting) == 2
    assert message in one_line_error(capsys)
    assert_nothing_written(tmp_path)


def test_mistyped_setting_in_a_sweep_file_is_one_line(tmp_path, capsys):
    assert bench(tmp_path, "methods: [coop]\nshots: [1]\nseeds: [1]\nmethod_config: {coop: {n_ctx: 2.5}}\n") == 2
    assert "method_config.coop.n_ctx must be a whole number or null, got 2.5" in one_line_error(capsys)
    assert_nothing_written(tmp_path)


def _config_classes() -> list[tuple[str, type]]:
    classes = {f"method {name} on {cls.tasks[0]}": cls.config_class
               for name in METHODS.names() for cls in METHODS.entry(name).classes}
    classes |= {f"task {name}": TASKS.entry(name).config_class
                for name in TASKS.names() if getattr(TASKS.entry(name), "config_class", None)}
    classes["train"] = TrainConfig
    return sorted(classes.items())


def _defaults(cls) -> dict:
    return {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for f in dataclasses.fields(cls)}


@pytest.mark.parametrize(("label", "cls"), _config_classes(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_config_class_converts_by_declared_type(label, cls):
    hints, defaults = typing.get_type_hints(cls), _defaults(cls)
    floats = {n: f"{defaults[n]:e}" for n, h in hints.items() if h is float}  # "1.000000e-03"
    ints = {n: float(defaults[n]) for n, h in hints.items() if h is int}  # 4 -> 4.0
    built = build_dataclass(cls, {**floats, **ints}, "x")
    assert dataclasses.asdict(built) == dataclasses.asdict(build_dataclass(cls, {}, "x"))
    assert all(type(getattr(built, n)) is int for n in ints)
    for name in [n for n, h in hints.items() if h in (int, bool)]:
        with pytest.raises(ConfigError, match=f"x.{name} must be"):
            build_dataclass(cls, {name: "yes" if hints[name] is bool else 2.5}, "x")


def test_typed_settings_keep_every_committed_hash():
    """Values that already had their declared type are passed as given: the committed
    results keep their config hashes (else every cell would rerun). Records made before
    the fair protocol (no ``init`` in their config) are stale by design: a changed start
    must make a new cell, so they are not expected to keep their hashes."""
    records = [json.loads(p.read_text()) for p in sorted((REPO / "results" / "runs").glob("*.json"))]
    records = [r for r in records if "init" in r["config"]]
    if not records:
        pytest.skip("no committed run was made under the fair protocol yet")
    for record in records:
        config = record["config"]
        method_cls, _ = resolve_method(config["method"], config["task"])
        rebuilt = RunConfig(**{
            **config,
            "train": build_dataclass(TrainConfig, config["train"], "train"),
            "method_config": dataclasses.asdict(method_config(method_cls, config["method_config"], "m")),
            "task_config": task_config(TASKS.get(config["task"]), config.get("task_config")),
        })
        assert rebuilt.config_hash == record["config_hash"], record["config_hash"]


# ---- 5. validation gaps -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("lists", "message"),
    [
        ("shots: [true]\nseeds: [1]", "'shots' must be whole numbers >= 1, got [True]"),
        ("shots: [1]\nseeds: [-1]", "'seeds' must be whole numbers from 0 to 4294967295"),
        ("shots: [1]\nseeds: [4294967296]", "'seeds' must be whole numbers from 0 to 4294967295"),
        ("shots: [1]\nseeds: [1]\ntrain: {steps: 2.5}", "train.steps must be a whole number, got 2.5"),
        ("shots: [1]\nseeds: [1]\ntrain: {device: gpu}", "train.device must be auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_sweep_values_stop_before_anything_runs(tmp_path, capsys, lists, message):
    assert bench(tmp_path, f"methods: [zero-shot, cones]\n{lists}\n") == 2
    assert message in one_line_error(capsys)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seed", "-1"], "seed must be a whole number from 0 to 4294967295, got -1"),
        (["--seed", str(2**32)], "seed must be a whole number from 0 to 4294967295"),
        (["--shots", "0"], "cones trains, so it needs shots >= 1, got 0"),
        (["--set", "train.device=gpu"], "train.device must be auto, cpu, cuda or cuda:N (e.g. cuda:0), got 'gpu'"),
    ],
)
def test_bad_run_values_stop_before_anything_runs(tmp_path, capsys, args, message):
    assert run_cli(tmp_path, *args, *TINY_SETS) == 2
    assert message in one_line_error(capsys)
    assert_nothing_written(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_missing_gpu_is_one_line(tmp_path, capsys, device):
    assert run_cli(tmp_path, "--set", f"train.device={device}", *TINY_SETS) == 2
    assert "no CUDA GPU is visible" in one_line_error(capsys)
    assert_nothing_written(tmp_path)


def test_open_clip_vit_at_a_size_its_positions_do_not_fit(tmp_path, capsys):
    pytest.importorskip("open_clip")
    code = run_cli(tmp_path, "--shots", "1", *TINY_SETS, "--set", "train.image_size=64",
                   backbone="open_clip:tiny-open-clip")
    assert code == 2
    err = one_line_error(capsys)
    assert "positional embedding fits 32-47 px images: set train.image_size to 32, not 64" in err
    assert_nothing_written(tmp_path)


def make_folder(root: Path, counts: dict[str, int]) -> Path:
    from PIL import Image

    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (30 * i, 60, 90)).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"cat": 6}, "has one class (cat): a classifier needs at least two"),
        ({"train/cat": 3, "test/cat": 2}, "has one class (cat): a classifier needs at least two; add another "
                                          "class folder in {}/train/"),
        ({"cat": 1, "dog": 1}, "{}: the automatic 80/20 split leaves no test images (class(es) cat, dog have "
                               "one image each; a class needs 2 to be split): add images, or give train/ and test/"),
    ],
)
def test_image_folder_that_cannot_be_scored(tmp_path, capsys, layout, message):
    folder = make_folder(tmp_path / "pets", layout)
    code = run_cli(tmp_path, "--shots", "1", *TINY_SETS, dataset=f"imagefolder:{folder}")
    assert code == 2
    assert message.format(folder.resolve()) in one_line_error(capsys)
    assert_nothing_written(tmp_path)


def _tiny_clip_state() -> dict[str, torch.Tensor]:
    return BACKBONES.get("tiny-clip")(None).state_dict()


def _wrong_architecture(path: Path) -> Path:
    state = _tiny_clip_state()
    state["text_projection.weight"] = torch.zeros(16, 32)  # as if embed_dim were 16
    del state["logit_scale"]
    torch.save(state, path)
    return path


def _corrupt_safetensors(folder: Path) -> Path:
    (folder / "w.safetensors").write_bytes(b"not a safetensors file")
    return folder / "w.safetensors"


def _corrupt_pickle(folder: Path) -> Path:
    (folder / "w.pt").write_bytes(b"garbage, not a pickle")
    return folder / "w.pt"


def _not_a_state_dict(folder: Path) -> Path:
    torch.save([1, 2], folder / "w.pt")
    return folder / "w.pt"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_corrupt_safetensors, "cannot read {} as a state dict (SafetensorError)"),
        (_corrupt_pickle, "cannot read {} as a state dict"),
        (_not_a_state_dict, "holds a list that is not a state dict"),
        (lambda p: _wrong_architecture(p / "w.pt"),
         "checkpoint {} does not fit tiny-clip: 1 missing keys (e.g. logit_scale), 1 of another shape "
         "(e.g. text_projection.weight: (16, 32) vs (24, 32)); pass a checkpoint saved from tiny-clip"),
    ],
    ids=["corrupt-safetensors", "corrupt-pt", "not-a-state-dict", "wrong-architecture"],
)
def test_bad_checkpoint_stops_the_sweep_before_any_cell(tmp_path, capsys, make, message):
    path = make(tmp_path)
    code = bench(tmp_path, f"methods: [zero-shot, cones]\nshots: [1]\nseeds: [1]\npretrained: {path}\n")
    assert code == 2
    assert message.format(path) in one_line_error(capsys)
    assert_nothing_written(tmp_path)


def test_good_checkpoint_still_loads(tmp_path):
    path = tmp_path / "good.pt"
    torch.save(_tiny_clip_state(), path)
    model = BACKBONES.get("tiny-clip")(None, pretrained=str(path))
    assert model.content_id == f"tiny-clip-{path}"


def test_corrupt_detector_checkpoint_is_bad_input(tmp_path):
    path = tmp_path / "heads.safetensors"
    path.write_bytes(b"\x00" * 64)
    cell = RunConfig(task="detect", dataset="tiny-det", method="cones", backbone="tiny-detector", shots=1,
                     seed=1, train=TrainConfig(steps=2, image_size=64), pretrained=str(path))
    with pytest.raises(ConfigError, match="cannot read .*heads.safetensors as a state dict") as error:
        validate_cells([cell])
    assert "\n" not in str(error.value)


def test_corrupt_mini_clip_folder_is_bad_input(tmp_path, capsys):
    folder = tmp_path / "mini-clip-built"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(b"{truncated")
    assert run_cli(tmp_path, "--pretrained", str(folder), backbone="mini-clip") == 2
    assert "cannot read" in one_line_error(capsys)
    assert_nothing_written(tmp_path)


def test_mini_clip_folder_for_another_model_is_bad_input(tmp_path, capsys):
    from safetensors.torch import save_file

    folder = tmp_path / "mini-clip-built"
    folder.mkdir()
    save_file({"text_projection.weight": torch.zeros(16, 384)}, str(folder / "weights.safetensors"))
    assert run_cli(tmp_path, "--pretrained", str(folder), backbone="mini-clip") == 2
    err = one_line_error(capsys)
    assert "weights.safetensors does not fit mini-clip (" in err
    assert "1 of another shape (e.g. text_projection.weight: (16, 384) vs (256, 384))" in err
    assert_nothing_written(tmp_path)


def test_gpu_index_beyond_the_machine_is_bad_input(monkeypatch):
    from tunebench.engine.training import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"this machine has 2 GPU\(s\): use cuda:0 .. cuda:1"):
        resolve_device("cuda:2")
    assert resolve_device("cuda:1") == torch.device("cuda:1")


# ---- 8c. a method that trains nothing is one cell, 0-shot seed 0, as in sweeps -------------
def test_zero_shot_run_is_the_sweep_cell(tmp_path, capsys):
    assert run_cli(tmp_path, *TINY_SETS, method="zero-shot") == 0
    (record,) = stored(tmp_path)
    assert (record["shots"], record["seed"]) == (0, 0)
    capsys.readouterr()
    assert run_cli(tmp_path, "--shots", "8", "--seed", "3", *TINY_SETS, method="zero-shot") == 0
    out = capsys.readouterr()
    assert "--shots and --seed are ignored" in out.err and "already finished" in out.out
    assert bench(tmp_path, "methods: [zero-shot]\nshots: [1, 4]\nseeds: [1, 2]\n") == 0
    assert len(stored(tmp_path)) == 1


def test_training_method_keeps_its_defaults(tmp_path):
    (cell,) = expand(load_sweep(write_sweep(tmp_path, "methods: [cones]\nshots: [4]\nseeds: [1]\n")))
    args = make_parser().parse_args(["run", "--method", "cones", "--dataset", "tiny-shapes"])
    from tunebench.bench.cli import _shots_and_seed

    assert _shots_and_seed(args, trains=True) == (cell.shots, cell.seed) == (4, 1)


# ---- 8e. help ------------------------------------------------------------------------------
def _arguments(parser) -> list:
    found = []
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):  # the subcommands
            for sub in action.choices.values():
                found += _arguments(sub)
        elif action.dest not in ("help", "command"):
            found.append(action)
    return found


def test_every_argument_has_help():
    bare = [a.option_strings or a.dest for a in _arguments(make_parser()) if not a.help]
    assert bare == []


def test_backbone_help_names_every_registered_backbone():
    (backbone,) = [a for a in _arguments(make_parser()) if "--backbone" in a.option_strings]
    missing = [name for name in BACKBONES.names() if name not in backbone.help]
    assert missing == []


def test_run_help_stays_light():
    code = ("import sys\nfrom tunebench.bench.cli import main\ntry:\n    main(['run', '--help'])\n"
            "except SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'run --help imported torch'\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--backbone" in done.stdout and "mini-clip" in done.stdout


def test_sweep_yaml_reads_yes_as_a_word(tmp_path):
    path = write_sweep(tmp_path, "methods: [coop]\nshots: [1]\nseeds: [1]\nmethod_config: {coop: {ctx_init: no}}\n")
    (cell,) = expand(load_sweep(path))
    assert cell.method_config["ctx_init"] == "no"
    assert yaml.safe_load("no") is False  # what PyYAML alone would have made of it
