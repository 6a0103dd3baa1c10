"""``open_clip:<ARCH>``: open_clip's CLIP models as a backbone, with weights from local files only.

``ARCH`` is an open_clip architecture name (``open_clip:ViT-B-32``, ``open_clip:RN50``;
list them with ``python -c "import open_clip; print(open_clip.list_models())"``) or the
path of an open_clip model-config JSON, which is registered under its file stem. The
shipped ``open_clip:tiny-open-clip`` (configs/tiny-open-clip.json, ~1.7M parameters,
most of them the token table) runs the real code path in tests.

Weights come only from ``pretrained``, a local state dict (.pt/.bin/.pth/.safetensors,
open_clip key names or this backbone's). We read it ourselves and call
``load_state_dict``, so no code path can reach a hub; without it the model is a seeded
random init and a warning says its numbers mean nothing.

How the open_clip ``CLIP`` maps onto ``VisionLanguageBackbone``:

    image_tower       model.visual. Its output is already in the joint space (the ViT's
                      ``proj``, the ResNet's attention-pool ``c_proj`` or the timm head
                      sit inside), so image_projection is Identity: the runner caches
                      image_tower outputs only while no image_tower parameter trains.
    text_tower        token_embedding, positional_embedding, transformer, ln_final
    text_projection   model.text_projection (a bare matrix, wrapped in a module)
    logit_scale       model.logit_scale

The modules and parameters are shared with the CLIP model, not copied. The CLIP model
itself is deliberately *not* a registered submodule: ``state_dict()`` does not drop
duplicates the way ``named_parameters()`` does, so registering it would save every
tensor twice. It stays reachable as ``open_clip_model``.

Only the ``CLIP`` class with open_clip's own text transformer and CLIP BPE tokenizer
is supported; CustomTextCLIP (Hugging Face text towers), CoCa, SigLIP and the CLIPA /
worldwide configs (Hugging Face tokenizers, which would be downloaded) are refused.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIP, CLIPVisionCfg
from open_clip.modified_resnet import ModifiedResNet
from open_clip.timm_model import TimmModel
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import VisionTransformer, text_global_pool
from torch import nn

from tunebench.errors import ConfigError
from tunebench.models.base import TokenBatch, VisionLanguageBackbone, module_patterns
from tunebench.models.checkpoints import file_digest, load_state_file, state_mismatches
from tunebench.registry import BACKBONES

CONFIG_DIR = Path(__file__).parent / "configs"
_LIST_HINT = (
    'List the valid names with: python -c "import open_clip; print(open_clip.list_models())"'
)
_OPEN_CLIP_DIR = str(Path(open_clip.__file__).parent)
_BACKBONE_PREFIXES = ("image_tower.", "text_tower.", "text_projection.", "image_projection.")

# Shipped configs (tiny-open-clip) become ordinary open_clip architecture names.
open_clip.add_model_config(CONFIG_DIR)


# ---- resolving the architecture -----------------------------------------------------
def resolve_arch(argument: str) -> str:
    """The open_clip architecture name for ``argument`` (a name or a config-file path)."""
    if argument.startswith(("hf-hub:", "local-dir:")):
        raise ConfigError(
            f"open_clip source {argument!r} is not supported (tunebench never downloads); "
            "pass an architecture name and --pretrained with a local checkpoint"
        )
    if argument.endswith(".json") or Path(argument).expanduser().is_file():
        return _register_config_file(Path(argument).expanduser())
    names = open_clip.list_models()
    name = argument.replace("/", "-")  # open_clip also accepts "ViT-B/32"
    if name in names:
        return name
    folded = {n.lower(): n for n in names}
    if name.lower() in folded:
        return folded[name.lower()]
    close = difflib.get_close_matches(name.lower(), list(folded), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(folded[c] for c in close)}?" if close else ""
    raise ConfigError(f"unknown open_clip architecture {argument!r}.{hint} {_LIST_HINT}")


def _register_config_file(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(
            f"open_clip model config not found: {path} (pass an architecture name or an existing .json file)"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read open_clip model config {path}: {exc}") from exc
    if not (isinstance(config, dict) and {"embed_dim", "vision_cfg", "text_cfg"} <= config.keys()):
        raise ConfigError(
            f"{path} is not an open_clip model config (it needs embed_dim, vision_cfg and text_cfg at the top level)"
        )
    known = open_clip.get_model_config(path.stem)
    if known is not None and known != config:
        raise ConfigError(
            f"open_clip already has a different config named {path.stem!r}; rename {path.name}"
        )
    open_clip.add_model_config(path.resolve())
    return path.stem


def _check_supported(arch: str, config: dict) -> None:
    """Refuse, before building anything, the model families this backbone cannot serve."""
    text_cfg = config.get("text_cfg", {})
    reason = None
    if "multimodal_cfg" in config:
        reason = "is a CoCa model"
    elif text_cfg.get("hf_model_name"):
        reason = "uses a Hugging Face text tower"
    elif config.get("custom_text"):
        reason = "is a CustomTextCLIP model"
    elif text_cfg.get("hf_tokenizer_name") or "siglip" in arch.lower():
        reason = "needs a Hugging Face tokenizer that would have to be downloaded"
    elif config.get("init_logit_bias") is not None:
        reason = "is a sigmoid-loss model with a logit bias"
    if reason:
        raise ConfigError(
            f"open_clip {arch} {reason}, which tunebench does not support yet; "
            "pick a CLIP architecture such as ViT-B-32 or RN50"
        )


def vit_image_sizes(arch: str) -> range | None:
    """The square image sizes a ViT tower takes, or None when it is not an open_clip ViT.

    Its positional embedding has one row per patch of the grid it was built for, and
    open_clip does not interpolate it: ``size // patch_size`` must give that grid.
    """
    vision = CLIPVisionCfg(**(open_clip.get_model_config(arch) or {}).get("vision_cfg", {}))
    if vision.timm_model_name or isinstance(vision.layers, tuple | list):
        return None  # a timm trunk or a ModifiedResNet
    size, patch = vision.image_size, vision.patch_size
    if not (isinstance(size, int) and isinstance(patch, int)):
        return None  # non-square: the backbone refuses it when built
    grid = size // patch
    return range(grid * patch, (grid + 1) * patch)


def check_image_size(config) -> None:
    """Refuse, before a sweep starts, a train.image_size the ViT cannot take."""
    _, argument = BACKBONES.resolve(config.backbone)
    sizes = vit_image_sizes(resolve_arch(argument))
    if sizes is None or config.train.image_size in sizes:
        return
    raise ConfigError(
        f"{config.backbone} is a ViT whose positional embedding fits {sizes.start}-{sizes.stop - 1} px "
        f"images: set train.image_size to {sizes.start}, not {config.train.image_size}"
    )


# ---- building -----------------------------------------------------------------------
class _DropOpenClipRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.pathname.startswith(_OPEN_CLIP_DIR)


@contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Hide open_clip's root-logger chatter while building.

    ``create_model`` logs "No pretrained weights loaded ... initialized randomly" even
    when we load a checkpoint ourselves right after; that line would be false.
    """
    root = logging.getLogger()
    record_filter = _DropOpenClipRecords()
    root.addFilter(record_filter)
    try:
        yield
    finally:
        root.removeFilter(record_filter)


def _create_clip(arch: str) -> CLIP:
    # Seeded and on a forked generator: the random init is the same in every process
    # (so "random-init-ARCH" names one set of weights) and the caller's RNG is untouched.
    with _quiet_open_clip(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model(
            arch,
            pretrained=None,
            pretrained_image=False,  # timm trunks: never fetch ImageNet weights
            pretrained_text=False,
            require_pretrained=False,
        )
    if type(model) is not CLIP:
        raise ConfigError(
            f"open_clip {arch} builds a {type(model).__name__}, which tunebench does not support yet; "
            "pick a CLIP architecture such as ViT-B-32 or RN50"
        )
    return model


# ---- the text side as modules -------------------------------------------------------
class OpenClipTextTower(nn.Module):
    """open_clip's text transformer up to pooling, sharing the CLIP model's modules.

    Unlike ``CLIP.encode_text`` it accepts input embeddings in place of the token lookup
    and sequences shorter than the context length.
    """

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        # Additive float mask (0 on and below the diagonal, -inf above), or None for
        # configs with no_causal_mask. Not saved: it is rebuilt from the config.
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.pool_type = clip.text_pool_type
        self.eos_id = clip.text_eos_id

    def forward(
        self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pooled text features (N, width), before the projection."""
        x = self.token_embedding(input_ids) if inputs_embeds is None else inputs_embeds
        if x.shape[:2] != input_ids.shape:
            raise ValueError(
                f"inputs_embeds {tuple(x.shape)} does not match input_ids {tuple(input_ids.shape)}"
            )
        length = x.shape[1]
        if length > self.positional_embedding.shape[0]:
            raise ValueError(
                f"{length} tokens exceed the context length {self.positional_embedding.shape[0]}"
            )
        dtype = self.transformer.get_cast_dtype()
        x = x.to(dtype) + self.positional_embedding[:length].to(dtype)
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        # open_clip 3.x blocks are batch-first: the transformer takes (N, L, W) as is.
        x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        return text_global_pool(x, input_ids, self.pool_type, eos_token_id=self.eos_id)


class MatrixProjection(nn.Module):
    """``x @ matrix`` for open_clip's bare-parameter projections (matrix is width x embed_dim)."""

    def __init__(self, matrix: nn.Parameter) -> None:
        super().__init__()
        self.matrix = matrix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.matrix


def _wrap_text_projection(projection: nn.Parameter | nn.Module | None) -> nn.Module:
    if projection is None:  # proj_type "none": the pooled width is the joint space
        return nn.Identity()
    if isinstance(projection, nn.Module):  # nn.Linear when the config asks for a bias
        return projection
    return MatrixProjection(projection)


# ---- the backbone -------------------------------------------------------------------
class OpenClipBackbone(VisionLanguageBackbone):
    def __init__(
        self, clip: CLIP, *, arch: str, tokenizer: SimpleTokenizer, content_id: str
    ) -> None:
        super().__init__()
        object.__setattr__(self, "_clip", clip)  # shared, not registered: see module docstring
        self.arch = arch
        self.image_tower = clip.visual
        self.image_projection = nn.Identity()
        self.text_tower = OpenClipTextTower(clip)
        self.text_projection = _wrap_text_projection(clip.text_projection)
        self.logit_scale = clip.logit_scale
        self.tokenizer = tokenizer
        cfg = open_clip.get_model_preprocess_cfg(clip)
        self.image_mean = tuple(float(v) for v in cfg["mean"])
        self.image_std = tuple(float(v) for v in cfg["std"])
        size = cfg["size"]
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        if height != width:
            raise ConfigError(
                f"open_clip {arch} expects {height}x{width} images; tunebench needs square ones"
            )
        self.default_image_size = int(height)
        self.content_id = content_id
        self.group_patterns = open_clip_group_patterns(self)

    @property
    def open_clip_model(self) -> CLIP:
        """The wrapped open_clip model (its parameters are this backbone's)."""
        return self._clip

    # ---- text ------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> TokenBatch:
        ids = self.tokenizer(list(texts))  # (N, context_length): truncated or zero-padded
        # Real tokens are SOT..EOT. Not `ids != 0`: id 0 is "!" in the CLIP vocabulary.
        # EOT is the largest id in every row (what CLIP's argmax pooling relies on).
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        mask = (positions <= ids.argmax(dim=-1, keepdim=True)).long()
        return TokenBatch(ids, mask)

    def word_token_ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def token_embedding(self) -> nn.Embedding:
        return self.text_tower.token_embedding

    def text_blocks(self) -> list[nn.Module]:
        # open_clip calls each as block(x, attn_mask=mask) with x batch-first (N, L, W).
        return list(self.text_tower.transformer.resblocks)

    def encode_text(
        self, tokens: TokenBatch, inputs_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.text_projection(self.encode_text_pooled(tokens, inputs_embeds))

    def encode_text_pooled(
        self, tokens: TokenBatch, inputs_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.text_tower(tokens.input_ids.to(self.logit_scale.device), inputs_embeds)

    # ---- weights ---------------------------------------------------------------------
    def load_checkpoint(self, path: Path) -> None:
        """Load a local state dict strictly; a checkpoint that does not fit is a ConfigError."""
        state = self._open_clip_keys(load_state_file(path))
        expected = self._clip.state_dict()
        scale = state.get("logit_scale")
        if scale is not None and scale.ndim != expected["logit_scale"].ndim:  # () vs (1,)
            state["logit_scale"] = scale.reshape(expected["logit_scale"].shape)
        problems = state_mismatches(state, expected)
        if problems:
            raise ConfigError(
                f"checkpoint {path} does not fit open_clip {self.arch}: {problems}; "
                "pass the architecture it was trained with"
            )
        self._clip.load_state_dict(state, strict=True)
        self.content_id = file_digest(path)

    def _open_clip_keys(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Undo DataParallel's ``module.`` prefix and map this backbone's names to open_clip's."""
        if state and all(k.startswith("module.") for k in state):
            state = {k[len("module.") :]: v for k, v in state.items()}
        if not any(k.startswith(_BACKBONE_PREFIXES) for k in state):
            return dict(state)
        clip_names = {id(t): n for n, t in self._clip.state_dict(keep_vars=True).items()}
        renames = {n: clip_names[id(t)] for n, t in self.state_dict(keep_vars=True).items()}
        return {renames.get(k, k): v for k, v in state.items()}


def open_clip_group_patterns(backbone: OpenClipBackbone) -> dict[str, tuple[str, ...]]:
    """The named parameter groups (see base.GROUP_NAMES) for this backbone's towers.

    projection: only the last maps into the joint space: ``proj`` of a ViT, the
      attention pool's output ``c_proj`` of a ModifiedResNet (the layer that maps to
      embed_dim; its q/k/v stay in the tower), the head of a timm trunk, and the text
      projection. These also belong to image_tower: groups may overlap.
    layernorm: every LayerNorm in either tower, as in LiT/LilT (a ResNet's BatchNorms
      are not layer norms and are left out).
    bias: every bias, including MultiheadAttention's fused ``in_proj_bias``.
    attention: the attention layers' input and output projections (weights and biases).
    """
    visual = backbone.image_tower
    projection = [r"^text_projection\."]
    attention = [r"\.attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)$"]
    if isinstance(visual, VisionTransformer):
        projection.append(r"^image_tower\.proj$")
    elif isinstance(visual, ModifiedResNet):
        projection.append(r"^image_tower\.attnpool\.c_proj\.")
        attention.append(r"^image_tower\.attnpool\.[qkvc]_proj\.")
    elif isinstance(visual, TimmModel):
        projection.append(r"^image_tower\.head\.(proj|mlp)\.")
        trunk_attention = r"^image_tower\.trunk\..*\.attn\.(qkv|proj)\."
        if any(re.search(trunk_attention, n) for n, _ in backbone.named_parameters()):
            attention.append(trunk_attention)  # timm ViT/Swin trunks; ConvNeXt has none
    return {
        "image_tower": (r"^image_tower\.",),
        "text_tower": (r"^text_tower\.",),
        "projection": tuple(projection),
        "layernorm": module_patterns(backbone, nn.LayerNorm),
        "image_norm": tuple(p for p in module_patterns(backbone, (nn.LayerNorm, nn.BatchNorm2d))
                            if p.startswith(r"^image_tower\.")),
        "bias": (r"[._]bias$",),
        "attention": tuple(attention),
    }


# ---- registration -------------------------------------------------------------------
@BACKBONES.register("open_clip:")
def build_open_clip(argument: str, *, pretrained: str | None = None) -> OpenClipBackbone:
    """An open_clip CLIP; ``pretrained`` is a local checkpoint file, never a hub tag."""
    arch = resolve_arch(argument)
    checkpoint = None
    if pretrained:
        checkpoint = Path(pretrained).expanduser()
        if not checkpoint.is_file():
            tag_note = ""
            if pretrained in open_clip.list_pretrained_tags_by_model(arch):
                tag_note = (
                    f"; {pretrained!r} is an open_clip download tag and tunebench never downloads"
                )
            raise ConfigError(
                f"checkpoint not found: {pretrained} (pass --pretrained with a local open_clip checkpoint{tag_note})"
            )
    _check_supported(arch, open_clip.get_model_config(arch) or {})  # before anything could download
    tokenizer = open_clip.get_tokenizer(arch)
    if not isinstance(tokenizer, SimpleTokenizer):
        raise ConfigError(
            f"open_clip {arch} does not use the CLIP BPE tokenizer; tunebench does not support it yet"
        )
    backbone = OpenClipBackbone(
        _create_clip(arch), arch=arch, tokenizer=tokenizer, content_id=f"random-init-{arch}"
    )
    if checkpoint is None:
        warnings.warn(
            f"open_clip:{arch} has random weights (no --pretrained checkpoint): "
            "its results mean nothing beyond testing the pipeline",
            stacklevel=2,
        )
    else:
        backbone.load_checkpoint(checkpoint)
    return backbone.eval()


build_open_clip.check = check_image_size
# Whether the image tower is a ViT (detectors refuse those: see mini_det).
build_open_clip.is_vit = lambda argument: vit_image_sizes(resolve_arch(argument)) is not None
