"""How often each method runs the text tower while it tunes, for every method on every
task it serves: text-tower forward and backward passes in each step of a 3-step run.

The point of ConES is that it never runs the text encoder while tuning; methods at the
text input (CoOp, textual inversion) pay one forward and one backward every step; a
method whose text side is fixed encodes it once. A wrong count here is a cost table
that lies, so each (task, method) pair's count is written out below, not derived.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import tunebench.engine.checkpoints
import tunebench.engine.training
from tunebench.config import RunConfig, TrainConfig, method_config, task_config
from tunebench.datasets import load_dataset
from tunebench.engine.features import FeatureCache
from tunebench.engine.training import seed_everything
from tunebench.errors import ConfigError
from tunebench.methods.base import resolve_method
from tunebench.models.judge import load_judge
from tunebench.registry import BACKBONES, METHODS, TASKS, load_all
from tunebench.tasks.base import TaskContext

load_all()
STEPS = 3
BATCH = 4

# (text-tower forwards, backwards) in every training step; None: the method trains
# nothing, so no step runs and nothing anywhere may backpropagate into the tower.
NO_STEPS = None
AT_INPUT = (1, 1)  # prompts learned at the text input, or text-tower weights that train
FIXED = (0, 0)  # the text side is encoded once before training (or never used)
TEXT_TOWER_PRESETS = ("lilt", "bitfit", "layernorm", "attention", "lit", "all", "norms")

EXPECTED: dict[tuple[str, str], tuple[int, int] | None] = {
    **{("fewshot-cls", m): AT_INPUT for m in ("coop", "textual-inversion", "full-ft")},
    ("fewshot-cls", "cocoop"): AT_INPUT,  # one call over classes x images (checked below)
    ("fewshot-cls", "cones"): FIXED,  # its one text pass is at build, before training
    ("fewshot-cls", "linear-probe"): FIXED,
    ("fewshot-cls", "zero-shot"): NO_STEPS,
    **{("fewshot-cls", f"lit:{p}"): AT_INPUT for p in TEXT_TOWER_PRESETS},
    ("fewshot-cls", "lit:projection"): FIXED,
    **{("detect", m): AT_INPUT for m in ("coop", "textual-inversion", "full-ft", "lit:heads")},
    ("detect", "cones"): FIXED,
    ("detect", "lit:projection"): FIXED,
    ("detect", "zero-shot"): NO_STEPS,
    ("generation", "textual-inversion"): AT_INPUT,
    **{("generation", m): FIXED
       for m in ("cones", "full-ft", "unet-attn:kv", "unet-attn:cross-attn", "unet-attn:attn")},
    **{("align", f"lit:{p}"): AT_INPUT for p in TEXT_TOWER_PRESETS},
    ("align", "lit:projection"): FIXED,  # align encodes the captions once for this preset
    ("align", "full-ft"): AT_INPUT,
    ("align", "zero-shot"): NO_STEPS,
}
BACKBONE = {"fewshot-cls": "tiny-clip", "detect": "tiny-detector", "generation": "tiny-t2i", "align": "tiny-clip"}
GENERATION_TASK = {"judge": "tiny", "clip_backbone": "tiny-clip", "clip_image_size": 16, "samples_per_prompt": 2,
                   "curve_samples_per_prompt": 1, "sampling_steps": 2, "real_images": 4, "timing_repeats": 1,
                   "train_templates": ["a photo of a {}.", "a {}."], "eval_prompts": ["a drawing of a {}."],
                   "checkpoints": [1.0]}  # no fidelity probe between steps: it would sample


def cell(task: str, method: str) -> RunConfig:
    cls, variant = resolve_method(method, task)
    trains = cls.trains
    settings = dataclasses.asdict(method_config(cls, variant, method))
    common = dict(task=task, method=method, backbone=BACKBONE[task], seed=1 if trains else 0,
                  method_config=settings)
    train = dict(steps=STEPS, batch_size=BATCH, warmup_steps=1)
    if task == "fewshot-cls":
        return RunConfig(dataset="tiny-shapes", shots=2 if trains else 0,
                         train=TrainConfig(**train, image_size=16, test_per_class=2), **common)
    if task == "detect":
        return RunConfig(dataset="tiny-det", shots=2 if trains else 0, train=TrainConfig(**train),
                         task_config={"test_images": 2, "images_per_batch": 4, "pictures": 0}, **common)
    if task == "generation":
        return RunConfig(dataset="concept:zebra", shots=3, train=TrainConfig(**train),
                         task_config=task_config(TASKS.get(task), GENERATION_TASK), **common)
    return RunConfig(dataset="tiny-scenes", shots=60 if trains else 0,
                     train=TrainConfig(**train, image_size=16, eval_batch_size=64),
                     task_config=task_config(TASKS.get(task), {"zero_shot_datasets": [],
                                                               "knowledge_probe": False}), **common)


class TextTowerPasses:
    """Forward passes of one text-tower module, and how many of them received a gradient.

    A forward hook puts a gradient hook on each output tensor that needs one: a pass counts
    as backpropagated once, however many of its outputs (hidden states, pooled) the loss used.
    """

    def __init__(self, tower: torch.nn.Module) -> None:
        self.forwards, self.rows = 0, []
        self.backpropagated: set[int] = set()
        tower.register_forward_hook(self._forward, with_kwargs=True)

    @property
    def backwards(self) -> int:
        return len(self.backpropagated)

    def _forward(self, module, args, kwargs, output) -> None:
        index = self.forwards
        self.forwards += 1
        given = kwargs.get("inputs_embeds")
        if given is None:
            given = kwargs.get("input_ids", args[0] if args else None)
        self.rows.append(int(given.shape[0]))
        tensors = output.to_tuple() if hasattr(output, "to_tuple") else (output,)
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
                tensor.register_hook(lambda grad: self.backpropagated.add(index))


class _TrainingDone(Exception):
    """Raised after the last step: evaluation is not what this file counts."""


class Steps:
    """Text-tower passes per training step, from the start of a step's loop iteration to
    the end of its optimizer step (whatever a task does before its loop stays out)."""

    def __init__(self, passes: TextTowerPasses, monkeypatch) -> None:
        self.passes, self.counts, self.rows = passes, [], []
        self._start = (0, 0, 0)
        self._optimizer_step = tunebench.engine.training.optimizer_step
        monkeypatch.setattr(tunebench.engine.training, "progress", self.progress)  # every task's loop
        monkeypatch.setattr(tunebench.engine.training, "optimizer_step", self.optimizer_step)
        # A quality checkpoint scores between steps (train clock paused): evaluation, not a
        # step's cost, so the count of the step that follows starts after it.
        scoring = tunebench.engine.checkpoints.Checkpoints.run

        def run_then_restart(checkpoints, step):
            scoring(checkpoints, step)
            self._start = self._now()

        monkeypatch.setattr(tunebench.engine.checkpoints.Checkpoints, "run", run_then_restart)

    def _now(self) -> tuple[int, int, int]:
        return self.passes.forwards, self.passes.backwards, len(self.passes.rows)

    def progress(self, iterable, **kwargs):
        for step in iterable:
            self._start = self._now()
            yield step

    def optimizer_step(self, *args, **kwargs):
        value = self._optimizer_step(*args, **kwargs)
        forwards, backwards, rows = self._now()
        self.counts.append((forwards - self._start[0], backwards - self._start[1]))
        self.rows.append(self.passes.rows[self._start[2]:rows])
        if len(self.counts) == STEPS:
            raise _TrainingDone
        return value


_BACKBONES: dict[str, torch.nn.Module] = {}


def run_counted(task: str, method: str, monkeypatch, tmp_path) -> tuple[Steps, TextTowerPasses]:
    config = cell(task, method)
    task_runner = TASKS.get(task)()
    task_runner.validate(config)  # the task serves this method
    if config.backbone not in _BACKBONES:
        _BACKBONES[config.backbone] = BACKBONES.get(config.backbone)(None).eval()
    backbone = copy.deepcopy(_BACKBONES[config.backbone])
    passes = TextTowerPasses(backbone.text_encoder if task == "generation" else backbone.text_tower)
    if task == "generation":  # its judge is built on first use through the same engine: not here
        load_judge(GENERATION_TASK["judge"])
    steps = Steps(passes, monkeypatch)
    seed_everything(config.seed)
    context = TaskContext(backbone=backbone, device=torch.device("cpu"), features=FeatureCache(tmp_path / "f"))
    try:
        task_runner.run(config, context)
    except _TrainingDone:
        pass
    return steps, passes


def _cases():
    for key in sorted(EXPECTED):
        yield pytest.param(*key, id="-".join(key))


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: toy models run on one thread


@pytest.mark.parametrize(("task", "method"), list(_cases()))
def test_text_tower_passes_per_step(task, method, monkeypatch, tmp_path):
    steps, passes = run_counted(task, method, monkeypatch, tmp_path)
    expected = EXPECTED[(task, method)]
    if expected is NO_STEPS:
        assert steps.counts == [] and passes.forwards > 0  # it did score, through the tower
        assert passes.backwards == 0
        return
    assert steps.counts == [expected] * STEPS
    if method == "cones":
        assert passes.forwards > 0  # its one pass, at build: the concepts start from the tower's output
    assert passes.backwards == STEPS * expected[1]  # and none outside the steps
    if method == "cocoop":  # the one pass encodes every class's prompt for every image
        classes = len(load_dataset(cell(task, method).dataset).classnames)
        assert steps.rows == [[classes * BATCH]] * STEPS


@pytest.mark.parametrize("task", sorted(BACKBONE))
def test_every_method_a_task_serves_has_a_count(task):
    """A method a task accepts but this file has no count for fails here."""
    written = {method for t, method in EXPECTED if t == task}
    assert written
    for name in METHODS.names_for(task):
        cls, _ = resolve_method(name, task)
        if cls.variant_field is not None:  # the variants are the methods: lit:lilt, unet-attn:kv, ...
            assert any(m.startswith(f"{name}:") for m in written), f"no {name}:<variant> counted on {task}"
            continue
        try:
            TASKS.get(task)().validate(cell(task, name))
        except ConfigError:
            assert name not in written, f"{task} refuses {name}, yet a count is written for it"
            continue
        assert name in written, f"{task} serves {name}: write its text-tower count in EXPECTED"
