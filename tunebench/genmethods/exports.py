"""What a generation run learned, in the forms a diffusers pipeline loads.

Each adapter names its exports (``GenerationAdapter.exports``); with
``train.save_artifacts`` the runner writes every one beside the run's artifact, as
``results/artifacts/<hash>-<name>.safetensors``. Three forms:

- ``learned_embeds`` (textual inversion): one tensor (W,) under the concept's token,
  ``{"<zebra>": ...}``, the layout diffusers' textual-inversion example writes, so
  ``pipe.load_textual_inversion(path)`` adds the token to the pipeline as it is.
- ``cones``: the concept's output state ``{"concept_state": (W,)}``, its token and its
  initializer word in the file's metadata. No pipeline has a place for an *output*
  state, so ``cones_prompt_embeds`` builds a prompt's conditioning the way the run did:
  the pipeline encodes the prompt with the initializer word where the token stands (the
  run's one text pass), then the concept's slots take the learned state. The result
  goes to ``pipe(prompt_embeds=...)``.
- ``unet`` (unet-attn, full-ft): the UNet tensors that trained, under the UNet's own
  parameter names (a partial state dict: K/V alone stays small); ``load_unet_weights``
  writes them into ``pipe.unet`` after checking every name and shape.

Every file's metadata names its form (``tunebench_export``) and the backbone the run
tuned (``backbone``, a content id): an export means something only on that base model.
Exact reproduction also needs the run's conditioning convention, which tunebench takes
from the pipeline itself (``TextToImageModel.tokenize`` / ``text_mask``); mini-t2i is
not a Stable Diffusion pipeline (pixel space, BERT tower, 16 tokens, masked
cross-attention), so its exports use these formats but only tunebench samples it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunebench.errors import ConfigError

FORM_KEY = "tunebench_export"
# One export: tensors, and the safetensors metadata (strings only) saved with them.
Export = tuple[dict[str, torch.Tensor], dict[str, str]]


def concept_token(name: str) -> str:
    """The word a prompt uses for the learned concept outside tunebench: ``<zebra>``."""
    return f"<{name}>"


def _metadata(form: str, model, **extra: str) -> dict[str, str]:
    # "format": "pt" is what diffusers' own example writes; loaders read it as torch.
    return {"format": "pt", FORM_KEY: form, "backbone": str(model.content_id),
            **{k: str(v) for k, v in extra.items()}}


def _tensor(value: torch.Tensor) -> torch.Tensor:
    return value.detach().cpu().contiguous()


# ---- writers (called by the adapters' ``exports``) -------------------------------------
def textual_inversion_export(model, concept, vector: torch.Tensor) -> Export:
    token = concept_token(concept.name)
    return {token: _tensor(vector)}, _metadata("learned_embeds", model, token=token,
                                               initializer=concept.initializer)


def cones_export(model, concept, state: torch.Tensor) -> Export:
    return {"concept_state": _tensor(state)}, _metadata(
        "cones", model, token=concept_token(concept.name), initializer=concept.initializer)


def unet_export(model, *, prompt_words: str) -> Export:
    """The UNet's trained tensors; ``prompt_words`` is what its prompts call the concept."""
    tensors = {n: _tensor(p) for n, p in model.unet.named_parameters() if p.requires_grad}
    return tensors, _metadata("unet", model, prompt_words=prompt_words)


# ---- loaders (for users of a standard pipeline) -----------------------------------------
def read_export(path, form: str) -> Export:
    """(tensors, metadata) of a tunebench export of ``form``, or a one-line error."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"export not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # safetensors raises its own error type for a bad header
        first = (str(exc).splitlines() or [""])[0]
        raise ConfigError(f"cannot read {path} as safetensors: {first}") from exc
    found = metadata.get(FORM_KEY)
    if found != form:
        what = f"a {found!r} export" if found else "not a tunebench export"
        raise ConfigError(f"{path} is {what}; expected a {form!r} export")
    return tensors, metadata


def cones_prompt_embeds(pipe, path, prompt: str, *, token: str | None = None) -> torch.Tensor:
    """(1, L, W) conditioning of ``prompt`` with a ConES concept in it, for
    ``pipe(prompt_embeds=...)``.

    ``pipe``: a diffusers text-to-image pipeline on the base model the run tuned (its
    ``tokenizer``, ``text_encoder`` and ``encode_prompt`` are used). ``prompt`` names the
    concept by its token, the file's (``<zebra>``) unless ``token`` is given, once or
    more: "a photo of a <zebra> on grass". Every place it stands gets the learned state.
    """
    tensors, metadata = read_export(path, "cones")
    state, token = tensors["concept_state"], token or metadata["token"]
    initializer = metadata["initializer"]
    if not token or token not in prompt:
        raise ConfigError(f"prompt {prompt!r} does not name the concept: write {token!r} where it goes")
    # The initializer stands in for the token, as in the run's one text pass; where each
    # occurrence starts in the filled text locates its slot among the tokens.
    pieces = prompt.split(token)
    text = initializer.join(pieces)
    starts, at = set(), 0
    for piece in pieces[:-1]:
        at += len(piece)
        starts.add(at)
        at += len(initializer)
    tokenizer = pipe.tokenizer
    if not getattr(tokenizer, "is_fast", False):  # character offsets come from the fast ones only
        raise ConfigError(f"cones_prompt_embeds needs a fast tokenizer; this pipeline has {type(tokenizer).__name__}")
    word = tokenizer(initializer, add_special_tokens=False)["input_ids"]
    if len(word) != 1:
        raise ConfigError(f"initializer {initializer!r} is {len(word)} tokens for this pipeline's "
                          "tokenizer (one for the run's): is this the base model the run tuned?")
    # Tokenised as the pipeline's encode_prompt tokenises, with character offsets.
    enc = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_offsets_mapping=True)
    slots = [i for i, (start, _) in enumerate(enc["offset_mapping"])
             if start in starts and enc["input_ids"][i] == word[0]]
    if len(slots) != len(starts):
        raise ConfigError(f"prompt {prompt!r}: {token!r} does not stand as a word of its own within "
                          f"{tokenizer.model_max_length} tokens; put spaces around it or shorten the prompt")
    with torch.no_grad():  # conditioning to sample with, not a graph to train through
        embeds, _ = pipe.encode_prompt(text, pipe.text_encoder.device, 1, False)
    if embeds.shape[-1] != state.numel():
        raise ConfigError(f"{path} holds a state of width {state.numel()}; this pipeline's text encoder "
                          f"gives {embeds.shape[-1]}: export and pipeline come from different base models")
    embeds = embeds.clone()
    embeds[0, slots] = state.to(embeds)
    return embeds


def load_unet_weights(pipe, path) -> None:
    """Write a ``unet`` export into ``pipe.unet`` (or into ``pipe`` itself, a UNet).
    Every tensor must exist in that UNet with the same shape, else nothing is written."""
    tensors, _ = read_export(path, "unet")
    unet = getattr(pipe, "unet", pipe)
    own = unet.state_dict()
    unknown = [n for n in tensors if n not in own]
    if unknown:
        raise ConfigError(f"{path} holds {len(unknown)} tensors this UNet lacks (first: {unknown[0]}): "
                          "it was exported from another architecture")
    wrong = [n for n, t in tensors.items() if t.shape != own[n].shape]
    if wrong:
        raise ConfigError(f"{path}: {wrong[0]} is {tuple(tensors[wrong[0]].shape)} here but "
                          f"{tuple(own[wrong[0]].shape)} in this UNet: another architecture")
    unet.load_state_dict(tensors, strict=False)
