"""linear-probe: a linear classifier on frozen, normalised joint-space image features.

It uses no text: its head starts from zero weights (uniform predictions), not from the
shared class-prompt start (``init``) that every text-side method begins at, so the
sweep's ``init`` changes nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tunebench.display import Display
from tunebench.methods.base import MethodAdapter, MethodConfig, hyperparameter, learning_rate
from tunebench.registry import METHODS


@dataclass
class LinearProbeConfig(MethodConfig):
    lr: float = learning_rate(1e-2)
    weight_decay: float = hyperparameter(1e-4, "AdamW weight decay")
    temperature: float = hyperparameter(
        0.05, "features are L2-normalised, so logits are scaled by 1/temperature"
    )


@METHODS.register("linear-probe")
class LinearProbe(MethodAdapter):
    display = Display(order=10, colour="#0072B2", marker="s")
    summary = "linear head (weights + bias) on frozen image features; text unused"
    config_class = LinearProbeConfig
    # It classifies with a head of its own, not class embeddings, so it cannot score
    # detector regions (or anything but the classes it trained on): not detect.
    tasks = ("fewshot-cls", "base2new")

    def __init__(self, backbone, classes, config) -> None:
        super().__init__(backbone, classes, config)
        device = next(backbone.parameters()).device
        dim = backbone.image_projection(torch.zeros(1, _trunk_width(backbone), device=device)).shape[-1]
        self.linear = nn.Linear(dim, len(classes.classnames))
        nn.init.zeros_(self.linear.weight)  # start from uniform predictions
        nn.init.zeros_(self.linear.bias)

    def class_embeddings(self) -> None:
        return None

    def new_class_scorer(self, classes) -> None:
        """No answer: its head has one row per trained class and none for unseen names."""
        return None

    def head(self, image_embeddings, class_embeddings):
        return self.linear(image_embeddings) / self.config.temperature


def _trunk_width(backbone) -> int:
    """Input width of the image projection (trunk feature size)."""
    proj = backbone.image_projection
    if hasattr(proj, "in_features"):
        return proj.in_features
    # Identity projection (e.g. open_clip, whose tower already projects): ask the tower.
    size = backbone.default_image_size
    with torch.no_grad():
        device = next(backbone.parameters()).device
        return backbone.encode_image_trunk(torch.zeros(1, 3, size, size, device=device)).shape[-1]
