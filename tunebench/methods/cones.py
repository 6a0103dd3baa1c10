"""cones: concept embedding search in the text encoder's *output* space.

One embedding per class, initialised from a single text-encoder pass over the class
prompts (the shared start, ``start_embeddings``, so step 0 equals zero-shot), then
tuned directly. The text encoder is
never run while tuning: a step costs a matrix product, and the image side comes
from the frozen-tower feature cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tunebench.display import Display
from tunebench.methods.base import MethodAdapter, MethodConfig, learning_rate
from tunebench.methods.prompts import start_embeddings
from tunebench.registry import METHODS


@dataclass
class ConesConfig(MethodConfig):
    lr: float = learning_rate(5e-3)


@METHODS.register("cones")
class Cones(MethodAdapter):
    display = Display(order=20, colour="#D55E00", marker="o")
    summary = "class embeddings learned in text-output space; text encoder not run while tuning"
    config_class = ConesConfig

    def __init__(self, backbone, classes, config) -> None:
        super().__init__(backbone, classes, config)
        self.concepts = nn.Parameter(start_embeddings(backbone, classes).clone())

    def class_embeddings(self) -> torch.Tensor:
        return F.normalize(self.concepts, dim=-1)

    @classmethod
    def chain_tensors(cls, artifact):
        """What a chained run (lit, full-ft: ``init_from: cones``) starts from: the class
        embeddings as ConES scores with them, its saved concepts normalised."""
        return {"class_embeddings": F.normalize(artifact["concepts"], dim=-1)}

    def new_class_scorer(self, classes):
        """Concepts are learned per class, so new classes are scored zero-shot: their
        names' start prompts through the frozen text encoder (ConES's own starting point)."""
        return self.score_with(start_embeddings(self.backbone, classes))
