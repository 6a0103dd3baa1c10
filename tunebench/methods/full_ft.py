"""full-ft: every parameter of both towers, projections and temperature trains."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunebench.display import Display
from tunebench.methods.base import MethodAdapter, MethodConfig, hyperparameter, learning_rate
from tunebench.methods.prompts import FixedPrompts, start_embeddings
from tunebench.registry import METHODS


@dataclass
class FullFinetuneConfig(MethodConfig):
    lr: float = learning_rate(2e-5)
    weight_decay: float = hyperparameter(0.01, "AdamW weight decay")


@METHODS.register("full-ft")
class FullFinetune(MethodAdapter):
    display = Display(order=90, colour="#000000", marker="P")
    summary = "every backbone parameter trains; images go through the image tower each step"
    config_class = FullFinetuneConfig
    tasks = (*MethodAdapter.tasks, "align")  # it trains the towers, so it can align them
    chains_from = ("cones",)  # init_from: a ConES run's class embeddings (start_from)

    def __init__(self, backbone, classes, config) -> None:
        super().__init__(backbone, classes, config)
        backbone.requires_grad_(True)
        # Tasks without classes (align) pass none: full-ft then trains both towers on
        # caption pairs, as lit:all does, and has no class prompts to encode.
        # The shared start's prompts (init: ensemble encodes every template each step).
        self.prompts = FixedPrompts(backbone, classes) if classes.classnames else None

    def class_embeddings(self) -> torch.Tensor | None:
        if self.prompts is None:
            return None
        return self.prompts.encode(self.backbone)

    def new_class_scorer(self, classes):
        """The new names' start prompts, through the fine-tuned text tower."""
        return self.score_with(start_embeddings(self.backbone, classes))

    def start_from(self, tensors):
        """Start at a ConES run's class embeddings (``init_from``), as lit does: the prompts
        through the training tower plus a fixed offset (``FixedPrompts.start_at``)."""
        self.prompts.start_at(self.backbone, tensors["class_embeddings"])
