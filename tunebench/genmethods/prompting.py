"""Prompt mechanics shared by the generation adapters.

- ``SlotPrompts``: every prompt tokenised once with a one-token placeholder where the
  concept goes, and where that slot is. Textual inversion writes its token there at
  the input; ConES writes its vector at the same position among the output states.
- ``FrozenStates``: prompts whose conditioning never changes while tuning (a frozen text
  encoder over fixed words), encoded once.
- ``initializer_states``: ConES's one text pass (the prompts with the initializer word in
  the concept's slot), and ``ConceptStates``: that pass with a ConES run's learned state
  in the slot, held fixed (what a run chained from ConES conditions on).

Because the initializer word and the placeholder are one token each, a prompt filled
with either has the same length and the concept at the same position, which is what
lets ConES swap one output state for its learned vector.
"""

from __future__ import annotations

import torch
from torch import nn

from tunebench.errors import ConfigError
from tunebench.genmethods.base import ConceptPrompts
from tunebench.methods.prompts import PLACEHOLDER
from tunebench.models.base import TokenBatch
from tunebench.models.t2i import TextToImageModel


def one_token(model: TextToImageModel, word: str, role: str) -> int:
    ids = model.word_token_ids(word)
    if len(ids) != 1:
        raise ConfigError(f"{role} {word!r} is {len(ids)} tokens for this tokenizer; pick a one-token word")
    return ids[0]


class SlotPrompts(nn.Module):
    """Token ids of every prompt with the placeholder, and a one-hot mask of its slot."""

    def __init__(self, model: TextToImageModel, concept: ConceptPrompts) -> None:
        super().__init__()
        texts = concept.filled(PLACEHOLDER)
        tokens = model.tokenize(texts)
        slot = tokens.input_ids == one_token(model, PLACEHOLDER, "placeholder")
        counts = slot.sum(1)
        if not bool((counts == 1).all()):
            bad = texts[int((counts != 1).nonzero()[0])]
            raise ConfigError(f"prompt {bad!r} must hold the concept exactly once (one '{{}}', and no "
                              f"other word that tokenises as {PLACEHOLDER!r})")
        self.register_buffer("input_ids", tokens.input_ids, persistent=False)
        self.register_buffer("attention_mask", tokens.attention_mask, persistent=False)
        self.register_buffer("slot_mask", slot, persistent=False)

    def tokens(self, index: torch.Tensor) -> TokenBatch:
        return TokenBatch(self.input_ids[index], self.attention_mask[index])

    def check_same_slots(self, tokens: TokenBatch, word_id: int) -> None:
        """``tokens`` (the prompts filled with a one-token word) put it in the same slots."""
        if tokens.input_ids.shape != self.input_ids.shape or not bool(
            (tokens.input_ids.to(self.slot_mask.device)[self.slot_mask] == word_id).all()
        ):
            raise ConfigError("the initializer word does not take the placeholder's position in every prompt")


class FrozenStates(nn.Module):
    """Conditioning of fixed texts, computed once by the frozen text encoder."""

    def __init__(self, model: TextToImageModel, texts: list[str]) -> None:
        super().__init__()
        tokens = model.tokenize(texts)
        with torch.no_grad():
            self.register_buffer("states", model.encode_prompt_tokens(tokens), persistent=False)
        self.register_buffer("mask", model.encoder_mask(tokens), persistent=False)

    def forward(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.states[index], self.mask[index]


def initializer_states(model: TextToImageModel, concept: ConceptPrompts) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]:
    """(states (P, L, W), cross-attention mask (P, L), slot mask (P, L)) of every prompt with
    the initializer word in the concept's slot: ConES's one text-encoder pass."""
    slots = SlotPrompts(model, concept)
    tokens = model.tokenize(concept.filled(concept.initializer))
    slots.check_same_slots(tokens, one_token(model, concept.initializer, "initializer word"))
    with torch.no_grad():
        states = model.encode_prompt_tokens(tokens)
    return states, model.encoder_mask(tokens), slots.slot_mask.to(states.device)


class ConceptStates(nn.Module):
    """ConES's conditioning with the concept's state held fixed: the initializer pass with
    ``state`` (W,) in every slot, as a ConES run conditions after tuning. The state is a
    persistent buffer (saved in the artifact of the run that holds it)."""

    def __init__(self, model: TextToImageModel, concept: ConceptPrompts, state: torch.Tensor) -> None:
        super().__init__()
        states, mask, slot = initializer_states(model, concept)
        if state.shape != states.shape[-1:]:
            raise ConfigError(f"the source run's concept state has shape {tuple(state.shape)}; this model's "
                              f"text states are {states.shape[-1]} wide: start from a run on the same backbone")
        state = state.to(states)
        self.register_buffer("concept_state", state.clone())
        self.register_buffer("states", torch.where(slot.unsqueeze(-1), state, states), persistent=False)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.states[index], self.mask[index]
