"""cones: the concept searched directly in the text encoder's *output* space (ConES).

At build, the text encoder runs once over every prompt of the run with the
initializer word in the concept's slot. Those token states are kept; the concept's
own state (one vector, initialised as the initializer's output state averaged over
the prompts) is what trains. Conditioning for any prompt is its kept states with the
slot replaced by the learned vector, so a prompt that puts the concept among other
words is assembled in output space. The text encoder never runs again, neither while
tuning nor when sampling: a step costs the UNet alone.

The price of the shortcut: the other words' states were computed next to the
initializer, not next to the concept, so context flows from the concept to its
neighbours only through the UNet's cross-attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tunebench.genmethods.base import GenerationAdapter
from tunebench.genmethods.exports import cones_export
from tunebench.genmethods.prompting import initializer_states
from tunebench.methods.base import MethodConfig, learning_rate
from tunebench.registry import METHODS


@dataclass
class ConesConfig(MethodConfig):
    lr: float = learning_rate(5e-2, "tuned on mini-t2i")


@METHODS.register("cones")
class Cones(GenerationAdapter):
    summary = "concept vector among the text encoder's output states; encoder run once, never while tuning"
    config_class = ConesConfig

    def __init__(self, model, concept, config) -> None:
        super().__init__(model, concept, config)
        states, mask, slot_mask = initializer_states(model, concept)  # the one text-encoder pass
        self.register_buffer("states", states, persistent=False)
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("slot_mask", slot_mask, persistent=False)
        self.concept_state = nn.Parameter(states[slot_mask].mean(0).clone())  # (W,)

    def conditioning(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept = self.states[index]
        slot = self.slot_mask[index].unsqueeze(-1)
        return torch.where(slot, self.concept_state.to(kept.dtype), kept), self.mask[index]

    @classmethod
    def chain_tensors(cls, artifact):
        """What a chained UNet run (``init_from: cones``) conditions on: the learned state."""
        return {"concept_state": artifact["concept_state"]}

    def exports(self):
        """The learned output state and its initializer word: with them,
        ``exports.cones_prompt_embeds`` rebuilds this conditioning for any prompt on a pipeline."""
        return {"cones": cones_export(self.model, self.concept, self.concept_state)}
