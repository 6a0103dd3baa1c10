"""coop: context vectors at the text encoder's input, shared by all classes (CoOp).

The prompt is the shared start's template with its words before the class slot
replaced by learned vectors: "a photo of a {}." becomes "X X X X <class name>.", the
X slots initialised from the embeddings of "a photo of a", so step 0 equals the
single start prompt. One context is shared by every class and template, so CoOp
cannot start from an ensemble of templates: ``init: ensemble`` is refused before
anything runs. An explicit ``ctx_init`` (or an ``n_ctx`` other than the number of
start words) is the user's choice of another start. Every step runs the text encoder
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

# CoOp's context length when there are no start words to take it from (a template that
# begins with the class, "{} texture."): the context then starts as small noise.
RANDOM_N_CTX = 4


@dataclass
class CoopConfig(MethodConfig):
    lr: float = learning_rate(2e-3)
    n_ctx: int | None = hyperparameter(
        None, f"number of learned context vectors (null: one per token of the start words; "
              f"{RANDOM_N_CTX} when there are none)")
    ctx_init: str | None = hyperparameter(
        None, "words whose embeddings initialise the context (null: the start template's words "
              "before the class, 'a photo of a' in 'a photo of a {}.'; '' = random)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_ctx is not None and self.n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1, got {self.n_ctx}")


def split_template(template: str) -> tuple[str, str]:
    """'a photo of a {}, a pet.' -> ('a photo of a', '{}, a pet.'): the words before the
    class slot, and the rest with the slot."""
    words, _, rest = template.partition("{}")
    return words.strip(), "{}" + rest


@METHODS.register("coop")
class Coop(MethodAdapter):
    display = Display(order=30, colour="#009E73", marker="^")
    summary = "shared context vectors at the text input (CoOp); text encoder fwd+bwd each step"
    config_class = CoopConfig
    inits = ("single",)  # one shared context: no ensemble of templates to start from

    def __init__(self, backbone, classes, config) -> None:
        super().__init__(backbone, classes, config)
        words, self.slot_template = split_template(classes.start_templates[0])
        words = words if config.ctx_init is None else config.ctx_init
        init = word_embedding(backbone, words) if words else None
        n_ctx = config.n_ctx or (RANDOM_N_CTX if init is None else init.shape[0])
        if init is None or init.shape[0] != n_ctx:
            # CoOp's fallback: small Gaussian noise when the init phrase does not fit.
            init = torch.randn(n_ctx, backbone.text_width) * 0.02
        self.context = nn.Parameter(init.clone())
        self.prompts = self.slot_prompts(classes.classnames)

    @property
    def n_ctx(self) -> int:
        return self.context.shape[0]

    def slot_prompts(self, classnames) -> SlotPrompts:
        """ "X X X X <name>." per class (the start template's slot and what follows it),
        the X slots filled by the context at each pass."""
        slots = " ".join([PLACEHOLDER] * self.n_ctx)
        return SlotPrompts(self.backbone, [f"{slots} {self.slot_template.format(name)}" for name in classnames], self.n_ctx)

    def class_embeddings(self) -> torch.Tensor:
        return self._encode(self.prompts)

    def new_class_scorer(self, classes):
        """The learned context, shared by all classes, with the new names in the class slot."""
        return self.score_with(self._encode(self.slot_prompts(classes.classnames).to(self.context.device)))

    def _encode(self, prompts: SlotPrompts) -> torch.Tensor:
        slots = self.context.unsqueeze(0).expand(len(prompts), -1, -1)
        return F.normalize(prompts.encode(self.backbone, slots), dim=-1)
