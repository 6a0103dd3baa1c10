"""Chaining (``init_from``): a run that starts from a finished ConES run.

- step 0 of a chained model scores (samples) as its source ended: classification,
  detection and generation, at the adapter and through the runner;
- the source is found by method name and by hash, and the record says where it started;
- bad input stops with one line and nothing stored;
- every executor runs a source cell before the cells that start from it;
- the sweep's ``chain:`` block (bench-chain.yaml, bench-gen-chain.yaml) and the report's table.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from tests.test_equal_starts import make, prompts
from tests.test_faults_config import one_line_error
from tunebench.bench.chain import Waits, chain_order, check_chains
from tunebench.bench.cli import main
from tunebench.bench.parallel import Schedule, run_sweep_local
from tunebench.bench.runner import Runner, run_sweep
from tunebench.bench.selection import placeholder_choices, plan_selection
from tunebench.bench.sweep import expand, load_sweep
from tunebench.config import INITS, RunConfig, TrainConfig
from tunebench.errors import ConfigError
from tunebench.methods.base import resolve_method
from tunebench.registry import BACKBONES, load_all
from tunebench.report.build import build_report
from tunebench.report.chain import own_tables

load_all()

REPO = Path(__file__).resolve().parents[1]
TRAIN = TrainConfig(steps=4, batch_size=8, warmup_steps=1, image_size=16, test_per_class=4)
SET_TINY = ["--set", "train.steps=4", "--set", "train.batch_size=8", "--set", "train.warmup_steps=1",
            "--set", "train.image_size=16", "--set", "train.test_per_class=4"]


def cell(method: str, **changes) -> RunConfig:
    cls, variant = resolve_method(method)
    settings = dataclasses.asdict(cls.config_class(**variant))
    return RunConfig(task="fewshot-cls", dataset="tiny-shapes", method=method, backbone="tiny-clip", shots=2,
                     seed=1, train=TRAIN, method_config=settings, **changes)


def as_trained(cones) -> None:
    """Move ConES's concepts well away from the shared start, as training would."""
    with torch.no_grad():
        for _, p in cones.trainable_named_parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))


def records(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))}


# ---- step 0 is the source's end ------------------------------------------------------------
@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("name", ["lit", "lit:projection", "full-ft"])
def test_chained_classifier_scores_as_its_source_at_step0(name, init, tiny_backbone):
    classes = prompts("tiny-shapes", init)
    cones = make("cones", copy.deepcopy(tiny_backbone), classes).eval()
    as_trained(cones)
    plain = make(name, copy.deepcopy(tiny_backbone), classes).eval()
    chained = make(name, tiny_backbone, classes)
    chained.start_from(type(cones).chain_tensors(cones.artifact()))
    chained.eval()
    width = cones.concepts.shape[1]
    images = F.normalize(torch.randn(6, width, generator=torch.Generator().manual_seed(0)), dim=-1)
    with torch.no_grad():
        expected, got, start = cones.scorer()(images), chained.scorer()(images), plain.scorer()(images)
    assert float((got - expected).abs().max()) < 1e-4
    assert float((start - expected).abs().max()) > 1e-2  # the check could fail: unchained, it starts elsewhere
    assert set(chained.artifact()) - set(plain.artifact()) == {"prompts.offset"}  # the fixed offset is saved


def test_a_chained_tower_still_moves_its_class_embeddings(tiny_backbone, tiny_classes):
    cones = make("cones", copy.deepcopy(tiny_backbone), tiny_classes)
    as_trained(cones)
    chained = make("lit", tiny_backbone, tiny_classes)
    chained.start_from(type(cones).chain_tensors(cones.artifact()))
    chained.class_embeddings().sum().backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for _, p in chained.trainable_named_parameters())
    assert not chained.prompts.offset.requires_grad  # held fixed


@pytest.mark.parametrize("name", ["lit:heads", "full-ft"])
def test_chained_detector_starts_at_its_source_class_embeddings(name):
    detector = BACKBONES.get("tiny-detector")(None)
    classes = prompts("tiny-det", "single")
    cones = make("cones", copy.deepcopy(detector), classes, "detect").eval()
    as_trained(cones)
    chained = make(name, detector, classes, "detect")
    chained.start_from(type(cones).chain_tensors(cones.artifact()))
    with torch.no_grad():
        assert torch.allclose(chained.eval().class_embeddings(), cones.class_embeddings(), atol=1e-6)


@pytest.mark.parametrize("name", ["unet-attn", "full-ft"])
def test_chained_unet_samples_as_its_source_at_step0(name):
    from tests.test_generation import CONCEPT

    model = BACKBONES.get("tiny-t2i")(None)
    cones_cls, _ = resolve_method("cones", "generation")
    cones = cones_cls(copy.deepcopy(model), CONCEPT, cones_cls.config_class())
    as_trained(cones)
    cls, variant = resolve_method(name, "generation")
    chained = cls(model, CONCEPT, cls.config_class(**variant))
    chained.start_from(cones_cls.chain_tensors(cones.artifact()))
    index = torch.tensor([0, 2, 1])
    with torch.no_grad():
        for ours, theirs in zip(chained.conditioning(index), cones.conditioning(index), strict=True):
            assert torch.equal(ours, theirs)
        kwargs = dict(null_states=cones.null_states, null_mask=cones.null_mask, seeds=[0, 1, 2], steps=2,
                      guidance=2.0, batch_size=3)
        assert torch.equal(chained.model.sample(*chained.conditioning(index), **kwargs),
                           cones.model.sample(*cones.conditioning(index), **kwargs))
    assert torch.equal(chained.artifact()["prompt_states.concept_state"], cones.concept_state.detach())
    assert set(chained.exports()) == {"cones", "unet"}  # a pipeline needs the state and the UNet


# ---- through the runner: by name, by hash ------------------------------------------------
def test_a_chained_run_starts_where_its_source_ended_by_name_and_by_hash(tmp_path):
    source = cell("cones")
    first = Runner(tmp_path).run(source)
    assert first["status"] == "ok" and first["artifact"]["tensors"] == 1, first.get("traceback")
    by_name = cell("lit", init_from="cones")  # source_steps: this run's own 4 steps
    assert by_name.source_steps == 4 and by_name.config_hash != cell("lit").config_hash
    named = Runner(tmp_path).run(by_name)
    assert named["status"] == "ok", named.get("traceback")
    assert named["init_from"] == {"hash": source.config_hash, "method": "cones", "steps": 4,
                                  "train_seconds": first["train_seconds"]}
    # Step 0 scores as the source ended: its class embeddings, the same cached images.
    assert named["metrics"]["curve"][0]["step"] == 0
    assert named["metrics"]["curve"][0]["top1"] == first["metrics"]["top1"]
    hashed = Runner(tmp_path).run(dataclasses.replace(by_name, init_from=source.config_hash, source_steps=None))
    assert hashed["status"] == "ok" and hashed["init_from"] == named["init_from"]
    assert [p["top1"] for p in hashed["metrics"]["curve"]] == [p["top1"] for p in named["metrics"]["curve"]]
    assert cell("lit").init_from is None and "init_from" not in Runner(tmp_path).run(cell("lit"))


def test_a_chained_generation_run_records_its_source(tmp_path):
    from tests.test_generation import FAST_TASK

    def gen(method: str, **changes) -> RunConfig:
        cls, variant = resolve_method(method, "generation")
        return RunConfig(task="generation", dataset="concept:zebra", method=method, backbone="tiny-t2i",
                         shots=2, seed=1, train=TrainConfig(steps=2, batch_size=2, warmup_steps=0),
                         method_config=dataclasses.asdict(cls.config_class(**variant)),
                         task_config=dict(FAST_TASK), **changes)

    source = Runner(tmp_path).run(gen("cones"))
    assert source["status"] == "ok", source.get("traceback")
    chained = Runner(tmp_path).run(gen("unet-attn", init_from="cones"))
    assert chained["status"] == "ok", chained.get("traceback")
    assert chained["init_from"]["hash"] == gen("cones").config_hash and chained["init_from"]["steps"] == 2
    assert set(chained["exports"]) == {"cones", "unet"}


# ---- bad input: one line, nothing stored ----------------------------------------------------
def run(tmp_path: Path, method: str, *args: str) -> int:
    return main(["run", "--method", method, "--dataset", "tiny-shapes", "--backbone", "tiny-clip", "--shots", "2",
                 "--seed", "1", "--results", str(tmp_path / "results"), *SET_TINY, *args])


@pytest.fixture
def with_source(tmp_path, capsys) -> dict:
    """A finished cones run (artifact saved) in tmp_path/results."""
    assert run(tmp_path, "cones") == 0, capsys.readouterr().err
    capsys.readouterr()
    (record,) = records(tmp_path / "results").values()
    return record


def _copy_as(tmp_path: Path, record: dict, name: str, **changes) -> str:
    """The record stored again under another hash, with some of its config changed."""
    copied = {**record, **changes, "config_hash": name, "config": {**record["config"], **changes}}
    (tmp_path / "results" / "runs" / f"{name}.json").write_text(json.dumps(copied))
    return name


@pytest.mark.parametrize("case", ["missing-hash", "missing-name", "backbone", "dataset", "not-cones",
                                  "cannot-chain", "no-artifact", "task", "train"])
def test_bad_chains_stop_in_one_line_and_store_nothing(case, tmp_path, capsys, with_source):
    args, method, expected = [], "lit", ""
    if case == "missing-hash":
        args, expected = ["--init-from", "0123456789abcdef"], "no run with that hash"
    elif case == "missing-name":
        args, expected = ["--init-from", "cones", "--source-steps", "7"], "no cones run"
    elif case == "backbone":
        args = ["--init-from", _copy_as(tmp_path, with_source, "b" * 16, backbone="mini-clip")]
        expected = "backbone 'mini-clip', this one 'tiny-clip'"
    elif case == "dataset":
        args = ["--init-from", _copy_as(tmp_path, with_source, "d" * 16, dataset="fashion-mnist")]
        expected = "dataset 'fashion-mnist', this one 'tiny-shapes'"
    elif case == "not-cones":
        assert run(tmp_path, "linear-probe") == 0
        capsys.readouterr()
        probe = next(r for r in records(tmp_path / "results").values() if r["method"] == "linear-probe")
        args, expected = ["--init-from", probe["config_hash"]], "that run is 'linear-probe'"
    elif case == "cannot-chain":
        args, method, expected = ["--init-from", "cones"], "coop", "method 'coop' cannot start from another run"
    elif case == "no-artifact":
        artifact = tmp_path / "results" / with_source["artifact"]["path"]
        artifact.unlink()
        args, expected = ["--init-from", "cones"], "has no saved artifact"
    elif case == "train":  # by hash, a source trained on another batch size is refused too
        train = {**with_source["config"]["train"], "batch_size": 3}
        args, expected = ["--init-from", _copy_as(tmp_path, with_source, "e" * 16, train=train)], "another train"
    elif case == "task":
        args, expected = ["--init-from", "cones", "--task", "base2new"], "cannot start a run from another"
    before = records(tmp_path / "results")
    assert run(tmp_path, method, *args) == 2
    error = one_line_error(capsys)
    assert expected in error, error
    assert records(tmp_path / "results") == before


def test_the_runner_itself_refuses_a_missing_source_and_stores_nothing(tmp_path):
    with pytest.raises(ConfigError, match="no cones run"):
        Runner(tmp_path).run(cell("full-ft", init_from="cones"))
    assert not records(tmp_path)


def test_a_source_saved_without_artifact_is_refused_with_the_fix(tmp_path, capsys):
    assert run(tmp_path, "cones", "--set", "train.save_artifacts=false") == 0
    capsys.readouterr()
    assert run(tmp_path, "lit", "--init-from", "cones") == 2
    error = one_line_error(capsys)
    assert "has no saved artifact: rerun it with train.save_artifacts: true" in error
    assert len(records(tmp_path / "results")) == 1


def test_init_from_values_are_checked_when_the_cell_is_made():
    with pytest.raises(ConfigError, match="method name .* or a run's 16-hex config hash"):
        cell("lit", init_from="Cones!")
    with pytest.raises(ConfigError, match="source_steps is set without init_from"):
        cell("lit", source_steps=3)
    with pytest.raises(ConfigError, match="by its hash, which has its own steps"):
        cell("lit", init_from="0123456789abcdef", source_steps=3)


# ---- sweeps: sources first, on every executor --------------------------------------------------
def chain_sweep(tmp_path: Path, **changes) -> Path:
    sweep = {"task": "fewshot-cls", "backbone": "tiny-clip", "datasets": ["tiny-shapes"],
             "methods": ["lit", "cones"], "shots": [2], "seeds": [1],
             "train": {**dataclasses.asdict(TRAIN), "device": "cpu"},
             "chain": {"source": "cones", "source_steps": 2, "methods": ["lit"]}, **changes}
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_the_chain_block_adds_a_source_and_a_chained_cell(tmp_path):
    cells = expand(load_sweep(chain_sweep(tmp_path)))
    lit, cones, source, chained = cells
    assert (lit.method, cones.method, source.method, chained.method) == ("lit", "cones", "cones", "lit")
    assert source.train.steps == chained.train.steps == 2 and cones.train.steps == 4
    assert chained.init_from == source.config_hash and chained.method_config == lit.method_config
    check_chains(cells)


def test_a_stored_source_without_its_artifact_stops_the_sweep_before_any_cell(tmp_path, capsys):
    # A fresh clone has the records but not results/artifacts/ (ignored by git): a new
    # chained cell from a stored source must stop the sweep up front, not halfway.
    results, sweep = tmp_path / "results", chain_sweep(tmp_path)
    assert main(["bench", str(sweep), "--results", str(results), "--no-report"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    stored = records(results)
    chained = next(r for r in stored.values() if r.get("init_from"))
    (results / stored[chained["init_from"]["hash"]]["artifact"]["path"]).unlink()
    (results / "runs" / f"{chained['config_hash']}.json").unlink()
    alone = next(r for r in stored.values() if r["method"] == "lit" and not r.get("init_from"))
    (results / "runs" / f"{alone['config_hash']}.json").unlink()  # would run first, without the check
    before = records(results)
    assert main(["bench", str(sweep), "--results", str(results), "--no-report"]) == 2
    assert "has no saved artifact" in one_line_error(capsys)
    assert records(results) == before


@pytest.mark.parametrize("changes, expected", [
    ({"chain": {"source": "cones", "source_steps": 4, "methods": ["lit"]}}, "the source needs fewer"),
    ({"chain": {"source": "cones", "source_steps": 2, "methods": ["full-ft"]}}, "which 'methods' does not run"),
    ({"methods": ["coop", "cones"], "chain": {"source": "cones", "source_steps": 2, "methods": ["coop"]}},
     "method 'coop' cannot start from another run"),
    ({"train": {**dataclasses.asdict(TRAIN), "save_artifacts": False}}, "saves no artifact"),
])
def test_a_bad_chain_block_stops_the_sweep_in_one_line(changes, expected, tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["bench", str(chain_sweep(tmp_path, **changes)), "--results", str(results), "--no-report"]) == 2
    assert expected in one_line_error(capsys)
    assert not results.exists()


def test_schedule_holds_a_chained_cell_until_its_source_finished(tmp_path):
    cells = expand(load_sweep(chain_sweep(tmp_path)))
    chained, source = cells[3], cells[2]
    schedule = Schedule([chained, source])
    assert schedule.take() is source  # the chained cell comes first in the list, but waits
    assert not schedule.ready()
    schedule.finished(source, 1.0)
    assert schedule.ready() and schedule.take() is chained
    assert chain_order([chained, source]) == [source, chained]
    waits = Waits([chained, source])
    assert not waits.ready(chained) and waits.ready(source)


@pytest.mark.parametrize("jobs", [1, 2])
def test_every_executor_runs_sources_before_the_cells_that_start_from_them(jobs, tmp_path):
    cells = expand(load_sweep(chain_sweep(tmp_path)))
    backwards = list(reversed(cells))  # every chained cell listed before its source
    results = tmp_path / "results"
    if jobs == 1:
        summary = run_sweep(backwards, Runner(results))
    else:
        summary = run_sweep_local(backwards, results, jobs=2, threads=1)
    assert len(summary.ok) == 4 and not summary.failed
    stored = records(results)
    chained = stored[cells[3].config_hash]
    assert chained["init_from"]["hash"] == cells[2].config_hash
    assert chained["started_at"] >= stored[cells[2].config_hash]["finished_at"]
    # The report: a table of its own, and the 2-step source left out of the ConES row.
    build_report(results)
    text = (results / "report.md").read_text()
    assert "ConES then fine-tuning (chaining)" in text and "| cones → lit | 2 + 2 |" in text
    summary_csv = (results / "summary.csv").read_text().splitlines()
    assert [line.split(",")[3:6] for line in summary_csv[1:]] == [["cones", "2", "1"], ["lit", "2", "1"]]


def test_a_failed_source_fails_the_cells_that_start_from_it(tmp_path, monkeypatch):
    from tunebench.methods.cones import Cones

    def broken(self):
        raise RuntimeError("broken for the test")

    monkeypatch.setattr(Cones, "class_embeddings", broken)  # every cones run fails
    cells = expand(load_sweep(chain_sweep(tmp_path)))
    summary = run_sweep(cells, Runner(tmp_path / "results"))
    assert set(summary.failed) == {cells[1].config_hash, cells[2].config_hash, cells[3].config_hash}
    error = records(tmp_path / "results")[cells[3].config_hash]["error"]
    assert error.startswith(f"its source run {cells[2].config_hash} (cones) failed")


def test_own_tables_keep_a_source_at_the_tables_budget():
    def rec(method: str, steps: int, name: str, **extra) -> dict:
        return {"task": "fewshot-cls", "dataset": "d", "backbone": "b", "method": method, "shots": 2, "seed": 1,
                "config_hash": name, "config": {"train": {"steps": steps}}, **extra}

    chained = {"hash": "s", "method": "cones", "steps": 4, "train_seconds": 1.0}
    runs = [rec("cones", 4, "s"), rec("lit", 4, "l"), rec("lit", 4, "c", init_from=chained)]
    assert [r["config_hash"] for r in own_tables(runs)] == ["s", "l"]  # the source is at 4 steps: kept
    off = [rec("cones", 4, "a"), rec("cones", 2, "s"), rec("lit", 2, "c", init_from={**chained, "steps": 2})]
    assert [r["config_hash"] for r in own_tables(off)] == ["a"]


# ---- the committed chain sweeps ----------------------------------------------------------------
@pytest.mark.parametrize("chain_file, alone_file, source_steps", [
    ("bench-chain.yaml", "bench.yaml", 50), ("bench-gen-chain.yaml", "bench-gen.yaml", 75)])
def test_the_chain_sweeps_reuse_the_stored_cells_and_trials(chain_file, alone_file, source_steps):
    """Their alone cells and lr trials are bench.yaml's / bench-gen.yaml's (same hashes), so
    in results/ only the chain cells run; each chained run has the alone runs' total steps."""
    chain, alone = load_sweep(REPO / chain_file), load_sweep(REPO / alone_file)
    plan, alone_plan = plan_selection(chain), plan_selection(alone)
    for key, trials in plan.trials.items():
        assert [c.config_hash for c in trials] == [c.config_hash for c in alone_plan.trials[key]]
    choices = placeholder_choices(plan)
    cells = expand(chain, choices)
    stored = {c.config_hash for c in expand(alone, {**placeholder_choices(alone_plan), **choices})}
    alone_cells = [c for c in cells if c.train.steps == chain.train["steps"]]
    assert {c.config_hash for c in alone_cells} <= stored
    sources = {c.config_hash: c for c in cells if c.train.steps == source_steps and c.init_from is None}
    chained = [c for c in cells if c.init_from is not None]
    assert len(chained) == 2 * len(sources) == len(alone_cells) * 2 // 3
    for c in chained:
        assert c.train.steps + sources[c.init_from].train.steps == chain.train["steps"]
        assert "no search of its own" in c.selection["chain"]
    check_chains(cells)
