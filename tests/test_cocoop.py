"""CoCoOp: what trains, what the text encoder sees per step, per-image prompts, and
where it runs (classification tasks) and where it is refused (detect, align)."""

from __future__ import annotations

import pytest
import torch

from tests.test_faults_config import (
    TINY_SETS,
    assert_nothing_written,
    one_line_error,
    run_cli,
    stored,
)
from tests.test_methods import make
from tunebench.config import TrainConfig
from tunebench.methods import cocoop as cocoop_module
from tunebench.registry import load_all
from tunebench.tasks.classification import train_classifier

load_all()


class PromptCounter:
    """Counts text-tower calls and the prompts each one encodes."""

    def __init__(self, backbone):
        self.sizes: list[int] = []
        backbone.text_tower.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        given = kwargs.get("inputs_embeds")
        if given is None:
            given = kwargs.get("input_ids", args[0] if args else None)
        self.sizes.append(int(given.shape[0]))


def test_trainable_set_and_true_count(tiny_backbone, tiny_classes):
    adapter = make("cocoop", tiny_backbone, tiny_classes)
    names = {n for n, _ in adapter.trainable_named_parameters()}
    meta = {f"meta_net.{layer}.{p}" for layer in ("linear1", "linear2") for p in ("weight", "bias")}
    assert names == {"context"} | meta
    dim, width = tiny_backbone.embed_dim, tiny_backbone.text_width
    hidden = max(1, dim // 16)
    n_ctx = adapter.n_ctx  # null in the config: one per start word
    assert n_ctx == 4  # 'a photo of a'
    expected = n_ctx * width + (dim * hidden + hidden) + (hidden * width + width)
    assert adapter.trainable_count() == expected
    coop = make("coop", tiny_backbone, tiny_classes)
    assert adapter.trainable_count() - coop.trainable_count() == expected - n_ctx * width
    # Same initial context as coop (same words, same n_ctx).
    assert torch.equal(adapter.context, coop.context)


def test_text_encoder_runs_once_per_step_over_classes_times_images(tiny_backbone, tiny_classes):
    # The meta-net's init comes from the global RNG: seed it, so the test does not depend
    # on which tests ran before (a dead ReLU in the tiny 1-unit hidden layer once left
    # linear1 without gradient when this test ran alone).
    torch.manual_seed(0)
    adapter = make("cocoop", tiny_backbone, tiny_classes)
    counter = PromptCounter(tiny_backbone)
    context = adapter.context.detach().clone()
    meta = {n: p.detach().clone() for n, p in adapter.meta_net.named_parameters()}
    features = tiny_backbone.encode_image_trunk(torch.randn(8, 3, 16, 16)).detach()
    labels = torch.tensor([0, 1, 2, 3] * 2)
    train_classifier(adapter, features, labels, pixels=False, config=TrainConfig(steps=3, batch_size=4),
                     seed=0, device=torch.device("cpu"))
    n_classes = len(tiny_classes.classnames)
    assert counter.sizes == [n_classes * 4] * 3
    # The backward pass reached both the context and the meta-network.
    assert not torch.equal(context, adapter.context)
    # linear2's bias gets gradient whatever the ReLU does, so this cannot pass vacuously.
    changed = [n for n, p in adapter.meta_net.named_parameters() if not torch.equal(meta[n], p)]
    assert "linear2.bias" in changed


def test_prompts_are_conditioned_on_each_image(tiny_backbone, tiny_classes):
    adapter = make("cocoop", tiny_backbone, tiny_classes).eval()
    coop = make("coop", tiny_backbone, tiny_classes).eval()
    images = torch.nn.functional.normalize(torch.randn(3, tiny_backbone.embed_dim), dim=-1)
    with torch.no_grad():
        unconditioned = adapter.scorer()(images)  # at build the last layer is zero
        torch.nn.init.normal_(adapter.meta_net.linear2.weight, std=0.5)
        torch.nn.init.normal_(adapter.meta_net.linear2.bias, std=0.5)
        conditioned = adapter.scorer()(images)
        plain = coop.scorer()(images)
    assert conditioned.shape == (3, len(tiny_classes.classnames))
    # A zero meta-network token leaves CoOp's prompts; a non-zero one changes them.
    assert torch.allclose(unconditioned, plain, atol=1e-5)
    assert not torch.allclose(conditioned, plain, atol=1e-4)


def test_chunked_scoring_equals_one_pass(tiny_backbone, tiny_classes, monkeypatch):
    adapter = make("cocoop", tiny_backbone, tiny_classes).eval()
    images = torch.nn.functional.normalize(torch.randn(5, tiny_backbone.embed_dim), dim=-1)
    counter = PromptCounter(tiny_backbone)
    with torch.no_grad():
        whole = adapter.scorer()(images)
        monkeypatch.setattr(cocoop_module, "PROMPTS_PER_PASS", 2 * len(tiny_classes.classnames))
        chunked = adapter.scorer()(images)
    assert counter.sizes == [5 * 4, 8, 8, 4]  # one pass, then 2 + 2 + 1 images
    assert torch.allclose(whole, chunked, atol=1e-5)


def test_class_embeddings_are_refused(tiny_backbone, tiny_classes):
    with pytest.raises(TypeError, match="per image"):
        make("cocoop", tiny_backbone, tiny_classes).class_embeddings()


@pytest.mark.parametrize("task", ["fewshot-cls", "base2new"])
def test_runs_end_to_end(tmp_path, capsys, task):
    assert run_cli(tmp_path, "--task", task, "--shots", "2", *TINY_SETS, method="cocoop") == 0, \
        capsys.readouterr().err
    (record,) = stored(tmp_path)
    assert record["status"] == "ok", record["error"]
    assert {"context", "meta_net.linear1.weight"} <= set(record["trainable_names"])
    headline = ("top1",) if task == "fewshot-cls" else ("base", "new", "h")
    assert all(0 <= record["metrics"][k] <= 1 for k in headline)


@pytest.mark.parametrize(("task", "dataset", "backbone", "message"), [
    ("detect", "tiny-det", "tiny-detector", "method 'cocoop' does not serve the detect task"),
    ("align", "tiny-scenes", "tiny-clip", "method 'cocoop' does not serve the align task"),
])
def test_refused_where_prompts_cannot_be_per_image(tmp_path, capsys, task, dataset, backbone, message):
    assert run_cli(tmp_path, "--task", task, "--shots", "1", *TINY_SETS, method="cocoop",
                   dataset=dataset, backbone=backbone) == 2
    assert message in one_line_error(capsys)
    assert_nothing_written(tmp_path)
