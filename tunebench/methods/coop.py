"""coop: context vectors at the text encoder's input, shared by all classes (CoOp).

The prompt is "X X X X <class name>." with the X slots replaced by learned vectors,
initialised from the embeddings of "a photo of a". Every step runs the text encoder
forward and backward over all class prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tunebench.display import Display
from tunebench.methods.base import MethodAdapter, MethodConfig, hyperparameter, learning_rate
from tunebench.methods.prompts import PLACEHOLDER, SlotPrompts, word_embedding
from tunebench.registry import METHODS


@dataclass
class CoopConfig(MethodConfig):
    lr: float = learning_rate(2e-3)
    n_ctx: int = hyperparameter(4, "number of learned context vectors")
    ctx_init: str = hyperparameter(
        "a photo of a", "words whose embeddings initialise the context ('' = random)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1, got {self.n_ctx}")


@METHODS.register("coop")
class Coop(MethodAdapter):
    display = Display(order=30, colour="#009E73", marker="^")
    summary = "shared context vectors at the text input (CoOp); text encoder fwd+bwd each step"
    config_class = CoopConfig

    def __init__(self, backbone, classes, config) -> None:
        super().__init__(backbone, classes, config)
        self.prompts = self.slot_prompts(classes.classnames)
        init = word_embedding(backbone, config.ctx_init) if config.ctx_init else None
        if init is None or init.shape[0] != config.n_ctx:
            # CoOp's fallback: small Gaussian noise when the init phrase does not fit.
            init = torch.randn(config.n_ctx, backbone.text_width) * 0.02
        self.context = nn.Parameter(init.clone())

    def slot_prompts(self, classnames) -> SlotPrompts:
        """ "X X X X <name>." per class, the X slots filled by the context at each pass."""
        slots = " ".join([PLACEHOLDER] * self.config.n_ctx)
        return SlotPrompts(self.backbone, [f"{slots} {name}." for name in classnames], self.config.n_ctx)

    def class_embeddings(self) -> torch.Tensor:
        return self._encode(self.prompts)

    def new_class_scorer(self, classes):
        """The learned context, shared by all classes, with the new names in the class slot."""
        return self.score_with(self._encode(self.slot_prompts(classes.classnames).to(self.context.device)))

    def _encode(self, prompts: SlotPrompts) -> torch.Tensor:
        slots = self.context.unsqueeze(0).expand(len(prompts), -1, -1)
        return F.normalize(prompts.encode(self.backbone, slots), dim=-1)
