"""``tiny-clip``: random toy towers on the real two-tower code path, for tests and smoke runs.

It uses MiniLM's real tokenizer (so prompts tokenize exactly as in mini-clip) with a
2-layer, 32-wide BERT and a 3-layer CNN: the whole model is ~1M parameters, most of
them the token-embedding table, and a training step takes milliseconds.
"""

from __future__ import annotations

import torch
from torch import nn

from tunebench.models.towers import load_minilm_tokenizer, quiet_transformers
from tunebench.models.two_tower import TwoTowerClip
from tunebench.registry import BACKBONES


class TinyConvTower(nn.Module):
    def __init__(self, width: int = 16, out_features: int = 32) -> None:
        super().__init__()
        # Its feature maps, listed as timm lists them, so a detector can tap them.
        self.feature_info = [
            {"module": "conv_stem", "num_chs": width, "reduction": 2},
            {"module": "conv_head", "num_chs": out_features, "reduction": 4},
        ]
        self.conv_stem = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv_head = nn.Conv2d(width, out_features, 3, stride=2, padding=1)
        self.act = nn.ReLU()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv_stem(pixels)))
        x = self.act(self.conv_head(x))
        return x.mean(dim=(2, 3))


@BACKBONES.register("tiny-clip")
def build_tiny_clip(argument: str | None = None, *, pretrained: str | None = None) -> TwoTowerClip:
    quiet_transformers()
    from transformers import BertConfig, BertModel

    tokenizer = load_minilm_tokenizer()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)  # the same toy weights in every process: results are comparable
    try:
        text = BertModel(
            BertConfig(
                vocab_size=tokenizer.vocab_size,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=64,
            ),
            add_pooling_layer=False,
        )
        model = TwoTowerClip(
            image_tower=TinyConvTower(),
            image_features=32,
            text_model=text,
            tokenizer=tokenizer,
            embed_dim=24,
            image_mean=(0.5, 0.5, 0.5),
            image_std=(0.5, 0.5, 0.5),
            default_image_size=16,
            content_id="tiny-clip-seed0",
        )
    finally:
        torch.random.set_rng_state(generator_state)
    if pretrained:
        from tunebench.models.checkpoints import load_checkpoint_strictly

        load_checkpoint_strictly(model, pretrained, "tiny-clip")
        model.content_id = f"tiny-clip-{pretrained}"
    return model.eval()
