"""Every registered method through the same checks, on the real code path at toy size."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from tunebench.config import TrainConfig, method_config
from tunebench.methods.base import resolve_method
from tunebench.models.base import count_parameters
from tunebench.registry import METHODS, load_all
from tunebench.tasks.classification import train_classifier

load_all()
ALL_METHODS = METHODS.names_for("fewshot-cls")  # every MethodAdapter serves classification


def make(name, backbone, classes, **settings):
    cls, _ = resolve_method(name)
    return cls(backbone, classes, method_config(cls, settings, name))


def _lilt(backbone) -> set[str]:
    """The default ``lit`` preset "lilt": bottlenecks + text LayerNorms + projections."""
    bottlenecks = {f"bottlenecks.{i}.{layer}.{p}" for i in range(len(backbone.text_blocks()))
                for layer in ("down", "up") for p in ("weight", "bias")}
    norms = {f"backbone.{n}" for n, _ in backbone.named_parameters()
             if n.startswith("text_tower.") and "LayerNorm" in n}
    projections = {"backbone.image_projection.weight", "backbone.image_projection.bias",
                   "backbone.text_projection.weight"}
    return bottlenecks | norms | projections


# What each method declares should train, written out independently of its code: one
# entry per registered classification method (a test below fails for a missing one).
EXPECTED_TRAINABLE = {
    "zero-shot": lambda backbone: set(),
    "linear-probe": lambda backbone: {"linear.weight", "linear.bias"},
    "cones": lambda backbone: {"concepts"},
    "coop": lambda backbone: {"context"},
    # CoOp's context + the meta-network (Linear -> ReLU -> Linear)
    "cocoop": lambda backbone: {"context"} | {f"meta_net.{layer}.{p}" for layer in ("linear1", "linear2")
                                              for p in ("weight", "bias")},
    "textual-inversion": lambda backbone: {"tokens"},
    "lit": _lilt,
    "full-ft": lambda backbone: {f"backbone.{n}" for n, _ in backbone.named_parameters()},
}


def test_every_method_has_an_expectation():
    assert set(ALL_METHODS) >= {"zero-shot", "linear-probe", "cones", "coop", "cocoop",
                                "textual-inversion", "lit", "full-ft"}
    missing = sorted(set(ALL_METHODS) - set(EXPECTED_TRAINABLE))
    assert not missing, f"no expectation written for {missing}: add them to EXPECTED_TRAINABLE"


@pytest.mark.parametrize("name", ALL_METHODS)
def test_trainable_set_and_true_count(name, tiny_backbone, tiny_classes):
    adapter = make(name, tiny_backbone, tiny_classes)
    names = {n for n, _ in adapter.trainable_named_parameters()}
    assert names == EXPECTED_TRAINABLE[name](tiny_backbone)
    manual = sum(p.numel() for n, p in adapter.named_parameters() if n in names)
    assert adapter.trainable_count() == manual
    assert adapter.total_count() == count_parameters(adapter.parameters())


def test_textual_inversion_counts_only_its_rows(tiny_backbone, tiny_classes):
    adapter = make("textual-inversion", tiny_backbone, tiny_classes)
    width = tiny_backbone.token_embedding().embedding_dim
    assert adapter.trainable_count() == len(tiny_classes.classnames) * width
    assert adapter.trainable_count() < tiny_backbone.token_embedding().weight.numel() / 100


def test_lit_presets_are_data(tiny_backbone, tiny_classes):
    adapter = make("lit", tiny_backbone, tiny_classes, preset="bitfit")
    names = [n for n, _ in adapter.trainable_named_parameters()]
    assert names and all(n.endswith("bias") or "projection" in n for n in names)
    assert not any(n.startswith("backbone.image_tower.") for n in names)
    unlocked = make("lit", tiny_backbone, tiny_classes, groups=["bias"], lock_image_tower=False)
    assert any(n.startswith("backbone.image_tower.") for n, _ in unlocked.trainable_named_parameters())


def _one_backward(adapter, backbone):
    pixels = backbone.image_tower_trains()
    images = torch.randn(6, 3, 16, 16)
    x = images if pixels else backbone.encode_image_trunk(images).detach()
    loss = torch.nn.functional.cross_entropy(adapter(x, pixels=pixels), torch.tensor([0, 1, 2, 3, 0, 1]))
    loss.backward()


@pytest.mark.parametrize("name", [m for m in ALL_METHODS if resolve_method(m)[0].trains])
def test_gradients_reach_only_trainable(name, tiny_backbone, tiny_classes):
    adapter = make(name, tiny_backbone, tiny_classes)
    _one_backward(adapter, tiny_backbone)
    trainable = {n for n, _ in adapter.trainable_named_parameters()}
    with_grad = {n for n, p in adapter.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    # Something real flows: at least one trainable tensor has a non-zero gradient.
    assert any(float(p.grad.abs().sum()) > 0 for n, p in adapter.named_parameters() if n in trainable)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_artifact_round_trip(name, tiny_backbone, tiny_classes, tmp_path):
    import copy

    pristine = copy.deepcopy(tiny_backbone)
    adapter = make(name, tiny_backbone, tiny_classes)
    with torch.no_grad():  # perturb what trains, so a reload that ignored it would differ
        for _, p in adapter.trainable_named_parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_file(adapter.artifact(), str(tmp_path / "a.safetensors"))
    reloaded = make(name, pristine, tiny_classes)
    result = reloaded.load_state_dict(load_file(str(tmp_path / "a.safetensors")), strict=False)
    assert not result.unexpected_keys  # every saved tensor lands somewhere
    x = torch.randn(5, 3, 16, 16)
    adapter.eval(), reloaded.eval()
    with torch.no_grad():
        assert torch.allclose(adapter(x, pixels=True), reloaded(x, pixels=True), atol=1e-5)


class TextTowerCalls:
    def __init__(self, backbone):
        self.count = 0
        backbone.text_tower.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.count += 1


def _train_briefly(adapter, backbone):
    features = backbone.encode_image_trunk(torch.randn(8, 3, 16, 16)).detach()
    labels = torch.tensor([0, 1, 2, 3] * 2)
    train_classifier(adapter, features, labels, pixels=False, config=TrainConfig(steps=5, batch_size=4),
                     seed=0, device=torch.device("cpu"))


def test_cones_never_runs_the_text_encoder_while_tuning(tiny_backbone, tiny_classes):
    calls = TextTowerCalls(tiny_backbone)
    adapter = make("cones", tiny_backbone, tiny_classes)
    assert calls.count == 1  # exactly one pass, to initialise the concepts
    before = adapter.concepts.detach().clone()
    _train_briefly(adapter, tiny_backbone)
    assert calls.count == 1
    assert not torch.equal(before, adapter.concepts)  # it did tune


def test_coop_runs_the_text_encoder_every_step(tiny_backbone, tiny_classes):
    """The counter above can fail: for a method at the input it counts every step."""
    calls = TextTowerCalls(tiny_backbone)
    adapter = make("coop", tiny_backbone, tiny_classes)
    _train_briefly(adapter, tiny_backbone)
    assert calls.count == 5


def test_textual_inversion_changes_only_its_rows(tiny_backbone, tiny_classes):
    table_before = tiny_backbone.token_embedding().weight.detach().clone()
    adapter = make("textual-inversion", tiny_backbone, tiny_classes)
    tokens_before = adapter.tokens.detach().clone()
    _train_briefly(adapter, tiny_backbone)
    assert torch.equal(table_before, tiny_backbone.token_embedding().weight)
    assert not torch.equal(tokens_before, adapter.tokens)


def test_lit_bottlenecks_run_once_per_block_and_are_counted(tiny_backbone, tiny_classes):
    adapter = make("lit", tiny_backbone, tiny_classes)
    calls = []
    for module in adapter.bottlenecks:
        module.register_forward_hook(lambda *a: calls.append(1))
    adapter.class_embeddings()
    assert len(calls) == len(tiny_backbone.text_blocks())
    added = sum(p.numel() for p in adapter.bottlenecks.parameters())
    backbone_total = sum(p.numel() for p in tiny_backbone.parameters())
    assert adapter.total_count() == backbone_total + added
    width = tiny_backbone.text_width
    assert added == len(tiny_backbone.text_blocks()) * (2 * width * (width // 4) + width // 4 + width)


def test_frozen_encoder_is_deterministic_while_training(tiny_backbone, tiny_classes):
    """No dropout noise in a frozen text encoder: two passes in train mode agree."""
    adapter = make("coop", tiny_backbone, tiny_classes).train()
    assert torch.equal(adapter.class_embeddings(), adapter.class_embeddings())
