"""zero-shot: class prompts through the text encoder once, no training (CLIP's protocol)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunebench.display import Display
from tunebench.methods.base import MethodAdapter
from tunebench.registry import METHODS


@torch.no_grad()
def prompt_ensemble_embeddings(backbone, classes) -> torch.Tensor:
    """(C, D) normalised mean of each class's normalised template embeddings, in one pass."""
    prompts = classes.ensemble()
    flat = [p for per_class in prompts for p in per_class]
    text = F.normalize(backbone.encode_text(backbone.tokenize(flat)), dim=-1)
    per_class = text.view(len(prompts), len(prompts[0]), -1).mean(1)
    return F.normalize(per_class, dim=-1)


@METHODS.register("zero-shot")
class ZeroShot(MethodAdapter):
    display = Display(order=0, colour="#555555", marker="*")
    summary = "class-prompt ensemble through the frozen text encoder; no training"
    trains = False
    tasks = (*MethodAdapter.tasks, "align")  # on align: the towers as they are, the baseline

    def __init__(self, backbone, classes, config) -> None:
        super().__init__(backbone, classes, config)
        # A task without classes (align) evaluates the backbone as it is: no weights.
        weights = (prompt_ensemble_embeddings(backbone, classes) if classes.classnames
                   else torch.empty(0, 0))
        self.register_buffer("weights", weights)

    def class_embeddings(self) -> torch.Tensor:
        return self.weights

    def new_class_scorer(self, classes):
        """As for any class: the new names' prompt ensemble through the frozen text encoder."""
        return self.score_with(prompt_ensemble_embeddings(self.backbone, classes))

    def artifact(self) -> dict[str, torch.Tensor]:
        return {"weights": self.weights.cpu().contiguous()}
