"""Prompts with learnable slots at the text encoder's input (CoOp, textual inversion).

A prompt is written with a placeholder word (``X``) wherever a learned vector goes.
It is tokenised once; at each forward the placeholder positions of the frozen token
embeddings are overwritten with the learned vectors and the result goes through the
text encoder as ``inputs_embeds``. Gradients reach only the learned vectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tunebench.models.base import TokenBatch, VisionLanguageBackbone

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

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(
        self, backbone: VisionLanguageBackbone, slot_vectors: torch.Tensor, *, copies: int = 1
    ) -> torch.Tensor:
        """Text features with ``slot_vectors`` (copies × P, slots, W) written into the slots.

        ``copies`` > 1 encodes the whole prompt list that many times over in one pass,
        each copy with its own slot vectors (CoCoOp: one copy per image).
        """
        tokens, mask = self.tokens, self.slot_mask
        if copies > 1:
            tokens = TokenBatch(tokens.input_ids.repeat(copies, 1), tokens.attention_mask.repeat(copies, 1))
            mask = mask.repeat(copies, 1)
        frozen = backbone.token_embedding()(tokens.input_ids.to(mask.device))
        embeds = frozen.masked_scatter(
            mask.unsqueeze(-1), slot_vectors.to(frozen.dtype).reshape(-1, frozen.shape[-1])
        )
        return backbone.encode_text(tokens, inputs_embeds=embeds)


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


def single_prompt_embeddings(backbone: VisionLanguageBackbone, classes) -> torch.Tensor:
    """(C, D) normalised embeddings of each class's first template, through the text
    encoder as it is now (frozen, or as a method has tuned it)."""
    texts = [classes.templates[0].format(name) for name in classes.classnames]
    return F.normalize(FixedPrompts(backbone, texts).encode(backbone), dim=-1)
