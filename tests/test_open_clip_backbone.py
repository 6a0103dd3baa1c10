"""The open_clip backbone on the shipped tiny config: random init, no downloads."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

pytest.importorskip("open_clip")

from tunebench.errors import ConfigError  # noqa: E402
from tunebench.models.base import GROUP_NAMES  # noqa: E402
from tunebench.models.open_clip_backbone import CONFIG_DIR, build_open_clip  # noqa: E402
from tunebench.registry import BACKBONES  # noqa: E402

TEXTS = ["a photo of a dog", "a blurry photo of a very small red car!!", "x " * 40]


def build(argument: str = "tiny-open-clip", **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_open_clip(argument, **kwargs)


@pytest.fixture(scope="module")
def backbone():
    return build()


def test_registered_name_resolves_and_warns_without_weights():
    builder, argument = BACKBONES.resolve("open_clip:tiny-open-clip")
    assert builder is build_open_clip and argument == "tiny-open-clip"
    with pytest.warns(UserWarning, match="random weights"):
        model = builder(argument)
    assert model.content_id == "random-init-tiny-open-clip"
    assert model.default_image_size == 32


def test_random_init_is_reproducible(backbone):
    other = build()
    for (name, a), (_, b) in zip(
        backbone.state_dict().items(), other.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_encode_image_shape(backbone):
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert backbone.encode_image(pixels).shape == (3, 32)
        assert torch.equal(backbone.encode_image_trunk(pixels), backbone.encode_image(pixels))


def test_tokenize_truncates_to_context_and_masks_up_to_eot(backbone):
    tokens = backbone.tokenize(TEXTS)
    assert tokens.input_ids.shape == (3, 16)
    eot = tokens.input_ids.argmax(dim=-1)
    assert eot[2] == 15  # truncated: the last slot becomes EOT
    assert tokens.attention_mask.sum(dim=-1).tolist() == (eot + 1).tolist()
    ids = backbone.word_token_ids("dog")
    assert len(ids) == 1 and ids[0] in tokens.input_ids[0].tolist()


@pytest.mark.parametrize("train", [False, True])
def test_encode_text_matches_open_clip(backbone, train):
    clip = backbone.open_clip_model
    tokens = backbone.tokenize(TEXTS)
    backbone.train(train)
    try:
        with torch.no_grad():
            expected = clip.encode_text(tokens.input_ids)
            plain = backbone.encode_text(tokens)
            embeds = backbone.token_embedding()(tokens.input_ids)
            injected = backbone.encode_text(tokens, inputs_embeds=embeds)
    finally:
        backbone.eval()
    assert plain.shape == (3, 32)
    torch.testing.assert_close(plain, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(injected, expected, atol=1e-5, rtol=0)


def test_gradients_flow_into_inputs_embeds(backbone):
    tokens = backbone.tokenize(TEXTS[:2])
    embeds = backbone.token_embedding()(tokens.input_ids).detach().requires_grad_(True)
    backbone.encode_text(tokens, inputs_embeds=embeds).square().sum().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0
    # Only positions up to EOT influence the pooled feature under the causal mask.
    eot = int(tokens.input_ids[0].argmax())
    assert embeds.grad[0, : eot + 1].abs().sum() > 0
    assert embeds.grad[0, eot + 1 :].abs().sum() == 0
    backbone.zero_grad(set_to_none=True)


def test_shorter_inputs_embeds_work(backbone):
    tokens = backbone.tokenize(["a dog"])
    short = type(tokens)(tokens.input_ids[:, :8], tokens.attention_mask[:, :8])
    with torch.no_grad():
        full = backbone.encode_text(tokens)
        cut = backbone.encode_text(short, inputs_embeds=backbone.token_embedding()(short.input_ids))
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=0)


def test_parameters_partition_into_towers_projections_and_scale(backbone):
    registered = [id(p) for _, p in backbone.named_parameters(remove_duplicate=False)]
    assert len(registered) == len(set(registered)), "a parameter is registered twice"
    parts = [
        backbone.image_tower,
        backbone.text_tower,
        backbone.image_projection,
        backbone.text_projection,
    ]
    owned = [id(p) for part in parts for p in part.parameters()] + [id(backbone.logit_scale)]
    assert len(owned) == len(set(owned)), "the parts overlap"
    assert set(owned) == set(registered)
    # ... and they are the open_clip model's own tensors, shared rather than copied.
    assert set(owned) == {id(p) for p in backbone.open_clip_model.parameters()}
    # state_dict() lists each tensor once (the CLIP model is not a registered submodule).
    assert len(backbone.state_dict()) == len(backbone.open_clip_model.state_dict())


def test_group_patterns_name_real_parameters(backbone):
    names = [n for n, _ in backbone.named_parameters()]
    assert set(backbone.group_patterns) == set(GROUP_NAMES)
    for group, patterns in backbone.group_patterns.items():
        assert backbone.parameter_group(group), f"group {group} is empty"
        for pattern in patterns:
            assert any(re.search(pattern, n) for n in names), f"{group}: {pattern} matches nothing"
    assert set(backbone.parameter_group("projection")) == {
        "image_tower.proj",
        "text_projection.matrix",
    }
    assert "text_tower.ln_final.weight" in backbone.parameter_group("layernorm")
    assert "image_tower.ln_post.bias" in backbone.parameter_group("layernorm")
    assert "text_tower.transformer.resblocks.0.attn.in_proj_bias" in backbone.parameter_group(
        "bias"
    )
    attention = backbone.parameter_group("attention")
    assert "image_tower.transformer.resblocks.0.attn.out_proj.weight" in attention
    assert not any("mlp" in n for n in attention)


def test_local_checkpoint_round_trip(backbone, tmp_path):
    source = build()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "tiny.pt"
    torch.save(source.open_clip_model.state_dict(), path)
    loaded = build(pretrained=str(path))
    assert loaded.content_id != "random-init-tiny-open-clip" and len(loaded.content_id) == 16
    pixels = torch.randn(2, 3, 32, 32)
    tokens = loaded.tokenize(TEXTS)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(pixels), source.encode_image(pixels))
        assert torch.equal(loaded.encode_text(tokens), source.encode_text(tokens))
        assert not torch.equal(loaded.encode_text(tokens), backbone.encode_text(tokens))
    # The backbone's own state dict (its parameter names) loads as well.
    torch.save(source.state_dict(), tmp_path / "backbone.pt")
    again = build(pretrained=str(tmp_path / "backbone.pt"))
    with torch.no_grad():
        assert torch.equal(again.encode_text(tokens), source.encode_text(tokens))


def test_config_file_argument(tmp_path):
    config = json.loads((CONFIG_DIR / "tiny-open-clip.json").read_text())
    config["embed_dim"] = 24
    path = tmp_path / "tiny-open-clip-24.json"
    path.write_text(json.dumps(config))
    model = build(str(path))
    assert model.arch == "tiny-open-clip-24"
    with torch.no_grad():
        assert model.encode_text(model.tokenize(["a"])).shape == (1, 24)


def test_missing_checkpoint_is_a_config_error(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(ConfigError, match="checkpoint not found: .*nope.pt .*--pretrained"):
        build(pretrained=str(missing))


def test_checkpoint_for_another_arch_is_a_config_error(tmp_path):
    path = tmp_path / "other.pt"
    state = build().open_clip_model.state_dict()
    state["text_projection"] = torch.zeros(32, 16)  # as if embed_dim were 16
    del state["logit_scale"]
    torch.save(state, path)
    with pytest.raises(ConfigError, match="does not fit open_clip tiny-open-clip") as info:
        build(pretrained=str(path))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("ViT-B-33", "Did you mean ViT-B-32"),
        ("hf-hub:timm/some-model", "never downloads"),
        ("ViT-B-16-SigLIP", "does not support"),
        ("ViT-L-14-CLIPA", "Hugging Face tokenizer"),
        ("missing-config.json", "model config not found"),
    ],
)
def test_unknown_or_unsupported_arch_is_a_config_error(argument, message):
    with pytest.raises(ConfigError, match=message) as info:
        build(argument)
    assert "open_clip" in str(info.value) and "\n" not in str(info.value)


def test_unknown_arch_says_how_to_list_names():
    with pytest.raises(ConfigError, match=r"open_clip\.list_models\(\)"):
        build("no-such-arch")
