"""textual-inversion: one new input token embedding per class.

Each class gets its own pseudo-word, written into "a photo of a X." in place of the
class name and initialised from the class name's token embeddings (their mean when
the name is several tokens). The text encoder runs forward and backward every step.
Only the new rows train: the count is classes × token width, not the whole table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tunebench.display import Display
from tunebench.methods.base import MethodAdapter, MethodConfig, learning_rate
from tunebench.methods.prompts import (
    PLACEHOLDER,
    SlotPrompts,
    single_prompt_embeddings,
    word_embedding,
)
from tunebench.registry import METHODS


@dataclass
class TextualInversionConfig(MethodConfig):
    lr: float = learning_rate(5e-3)


@METHODS.register("textual-inversion")
class TextualInversion(MethodAdapter):
    display = Display(order=40, colour="#CC79A7", marker="D")
    summary = "one new input token per class in 'a photo of a X.'; text encoder fwd+bwd each step"
    config_class = TextualInversionConfig

    def __init__(self, backbone, classes, config) -> None:
        super().__init__(backbone, classes, config)
        template = classes.templates[0]
        self.prompts = SlotPrompts(
            backbone, [template.format(PLACEHOLDER)] * len(classes.classnames), 1
        )
        init = torch.stack([word_embedding(backbone, c).mean(0) for c in classes.classnames])
        self.tokens = nn.Parameter(init.clone())  # (C, W): the new embedding rows

    def class_embeddings(self) -> torch.Tensor:
        return F.normalize(self.prompts.encode(self.backbone, self.tokens.unsqueeze(1)), dim=-1)

    def new_class_scorer(self, classes):
        """Pseudo-words are learned per class, so a new class falls back to its own name in
        the same prompt ("a photo of a <name>.") through the frozen text encoder."""
        return self.score_with(single_prompt_embeddings(self.backbone, classes))
