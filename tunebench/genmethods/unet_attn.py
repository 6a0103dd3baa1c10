"""unet-attn: only named UNet attention parameters train, by default the cross-attention
key and value projections (Custom-Diffusion-style: what maps text states into the image).

Presets are data: name-pattern lists over the UNet's parameter names
(``unet-attn:PRESET`` in a sweep). Prompts are DreamBooth's "<identifier> <initializer>",
encoded once by the frozen text encoder; Custom Diffusion's optional extra learned
token is left out, so the run isolates what the K/V weights alone can learn.

This method was called ``lit`` on generation when the committed results were made;
``registry.RENAMED_METHODS`` keeps that name resolving here and keeps the cells'
hashes, so ``bench-gen.yaml`` says ``unet-attn`` and still finds them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tunebench.display import Display
from tunebench.genmethods.full_ft import IdentifierConfig, IdentifierPromptAdapter
from tunebench.methods.base import hyperparameter, learning_rate
from tunebench.registry import METHODS

PRESETS = {
    "kv": (r"\.attn2\.to_k\.", r"\.attn2\.to_v\."),  # Custom Diffusion
    "cross-attn": (r"\.attn2\.",),  # the whole cross-attention: q, k, v, out
    "attn": (r"\.attn1\.", r"\.attn2\."),  # self- and cross-attention
}


@dataclass
class UnetAttentionConfig(IdentifierConfig):
    lr: float = learning_rate(5e-3, "tuned on mini-t2i")
    preset: str = hyperparameter("kv", f"UNet parameters that train: {', '.join(PRESETS)}")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid: {', '.join(PRESETS)}")


@METHODS.register("unet-attn")
class UnetAttention(IdentifierPromptAdapter):
    summary = "UNet cross-attention key/value only (Custom-Diffusion-style; presets kv, cross-attn, attn)"
    config_class = UnetAttentionConfig
    display = {
        "": Display(order=58, colour="#E69F00", marker="v"),
        "kv": Display(order=60, colour="#882255", marker="h"),
        "cross-attn": Display(order=61, colour="#999933", marker="<"),
        "attn": Display(order=62, colour="#332288", marker="p"),
    }
    variant_field = "preset"

    def __init__(self, model, concept, config) -> None:
        super().__init__(model, concept, config)
        patterns = [re.compile(p) for p in PRESETS[config.preset]]
        for name, param in model.unet.named_parameters():
            if any(p.search(f".{name}") for p in patterns):
                param.requires_grad_(True)
