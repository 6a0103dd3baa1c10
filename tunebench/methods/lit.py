"""lit: partial unfreezing by named parameter groups (LiT / LilT / BitFit as presets).

Which parameters train is data: a list of group names that the backbone resolves
to parameter-name patterns, plus optional bottlenecks (group ``bottleneck``, LilT's
"adapters": a down- and up-projection with reduction 4 after each text transformer
block, the up-projection zero-initialised so tuning starts from the pretrained
function). The image tower is locked unless the groups name it (preset ``all``), as
in LiT, which also lets the runner use cached image features.

The presets are the unfreezing ladder of the LilT study: ``projection`` (both towers
frozen), then + ``layernorm``, + ``bias`` (BitFit), + ``attention``, ``lilt``
(bottlenecks + LayerNorms), ``lit`` (locked image, free text tower) and
``all`` (everything, CLIP-style). Pretrained tower weights may take a smaller learning
rate than the new parts (``pretrained_lr_scale`` × lr): projections and bottlenecks start random
or at zero, while a pretrained encoder is easily pushed off what it knows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tunebench.display import Display
from tunebench.methods.base import (
    MethodAdapter,
    MethodConfig,
    hyperparameter,
    learning_rate,
    text_side_trains,
)
from tunebench.methods.prompts import FixedPrompts, start_embeddings
from tunebench.models.base import DETECTION_GROUP_NAMES, GROUP_NAMES
from tunebench.registry import METHODS

# LilT calls these "adapters"; here every method is an adapter, so the group is named
# for what it adds. No committed record or sweep names the group, so no alias is kept.
BOTTLENECK = "bottleneck"
KNOWN_GROUPS = GROUP_NAMES + DETECTION_GROUP_NAMES + (BOTTLENECK,)
PRESETS: dict[str, list[str]] = {
    "lilt": [BOTTLENECK, "layernorm", "projection"],  # LilT's recipe
    "bitfit": ["bias", "projection"],
    "layernorm": ["layernorm", "projection"],
    "attention": ["attention", "projection"],
    "projection": ["projection"],
    "lit": ["text_tower", "projection"],  # LiT: image locked, text tower free
    "all": ["image_tower", "text_tower", "projection"],  # CLIP-style: nothing locked
    "norms": ["layernorm", "image_norm", "projection"],  # LilT's "+LayerNorms", both towers
    # Detection backbones: every detector part + text LayerNorms + both projections.
    "heads": ["detector_heads", "layernorm", "projection"],
}


@dataclass
class LitConfig(MethodConfig):
    lr: float = learning_rate(1e-3)
    preset: str = hyperparameter("lilt", f"named group list, one of {sorted(PRESETS)}")
    groups: list = hyperparameter([], "explicit groups (overrides preset): " + ", ".join(KNOWN_GROUPS))
    lock_image_tower: bool | None = hyperparameter(
        None, "never train image-tower parameters (null: locked unless the groups name image_tower or image_norm)")
    # The name predates the group's rename; it stays because it is in every stored lit
    # cell's config, whose hash it is part of.
    adapter_reduction: int = hyperparameter(4, "bottleneck width = text width / reduction")
    # A multiple of lr, not a rate of its own: lr selection scales both together, so the
    # one chosen number sets the new parts' rate and the pretrained weights' rate.
    pretrained_lr_scale: float = hyperparameter(
        1.0, "pretrained tower weights train at lr x this (e.g. 0.1); projections and bottlenecks use lr")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid: {', '.join(sorted(PRESETS))}")
        if "adapter" in self.groups:  # the group's name before issue 14
            raise ValueError("group 'adapter' is now called 'bottleneck': write groups: [bottleneck, ...]")
        unknown = set(self.groups) - set(KNOWN_GROUPS)
        if unknown:
            raise ValueError(f"unknown groups {sorted(unknown)}; valid: {', '.join(KNOWN_GROUPS)}")
        if self.adapter_reduction < 1:
            raise ValueError("adapter_reduction must be >= 1")
        if not self.pretrained_lr_scale > 0:
            raise ValueError(f"pretrained_lr_scale must be positive, got {self.pretrained_lr_scale}")
        named = {"image_tower", "image_norm"} & set(self.resolved_groups)
        if self.lock_image_tower and named:
            raise ValueError(f"the groups name {sorted(named)} but lock_image_tower is true: drop one")

    @property
    def resolved_groups(self) -> list[str]:
        return list(self.groups) if self.groups else PRESETS[self.preset]

    @property
    def image_tower_locked(self) -> bool:
        if self.lock_image_tower is None:
            return not {"image_tower", "image_norm"} & set(self.resolved_groups)
        return self.lock_image_tower


class Bottleneck(nn.Module):
    """LilT's residual bottleneck MLP on a text block's output, starting as the identity."""

    def __init__(self, width: int, reduction: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, max(1, width // reduction))
        self.up = nn.Linear(max(1, width // reduction), width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(F.gelu(self.down(hidden)))


def _through(bottleneck: Bottleneck):
    """Forward hook passing a block's hidden-state output (tensor or tuple) through ``bottleneck``."""

    def hook(module, args, output):
        if isinstance(output, tuple):
            return (bottleneck(output[0]), *output[1:])
        return bottleneck(output)

    return hook


@METHODS.register("lit")
class Lit(MethodAdapter):
    summary = "partial unfreezing by named groups (presets: " + ", ".join(PRESETS) + ")"
    # One entry per preset (``lit:bitfit``), "" for plain ``lit``; cheapest preset first.
    display = {
        "projection": Display(order=50, colour="#0072B2", marker="s"),
        "layernorm": Display(order=51, colour="#56B4E9", marker="X"),
        "bitfit": Display(order=52, colour="#009E73", marker="^"),
        "norms": Display(order=53, colour="#44AA99", marker=">"),
        "lilt": Display(order=54, colour="#D55E00", marker="o"),
        "attention": Display(order=55, colour="#CC79A7", marker="D"),
        "lit": Display(order=56, colour="#E69F00", marker="v"),
        "heads": Display(order=57, colour="#56B4E9", marker="X"),
        "": Display(order=58, colour="#E69F00", marker="v"),
        "all": Display(order=59, colour="#000000", marker="P"),  # every parameter: black, as full-ft
    }
    config_class = LitConfig
    variant_field = "preset"
    tasks = (*MethodAdapter.tasks, "align")  # what it trains is inside the towers, so it can align them
    chains_from = ("cones",)  # init_from: a ConES run's class embeddings (start_from)

    def __init__(self, backbone, classes, config) -> None:
        super().__init__(backbone, classes, config)
        groups = config.resolved_groups
        image_names = {f"image_tower.{n}" for n, _ in backbone.image_tower.named_parameters()}
        parameters = dict(backbone.named_parameters())
        for group in groups:
            if group == BOTTLENECK:
                continue
            for name in backbone.parameter_group(group):
                if config.image_tower_locked and name in image_names:
                    continue
                parameters[name].requires_grad_(True)
        self.bottlenecks = nn.ModuleList()
        if BOTTLENECK in groups:
            for block in backbone.text_blocks():
                bottleneck = Bottleneck(backbone.text_width, config.adapter_reduction)
                block.register_forward_hook(_through(bottleneck))
                self.bottlenecks.append(bottleneck)
        # Tasks without classes (align) pass none: the method then only tunes the towers.
        # The shared start's prompts (init: ensemble encodes every template each step).
        self.prompts = FixedPrompts(backbone, classes) if classes.classnames else None
        # A frozen text tower (lit:projection) gives the same pooled prompt features every
        # step: encode them once here, which tasks time as training (like ConES's init
        # pass), and only the projection runs per step. On CPU (fp32) the numbers are those
        # of encoding every step; under bf16 autocast the pooled features stay fp32.
        self.register_buffer("pooled", None, persistent=False)
        if self.prompts is not None and not text_side_trains(self):
            with torch.no_grad():
                self.pooled = backbone.encode_text_pooled(self.prompts.tokens)

    def class_embeddings(self) -> torch.Tensor | None:
        if self.prompts is None:
            return None
        return self.prompts.encode(self.backbone, self.pooled)

    def new_class_scorer(self, classes):
        """The new names' start prompts, through the tuned towers (bottlenecks included)."""
        return self.score_with(start_embeddings(self.backbone, classes))

    def start_from(self, tensors):
        """Start at a ConES run's class embeddings (``init_from``): the fixed prompts through
        the tower as it trains, plus a fixed offset that makes step 0 score as that run
        (``FixedPrompts.start_at``)."""
        self.prompts.start_at(self.backbone, tensors["class_embeddings"], self.pooled)

    def optimizer_groups(self) -> list[dict]:
        if self.config.pretrained_lr_scale == 1:
            return super().optimizer_groups()
        # Pretrained weights: both towers, and a built detector's parts.
        towers = ("backbone.image_tower.", "backbone.text_tower.", "backbone.detector.")
        pretrained, new = [], []
        for name, parameter in self.trainable_named_parameters():
            (pretrained if name.startswith(towers) else new).append(parameter)
        decay = self.config.weight_decay
        groups = [{"params": new, "lr": self.config.lr, "weight_decay": decay},
                  {"params": pretrained, "lr": self.config.lr * self.config.pretrained_lr_scale,
                   "weight_decay": decay}]
        return [g for g in groups if g["params"]]
