"""The generation-adapter interface: how a tuning method conditions a text-to-image model.

A generation adapter learns one new concept (a held-out class: zebra, giraffe, ...)
from K reference images. The task hands it the model, the concept's initializer word
and every prompt the run will use (training templates and evaluation prompts, each
with ``{}`` where the concept goes), and then only ever asks for

    conditioning(index) -> (token states (n, L, W), cross-attention mask (n, L))

for prompts by index, and for the empty prompt's states (classifier-free guidance).
The denoising loss, sampling and scoring are the task's. What differs between methods
is where the concept lives and what must run to produce that conditioning:

    textual-inversion  a new input token; the text encoder runs forward+backward every step
    cones              a vector among the text encoder's *output* states; never runs it again
    full-ft, unet-attn UNet weights (all, or attention projections); fixed prompts whose
                       states are computed once

The runner calls ``trainable_named_parameters``, ``trainable_count``, ``total_count``,
``artifact`` and ``exports`` on any adapter, as for classification adapters; here
``exports`` gives what was learned in a form a diffusers pipeline loads
(``genmethods/exports.py``). To add a method: one module
in ``tunebench/genmethods/`` registered with ``@METHODS.register("name")``; its ``tasks``
is ``("generation",)``, and a name the other tasks already use joins that method's entry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from tunebench.display import Display
from tunebench.methods.base import MethodConfig, TrainableParts
from tunebench.models.t2i import TextToImageModel


@dataclass(frozen=True)
class ConceptPrompts:
    """What the task tells an adapter about the concept it learns."""

    initializer: str  # a word the tokenizer keeps as one token ("horse"): where the concept starts
    prompts: tuple[str, ...]  # every prompt of the run, "{}" where the concept goes
    name: str = "concept"  # "zebra": its token in exports is "<zebra>" (genmethods/exports.py)

    def filled(self, words: str) -> list[str]:
        return [p.format(words) for p in self.prompts]


class GenerationAdapter(TrainableParts, nn.Module, ABC):
    """Base class. Subclasses create their parameters in ``__init__`` after super()."""

    summary: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    tasks: ClassVar[tuple[str, ...]] = ("generation",)
    # The generation task calls one hook (see methods/base.py for the contract).
    HOOKS: ClassVar[tuple[str, ...]] = ("conditioning",)
    trains: ClassVar[bool] = True
    # The starts (config.INITS) a generation method can express: every one starts from the
    # concept's initializer word in the run's own prompts (one prompt per concept and
    # template, no class-prompt ensemble), so a sweep's ``init: ensemble`` is refused.
    inits: ClassVar[tuple[str, ...]] = ("single",)
    variant_field: ClassVar[str | None] = None
    # As on MethodAdapter; a generation method named like a classification one (cones,
    # textual-inversion, full-ft) is shown as that one, so it declares nothing here.
    display: ClassVar[Display | Mapping[str, Display] | None] = None
    # Whether producing the conditioning runs the text encoder at every training step
    # (the cost ConES removes); shown in the report.
    text_encoder_per_step: ClassVar[bool] = False

    def __init__(self, model: TextToImageModel, concept: ConceptPrompts, config: MethodConfig) -> None:
        super().__init__()
        self.model = model
        self.concept = concept
        self.config = config
        model.requires_grad_(False)
        # The empty prompt's states, for classifier-free guidance: computed here, once, so
        # that sampling after tuning needs no text encoder either.
        null = model.tokenize([""])
        with torch.no_grad():
            self.register_buffer("null_states", model.encode_prompt_tokens(null), persistent=False)
        self.register_buffer("null_mask", model.encoder_mask(null), persistent=False)

    @abstractmethod
    def conditioning(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (n, L, W), mask (n, L)) for the prompts ``concept.prompts[index]``."""

    def train(self, mode: bool = True):
        """The model stays in eval mode (no dropout in a frozen text encoder), as in
        classification: methods differ in what they train, not in regularisation noise."""
        super().train(mode)
        self.model.eval()
        return self

