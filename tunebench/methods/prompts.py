"""Class prompts: the shared start, fixed prompts, and prompts with learnable slots.

Every method that learns class representations starts from the same prompt
information, ``ClassPrompts.start_texts`` (``init`` single or ensemble, one value per
sweep): ``start_embeddings`` is that start in the joint space (zero-shot, ConES and
every new-class fallback), ``FixedPrompts`` encodes it through a tower that trains
(full-ft, lit). Textual inversion and CoOp put their learned vectors into the same
start template(s) at the text encoder's input (``SlotPrompts``):

A prompt is written with a placeholder word (``X``) wherever a learned vector goes.
It is tokenised once; at each forward the placeholder positions of the frozen token
embeddings are overwritten with the learned vectors and the result goes through the
text encoder as ``inputs_embeds``. Gradients reach only the learned vectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tunebench.errors import ConfigError
from tunebench.methods.base import ClassPrompts
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


def class_means(text: torch.Tensor, per_class: int) -> torch.Tensor:
    """(C·T, D) text features, T prompts per class in class order -> (C, D): each class's
    normalised embeddings averaged and renormalised (T = 1: the normalised embedding)."""
    text = F.normalize(text, dim=-1)
    return F.normalize(text.view(-1, per_class, text.shape[-1]).mean(1), dim=-1)


class FixedPrompts(nn.Module):
    """Each class's start prompts (``ClassPrompts.start_texts``), tokenised once, for
    methods that tune the encoder itself.

    With ``init: ensemble`` a class has T prompts, and all C×T go through the text tower
    at every step (T times the text cost of single) before they are averaged per class:
    a tuned tower cannot reuse embeddings computed before it changed.
    """

    def __init__(self, backbone: VisionLanguageBackbone, classes: ClassPrompts):
        super().__init__()
        self.per_class = len(classes.start_templates)
        self.tokens = backbone.tokenize([text for texts in classes.start_texts() for text in texts])
        # Set by ``start_at`` (a chained run): added to every encoding, held fixed. A
        # persistent buffer, so the run's artifact saves it; None (and unsaved) otherwise.
        self.register_buffer("offset", None)

    def encode(self, backbone: VisionLanguageBackbone, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """(C, D) normalised class embeddings through the encoder as it is now; from
        ``pooled`` features (``encode_text_pooled`` of ``tokens``) when given, so a
        frozen tower's output computed once is only projected."""
        embeddings = self._through_tower(backbone, pooled)
        return embeddings if self.offset is None else F.normalize(embeddings + self.offset, dim=-1)

    def _through_tower(self, backbone: VisionLanguageBackbone, pooled: torch.Tensor | None) -> torch.Tensor:
        text = backbone.encode_text(self.tokens) if pooled is None else backbone.text_projection(pooled)
        return class_means(text, self.per_class)

    @torch.no_grad()
    def start_at(self, backbone: VisionLanguageBackbone, embeddings: torch.Tensor,
                 pooled: torch.Tensor | None = None) -> None:
        """Make ``encode`` start at ``embeddings`` (C, D; a ConES run's class embeddings):
        offset = embeddings − the tower's encoding now, computed once and held fixed, so
        class embedding = normalise(tower(prompts) + offset). At step 0 that is
        normalise(embeddings), which is ``embeddings`` (they are normalised), so the
        scores are the source run's; as the tower trains, its change moves them. Adding
        before normalising keeps what is scored unit-length, as every method's is."""
        now = self._through_tower(backbone, pooled)
        if tuple(embeddings.shape) != tuple(now.shape):
            raise ConfigError(f"the source run has {tuple(embeddings.shape)} class embeddings, this run's "
                              f"classes need {tuple(now.shape)}: start from a run on the same classes")
        self.offset = embeddings.to(now) - now


@torch.no_grad()
def start_embeddings(backbone: VisionLanguageBackbone, classes: ClassPrompts) -> torch.Tensor:
    """(C, D) the shared start every method's class side begins at: each class's start
    prompts through the text encoder as it is now (frozen, or as a method has tuned it),
    normalised, averaged per class and renormalised. One text-encoder pass."""
    return FixedPrompts(backbone, classes).encode(backbone)
