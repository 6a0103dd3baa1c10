"""textual-inversion: one new input token embedding per class.

Each class gets its own pseudo-word, written into the shared start's template(s) in
place of the class name ("a photo of a X." for init: single; every template with X,
the class's embeddings averaged, for init: ensemble) and initialised from the class
name's token embeddings. Its one intrinsic difference from the shared start: a name
of several tokens is compressed into one (their mean), so step 0 equals the start
exactly only for names that are one token. The text encoder runs forward and
backward every step. Only the new rows train: the count is classes × token width,
not the whole table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tunebench.display import Display
from tunebench.methods.base import MethodAdapter, MethodConfig, learning_rate
from tunebench.methods.prompts import (
    PLACEHOLDER,
    SlotPrompts,
    class_means,
    start_embeddings,
    word_embedding,
)
from tunebench.registry import METHODS


@dataclass
class TextualInversionConfig(MethodConfig):
    lr: float = learning_rate(5e-3)


@METHODS.register("textual-inversion")
class TextualInversion(MethodAdapter):
    display = Display(order=40, colour="#CC79A7", marker="D")
    summary = "one new input token per class in the start prompt ('a photo of a X.'); text encoder fwd+bwd each step"
    config_class = TextualInversionConfig

    def __init__(self, backbone, classes, config) -> None:
        super().__init__(backbone, classes, config)
        # Class-major: each class's start templates in turn, its own token in every one.
        self.per_class = len(classes.start_templates)
        texts = [t.format(PLACEHOLDER) for _ in classes.classnames for t in classes.start_templates]
        self.prompts = SlotPrompts(backbone, texts, 1)
        init = torch.stack([word_embedding(backbone, c).mean(0) for c in classes.classnames])
        self.tokens = nn.Parameter(init.clone())  # (C, W): the new embedding rows

    def class_embeddings(self) -> torch.Tensor:
        slots = self.tokens.repeat_interleave(self.per_class, dim=0).unsqueeze(1)
        return class_means(self.prompts.encode(self.backbone, slots), self.per_class)

    def new_class_scorer(self, classes):
        """Pseudo-words are learned per class, so a new class falls back to its own name in
        the same start prompt(s) through the frozen text encoder."""
        return self.score_with(start_embeddings(self.backbone, classes))
