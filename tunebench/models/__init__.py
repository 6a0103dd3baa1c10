"""Backbones: each module registers its builders in ``tunebench.registry.BACKBONES``.

A builder has the signature ``build(argument, *, pretrained=None) -> VisionLanguageBackbone``.
"""

from tunebench.models import (  # noqa: F401
    cls_timing,
    hf_clip,
    judge,
    mini_clip,
    mini_det,
    mini_t2i,
    t2i_backbones,
    tiny,
    unaligned,
)

try:  # open_clip is a hard dependency, but keep `tunebench list` usable without it
    from tunebench.models import open_clip_backbone  # noqa: F401
except ImportError:  # pragma: no cover - only when open_clip is not installed
    pass
