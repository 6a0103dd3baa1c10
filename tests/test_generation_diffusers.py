"""``diffusers:PATH``: a tiny random Stable-Diffusion pipeline saved with ``save_pretrained``.

The folder is what a real SD checkpoint looks like (CLIP text model and tokenizer, VAE,
UNet with cross-attention, a PNDM scheduler config, ``model_index.json``), only tiny
and random, and uses v-prediction, so the latent path, the CLIP text encoder without
``inputs_embeds`` and the velocity target all run. The tokenizer is a toy byte-pair
vocabulary written here (no CLIP vocabulary exists offline).
"""

from __future__ import annotations

import dataclasses
import json
import string

import pytest
import torch

from tunebench.bench.runner import Runner, validate_cells
from tunebench.config import RunConfig, TrainConfig, method_config, task_config
from tunebench.methods.base import resolve_method
from tunebench.registry import BACKBONES, TASKS, load_all

load_all()


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: toy models run on one thread
WORDS = ["a", "photo", "of", "horse", "x", "sks"]
TEXT_POSITIONS = 24  # the text encoder's position table and the tokenizer's limit


def toy_clip_tokenizer(folder):
    """Characters plus merges that make each of WORDS one token."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for ch in string.ascii_lowercase + ".,-":
            vocab[ch + suffix] = len(vocab)
    merges = []
    for word in WORDS:
        current = word[0]
        for i, ch in enumerate(word[1:]):
            right = ch + ("</w>" if i == len(word) - 2 else "")
            merges.append(f"{current} {right}")
            current += right
            vocab.setdefault(current, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    # A limit, as every real CLIP tokenizer has (77): diffusers' encode_prompt pads to it.
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              model_max_length=TEXT_POSITIONS)
    return tokenizer, vocab


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    root = tmp_path_factory.mktemp("sd")
    torch.manual_seed(0)
    tokenizer, vocab = toy_clip_tokenizer(root / "toy-tokenizer")
    end = vocab["<|endoftext|>"]
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=TEXT_POSITIONS, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=end, pad_token_id=end))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
        norm_num_groups=4, sample_size=16)
    scheduler = PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type="v_prediction", skip_prk_steps=True, steps_offset=1)
    StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(root / "pipe")
    return root / "pipe"


def test_pipeline_folder_loads_as_a_text_to_image_model(pipeline_folder):
    model = BACKBONES.resolve(f"diffusers:{pipeline_folder}")[0](str(pipeline_folder))
    assert model.vae is not None and model.image_size == 16 and model.image_channels == 3
    assert model.content_id.startswith("diffusers-")
    tokens = model.tokenize(["a photo of a horse.", ""])
    assert model.encode_prompt_tokens(tokens).shape == (2, model.max_length, 32)
    latents = model.encode_latents(model.preprocess(torch.zeros(2, 28, 28, dtype=torch.uint8).numpy()))
    assert latents.shape == (2, 4, 8, 8)


@pytest.mark.parametrize("method", ["cones", "textual-inversion"])
def test_adapters_train_and_sample_on_a_pipeline_folder(method, pipeline_folder, tmp_path):
    cls, variant = resolve_method(method, "generation")
    config = RunConfig(
        task="generation", dataset="concept:zebra", method=method, backbone=f"diffusers:{pipeline_folder}",
        shots=2, seed=1, train=TrainConfig(steps=2, batch_size=2, warmup_steps=0),
        method_config=dataclasses.asdict(method_config(cls, variant, "test")),
        task_config=task_config(TASKS.get("generation"), {
            "judge": "tiny", "clip_backbone": "tiny-clip", "clip_image_size": 16, "samples_per_prompt": 2,
            "curve_samples_per_prompt": 1, "sampling_steps": 2, "real_images": 2, "timing_repeats": 1,
            "train_templates": ["a photo of a {}."], "eval_prompts": ["a {}."], "checkpoints": [1.0]}),
    )
    validate_cells([config])
    record = Runner(tmp_path).run(config)
    assert record["status"] == "ok", record.get("traceback")
    assert record["trainable_params"] == 32  # one concept vector of the CLIP width
    assert record["metrics"]["samples"] == 2 and (tmp_path / record["pictures"]["samples"]).is_file()
    assert record["metrics"]["final_train_loss"] > 0
