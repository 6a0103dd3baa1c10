"""The align task: loss, recall, presets' trainable sets, knowledge probes, a tiny run."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from tests.test_curves import assert_curve_ends_at_final
from tunebench.bench.runner import Runner, validate_cells
from tunebench.bench.sweep import SweepConfig, expand
from tunebench.config import RunConfig, TrainConfig, method_config, task_config
from tunebench.errors import ConfigError
from tunebench.methods.base import ClassPrompts, resolve_method
from tunebench.methods.lit import PRESETS
from tunebench.models.base import DETECTION_GROUP_NAMES
from tunebench.registry import TASKS, load_all
from tunebench.tasks.contrastive import contrastive_loss, recall_at_k
from tunebench.tasks.knowledge import KnowledgeProbe

load_all()

# Presets a plain two-tower CLIP can run (the detection ones are tested in test_detection).
CLIP_PRESETS = sorted(p for p, groups in PRESETS.items() if not set(groups) & set(DETECTION_GROUP_NAMES))
NO_CLASSES = ClassPrompts((), ("{}",))


# ---- loss ----------------------------------------------------------------------------
def test_contrastive_loss_matches_hand_computation():
    eye = torch.eye(2)
    # logit scale 1: logits [[1, 0], [0, 1]]; each row's softmax puts e/(e+1) on its pair.
    loss = contrastive_loss(eye, eye, torch.tensor(0.0))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # Temperature scales the logits: scale 2 gives log(1 + e^-2).
    loss = contrastive_loss(eye, eye, torch.tensor(math.log(2.0)))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)
    # Same meaning: both columns are positives with weight 1/2 each.
    p = math.exp(1) / (math.exp(1) + 1)
    loss = contrastive_loss(eye, eye, torch.tensor(0.0), meanings=torch.tensor([7, 7]))
    assert loss.item() == pytest.approx(-(math.log(p) + math.log(1 - p)) / 2, abs=1e-6)


def test_contrastive_loss_is_symmetric_and_normalises():
    torch.manual_seed(0)
    image, text = torch.randn(5, 8), torch.randn(5, 8)
    a = contrastive_loss(image, text, torch.tensor(1.0))
    b = contrastive_loss(3 * text, 0.5 * image, torch.tensor(1.0))
    assert a.item() == pytest.approx(b.item(), abs=1e-5)


# ---- recall --------------------------------------------------------------------------
def test_recall_on_a_constructed_similarity_matrix():
    sim = torch.tensor([
        [0.9, 0.1, 0.2, 0.0],  # query 0: its item ranks first
        [0.8, 0.7, 0.1, 0.0],  # query 1: its item (col 1) is second
        [0.5, 0.6, 0.4, 0.9],  # query 2: its item (col 2) is fourth
        [0.3, 0.3, 0.3, 0.3],  # query 3: all tied -> counted as a miss until K >= 4
    ])
    ids = torch.arange(4)
    r = recall_at_k(sim, ids, ids, ks=(1, 2, 3, 4))
    assert r == {1: 0.25, 2: 0.5, 3: 0.5, 4: 1.0}


def test_recall_counts_any_item_with_the_same_meaning():
    sim = torch.tensor([[0.1, 0.9, 0.5], [0.9, 0.1, 0.5]])
    queries, items = torch.tensor([0, 1]), torch.tensor([0, 0, 1])
    # query 0 (meaning 0): item 1 has meaning 0 and ranks first. query 1: item 2 is behind item 0.
    assert recall_at_k(sim, queries, items, ks=(1, 2)) == {1: 0.5, 2: 1.0}


def test_recall_ties_with_a_relevant_item_count_against_it():
    sim = torch.tensor([[0.5, 0.5, 0.1]])
    assert recall_at_k(sim, torch.tensor([0]), torch.tensor([0, 1, 2]), ks=(1, 2)) == {1: 0.0, 2: 1.0}


# ---- presets -------------------------------------------------------------------------
def _group(backbone, name):
    return {f"backbone.{n}" for n in backbone.parameter_group(name)}


def _expected_preset(preset, backbone, adapter):
    image = {f"backbone.image_tower.{n}" for n, _ in backbone.image_tower.named_parameters()}
    text = {f"backbone.text_tower.{n}" for n, _ in backbone.text_tower.named_parameters()}
    projections = {"backbone.image_projection.weight", "backbone.image_projection.bias",
                   "backbone.text_projection.weight"}
    bottlenecks = {n for n, _ in adapter.named_parameters() if n.startswith("bottlenecks.")}
    norms = {n for n in text if "LayerNorm" in n}
    biases = {n for n in text if n.endswith(".bias")} | {"backbone.image_projection.bias"}
    attention = {n for n in text if ".attention." in n}
    return {
        "projection": projections,
        "layernorm": projections | norms,
        "bitfit": projections | biases,
        "attention": projections | attention,
        "lilt": projections | norms | bottlenecks,
        "lit": projections | text,
        "all": projections | text | image,
        "norms": projections | norms | {"backbone.image_tower.bn1.weight", "backbone.image_tower.bn1.bias"},
    }[preset]


@pytest.mark.parametrize("preset", CLIP_PRESETS)
def test_each_preset_trains_exactly_what_it_names(preset, tiny_backbone):
    adapter = make_lit(tiny_backbone, preset)
    names = {n for n, _ in adapter.trainable_named_parameters()}
    assert names == _expected_preset(preset, tiny_backbone, adapter)
    assert adapter.trainable_count() == sum(p.numel() for n, p in adapter.named_parameters() if n in names)
    assert tiny_backbone.image_tower_trains() == (preset in ("all", "norms"))
    if preset == "lilt":  # two blocks, each with a down and an up projection
        assert len([n for n in names if n.startswith("bottlenecks.")]) == 8


def make_lit(backbone, preset, **settings):
    cls, variant = resolve_method(f"lit:{preset}")
    return cls(backbone, NO_CLASSES, method_config(cls, {**settings, **variant}, "test"))


def test_presets_trainable_counts_grow_along_the_ladder(tiny_backbone):
    import copy

    counts = {p: make_lit(copy.deepcopy(tiny_backbone), p).trainable_count() for p in CLIP_PRESETS}
    assert counts["projection"] < counts["layernorm"] < counts["lit"] < counts["all"]
    assert counts["projection"] < counts["bitfit"] < counts["lit"]
    assert counts["projection"] < counts["lilt"] < counts["lit"]


def test_pretrained_lr_splits_tower_weights_from_new_parts(tiny_backbone):
    adapter = make_lit(tiny_backbone, "lit", lr=1e-3, pretrained_lr_scale=0.01)
    groups = adapter.optimizer_groups()
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-5])
    new_ids = {id(p) for p in groups[0]["params"]}
    assert id(tiny_backbone.text_projection.weight) in new_ids
    assert all(id(p) not in new_ids for p in tiny_backbone.text_tower.parameters())


def test_lock_conflict_and_unknown_variant_are_config_errors():
    with pytest.raises(ConfigError, match="lock_image_tower"):
        method_config(resolve_method("lit")[0], {"preset": "all", "lock_image_tower": True}, "x")
    with pytest.raises(ConfigError, match="no variants"):
        resolve_method("cones:fast")
    with pytest.raises(ConfigError, match="unknown preset"):
        method_config(resolve_method("lit")[0], {"preset": "everything"}, "x")


# ---- sweep ---------------------------------------------------------------------------
def test_sweep_variants_merge_settings_and_backbone_lists():
    sweep = SweepConfig(
        task="align", datasets=["tiny-scenes"], methods=["zero-shot", "lit:projection", "lit:all"],
        shots=[40], seeds=[1, 2], backbone=["tiny-clip", "tiny-clip"],
        method_config={"lit": {"lr": 0.01}, "lit:all": {"pretrained_lr_scale": 0.1}},
        task_config={"zero_shot_datasets": ["tiny-shapes"]},
    )
    cells = expand(sweep)
    assert len(cells) == 2 * (1 + 2 + 2)
    by_method = {c.method: c for c in cells}
    assert by_method["lit:all"].method_config["preset"] == "all"
    assert by_method["lit:all"].method_config["lr"] == 0.01
    assert by_method["lit:all"].method_config["pretrained_lr_scale"] == 0.1
    assert by_method["lit:projection"].method_config["pretrained_lr_scale"] == 1.0
    assert by_method["zero-shot"].task_config["zero_shot_datasets"] == ["tiny-shapes"]
    with pytest.raises(ConfigError, match="sets preset"):
        expand(dataclasses.replace(sweep, method_config={"lit:all": {"preset": "lit"}}))


def test_empty_task_config_keeps_old_hashes():
    config = RunConfig(task="fewshot-cls", dataset="tiny-shapes", method="cones", backbone="tiny-clip",
                       shots=1, seed=1)
    legacy = dataclasses.asdict(config)
    del legacy["task_config"], legacy["selection"]  # selection is a record, never hashed
    del legacy["init_from"], legacy["source_steps"]  # added later still (chaining), unset here
    import hashlib

    digest = hashlib.sha256(json.dumps(legacy, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert config.config_hash == digest[:16]
    other = dataclasses.replace(config, task_config={"a": 1})
    assert other.config_hash != config.config_hash


# ---- knowledge probes ----------------------------------------------------------------
def test_knowledge_probe_sees_only_real_changes(tiny_backbone):
    torch.manual_seed(0)
    tiny_backbone.imagenet_classifier = [torch.nn.Linear(32, 1000)]
    probe = KnowledgeProbe(tiny_backbone, torch.device("cpu"))
    unchanged = probe.after(tiny_backbone)
    assert unchanged["imagenet_agreement"] == 1.0 and unchanged["text_similarity_drift"] == 0.0
    assert unchanged["probe_photos"] >= 10
    with torch.no_grad():
        for p in tiny_backbone.parameters():
            p.add_(torch.randn_like(p))
    changed = probe.after(tiny_backbone)
    assert changed["imagenet_agreement"] < 1.0
    assert changed["text_similarity_drift"] > 0.01


# ---- end to end ----------------------------------------------------------------------
def _cell(method, **method_settings):
    cls, variant = resolve_method(method)
    settings = dataclasses.asdict(method_config(cls, {**method_settings, **variant}, "test"))
    return RunConfig(
        task="align", dataset="tiny-scenes", method=method, backbone="tiny-clip",
        shots=0 if not cls.trains else 60, seed=0 if not cls.trains else 1,
        train=TrainConfig(steps=6, batch_size=16, warmup_steps=1, image_size=16, eval_batch_size=64),
        method_config=settings,
        task_config=task_config(TASKS.get("align"), {"zero_shot_datasets": ["tiny-shapes"],
                                                     "zero_shot_per_class": 5}),
    )


@pytest.mark.parametrize("method", ["zero-shot", "lit:projection", "lit:lilt", "lit:all"])
def test_tiny_align_run_end_to_end(method, tmp_path):
    cell = _cell(method, lr=0.01)  if method != "zero-shot" else _cell(method)
    validate_cells([cell])
    record = Runner(tmp_path).run(cell)
    assert record["status"] == "ok", record.get("traceback")
    metrics = record["metrics"]
    for direction in ("i2t", "t2i"):
        assert 0.0 <= metrics[f"{direction}_r1"] <= metrics[f"{direction}_r5"] <= metrics[f"{direction}_r10"] <= 1.0
    assert 0.0 <= metrics["zeroshot/tiny-shapes"] <= 1.0
    assert metrics["test_pairs"] > 0
    if method == "zero-shot":
        assert record["trainable_params"] == 0 and metrics["train_pairs"] == 0
    else:
        assert "backbone.logit_scale" in record["trainable_names"]
        assert metrics["train_pairs"] == 60 and math.isfinite(metrics["final_train_loss"])
        assert record["preset"] == method.split(":")[1]
        assert record["image_input"] == ("pixels" if method == "lit:all" else "cached-features")
    stored = json.loads((tmp_path / "runs" / f"{cell.config_hash}.json").read_text())
    assert stored["metrics"] == metrics


def test_alignment_learns_on_tiny_scenes(tmp_path):
    """More steps on the toy towers: retrieval must beat the untrained start."""
    before = Runner(tmp_path).run(_cell("zero-shot"))["metrics"]["mean_r1"]
    cell = dataclasses.replace(_cell("lit:lit", lr=0.01), train=TrainConfig(
        steps=80, batch_size=32, warmup_steps=5, image_size=16, eval_batch_size=64))
    after = Runner(tmp_path).run(cell)["metrics"]["mean_r1"]
    assert after > before + 0.05


def test_a_selection_trial_scores_validation_pairs_only(tmp_path):
    assert TASKS.get("align").selection_metric == "mean_r1"
    cell = dataclasses.replace(_cell("lit:projection", lr=0.01), eval_split="validation")
    validate_cells([cell])
    record = Runner(tmp_path).run(cell)
    assert record["status"] == "ok", record.get("traceback")
    metrics = record["metrics"]
    assert metrics["validation_pairs"] == 40 and "test_pairs" not in metrics
    assert 0.0 <= metrics["mean_r1"] <= 1.0
    assert not [k for k in metrics if k.startswith("zeroshot/")]  # test images of other sets stay unread
    final = Runner(tmp_path).run(_cell("lit:projection", lr=0.01))["metrics"]
    assert final["test_pairs"] == 60 and final["mean_r1"] != metrics["mean_r1"]


def test_align_refuses_a_validation_split_too_small(monkeypatch):
    from tunebench.tasks import align

    monkeypatch.setattr(align, "MIN_VALIDATION_PAIRS", 41)
    with pytest.raises(ConfigError, match="40 validation pairs; selection needs >= 41"):
        validate_cells([dataclasses.replace(_cell("lit:projection"), eval_split="validation")])
    validate_cells([_cell("lit:projection")])  # final runs do not read validation pairs


def test_align_rejects_wrong_methods_and_datasets():
    with pytest.raises(ConfigError, match="method 'cones' does not serve the align task"):
        validate_cells([dataclasses.replace(_cell("lit:projection"), method="cones", method_config={})])
    with pytest.raises(ConfigError, match="image-caption dataset"):
        validate_cells([dataclasses.replace(_cell("lit:projection"), dataset="tiny-shapes")])
    with pytest.raises(ConfigError, match="training pairs"):
        validate_cells([dataclasses.replace(_cell("lit:projection"), shots=10**6)])
    with pytest.raises(ConfigError, match="unknown field"):
        validate_cells([dataclasses.replace(_cell("lit:projection"), task_config={"zero_shot": []})])


# ---- any local towers ----------------------------------------------------------------
def test_towers_backbone_from_local_files(tmp_path):
    import timm
    import yaml
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    from tunebench.models.towers import load_minilm_tokenizer
    from tunebench.registry import BACKBONES

    image = timm.create_model("resnet10t", pretrained=False, num_classes=10)  # classifier keys are dropped
    save_file({k: v.contiguous() for k, v in image.state_dict().items()}, str(tmp_path / "image.safetensors"))
    tokenizer = load_minilm_tokenizer()
    text = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=64), add_pooling_layer=False)
    text.save_pretrained(tmp_path / "text")
    tokenizer.save_pretrained(tmp_path / "text")
    spec = {"image": {"timm": "resnet10t", "checkpoint": str(tmp_path / "image.safetensors"), "image_size": 32},
            "text": {"hf": str(tmp_path / "text")}, "embed_dim": 16}
    (tmp_path / "towers.yaml").write_text(yaml.safe_dump(spec))

    backbone = BACKBONES.resolve(f"towers:{tmp_path / 'towers.yaml'}")[0](str(tmp_path / "towers.yaml"))
    assert torch.equal(backbone.image_tower.conv1[0].weight, image.conv1[0].weight)
    assert backbone.encode_image(torch.randn(2, 3, 32, 32)).shape == (2, 16)
    assert backbone.encode_text(backbone.tokenize(["a cat", "a dog"])).shape == (2, 16)
    assert backbone.parameter_group("image_norm")  # BatchNorms of the ResNet

    save_file({"conv1.0.weight": image.conv1[0].weight.contiguous()}, str(tmp_path / "partial.safetensors"))
    spec["image"]["checkpoint"] = str(tmp_path / "partial.safetensors")
    (tmp_path / "towers.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="does not fit timm resnet10t"):
        BACKBONES.resolve("towers:x")[0](str(tmp_path / "towers.yaml"))
    with pytest.raises(ConfigError, match="towers config not found"):
        BACKBONES.resolve("towers:x")[0](str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("method", ["lit:projection", "lit:all"])
def test_align_run_records_a_retrieval_curve_ending_at_the_final_score(method, tmp_path):
    record = Runner(tmp_path).run(_cell(method, lr=0.01))
    # 6 steps: 6/8 and 6/4 round down
    assert_curve_ends_at_final(record, [0, 1, 3, 6], ("mean_r1", "i2t_r1", "t2i_r1", "zeroshot/tiny-shapes"))
