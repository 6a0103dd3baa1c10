"""A Stable-Diffusion-proportioned text-to-image model with random weights, built in
memory (nothing is downloaded or read from disk but MiniLM's tokenizer), for timing
training steps on a GPU (``tunebench gpu-check``).

Proportions are SD 1.x's:
- UNet: diffusers' ``UNet2DConditionModel`` defaults, which are SD 1.x's (blocks
  320/640/1280/1280, two layers per block, cross-attention in the first three down
  and last three up blocks, 8 heads), on 4 × 64 × 64 latents, cross-attention width 768;
  about 860M parameters.
- text tower: a CLIP text transformer shaped like CLIP ViT-L/14's (12 layers, width
  768, MLP 3072, 12 heads, quick-GELU, causal, 77 positions), so its step cost is SD's.
  The token table has MiniLM's vocabulary (30,522 rows, not CLIP's 49,408: no CLIP
  vocabulary exists offline), which changes a lookup, not the transformer's FLOPs.
- no VAE: latents are the "images" (the references' VAE encoding happens once,
  outside the timed steps, in a real pipeline).

``tiny=True`` keeps the same code path at toy sizes (a 2-layer, 32-wide text tower,
a 2-block UNet on 8 × 8 latents) for the CPU dry pass.
"""

from __future__ import annotations

import torch

from tunebench.models.t2i import T2ISettings, TextToImageModel

SD_SCHEDULER = {  # SD 1.x's training schedule
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "epsilon",
    "clip_sample": False,
}
SD_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
TINY_UNET = {
    "block_out_channels": (8, 16), "layers_per_block": 1, "attention_head_dim": 2, "norm_num_groups": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
}


def sd_proportioned_model(*, tiny: bool = False, device: torch.device | str = "cpu") -> TextToImageModel:
    """Random weights (seed 0, the caller's RNG state kept), created directly on ``device``."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tunebench.models.towers import load_minilm_tokenizer, quiet_transformers

    quiet_transformers()
    tokenizer = load_minilm_tokenizer()
    text = TINY_TEXT if tiny else SD_TEXT
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        with torch.device(device):
            encoder = CLIPTextModel(CLIPTextConfig(
                vocab_size=tokenizer.vocab_size, max_position_embeddings=77, hidden_act="quick_gelu",
                bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                pad_token_id=tokenizer.pad_token_id, **text))
            unet = UNet2DConditionModel(
                sample_size=8 if tiny else 64, in_channels=4, out_channels=4,
                cross_attention_dim=text["hidden_size"], **(TINY_UNET if tiny else {}))
    finally:
        torch.random.set_rng_state(state)
    model = TextToImageModel(
        tokenizer=tokenizer, text_encoder=encoder.eval(), unet=unet.eval(), scheduler_config=SD_SCHEDULER,
        settings=T2ISettings(max_length=77, encoder_mask=False, pad=0),
        content_id=f"timing-only-sd-proportioned{'-tiny' if tiny else ''}-seed0",
    )
    model.timing_only = True
    return model.requires_grad_(False)
