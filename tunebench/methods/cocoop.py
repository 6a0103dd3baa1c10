"""cocoop: CoOp's context plus a meta-network that conditions it on each image (CoCoOp).

A small network (Linear -> ReLU -> Linear, hidden width = image embedding width / 16)
maps each image's normalised joint-space embedding to one token-width vector that is
added to every context vector. The class prompts therefore differ per image: a step
runs the text encoder forward and backward over classes × images prompts, where CoOp
runs it over the classes once. That cost is what this method measures next to CoOp
and ConES. Context initialisation and ``n_ctx`` are CoOp's, and the meta-network's
last layer starts at zero, so that step 0 is CoOp's start, the shared single prompt,
for every image (CoCoOp's paper initialises it at random: each image's prompts would
then start from a random shift, a start no other method has). The first layer still
learns from the second step on, once the last one has moved.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tunebench.display import Display
from tunebench.methods.base import Scorer, hyperparameter
from tunebench.methods.coop import Coop, CoopConfig
from tunebench.methods.prompts import SlotPrompts
from tunebench.registry import METHODS

# Prompts per text-encoder pass when scoring many images: evaluation goes through the
# test split in chunks of images so that memory stays bounded; a training batch of
# fewer than this many prompts is one pass, forward and backward.
PROMPTS_PER_PASS = 4096


@dataclass
class CocoopConfig(CoopConfig):
    meta_reduction: int = hyperparameter(16, "meta-network hidden width = image embedding width / this")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.meta_reduction < 1:
            raise ValueError(f"meta_reduction must be >= 1, got {self.meta_reduction}")


@METHODS.register("cocoop")
class Cocoop(Coop):
    display = Display(order=35, colour="#117733", marker="H")  # a darker green: CoOp's kin
    summary = ("CoOp's context + a meta-net token from each image (CoCoOp); "
               "text encoder fwd+bwd over classes × images each step")
    config_class = CocoopConfig
    # Its class prompts depend on each whole image (scorer), so it has no class-embedding
    # matrix for detector regions to score against: not detect.
    tasks = ("fewshot-cls", "base2new")

    def __init__(self, backbone, classes, config) -> None:
        super().__init__(backbone, classes, config)
        width = backbone.embed_dim
        hidden = max(1, width // config.meta_reduction)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(width, hidden)),
            ("relu", nn.ReLU()),
            ("linear2", nn.Linear(hidden, backbone.text_width)),
        ]))
        nn.init.zeros_(self.meta_net.linear2.weight)  # step 0: no shift, the shared start
        nn.init.zeros_(self.meta_net.linear2.bias)

    def class_embeddings(self) -> torch.Tensor:
        raise TypeError("cocoop encodes its class prompts per image: score images with scorer()")

    def scorer(self) -> Scorer:
        return self._per_image(self.prompts)

    def new_class_scorer(self, classes) -> Scorer:
        """The learned context and meta-network with the new names in the class slot:
        prompts are still conditioned on each image."""
        return self._per_image(self.slot_prompts(classes.classnames).to(self.context.device))

    def _per_image(self, prompts: SlotPrompts) -> Scorer:
        images_per_pass = max(1, PROMPTS_PER_PASS // len(prompts))

        def score(image_embeddings: torch.Tensor) -> torch.Tensor:
            return torch.cat([
                self._logits(image_embeddings[start : start + images_per_pass], prompts)
                for start in range(0, len(image_embeddings), images_per_pass)
            ])

        return score

    def _logits(self, image_embeddings: torch.Tensor, prompts: SlotPrompts) -> torch.Tensor:
        """(B, C) logits: each image against the class prompts shifted by its own token."""
        n_images, n_classes = len(image_embeddings), len(prompts)
        shift = self.meta_net(image_embeddings)  # (B, W)
        context = self.context.unsqueeze(0) + shift.unsqueeze(1)  # (B, n_ctx, W)
        slots = context.unsqueeze(1).expand(-1, n_classes, -1, -1).reshape(n_images * n_classes, *self.context.shape)
        text = F.normalize(prompts.encode(self.backbone, slots, copies=n_images), dim=-1)
        text = text.view(n_images, n_classes, -1).to(image_embeddings.dtype)
        return self.logit_scale() * torch.einsum("bd,bcd->bc", image_embeddings, text)
