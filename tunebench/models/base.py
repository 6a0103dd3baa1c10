"""The interface every vision-language backbone offers to methods and the runner.

A backbone is two towers plus projections into a shared space:

    pixels --image_tower--> trunk features --image_projection--> joint space
    tokens --token_embedding--> input embeddings --text tower + pooling--> text_projection --> joint space

Methods reach into it at three depths, which is what distinguishes them:
input token embeddings (coop, textual-inversion), parameters inside the towers
(lit, full-ft), and the joint space itself (cones, linear-probe, zero-shot).

The image trunk and the image projection are kept apart so that the runner can cache
trunk features whenever no image-tower parameter trains, while a trainable image
projection still runs live on top of the cache.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Parameter groups every backbone names. `lit` presets are lists of these names.
# "image_norm" is the image tower's normalisation layers (LayerNorms of a ViT, the
# BatchNorm scales and shifts of a CNN): LilT tunes the norms of both towers.
GROUP_NAMES = ("image_tower", "text_tower", "projection", "layernorm", "bias", "attention", "image_norm")
# Groups only detection backbones have: every detector part (FPN, RPN, box and mask heads).
DETECTION_GROUP_NAMES = ("detector_heads",)


@dataclass
class TokenBatch:
    """Padded token ids and their attention mask (1 = real token)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device))

    def __len__(self) -> int:
        return self.input_ids.shape[0]


class VisionLanguageBackbone(nn.Module, ABC):
    """Base class; subclasses set the attributes below in ``__init__``.

    Attributes a subclass must provide:
      image_tower       nn.Module, pixels (N,3,H,W) -> trunk features (N, F)
      image_projection  nn.Module, (N, F) -> (N, D)
      text_tower        nn.Module holding every text parameter except the projection
      text_projection   nn.Module, pooled text (N, W) -> (N, D)
      logit_scale       nn.Parameter, log of the softmax temperature's inverse
      image_mean/std    per-channel normalisation the image tower was trained with
      default_image_size  resolution the tower was trained at
      group_patterns    {group name: regexes over ``named_parameters()`` names}
      content_id        short string that changes whenever the weights change
    """

    image_tower: nn.Module
    image_projection: nn.Module
    text_tower: nn.Module
    text_projection: nn.Module
    logit_scale: nn.Parameter
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    default_image_size: int
    group_patterns: dict[str, tuple[str, ...]]
    content_id: str

    # ---- image side -------------------------------------------------------------
    def encode_image_trunk(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_tower(pixels)

    def project_image(self, trunk_features: torch.Tensor) -> torch.Tensor:
        return self.image_projection(trunk_features)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.project_image(self.encode_image_trunk(pixels))

    def preprocess(self, images: np.ndarray, image_size: int) -> torch.Tensor:
        """uint8 images (N,H,W) or (N,H,W,C) -> normalised float (N,3,S,S).

        Bicubic resize straight to a square: the sources here are already square and
        small (28 px), so cropping would only throw away object pixels.
        """
        x = torch.from_numpy(np.ascontiguousarray(images))
        if x.ndim == 3:
            x = x.unsqueeze(-1)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 4:
            x = x[:, :3]
        if x.shape[-1] != image_size or x.shape[-2] != image_size:
            x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", align_corners=False)
            x = x.clamp_(0.0, 1.0)
        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std).view(1, 3, 1, 1)
        return (x - mean) / std

    # ---- text side --------------------------------------------------------------
    @abstractmethod
    def tokenize(self, texts: list[str]) -> TokenBatch:
        """Padded token ids for a list of strings."""

    @abstractmethod
    def token_embedding(self) -> nn.Embedding:
        """The input token-embedding table of the text tower."""

    @abstractmethod
    def encode_text(
        self, tokens: TokenBatch, inputs_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Projected text features (N, D), not normalised.

        With ``inputs_embeds`` (N, L, W) the token-embedding lookup is skipped and those
        vectors are used instead; ``tokens`` still gives the mask and pooling positions.
        """

    def encode_text_pooled(
        self, tokens: TokenBatch, inputs_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Text features (N, W) before ``text_projection``: ``encode_text`` is the
        projection of this. Lets a frozen text tower's output be computed once."""
        raise NotImplementedError(f"{type(self).__name__} does not expose pooled text features")

    @abstractmethod
    def text_blocks(self) -> list[nn.Module]:
        """The text tower's transformer blocks, in order (bottleneck adapters wrap them)."""

    @property
    def text_width(self) -> int:
        return self.token_embedding().embedding_dim

    @property
    def embed_dim(self) -> int:
        """Width of the joint space."""
        return int(self.encode_text(self.tokenize(["a"])).shape[-1])

    def single_token_id(self, word: str) -> int:
        """Id of a word that the tokenizer keeps as one token (used as a placeholder)."""
        ids = self.word_token_ids(word)
        if len(ids) != 1:
            raise ValueError(f"{word!r} is {len(ids)} tokens for this tokenizer, not one")
        return ids[0]

    @abstractmethod
    def word_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens or padding."""

    # ---- parameters -------------------------------------------------------------
    def parameter_group(self, group: str) -> list[str]:
        """Names of the parameters in a named group (see GROUP_NAMES)."""
        if group not in self.group_patterns:
            from tunebench.errors import ConfigError

            raise ConfigError(f"backbone {self.content_id} has no parameter group {group!r}; "
                              f"it has {', '.join(sorted(self.group_patterns))}")
        patterns = [re.compile(p) for p in self.group_patterns[group]]
        return [n for n, _ in self.named_parameters() if any(p.search(n) for p in patterns)]

    def image_tower_trains(self) -> bool:
        return any(p.requires_grad for p in self.image_tower.parameters())


def module_patterns(root: nn.Module, kinds: type[nn.Module] | tuple[type[nn.Module], ...]) -> tuple[str, ...]:
    """Regexes for the parameters of every ``kinds`` module under ``root``, with block
    indices folded to ``\\d+`` so that one pattern covers a layer in every block."""
    patterns: dict[str, None] = {}
    for name, module in root.named_modules():
        if isinstance(module, kinds) and any(True for _ in module.parameters(recurse=False)):
            parts = [r"\d+" if p.isdigit() else re.escape(p) for p in name.split(".")]
            patterns["^" + r"\.".join(parts) + r"\."] = None
    return tuple(patterns)


def count_parameters(params) -> int:
    """Number of scalar values, counting each shared tensor once."""
    seen: set[int] = set()
    total = 0
    for p in params:
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return total
