"""textual-inversion: one new input token for the concept (Gal et al., 2022).

The token's embedding starts as the initializer word's and is written into each
prompt's placeholder slot at the text encoder's *input*; the encoder then runs forward
and backward at every step, because every output state can depend on that token.
Only the new row trains: the embedding table itself is never written (its other rows
stay bit-identical), and the count is one row, the token width.
"""

from __future__ import annotations

import torch
from torch import nn

from tunebench.genmethods.base import GenerationAdapter
from tunebench.genmethods.exports import textual_inversion_export
from tunebench.genmethods.prompting import SlotPrompts, one_token
from tunebench.methods.textual_inversion import TextualInversionConfig
from tunebench.registry import METHODS


@METHODS.register("textual-inversion")
class TextualInversion(GenerationAdapter):
    summary = "new input token for the concept; text encoder forward+backward every step"
    config_class = TextualInversionConfig  # the same settings as on the other tasks
    text_encoder_per_step = True

    def __init__(self, model, concept, config) -> None:
        super().__init__(model, concept, config)
        self.slots = SlotPrompts(model, concept)
        table = model.token_embedding()
        init = table.weight[one_token(model, concept.initializer, "initializer word")]
        self.token = nn.Parameter(init.detach().clone())  # (W,): the new embedding row

    def conditioning(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.slots.tokens(index)
        embeds = self.model.token_embedding()(tokens.input_ids)  # frozen rows, no grad
        slot = self.slots.slot_mask[index].unsqueeze(-1)
        embeds = torch.where(slot, self.token.to(embeds.dtype), embeds)
        return self.model.encode_prompt_tokens(tokens, inputs_embeds=embeds), self.model.encoder_mask(tokens)

    def exports(self):
        """The token as diffusers' textual-inversion example saves it: ``pipe.load_textual_inversion``
        adds it to a pipeline's tokenizer and embedding table as a new word."""
        return {"learned_embeds": textual_inversion_export(self.model, self.concept, self.token)}
