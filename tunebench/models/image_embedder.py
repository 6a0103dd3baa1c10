"""A local image model as a whole-image embedder: the DINO score of the generation track.

DreamBooth measures subject fidelity with DINO as well as CLIP-I: a self-supervised ViT
is not trained to ignore what makes one dog differ from another dog, so its cosine
separates "this subject" from "its class" better than CLIP's. No such model ships
with tunebench and nothing is downloaded, so the score runs only when
``task_config.dino_model`` names a Hugging Face folder saved with ``save_pretrained``
(e.g. a copy of ``facebook/dino-vits16``: ``config.json`` and weights, optionally
``preprocessor_config.json``).

An image's embedding is the class token of the last layer (DINO's own image
representation), or the spatial mean for a convolutional model whose last state is a
feature map. Images are resized to the model's ``image_size`` and normalised with the
folder's processor statistics, ImageNet's when it has none.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tunebench.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_image_model_folder(path: str) -> Path:
    """The folder, or a one-line error naming what is missing (no weights are read)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"task_config.dino_model: folder {folder} does not exist (a Hugging Face image model "
                          "saved with save_pretrained, e.g. a local copy of facebook/dino-vits16)")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"task_config.dino_model: {folder} has no config.json: save the model there with "
                          "save_pretrained")
    return folder


class ImageEmbedder(nn.Module):
    def __init__(self, model: nn.Module, *, size: int, mean, std) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.size = size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: np.ndarray, batch_size: int = 64) -> torch.Tensor:
        """uint8 (N, H, W) grey or (N, H, W, 3) -> (N, D) float embeddings on the CPU."""
        out = []
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).float().div_(255.0)
            x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False).clamp_(0, 1)
            x = ((x.to(self.mean.device) - self.mean) / self.std)
            state = self.model(pixel_values=x).last_hidden_state
            out.append((state[:, 0] if state.ndim == 3 else state.mean((-2, -1))).float().cpu())
        return torch.cat(out)


@functools.cache
def load_image_embedder(path: str) -> ImageEmbedder:
    """The model in ``path`` (local files only), built once per process."""
    from transformers import AutoModel

    from tunebench.models.towers import quiet_transformers

    folder = check_image_model_folder(path)
    quiet_transformers()
    try:
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"task_config.dino_model: cannot load an image model from {folder}: {first}") from exc
    processor = folder / "preprocessor_config.json"
    stats = json.loads(processor.read_text()) if processor.is_file() else {}
    size = getattr(model.config, "image_size", None) or 224
    return ImageEmbedder(model, size=int(size if isinstance(size, int) else size[0]),
                         mean=tuple(stats.get("image_mean", IMAGENET_MEAN)),
                         std=tuple(stats.get("image_std", IMAGENET_STD)))
