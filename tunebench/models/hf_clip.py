"""``hf-clip:PATH``: a CLIP saved by Hugging Face transformers, read from a local folder.

``PATH`` is what ``CLIPModel.save_pretrained`` plus ``CLIPProcessor.save_pretrained``
write (or a downloaded ``openai/clip-vit-base-patch16`` snapshot): ``config.json`` with
``model_type: clip``, the weights (``model.safetensors``, ``pytorch_model.bin`` or their
sharded ``*.index.json`` form), the CLIP BPE tokenizer (``tokenizer.json`` or
``vocab.json`` + ``merges.txt``) and ``preprocessor_config.json`` (image mean and std).
Everything is read with ``local_files_only`` and the hub switched off: nothing downloads.

How ``CLIPModel`` maps onto ``VisionLanguageBackbone``:

    image_tower       vision_model, returning its pooled output (the class token after
                      post_layernorm), so image_projection = visual_projection stays
                      outside it and trains live on cached trunk features
    text_tower        text_model (token and position embeddings, encoder, final norm);
                      it pools the features at the first end-of-text token, as CLIP does
    text_projection   text_projection
    logit_scale       logit_scale

Prompt learners hand ``inputs_embeds``, which ``text_model`` does not take: a forward hook
on its token-embedding table swaps the lookup's output for them for that one call, so
masking and pooling stay transformers' own. The modules are the ``CLIPModel``'s, shared;
the model itself is not registered (``state_dict`` would list every tensor twice) and
stays reachable as ``hf_model``.

The ViT's positional embedding fits one image size (``vision_config.image_size``); a sweep
asking for another stops before any cell runs. Detection (``det:hf-clip:PATH``) is refused:
the detector taps multi-scale CNN maps, which a ViT does not have.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tunebench.errors import ConfigError
from tunebench.models.base import TokenBatch, VisionLanguageBackbone, module_patterns
from tunebench.models.checkpoints import file_digest
from tunebench.models.towers import quiet_transformers
from tunebench.registry import BACKBONES

# Looked for in transformers' own order of preference: safetensors before pickles.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# What CLIPImageProcessor assumes when a preprocessor config leaves mean or std out.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_SAVE_HINT = "save one with CLIPModel.save_pretrained and CLIPProcessor.save_pretrained"
# Configs written before transformers PR #24773 say eos_token_id 2; transformers then
# pools at the largest token id, which the CLIP vocabulary makes the end-of-text token.
_LEGACY_EOS_ID = 2


# ---- the folder ---------------------------------------------------------------------
@dataclass(frozen=True)
class HfClipFolder:
    """What a valid folder holds, read without loading any weights."""

    path: Path
    config: dict
    weights: tuple[Path, ...]
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

    @property
    def image_size(self) -> int:
        from transformers import CLIPVisionConfig

        vision = self.config.get("vision_config") or {}
        return int(vision.get("image_size", CLIPVisionConfig().image_size))


def read_folder(argument: str) -> HfClipFolder:
    """Check every file the backbone needs; a one-line ConfigError names the first gap."""
    path = Path(argument).expanduser()
    where = f"hf-clip:{argument}"
    if not path.is_dir():
        raise ConfigError(f"{where}: no such folder (pass the folder a CLIPModel was saved to)")
    config = _read_json(path / "config.json", where)
    model_type = config.get("model_type")
    if model_type != "clip":
        raise ConfigError(f"{where}: config.json is for model_type {model_type!r}, not a CLIP checkpoint "
                          "(hf-clip needs a CLIPModel folder, model_type 'clip')")
    weights = _weight_files(path, where)
    if not (path / "tokenizer.json").is_file() and not (
        (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
    ):
        raise ConfigError(f"{where}: no CLIP tokenizer (tokenizer.json, or vocab.json + merges.txt); "
                          f"{_SAVE_HINT}")
    processor = _read_json(path / "preprocessor_config.json", where)
    return HfClipFolder(path, config, weights, _triple(processor, "image_mean", OPENAI_CLIP_MEAN, where),
                        _triple(processor, "image_std", OPENAI_CLIP_STD, where))


def _read_json(file: Path, where: str) -> dict:
    if not file.is_file():
        raise ConfigError(f"{where}: {file.name} is missing; {_SAVE_HINT}")
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot read {file.name} ({type(exc).__name__})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {file.name} holds a {type(data).__name__}, not a JSON object")
    return data


def _weight_files(path: Path, where: str) -> tuple[Path, ...]:
    for name in WEIGHT_FILES:
        file = path / name
        if not file.is_file():
            continue
        if not name.endswith(".index.json"):
            return (file,)
        shards = sorted(set(_read_json(file, where).get("weight_map", {}).values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if not shards or missing:
            raise ConfigError(f"{where}: {name} names shards that are missing "
                              f"({missing[0] if missing else 'none listed'})")
        return tuple(path / s for s in shards)
    raise ConfigError(f"{where}: no weights ({' or '.join(WEIGHT_FILES[::2])}); {_SAVE_HINT}")


def _triple(processor: dict, key: str, default: tuple, where: str) -> tuple[float, float, float]:
    value = processor.get(key, default)
    if not (isinstance(value, list | tuple) and len(value) == 3):
        raise ConfigError(f"{where}: preprocessor_config.json {key} must be 3 numbers, got {value!r}")
    return tuple(float(v) for v in value)


def weights_digest(files: tuple[Path, ...]) -> str:
    """Content digest of the weights; a sharded checkpoint digests its shards' digests."""
    if len(files) == 1:
        return file_digest(files[0])
    joined = ",".join(file_digest(f) for f in files)
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


# ---- the towers ---------------------------------------------------------------------
class PooledImageTower(nn.Module):
    """CLIP's vision transformer returning its pooled output (N, hidden) as a tensor."""

    def __init__(self, vision_model: nn.Module) -> None:
        super().__init__()
        self.vision = vision_model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision(pixel_values=pixels).pooler_output


@contextmanager
def _embeddings_replaced(table: nn.Embedding, inputs_embeds: torch.Tensor | None) -> Iterator[None]:
    """For the calls inside, ``table``'s lookup returns ``inputs_embeds`` instead."""
    if inputs_embeds is None:
        yield
        return

    def swap(_module, args, output):
        if output.shape != inputs_embeds.shape:
            raise ValueError(f"inputs_embeds {tuple(inputs_embeds.shape)} does not match the token "
                             f"lookup {tuple(output.shape)}")
        return inputs_embeds.to(output.dtype)

    handle = table.register_forward_hook(swap)
    try:
        yield
    finally:
        handle.remove()  # never left on the module, where a deep copy would carry it


# ---- the backbone -------------------------------------------------------------------
class HfClipBackbone(VisionLanguageBackbone):
    def __init__(self, clip: nn.Module, *, tokenizer, folder: HfClipFolder, content_id: str) -> None:
        super().__init__()
        object.__setattr__(self, "_clip", clip)  # shared, not registered: see module docstring
        self.image_tower = PooledImageTower(clip.vision_model)
        self.image_projection = clip.visual_projection
        self.text_tower = clip.text_model
        self.text_projection = clip.text_projection
        self.logit_scale = clip.logit_scale
        self.tokenizer = tokenizer
        self.context_length = int(clip.config.text_config.max_position_embeddings)
        self.image_mean, self.image_std = folder.image_mean, folder.image_std
        self.default_image_size = folder.image_size
        self.content_id = content_id
        norms = module_patterns(self, nn.LayerNorm)
        self.group_patterns = {
            "image_tower": (r"^image_tower\.",),
            "text_tower": (r"^text_tower\.",),
            # Only the maps into the joint space; the towers end in their final norms.
            "projection": (r"^image_projection\.", r"^text_projection\."),
            "layernorm": norms,  # every LayerNorm of both towers, as in LiT/LilT
            "image_norm": tuple(p for p in norms if p.startswith(r"^image_tower\.")),
            "bias": (r"\.bias$",),
            "attention": (r"\.self_attn\.(q_proj|k_proj|v_proj|out_proj)\.",),
        }

    @property
    def hf_model(self) -> nn.Module:
        """The wrapped ``CLIPModel`` (its parameters are this backbone's)."""
        return self._clip

    # ---- text ------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> TokenBatch:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.context_length,
                             return_tensors="pt")
        return TokenBatch(enc["input_ids"], enc["attention_mask"])

    def word_token_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def token_embedding(self) -> nn.Embedding:
        return self.text_tower.embeddings.token_embedding

    def text_blocks(self) -> list[nn.Module]:
        return list(self.text_tower.encoder.layers)

    def encode_text(self, tokens: TokenBatch, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        return self.text_projection(self.encode_text_pooled(tokens, inputs_embeds))

    def encode_text_pooled(self, tokens: TokenBatch, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        tokens = tokens.to(self.logit_scale.device)
        with _embeddings_replaced(self.token_embedding(), inputs_embeds):
            out = self.text_tower(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        return out.pooler_output


def _check_pooling_token(clip: nn.Module, tokenizer, where: str) -> None:
    """transformers pools at config.eos_token_id: it must be the tokenizer's end of text."""
    eos = clip.config.text_config.eos_token_id
    if eos == _LEGACY_EOS_ID:
        if tokenizer.eos_token_id != len(tokenizer) - 1:
            raise ConfigError(f"{where}: config.json has the legacy eos_token_id 2 (pool at the largest id) but "
                              f"the tokenizer's end-of-text id {tokenizer.eos_token_id} is not the largest")
    elif eos != tokenizer.eos_token_id:
        raise ConfigError(f"{where}: text_config.eos_token_id {eos} is not the tokenizer's end-of-text id "
                          f"{tokenizer.eos_token_id}; the folder mixes two checkpoints")


def _load(folder: HfClipFolder, where: str):
    """(CLIPModel in float32, CLIPTokenizer), from local files only."""
    quiet_transformers()
    from transformers import CLIPModel, CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder.path, local_files_only=True)
        # Mismatched shapes are reported in `info` (below) rather than raised as a long error.
        clip, info = CLIPModel.from_pretrained(folder.path, local_files_only=True, dtype=torch.float32,
                                               ignore_mismatched_sizes=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(f"{where}: cannot load the CLIP checkpoint ({type(exc).__name__}: {first})") from exc
    # transformers fills missing or mis-shaped tensors with random values and only warns.
    gaps = [f"{k} missing" for k in sorted(info.get("missing_keys", ()))]
    gaps += [f"{k[0]} {tuple(k[1])} vs {tuple(k[2])}" if isinstance(k, tuple) else str(k)
             for k in sorted(info.get("mismatched_keys", ()), key=str)]
    if gaps:
        raise ConfigError(f"{where}: the weights do not fit config.json ({len(gaps)} tensors missing or of "
                          f"another shape, e.g. {gaps[0]}); {_SAVE_HINT}")
    _check_pooling_token(clip, tokenizer, where)
    return clip.eval(), tokenizer


def _refuse_pretrained(where: str, pretrained: str | None) -> None:
    if pretrained:
        raise ConfigError(f"{where} takes its weights from the folder: drop --pretrained {pretrained}")


# ---- registration -------------------------------------------------------------------
@BACKBONES.register("hf-clip:")
def build_hf_clip(argument: str, *, pretrained: str | None = None) -> HfClipBackbone:
    """A transformers CLIPModel from a local folder (weights, tokenizer, preprocessing)."""
    where = f"hf-clip:{argument}"
    _refuse_pretrained(where, pretrained)
    folder = read_folder(argument)
    clip, tokenizer = _VALIDATED.pop(_files_key(folder), None) or _load(folder, where)
    content_id = f"hf-clip-{weights_digest(folder.weights)}"
    return HfClipBackbone(clip, tokenizer=tokenizer, folder=folder, content_id=content_id).eval()


# (model, tokenizer) loaded by validation, keyed by the folder's weight files, handed to
# the first build of that folder: a sweep's cells on one folder load it once. (A Ray
# driver validates but never builds; it keeps this copy until it exits.)
_VALIDATED: dict[tuple, tuple] = {}


def _files_key(folder: HfClipFolder) -> tuple:
    return (folder.path.resolve(), *((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.weights))


def check_hf_clip(config) -> None:
    """Before a sweep starts: the folder loads as a CLIP and train.image_size fits its ViT.

    The model is loaded here, because weights that do not fit their config.json would
    otherwise fail each cell instead of the sweep; the first build takes it over."""
    _, argument = BACKBONES.resolve(config.backbone)
    _refuse_pretrained(config.backbone, config.pretrained)
    folder = read_folder(argument)
    if config.train.image_size != folder.image_size:
        raise ConfigError(f"{config.backbone} is a ViT whose positional embedding fits {folder.image_size} px "
                          f"images: set train.image_size to {folder.image_size}, not {config.train.image_size}")
    key = _files_key(folder)
    if key not in _VALIDATED:
        _VALIDATED[key] = _load(folder, f"hf-clip:{argument}")


build_hf_clip.check = check_hf_clip
build_hf_clip.is_vit = lambda argument: True  # CLIPModel has only ViT image towers
