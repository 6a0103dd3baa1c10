"""Text-to-image backbones besides the built mini-t2i: local pipeline folders, the
test-sized ``tiny-t2i`` and the timing-only models of the text-encoder-share study.

UNet shapes are data (``UNET_SIZES``), shared with the mini-t2i recipe, so the timing
models' "small" UNet is exactly mini-t2i's.
"""

from __future__ import annotations

import torch

from tunebench.errors import ConfigError
from tunebench.models.t2i import (
    T2ISettings,
    TextToImageModel,
    check_pipeline_folder,
    folder_fingerprint,
    load_pipeline_folder,
)
from tunebench.registry import BACKBONES

# Pixel-space UNets for 32 px, one channel (28 px sources padded by 2). "small" is
# mini-t2i's: text cross-attention only at 8 × 8 (and the mid block), which measured
# 2.2× cheaper per step on one core than also attending at 16 × 16, and still draws
# every class recognisably. "large" is SD-like: wider, cross-attention at 16 and 8.
UNET_SIZES = {
    "tiny": {
        "block_out_channels": (8, 16),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": 2,  # diffusers reads this as the number of heads
        "norm_num_groups": 4,
    },
    "small": {
        "block_out_channels": (32, 64, 64),
        "down_block_types": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        "attention_head_dim": 4,
        "norm_num_groups": 8,
    },
    "large": {
        "block_out_channels": (64, 128, 128),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": 8,
        "norm_num_groups": 8,
    },
}
# BERT shapes (uncased WordPiece vocabulary, MiniLM's tokenizer).
TEXT_SIZES = {
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "minilm": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536},
    "bertbase": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
}
SCHEDULER = {  # DDPM training schedule; the cosine schedule suits small images
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
    "clip_sample": True,
}
PIXEL_SETTINGS = T2ISettings(max_length=16, encoder_mask=True, pad=2)


def masked_text_encoder(text_encoder):
    """Declare mini-t2i's text convention on its BERT tower: the padding mask goes in.

    mini-t2i is not a Stable Diffusion pipeline (pixel space, no VAE, a BERT tower, 16
    tokens, a UNet that masks padding too), and it was trained with BERT run the way BERT
    is meant to be run: with its padding mask. Unlike CLIP's causal tower, BERT attends
    both ways, so without the mask every real-token state would change. The flag is the
    one diffusers' ``encode_prompt`` reads (``config.use_attention_mask``), so the same
    single rule (``TextToImageModel.text_mask``) serves every backbone, and a diffusers
    pipeline given these parts would encode as mini-t2i was trained.
    """
    text_encoder.config.use_attention_mask = True
    return text_encoder


def unet_config(size: str, cross_attention_dim: int) -> dict:
    return {
        "sample_size": 32, "in_channels": 1, "out_channels": 1, "layers_per_block": 1,
        "cross_attention_dim": cross_attention_dim, **UNET_SIZES[size],
    }


def make_unet(size: str, cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**unet_config(size, cross_attention_dim))


def random_pixel_model(text: str, unet: str, *, content_id: str) -> TextToImageModel:
    """Random towers of the given sizes, the same weights in every process (seed 0)."""
    from transformers import BertConfig, BertModel

    from tunebench.models.towers import load_minilm_tokenizer, quiet_transformers

    quiet_transformers()
    tokenizer = load_minilm_tokenizer()
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        encoder = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=64,
                                       **TEXT_SIZES[text]), add_pooling_layer=False)
        model = TextToImageModel(
            tokenizer=tokenizer, text_encoder=masked_text_encoder(encoder.eval()),
            unet=make_unet(unet, TEXT_SIZES[text]["hidden_size"]).eval(),
            scheduler_config=SCHEDULER, settings=PIXEL_SETTINGS, content_id=content_id,
        )
    finally:
        torch.random.set_rng_state(state)
    return model.requires_grad_(False)


@BACKBONES.register("tiny-t2i")
def build_tiny_t2i(argument: str | None = None, *, pretrained: str | None = None) -> TextToImageModel:
    """Random 2-layer text tower + tiny UNet on mini-t2i's code path (tests, smoke runs)."""
    if pretrained:
        raise ConfigError("tiny-t2i takes no pretrained weights")
    return random_pixel_model("tiny", "tiny", content_id="tiny-t2i-seed0")


@BACKBONES.register("t2i-timing:")
def build_timing_t2i(argument: str, *, pretrained: str | None = None) -> TextToImageModel:
    """TEXT-UNET, e.g. ``bertbase-large``: random weights, for step timing only."""
    text, _, unet = argument.partition("-")
    if text not in TEXT_SIZES or unet not in UNET_SIZES or "tiny" in (text, unet):
        texts = ", ".join(t for t in TEXT_SIZES if t != "tiny")
        unets = ", ".join(u for u in UNET_SIZES if u != "tiny")
        raise ConfigError(f"t2i-timing:{argument}: expected TEXT-UNET with TEXT in {texts} and UNET in {unets}")
    model = random_pixel_model(text, unet, content_id=f"timing-only-{text}-{unet}-seed0")
    model.timing_only = True  # the task measures its steps and skips quality metrics
    return model


@BACKBONES.register("diffusers:")
def build_diffusers(argument: str, *, pretrained: str | None = None) -> TextToImageModel:
    """A local Stable-Diffusion-style pipeline folder (never downloads)."""
    from pathlib import Path

    if pretrained:
        raise ConfigError("diffusers:PATH takes its weights from PATH; drop --pretrained")
    folder = Path(argument).expanduser()
    model = load_pipeline_folder(folder, content_id="pending")
    model.content_id = f"diffusers-{folder_fingerprint(folder)}"
    return model


# Checked by the generation task before a sweep starts (no weights are read).
build_diffusers.check = lambda config: check_pipeline_folder(config.backbone.split(":", 1)[1])
for _builder in (build_tiny_t2i, build_timing_t2i, build_diffusers):
    _builder.text_to_image = True  # the generation task accepts only these backbones
