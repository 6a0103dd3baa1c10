"""Prompts with learnable slots at the text encoder's input (CoOp, textual inversion).

A prompt is written with a placeholder word (``X``) wherever a learned vector goes.
It is tokenised once; at each forward the placeholder positions of the frozen token
embeddings are overwritten with the learned vectors and the result goes through the
text encoder as ``inputs_embeds``. Gradients reach only the learned vectors.
"""

from __future__ import annotations

import torch
from torch import nn

from tunebench.models.base import VisionLanguageBackbone

PLACEHOLDER = "X"


class SlotPrompts(nn.Module):
    """Tokenised prompts plus where each one's placeholder slots are."""

    def __init__(self, backbone: VisionLanguageBackbone, texts: list[str], slots_per_prompt: int):
        super().__init__()
        self.tokens = backbone.tokenize(texts)
        placeholder_id = backbone.single_token_id(PLACEHOLDER)
        mask = self.tokens.input_ids == placeholder_id
        counts = mask.sum(1)
        if not bool((counts == slots_per_prompt).all()):
            bad = texts[int((counts != slots_per_prompt).nonzero()[0])]
            raise ValueError(
                f"prompt {bad!r} has {int(counts.max())} placeholder tokens, expected "
                f"{slots_per_prompt}; a class name may contain the word {PLACEHOLDER!r} or be truncated"
            )
        self.register_buffer("slot_mask", mask, persistent=False)

    def encode(self, backbone: VisionLanguageBackbone, slot_vectors: torch.Tensor) -> torch.Tensor:
        """Text features with ``slot_vectors`` (P, slots, W) written into the slots."""
        ids = self.tokens.input_ids.to(self.slot_mask.device)
        frozen = backbone.token_embedding()(ids)
        embeds = frozen.masked_scatter(
            self.slot_mask.unsqueeze(-1), slot_vectors.to(frozen.dtype).reshape(-1, frozen.shape[-1])
        )
        return backbone.encode_text(self.tokens, inputs_embeds=embeds)


def word_embedding(backbone: VisionLanguageBackbone, words: str) -> torch.Tensor:
    """Token embeddings (n, W) of ``words`` as the tokenizer splits them."""
    ids = torch.tensor(backbone.word_token_ids(words), dtype=torch.long)
    table = backbone.token_embedding()
    return table(ids.to(table.weight.device)).detach()


class FixedPrompts(nn.Module):
    """One fixed prompt per class, tokenised once, for methods that tune the encoder itself."""

    def __init__(self, backbone: VisionLanguageBackbone, texts: list[str]):
        super().__init__()
        self.tokens = backbone.tokenize(texts)

    def encode(self, backbone: VisionLanguageBackbone) -> torch.Tensor:
        return backbone.encode_text(self.tokens)
