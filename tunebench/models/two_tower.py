"""A CLIP made of a timm-style image trunk and a BERT-style (Hugging Face) text encoder.

Both ``mini-clip`` (EfficientNet-Lite0 + MiniLM, real weights) and ``tiny-clip``
(random toy towers for tests) are instances, so tests run the exact code path the
benchmark runs, only smaller.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from tunebench.models.base import TokenBatch, VisionLanguageBackbone

# BERT parameter names (transformers' BertModel), relative to the backbone.
_BERT_GROUPS = {
    "image_tower": (r"^image_tower\.",),
    "text_tower": (r"^text_tower\.",),
    "projection": (r"^image_projection\.", r"^text_projection\."),
    # Transformer layer norms, as in LiT/LilT; the CNN's batch norms are not included.
    "layernorm": (r"^text_tower\..*LayerNorm\.",),
    "bias": (r"^text_tower\..*\.bias$", r"^image_projection\.bias$", r"^image_tower\..*\.bias$"),
    "attention": (r"^text_tower\.encoder\.layer\.\d+\.attention\.",),
}


def _norm_patterns(tower: nn.Module, prefix: str) -> tuple[str, ...]:
    """Exact-name regexes for the affine parameters of every norm layer in ``tower``."""
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
    return tuple(
        rf"^{re.escape(prefix)}\.{re.escape(name)}\.(weight|bias)$"
        for name, module in tower.named_modules()
        if isinstance(module, norm_types) and getattr(module, "weight", None) is not None
    )


class TwoTowerClip(VisionLanguageBackbone):
    def __init__(
        self,
        *,
        image_tower: nn.Module,
        image_features: int,
        text_model: nn.Module,
        tokenizer,
        embed_dim: int,
        image_mean: tuple[float, float, float],
        image_std: tuple[float, float, float],
        default_image_size: int,
        content_id: str,
        max_length: int = 32,
    ) -> None:
        super().__init__()
        self.image_tower = image_tower
        self.image_projection = nn.Linear(image_features, embed_dim)
        self.text_tower = text_model
        self.text_projection = nn.Linear(text_model.config.hidden_size, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.image_mean = image_mean
        self.image_std = image_std
        self.default_image_size = default_image_size
        self.content_id = content_id
        self.group_patterns = dict(_BERT_GROUPS)
        self.group_patterns["image_norm"] = _norm_patterns(image_tower, "image_tower")

    def tokenize(self, texts: list[str]) -> TokenBatch:
        enc = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return TokenBatch(enc["input_ids"], enc["attention_mask"])

    def word_token_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def token_embedding(self) -> nn.Embedding:
        return self.text_tower.embeddings.word_embeddings

    def text_blocks(self) -> list[nn.Module]:
        return list(self.text_tower.encoder.layer)

    def encode_text(
        self, tokens: TokenBatch, inputs_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.text_projection(self.encode_text_pooled(tokens, inputs_embeds))

    def encode_text_pooled(
        self, tokens: TokenBatch, inputs_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        device = self.text_projection.weight.device
        tokens = tokens.to(device)
        if inputs_embeds is None:
            out = self.text_tower(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        else:
            out = self.text_tower(inputs_embeds=inputs_embeds, attention_mask=tokens.attention_mask)
        # Mean pooling over real tokens: how all-MiniLM-L6-v2 was trained to embed sentences.
        mask = tokens.attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
        return (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp_min(1.0)
