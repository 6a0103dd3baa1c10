"""Equal starts: every method that learns class representations begins at the sweep's
shared start (``init``), on every task that builds class prompts.

For each registered classification method (the registry, not a hand list) and each
init it can express, its step-0 logits must equal those of ``start_embeddings``; an
init it cannot express must be refused. The shared start itself is checked against a
written-out computation, so a wrong shared start cannot pass by agreeing with itself.

Textual inversion's one intrinsic difference: it compresses a class name into one
token (the mean of the name's token embeddings), so its step 0 equals the start only
for single-token names. The tiny-shapes names used here are one token each (checked).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tests.test_faults_config import assert_nothing_written, bench, one_line_error
from tunebench.bench.runner import Runner
from tunebench.config import INITS, RunConfig, TrainConfig, method_config
from tunebench.datasets import load_dataset
from tunebench.errors import ConfigError
from tunebench.methods.base import ClassPrompts, resolve_method
from tunebench.methods.prompts import start_embeddings
from tunebench.registry import BACKBONES, METHODS, load_all

load_all()

# Methods whose class side is not text, so no prompt start applies; with the reason.
NOT_TEXT = {
    "linear-probe": "classifies with a head of its own that starts at zero weights; it reads no text",
}
# Variants whose class side takes another code path than the plain name's.
VARIANTS = ["lit:projection"]  # frozen text tower: pooled features encoded once, then projected
CLASSIFICATION = [*METHODS.names_for("fewshot-cls"), *VARIANTS]
TOLERANCE = 1e-5


def make(name: str, backbone, classes: ClassPrompts, task: str = "fewshot-cls"):
    cls, variant = resolve_method(name, task)
    return cls(backbone, classes, method_config(cls, variant, name))


def prompts(dataset: str, init: str) -> ClassPrompts:
    data = load_dataset(dataset)
    return ClassPrompts(tuple(data.classnames), tuple(data.templates), init)


def written_out_start(backbone, classes: ClassPrompts) -> torch.Tensor:
    """The shared start computed apart from the code under test: single is each name in
    the first template; ensemble the renormalised mean over every template."""
    templates = classes.templates if classes.init == "ensemble" else classes.templates[:1]
    per_template = [
        F.normalize(backbone.encode_text(backbone.tokenize([t.format(c) for c in classes.classnames])), dim=-1)
        for t in templates
    ]
    return F.normalize(torch.stack(per_template).mean(0), dim=-1)


def step0_gap(adapter, start: torch.Tensor) -> float:
    """Largest difference between the adapter's logits before any step and the start's,
    on random normalised image embeddings (the path the tasks score through)."""
    adapter.eval()
    images = F.normalize(torch.randn(5, start.shape[1], generator=torch.Generator().manual_seed(0)), dim=-1)
    with torch.no_grad():
        logits = adapter.scorer()(images)
        expected = adapter.logit_scale() * images @ start.T
    return float((logits - expected).abs().max())


def test_test_names_are_one_token_each(tiny_backbone):
    """Textual inversion equals the start only for single-token names (see the module)."""
    for name in prompts("tiny-shapes", "single").classnames:
        assert len(tiny_backbone.word_token_ids(name)) == 1, name


@pytest.mark.parametrize("init", INITS)
def test_shared_start_is_the_written_out_one(init, tiny_backbone):
    classes = prompts("tiny-shapes", init)
    with torch.no_grad():
        expected = written_out_start(tiny_backbone, classes)
    assert torch.allclose(start_embeddings(tiny_backbone, classes), expected, atol=TOLERANCE)


def test_the_two_starts_differ(tiny_backbone):
    """Otherwise the ensemble cases below could not tell a method that ignores init."""
    single, ensemble = (start_embeddings(tiny_backbone, prompts("tiny-shapes", i)) for i in INITS)
    assert float((single - ensemble).abs().max()) > 1e-3


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("name", CLASSIFICATION)
def test_every_method_starts_at_the_shared_start(name, init, tiny_backbone):
    if name in NOT_TEXT:
        pytest.skip(NOT_TEXT[name])
    classes = prompts("tiny-shapes", init)
    cls, _ = resolve_method(name)
    if init not in cls.inits:
        with pytest.raises(ConfigError, match="init: single"):
            make(name, tiny_backbone, classes)
        return
    start = start_embeddings(tiny_backbone, classes)
    gap = step0_gap(make(name, tiny_backbone, classes), start)
    assert gap < TOLERANCE * float(tiny_backbone.logit_scale.detach().exp().clamp(max=100)), \
        f"{name} starts {gap:.2e} logits away from the shared {init} start"


def test_only_coop_and_its_kin_refuse_the_ensemble():
    """Refusing is a method's declared limit, not a way round this file: written out."""
    refusing = {n for n in METHODS.names_for("fewshot-cls") if "ensemble" not in resolve_method(n)[0].inits}
    assert refusing == {"coop", "cocoop"}


def test_the_check_sees_a_method_that_starts_elsewhere(tiny_backbone):
    """The comparison above can fail: ConES started from the second template instead."""
    classes = prompts("tiny-shapes", "single")
    elsewhere = ClassPrompts(classes.classnames, classes.templates[::-1], "single")
    adapter = make("cones", tiny_backbone, elsewhere)
    assert step0_gap(adapter, start_embeddings(tiny_backbone, classes)) > 1e-2


def test_coop_starts_from_the_start_templates_words(tiny_backbone):
    """'a photo of a {}, a pet.' -> context 'a photo of a', the tail kept, step 0 the prompt."""
    classes = ClassPrompts(("circle", "square"), ("a photo of a {}, a pet.",))
    adapter = make("coop", tiny_backbone, classes)
    assert adapter.n_ctx == len(tiny_backbone.word_token_ids("a photo of a"))
    assert step0_gap(adapter, start_embeddings(tiny_backbone, classes)) < 1e-4
    # An explicit ctx_init is the user's choice of another start, and stays honoured.
    cls, _ = resolve_method("coop")
    chosen = cls(tiny_backbone, classes, method_config(cls, {"ctx_init": "a drawing of"}, "coop"))
    assert chosen.n_ctx == len(tiny_backbone.word_token_ids("a drawing of"))
    assert step0_gap(chosen, start_embeddings(tiny_backbone, classes)) > 1e-3


def test_coop_with_ensemble_is_refused_before_anything_is_written(tmp_path, capsys):
    assert bench(tmp_path, "init: ensemble\nmethods: [zero-shot, coop]\nshots: [1]\nseeds: [1]\n") == 2
    error = one_line_error(capsys)
    assert "method 'coop'" in error and "init: single" in error
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("name", METHODS.names_for("detect"))
def test_detection_methods_start_at_the_shared_start(name, init):
    detector = BACKBONES.get("tiny-detector")(None)
    classes = prompts("tiny-det", init)
    cls, _ = resolve_method(name, "detect")
    if init not in cls.inits:
        with pytest.raises(ConfigError, match="init: single"):
            make(name, detector, classes, "detect")
        return
    adapter = make(name, detector, classes, "detect").eval()
    with torch.no_grad():
        embeddings = adapter.class_embeddings()
    assert torch.allclose(embeddings, start_embeddings(detector, classes), atol=TOLERANCE), name


def test_detect_task_builds_its_class_prompts_with_the_sweeps_init(tmp_path):
    """Through the runner: zero-shot's saved class embeddings are the ensemble start."""
    config = RunConfig(task="detect", dataset="tiny-det", method="zero-shot", backbone="tiny-detector",
                       shots=0, seed=0, init="ensemble", train=TrainConfig(steps=1, batch_size=4),
                       task_config={"test_images": 2, "images_per_batch": 2, "pictures": 0})
    record = Runner(tmp_path).run(config)
    assert record["status"] == "ok", record.get("traceback")
    assert record["init"] == "ensemble"
    saved = load_file(tmp_path / record["artifact"]["path"])["weights"]
    detector = BACKBONES.get("tiny-detector")(None)
    assert torch.allclose(saved, start_embeddings(detector, prompts("tiny-det", "ensemble")), atol=TOLERANCE)
    assert not torch.allclose(saved, start_embeddings(detector, prompts("tiny-det", "single")), atol=1e-3)


@pytest.mark.parametrize("task", ["fewshot-cls", "base2new"])
def test_classification_tasks_pass_the_sweeps_init(task, tmp_path, monkeypatch):
    """Both the trained classes and base2new's new ones reach the method with the init."""
    from tunebench.methods.zero_shot import ZeroShot

    seen: list[str] = []
    original_init, original_new = ZeroShot.__init__, ZeroShot.new_class_scorer

    def spy_init(self, backbone, classes, config):
        seen.append(("build", classes.init))
        original_init(self, backbone, classes, config)

    def spy_new(self, classes):
        seen.append(("new", classes.init))
        return original_new(self, classes)

    monkeypatch.setattr(ZeroShot, "__init__", spy_init)
    monkeypatch.setattr(ZeroShot, "new_class_scorer", spy_new)
    config = RunConfig(task=task, dataset="tiny-shapes", method="zero-shot", backbone="tiny-clip", shots=0,
                       seed=0, init="ensemble",
                       train=TrainConfig(steps=1, batch_size=4, image_size=16, test_per_class=2,
                                         save_artifacts=False))
    record = Runner(tmp_path).run(config)
    assert record["status"] == "ok", record.get("traceback")
    expected = [("build", "ensemble")] + ([("new", "ensemble")] if task == "base2new" else [])
    assert seen == expected


def test_generation_refuses_the_ensemble_in_one_line(tmp_path, capsys):
    sweep = ("task: generation\nbackbone: tiny-t2i\ndatasets: [concept:zebra]\ninit: ensemble\n"
             "methods: [cones]\nshots: [1]\nseeds: [1]\n")
    path = tmp_path / "gen.yaml"
    path.write_text(sweep)
    from tunebench.bench.cli import main

    assert main(["bench", str(path), "--results", str(tmp_path / "results"), "--no-report"]) == 2
    error = one_line_error(capsys)
    assert "method 'cones'" in error and "init: single" in error
    assert_nothing_written(tmp_path)
