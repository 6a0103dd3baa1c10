"""lit: partial unfreezing by named parameter groups (LiT / LilT / BitFit as presets).

Which parameters train is data: a list of group names that the backbone resolves
to parameter-name patterns, plus optional bottleneck adapters (LilT: a down- and
up-projection with reduction 4 after each text transformer block, the up-projection
zero-initialised so tuning starts from the pretrained function). The image tower is
locked by default, as in LiT, which also lets the runner use cached image features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tunebench.methods.base import MethodAdapter, MethodConfig, hyperparameter
from tunebench.methods.prompts import FixedPrompts
from tunebench.models.base import GROUP_NAMES
from tunebench.registry import METHODS

ADAPTER = "adapter"
PRESETS: dict[str, list[str]] = {
    "lilt": [ADAPTER, "layernorm", "projection"],  # LilT's recipe
    "bitfit": ["bias", "projection"],
    "layernorm": ["layernorm", "projection"],
    "attention": ["attention", "projection"],
    "projection": ["projection"],
    "lit": ["text_tower", "projection"],  # LiT: image locked, text tower free
}


@dataclass
class LitConfig(MethodConfig):
    lr: float = hyperparameter(1e-3, "peak learning rate (AdamW, cosine schedule)")
    preset: str = hyperparameter("lilt", f"named group list, one of {sorted(PRESETS)}")
    groups: list = hyperparameter([], "explicit groups (overrides preset): " + ", ".join(GROUP_NAMES + (ADAPTER,)))
    lock_image_tower: bool = hyperparameter(True, "never train image-tower parameters (LiT)")
    adapter_reduction: int = hyperparameter(4, "bottleneck adapter width = text width / reduction")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid: {', '.join(sorted(PRESETS))}")
        unknown = set(self.groups) - set(GROUP_NAMES) - {ADAPTER}
        if unknown:
            raise ValueError(f"unknown groups {sorted(unknown)}; valid: {', '.join(GROUP_NAMES + (ADAPTER,))}")
        if self.adapter_reduction < 1:
            raise ValueError("adapter_reduction must be >= 1")

    @property
    def resolved_groups(self) -> list[str]:
        return list(self.groups) if self.groups else PRESETS[self.preset]


class BottleneckAdapter(nn.Module):
    def __init__(self, width: int, reduction: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, max(1, width // reduction))
        self.up = nn.Linear(max(1, width // reduction), width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(F.gelu(self.down(hidden)))


def _adapt_output(adapter: BottleneckAdapter):
    """Forward hook applying ``adapter`` to a block's hidden-state output (tensor or tuple)."""

    def hook(module, args, output):
        if isinstance(output, tuple):
            return (adapter(output[0]), *output[1:])
        return adapter(output)

    return hook


@METHODS.register("lit")
class Lit(MethodAdapter):
    summary = "partial unfreezing by named groups (presets: " + ", ".join(PRESETS) + ")"
    config_class = LitConfig

    def __init__(self, backbone, classes, config) -> None:
        super().__init__(backbone, classes, config)
        groups = config.resolved_groups
        image_names = {f"image_tower.{n}" for n, _ in backbone.image_tower.named_parameters()}
        parameters = dict(backbone.named_parameters())
        for group in groups:
            if group == ADAPTER:
                continue
            for name in backbone.parameter_group(group):
                if config.lock_image_tower and name in image_names:
                    continue
                parameters[name].requires_grad_(True)
        self.adapters = nn.ModuleList()
        if ADAPTER in groups:
            for block in backbone.text_blocks():
                adapter = BottleneckAdapter(backbone.text_width, config.adapter_reduction)
                block.register_forward_hook(_adapt_output(adapter))
                self.adapters.append(adapter)
        self.prompts = FixedPrompts(backbone, [classes.templates[0].format(c) for c in classes.classnames])

    def class_embeddings(self) -> torch.Tensor:
        return F.normalize(self.prompts.encode(self.backbone), dim=-1)
