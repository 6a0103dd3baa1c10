"""full-ft: the whole UNet trains on the references (DreamBooth-style).

Prompts name the concept with a rare identifier before the initializer (class) word,
"a photo of a sks horse.", as DreamBooth does. The text encoder stays frozen, so the
prompts' states are computed once at build and the steps cost the UNet's forward and
backward with every weight's gradient and optimiser state. DreamBooth's prior-
preservation loss (class images drawn by the base model) is left out: it would double
the step and the track compares the tuning itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunebench.genmethods.base import GenerationAdapter
from tunebench.genmethods.exports import concept_token, cones_export, unet_export
from tunebench.genmethods.prompting import ConceptStates, FrozenStates
from tunebench.methods.base import MethodConfig, hyperparameter, learning_rate
from tunebench.registry import METHODS


@dataclass
class IdentifierConfig(MethodConfig):
    identifier: str = hyperparameter("sks", "rare word put before the initializer word to name the concept")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.identifier.strip() or "{" in self.identifier:
            raise ValueError(f"identifier must be a plain word, got {self.identifier!r}")


@dataclass
class FullFinetuneConfig(IdentifierConfig):
    lr: float = learning_rate(2e-4)


class IdentifierPromptAdapter(GenerationAdapter):
    """Shared by the UNet-tuning methods: fixed "<identifier> <initializer>" prompts; or,
    started from a ConES run (``init_from: cones``), that run's conditioning."""

    chains_from = ("cones",)

    def __init__(self, model, concept, config) -> None:
        super().__init__(model, concept, config)
        self.prompt_states = FrozenStates(model, concept.filled(f"{config.identifier} {concept.initializer}"))

    def conditioning(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prompt_states(index)

    def start_from(self, tensors):
        """Condition on a ConES run's learned concept state, held fixed, instead of the
        identifier prompts: the run's one text pass (initializer in the slot) with the state
        in the slot, so step 0 samples as that run samples and the UNet tunes from there.
        The identifier prompts encoded at build (one small text pass) go unused."""
        self.prompt_states = ConceptStates(self.model, self.concept, tensors["concept_state"])

    @property
    def chained(self) -> bool:
        return isinstance(self.prompt_states, ConceptStates)

    def exports(self):
        """The UNet tensors that trained, under diffusers' names (``exports.load_unet_weights``);
        a pipeline then draws the concept from the same "<identifier> <initializer>" words.
        A chained run conditions on its ConES state instead: it exports that state too
        (``cones``, for ``exports.cones_prompt_embeds``), and its prompts name the concept
        by the state's token."""
        if self.chained:
            state = self.prompt_states.concept_state
            return {"cones": cones_export(self.model, self.concept, state),
                    "unet": unet_export(self.model, prompt_words=concept_token(self.concept.name))}
        words = f"{self.config.identifier} {self.concept.initializer}"
        return {"unet": unet_export(self.model, prompt_words=words)}


@METHODS.register("full-ft")
class FullFinetune(IdentifierPromptAdapter):
    summary = "whole UNet (DreamBooth-style, identifier + class word); text encoder frozen, run once"
    config_class = FullFinetuneConfig

    def __init__(self, model, concept, config) -> None:
        super().__init__(model, concept, config)
        model.unet.requires_grad_(True)
