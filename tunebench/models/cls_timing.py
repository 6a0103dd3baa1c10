"""``cls-timing:TOWER[-ctxN]``: random-weight classification backbones for step timing only.

The cost-scaling study (``bench-cost*.yaml``, ``docs/cost.md``) asks how each method's
cost grows with the text side, so these backbones pair a toy image tower (tiny-clip's
3-layer CNN, ~6k parameters, 32 px) with a text tower of a real size:

    minilm    all-MiniLM-L6-v2's shape (6 layers, width 384; BERT, MiniLM's tokenizer)
    bertbase  BERT-base's shape (12 layers, width 768)
    clipvitb  the text tower of open_clip's ViT-B-32 config (12 layers, width 512,
              CLIP's BPE tokenizer), read from open_clip's model configs
    tiny      tiny-clip's 2-layer, 32-wide BERT: the same code path in tests

Every prompt is padded (or cut) to exactly N tokens (default 16), so all methods see
the same sequence length and ``-ctxN`` is the prompt-length axis. The joint space is
512 wide for all three (CLIP ViT-B's), so only the text tower differs between them.

Weights are random (seed 0, the same in every process) and nothing is downloaded: the
backbone sets ``timing_only``, and the classification task then records sizes and
times but no score (``tasks/classification.py``).
"""

from __future__ import annotations

import torch

from tunebench.errors import ConfigError
from tunebench.models.base import TokenBatch
from tunebench.models.t2i_backbones import TEXT_SIZES
from tunebench.models.tiny import TinyConvTower
from tunebench.models.two_tower import TwoTowerClip
from tunebench.registry import BACKBONES

TOWERS = ("minilm", "bertbase", "clipvitb", "tiny")
DEFAULT_TOKENS = 16
MAX_TOKENS = 77  # CLIP's context length; the BERT towers get position rows for it
EMBED_DIM = 512
IMAGE_SIZE = 32
IMAGE_FEATURES = 32
OPEN_CLIP_TEXT_FROM = "ViT-B-32"  # whose text_cfg ``clipvitb`` takes


class FixedLengthClip(TwoTowerClip):
    """A two-tower CLIP whose prompts are all padded to ``max_length`` tokens."""

    def tokenize(self, texts: list[str]) -> TokenBatch:
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return TokenBatch(enc["input_ids"], enc["attention_mask"])


def parse(argument: str) -> tuple[str, int]:
    """``bertbase-ctx32`` -> ("bertbase", 32); ``minilm`` -> ("minilm", 16)."""
    tower, _, length = argument.partition("-ctx")
    ok = tower in TOWERS and (not length or (length.isdigit() and 4 <= int(length) <= MAX_TOKENS))
    if not ok:
        raise ConfigError(f"cls-timing:{argument}: expected TOWER or TOWER-ctxN with TOWER in "
                          f"{', '.join(TOWERS)} and N (tokens per prompt) from 4 to {MAX_TOKENS}")
    return tower, int(length) if length else DEFAULT_TOKENS


def _bert_clip(tower: str, tokens: int):
    from transformers import BertConfig, BertModel

    from tunebench.models.towers import load_minilm_tokenizer, quiet_transformers

    quiet_transformers()
    tokenizer = load_minilm_tokenizer()
    text = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=MAX_TOKENS + 1,
                                **TEXT_SIZES[tower]), add_pooling_layer=False)
    return FixedLengthClip(
        image_tower=TinyConvTower(out_features=IMAGE_FEATURES), image_features=IMAGE_FEATURES,
        text_model=text, tokenizer=tokenizer, embed_dim=EMBED_DIM, image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5), default_image_size=IMAGE_SIZE, content_id="pending", max_length=tokens,
    )


def _open_clip_clip(tokens: int):
    import open_clip
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    from tunebench.models.open_clip_backbone import OpenClipBackbone

    text_cfg = {**open_clip.get_model_config(OPEN_CLIP_TEXT_FROM)["text_cfg"], "context_length": tokens}
    # A one-block, 32-wide ViT on 32 px images: the image side stays negligible.
    vision_cfg = {"image_size": IMAGE_SIZE, "patch_size": 16, "width": 32, "head_width": 16, "layers": 1}
    clip = CLIP(EMBED_DIM, vision_cfg, text_cfg)
    clip.visual.preprocess_cfg = {"size": IMAGE_SIZE, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    return OpenClipBackbone(clip, arch=f"{OPEN_CLIP_TEXT_FROM}-text", tokenizer=SimpleTokenizer(context_length=tokens),
                            content_id="pending")


@BACKBONES.register("cls-timing:")
def build_cls_timing(argument: str, *, pretrained: str | None = None):
    """TOWER[-ctxN], e.g. ``bertbase`` or ``minilm-ctx64``: random weights, step timing only."""
    if pretrained:
        raise ConfigError("cls-timing backbones have random weights; drop --pretrained")
    tower, tokens = parse(argument)
    with torch.random.fork_rng(devices=[]):  # the same weights in every process; the caller's RNG untouched
        torch.manual_seed(0)
        model = _open_clip_clip(tokens) if tower == "clipvitb" else _bert_clip(tower, tokens)
    model.content_id = f"timing-only-{tower}-ctx{tokens}-seed0"
    model.text_tokens = tokens
    model.timing_only = True  # the task records sizes and times, never a score
    return model.eval()


def check(config) -> None:
    """Before a sweep starts, without building anything: the name's form, and the task
    (only few-shot classification knows to record no score for random weights)."""
    parse(BACKBONES.resolve(config.backbone)[1])
    if config.task != "fewshot-cls":
        raise ConfigError(f"{config.backbone} is for timing fewshot-cls cells only, not {config.task}")


build_cls_timing.check = check
