"""``hf-clip:PATH`` on a tiny random CLIPModel saved here with save_pretrained: no downloads.

The same method-level checks as the other backbones (trainable sets per method and lit
preset, true counts, text-encoder call counts, one end-to-end cell per method) plus the
folder's one-line errors, which stop a run before anything is written.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.test_methods import make
from tunebench.bench.cli import main
from tunebench.config import TrainConfig
from tunebench.errors import ConfigError
from tunebench.methods.base import resolve_method
from tunebench.methods.lit import PRESETS
from tunebench.models.base import GROUP_NAMES, count_parameters
from tunebench.models.checkpoints import file_digest
from tunebench.models.hf_clip import build_hf_clip
from tunebench.registry import BACKBONES, METHODS, load_all
from tunebench.tasks.classification import train_classifier

load_all()
ALL_METHODS = METHODS.names_for("fewshot-cls")
TEXTS = ["a photo of a dog", "a blurry photo of a very small red car!!", "x " * 100]
SIZE = 32  # the tiny ViT's image size: 4 x 4 patches of 8 px


# ---- the tiny folder ----------------------------------------------------------------
def write_tokenizer(folder: Path) -> None:
    """A byte-level CLIP BPE vocabulary (every byte, alone and word-final), a few merges
    and the two special tokens last, as in CLIP's own vocabulary."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    symbols = alphabet + [c + "</w>" for c in alphabet]
    merges = [("o", "f</w>"), ("d", "o"), ("do", "g</w>"), ("p", "h"), ("ph", "o")]
    symbols += ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory) -> Path:
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("hf-clip") / "tiny-clip-vit"
    folder.mkdir()
    write_tokenizer(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    ids = {"eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    config = CLIPConfig(text_config={**tiny, **ids, "vocab_size": len(tokenizer), "max_position_embeddings": 24},
                        vision_config={**tiny, "image_size": SIZE, "patch_size": 8}, projection_dim=24)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "crop_size": {"height": SIZE, "width": SIZE},
        "size": {"shortest_edge": SIZE}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))
    return folder


@pytest.fixture(scope="module")
def _backbone(clip_folder):
    return build_hf_clip(str(clip_folder))


@pytest.fixture
def backbone(_backbone):
    """A fresh copy: methods may change weights or attach hooks."""
    return copy.deepcopy(_backbone)


@pytest.fixture
def classes():
    from tunebench.datasets import load_dataset
    from tunebench.methods.base import ClassPrompts

    dataset = load_dataset("tiny-shapes")
    return ClassPrompts(tuple(dataset.classnames), tuple(dataset.templates))


# ---- the backbone itself ------------------------------------------------------------
def test_registered_prefix_reads_the_folder(clip_folder, _backbone):
    builder, argument = BACKBONES.resolve(f"hf-clip:{clip_folder}")
    assert builder is build_hf_clip and argument == str(clip_folder)
    assert _backbone.content_id == f"hf-clip-{file_digest(clip_folder / 'model.safetensors')}"
    assert _backbone.default_image_size == SIZE
    assert _backbone.image_mean == (0.5, 0.5, 0.5) and _backbone.image_std == (0.25, 0.25, 0.25)
    assert all(p.dtype == torch.float32 for p in _backbone.parameters())


def test_encoders_match_transformers(_backbone):
    clip = _backbone.hf_model
    tokens = _backbone.tokenize(TEXTS)
    assert tokens.input_ids.shape == (3, 24)  # padded to the longest, truncated to the context
    pixels = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        text = clip.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        image = clip.get_image_features(pixel_values=pixels)
        embeds = _backbone.token_embedding()(tokens.input_ids)
        plain = _backbone.encode_text(tokens)
        injected = _backbone.encode_text(tokens, inputs_embeds=embeds)
        encoded = _backbone.encode_image(pixels)
    text, image = getattr(text, "pooler_output", text), getattr(image, "pooler_output", image)
    assert plain.shape == (3, 24) and encoded.shape == (2, 24)
    torch.testing.assert_close(plain, text, atol=1e-5, rtol=0)
    torch.testing.assert_close(injected, text, atol=1e-5, rtol=0)
    torch.testing.assert_close(encoded, image, atol=1e-5, rtol=0)
    assert not _backbone.token_embedding()._forward_hooks  # the swap hook is gone again


def test_injected_embeddings_are_used_and_get_gradients(backbone):
    tokens = backbone.tokenize(TEXTS[:2])
    embeds = backbone.token_embedding()(tokens.input_ids).detach().requires_grad_(True)
    out = backbone.encode_text(tokens, inputs_embeds=embeds)
    out.square().sum().backward()
    # Pooled at the end-of-text token under a causal mask: only positions up to it count.
    eot = int((tokens.input_ids[0] == backbone.tokenizer.eos_token_id).nonzero()[0])
    assert embeds.grad[0, : eot + 1].abs().sum() > 0
    assert embeds.grad[0, eot + 1 :].abs().sum() == 0
    with torch.no_grad():
        moved = backbone.encode_text(tokens, inputs_embeds=embeds + 1.0)
    assert not torch.allclose(moved, out.detach())


def test_placeholder_word_is_one_token(backbone):
    assert len(backbone.word_token_ids("X")) == 1
    assert backbone.word_token_ids("dog") == [backbone.tokenizer.convert_tokens_to_ids("dog</w>")]


def test_parameters_partition_into_towers_projections_and_scale(backbone):
    registered = [id(p) for _, p in backbone.named_parameters(remove_duplicate=False)]
    assert len(registered) == len(set(registered)), "a parameter is registered twice"
    parts = [backbone.image_tower, backbone.text_tower, backbone.image_projection, backbone.text_projection]
    owned = [id(p) for part in parts for p in part.parameters()] + [id(backbone.logit_scale)]
    assert len(owned) == len(set(owned)), "the parts overlap"
    assert set(owned) == set(registered) == {id(p) for p in backbone.hf_model.parameters()}
    assert len(backbone.state_dict()) == len(backbone.hf_model.state_dict())


def test_group_patterns_name_real_parameters(backbone):
    names = [n for n, _ in backbone.named_parameters()]
    assert set(backbone.group_patterns) == set(GROUP_NAMES)
    for group, patterns in backbone.group_patterns.items():
        assert backbone.parameter_group(group), f"group {group} is empty"
        for pattern in patterns:
            assert any(re.search(pattern, n) for n in names), f"{group}: {pattern} matches nothing"
    assert set(backbone.parameter_group("projection")) == {"image_projection.weight", "text_projection.weight"}
    norms = set(backbone.parameter_group("layernorm"))
    assert {"text_tower.final_layer_norm.weight", "image_tower.vision.post_layernorm.bias",
            "image_tower.vision.pre_layrnorm.weight", "text_tower.encoder.layers.1.layer_norm2.bias"} <= norms
    assert set(backbone.parameter_group("image_norm")) == {n for n in norms if n.startswith("image_tower.")}
    attention = backbone.parameter_group("attention")
    assert len(attention) == 2 * 2 * 8  # 2 towers x 2 blocks x (q, k, v, out) x (weight, bias)
    assert not any("mlp" in n or "norm" in n for n in attention)


# ---- every method on it ---------------------------------------------------------------
def _names(backbone, *patterns: str) -> set[str]:
    return {f"backbone.{n}" for n, _ in backbone.named_parameters() if any(re.search(p, n) for p in patterns)}


def expected_lit(backbone, preset: str) -> set[str]:
    """Each preset's trainable set, written from the parameter names (image tower locked
    unless the preset names it)."""
    text_norms = r"^text_tower\..*(layer_norm\d|final_layer_norm)\."
    image_norms = r"^image_tower\..*(layer_norm\d|pre_layrnorm|post_layernorm)\."
    projections = {"backbone.image_projection.weight", "backbone.text_projection.weight"}
    if preset == "lilt":
        n = len(backbone.text_blocks())
        bottlenecks = {f"bottlenecks.{i}.{layer}.{p}" for i in range(n) for layer in ("down", "up")
                       for p in ("weight", "bias")}
        return bottlenecks | _names(backbone, text_norms) | projections
    by_preset = {
        "projection": set(),
        "layernorm": _names(backbone, text_norms),
        "bitfit": _names(backbone, r"^text_tower\..*\.bias$"),
        "attention": _names(backbone, r"^text_tower\..*\.self_attn\."),
        "lit": _names(backbone, r"^text_tower\."),
        "all": _names(backbone, r"^text_tower\.", r"^image_tower\."),
        "norms": _names(backbone, text_norms, image_norms),
    }
    return by_preset[preset] | projections


def expected_trainable(name: str, backbone) -> set[str] | None:
    """What each method declares should train; None for a method added since."""
    fixed = {"zero-shot": set(), "linear-probe": {"linear.weight", "linear.bias"}, "cones": {"concepts"},
             "coop": {"context"}, "textual-inversion": {"tokens"}}
    if name in fixed:
        return fixed[name]
    if name == "lit":
        return expected_lit(backbone, "lilt")
    if name == "full-ft":
        return {f"backbone.{n}" for n, _ in backbone.named_parameters()}
    return None


@pytest.mark.parametrize("name", ALL_METHODS)
def test_trainable_set_and_true_count(name, backbone, classes):
    adapter = make(name, backbone, classes)
    names = {n for n, _ in adapter.trainable_named_parameters()}
    expected = expected_trainable(name, backbone)
    if expected is not None:
        assert names == expected
    assert adapter.trainable_count() == sum(p.numel() for n, p in adapter.named_parameters() if n in names)
    assert adapter.total_count() == count_parameters(adapter.parameters())
    assert adapter.total_count() >= count_parameters(backbone.hf_model.parameters())


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "heads"])
def test_every_lit_preset_resolves_to_its_groups(preset, backbone, classes):
    adapter = make("lit", backbone, classes, preset=preset)
    names = {n for n, _ in adapter.trainable_named_parameters()}
    assert names == expected_lit(backbone, preset)
    assert adapter.trainable_count() == sum(p.numel() for n, p in adapter.named_parameters() if n in names)


def test_lit_detector_preset_is_a_one_line_error(backbone, classes):
    with pytest.raises(ConfigError, match="has no parameter group 'detector_heads'") as info:
        make("lit", backbone, classes, preset="heads")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", [m for m in ALL_METHODS if resolve_method(m)[0].trains])
def test_gradients_reach_only_trainable(name, backbone, classes):
    adapter = make(name, backbone, classes)
    pixels = backbone.image_tower_trains()
    images = torch.randn(4, 3, SIZE, SIZE)
    x = images if pixels else backbone.encode_image_trunk(images).detach()
    torch.nn.functional.cross_entropy(adapter(x, pixels=pixels), torch.tensor([0, 1, 2, 3])).backward()
    trainable = {n for n, _ in adapter.trainable_named_parameters()}
    assert {n for n, p in adapter.named_parameters() if p.grad is not None} == trainable
    assert any(float(p.grad.abs().sum()) > 0 for n, p in adapter.named_parameters() if n in trainable)


def count_text_tower_calls(backbone) -> list[int]:
    calls: list[int] = []
    backbone.text_tower.register_forward_hook(lambda *args: calls.append(1))
    return calls


@pytest.mark.parametrize(("name", "at_init", "while_tuning"),
                         [("cones", 1, 0), ("coop", 0, 5), ("textual-inversion", 0, 5)])
def test_text_encoder_calls(name, at_init, while_tuning, backbone, classes):
    """ConES encodes its prompts once; methods at the input run the encoder every step."""
    calls = count_text_tower_calls(backbone)
    adapter = make(name, backbone, classes)
    assert len(calls) == at_init
    before = [p.detach().clone() for _, p in adapter.trainable_named_parameters()]
    features = backbone.encode_image_trunk(torch.randn(8, 3, SIZE, SIZE)).detach()
    train_classifier(adapter, features, torch.tensor([0, 1, 2, 3] * 2), pixels=False,
                     config=TrainConfig(steps=5, batch_size=4), seed=0, device=torch.device("cpu"))
    assert len(calls) == at_init + while_tuning
    after = [p.detach() for _, p in adapter.trainable_named_parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))  # it did tune


# ---- through the CLI ----------------------------------------------------------------
def run_cli(tmp_path: Path, backbone: str, *args: str, method: str = "cones") -> int:
    return main(["run", "--method", method, "--dataset", "tiny-shapes", "--backbone", backbone,
                 "--shots", "2", "--set", "train.steps=2", "--set", "train.batch_size=8",
                 "--set", "train.test_per_class=4", "--results", str(tmp_path / "results"), *args])


@pytest.mark.parametrize("method", ALL_METHODS)
def test_one_fewshot_cell_per_method(method, clip_folder, tmp_path, capsys):
    code = run_cli(tmp_path, f"hf-clip:{clip_folder}", "--set", f"train.image_size={SIZE}", method=method)
    assert code == 0, capsys.readouterr().err
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("*.json")]
    assert record["status"] == "ok" and record["backbone"] == f"hf-clip:{clip_folder}"


def broken_copy(clip_folder: Path, tmp_path: Path, case: str) -> Path:
    folder = tmp_path / "broken"
    if case == "missing folder":
        return folder
    shutil.copytree(clip_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    if case == "no config.json":
        (folder / "config.json").unlink()
    elif case == "no weights":
        (folder / "model.safetensors").unlink()
    elif case == "bert folder":
        (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    elif case == "no tokenizer":
        (folder / "vocab.json").unlink()
    elif case == "no preprocessor config":
        (folder / "preprocessor_config.json").unlink()
    elif case == "weights of another shape":
        config["projection_dim"] = 16
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(("case", "message"), [
    ("missing folder", "no such folder"),
    ("no config.json", "config.json is missing"),
    ("no weights", "no weights (model.safetensors or pytorch_model.bin)"),
    ("bert folder", "config.json is for model_type 'bert', not a CLIP checkpoint"),
    ("no tokenizer", "no CLIP tokenizer (tokenizer.json, or vocab.json + merges.txt)"),
    ("no preprocessor config", "preprocessor_config.json is missing"),
    ("weights of another shape", "the weights do not fit config.json"),
])
def test_bad_folder_is_one_line_and_writes_nothing(case, message, clip_folder, tmp_path, capsys):
    folder = broken_copy(clip_folder, tmp_path, case)
    assert run_cli(tmp_path, f"hf-clip:{folder}", "--set", f"train.image_size={SIZE}") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tunebench: error: hf-clip:"), err
    assert message in err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "train.image_size=64"], "positional embedding fits 32 px images: set train.image_size to 32, not 64"),
    (["--set", f"train.image_size={SIZE}", "--pretrained", "weights.pt"], "takes its weights from the folder"),
])
def test_bad_settings_are_one_line_and_write_nothing(args, message, clip_folder, tmp_path, capsys):
    assert run_cli(tmp_path, f"hf-clip:{clip_folder}", *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "results").exists()


# ---- other folder forms -------------------------------------------------------------
def edited_copy(clip_folder: Path, tmp_path: Path, **text_config) -> Path:
    folder = tmp_path / "edited"
    shutil.copytree(clip_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"].update(text_config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_legacy_eos_id_pools_at_the_same_token(clip_folder, _backbone, tmp_path):
    """Configs saved before transformers#24773 (openai/clip-vit-*) say eos_token_id 2."""
    legacy = build_hf_clip(str(edited_copy(clip_folder, tmp_path, eos_token_id=2, bos_token_id=0, pad_token_id=1)))
    tokens = _backbone.tokenize(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(legacy.encode_text(tokens), _backbone.encode_text(tokens), atol=1e-6, rtol=0)


def test_eos_id_of_another_vocabulary_is_a_config_error(clip_folder, tmp_path):
    with pytest.raises(ConfigError, match="eos_token_id 7 is not the tokenizer's end-of-text id") as info:
        build_hf_clip(str(edited_copy(clip_folder, tmp_path, eos_token_id=7)))
    assert "\n" not in str(info.value)


def test_sharded_weights_load_and_are_digested(clip_folder, _backbone, tmp_path):
    folder = tmp_path / "sharded"
    shutil.copytree(clip_folder, folder, ignore=shutil.ignore_patterns("model.safetensors"))
    _backbone.hf_model.save_pretrained(folder, max_shard_size="100KB")
    assert (folder / "model.safetensors.index.json").is_file()
    sharded = build_hf_clip(str(folder))
    assert re.fullmatch(r"hf-clip-[0-9a-f]{16}", sharded.content_id) and sharded.content_id != _backbone.content_id
    pixels = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(sharded.encode_image(pixels), _backbone.encode_image(pixels))


def test_detector_on_a_vit_is_refused_before_any_model_loads(clip_folder, tmp_path, capsys, monkeypatch):
    from tunebench.registry import BACKBONES

    loads: list[str] = []
    build = BACKBONES.resolve("hf-clip:x")[0]
    counted = functools.wraps(build)(lambda *args, **kwargs: loads.append("hf-clip") or build(*args, **kwargs))
    monkeypatch.setitem(BACKBONES._entries, "hf-clip:", counted)  # keeps the builder's attributes
    code = main(["run", "--task", "detect", "--method", "cones", "--dataset", "tiny-det",
                 "--backbone", f"det:hf-clip:{clip_folder}", "--shots", "2",
                 "--results", str(tmp_path / "results")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "the detector needs a CNN image tower" in err and "is a ViT" in err
    assert loads == [] and not (tmp_path / "results").exists()
