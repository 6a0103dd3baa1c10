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

from tunebench.methods.base import MethodAdapter, MethodConfig, hyperparameter
from tunebench.methods.prompts import PLACEHOLDER, SlotPrompts, word_embedding
from tunebench.registry import METHODS


@dataclass
class CoopConfig(MethodConfig):
    lr: float = hyperparameter(2e-3, "peak learning rate (AdamW, cosine schedule)")
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
    summary = "shared context vectors at the text input (CoOp); text encoder fwd+bwd each step"
    config_class = CoopConfig

    def __init__(self, backbone, classes, config) -> None:
        super().__init__(backbone, classes, config)
        slots = " ".join([PLACEHOLDER] * config.n_ctx)
        self.prompts = SlotPrompts(
            backbone, [f"{slots} {name}." for name in classes.classnames], config.n_ctx
        )
        init = word_embedding(backbone, config.ctx_init) if config.ctx_init else None
        if init is None or init.shape[0] != config.n_ctx:
            # CoOp's fallback: small Gaussian noise when the init phrase does not fit.
            init = torch.randn(config.n_ctx, backbone.text_width) * 0.02
        self.context = nn.Parameter(init.clone())

    def class_embeddings(self) -> torch.Tensor:
        n_classes = len(self.classes.classnames)
        slots = self.context.unsqueeze(0).expand(n_classes, -1, -1)
        return F.normalize(self.prompts.encode(self.backbone, slots), dim=-1)
