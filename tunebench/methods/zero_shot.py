"""zero-shot: class prompts through the text encoder once, no training (CLIP's protocol).

Its class embeddings are the shared start (``start_embeddings``): the sweep's ``init``
says whether that is each class's first template or the mean over all of them.
"""

from __future__ import annotations

import torch

from tunebench.display import Display
from tunebench.methods.base import MethodAdapter
from tunebench.methods.prompts import start_embeddings
from tunebench.registry import METHODS


@METHODS.register("zero-shot")
class ZeroShot(MethodAdapter):
    display = Display(order=0, colour="#555555", marker="*")
    summary = "class prompts (the shared start) through the frozen text encoder; no training"
    trains = False
    tasks = (*MethodAdapter.tasks, "align")  # on align: the towers as they are, the baseline

    def __init__(self, backbone, classes, config) -> None:
        super().__init__(backbone, classes, config)
        # A task without classes (align) evaluates the backbone as it is: no weights.
        weights = start_embeddings(backbone, classes) if classes.classnames else torch.empty(0, 0)
        self.register_buffer("weights", weights)

    def class_embeddings(self) -> torch.Tensor:
        return self.weights

    def new_class_scorer(self, classes):
        """As for any class: the new names' start prompts through the frozen text encoder."""
        return self.score_with(start_embeddings(self.backbone, classes))

    def artifact(self) -> dict[str, torch.Tensor]:
        return {"weights": self.weights.cpu().contiguous()}
