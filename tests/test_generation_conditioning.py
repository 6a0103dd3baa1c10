"""tunebench conditions a pipeline folder exactly as the pipeline itself does.

The tiny SD folder of ``test_generation_diffusers`` (CLIP text model, toy tokenizer with
a 24-token limit) is loaded twice: as tunebench's ``diffusers:`` backbone and as a plain
diffusers ``StableDiffusionPipeline``. For the same prompts, tunebench's token states
(training, sampling's empty prompt, ConES's one text pass, the UNet methods' frozen
prompts) must equal ``pipe.encode_prompt``'s ``prompt_embeds``, under either
attention-mask convention the text encoder's config may declare. mini-t2i keeps its
own convention (BERT with its padding mask), checked on tiny-t2i.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.test_generation_diffusers import pipeline_folder  # noqa: F401  (the fixture)
from tunebench.config import method_config
from tunebench.errors import ConfigError
from tunebench.genmethods.base import ConceptPrompts
from tunebench.methods.base import resolve_method
from tunebench.models.t2i import load_pipeline_folder, save_pipeline_folder
from tunebench.registry import BACKBONES, load_all

load_all()
# Words the toy tokenizer knows; "" is the empty prompt of classifier-free guidance.
PROMPTS = ["a photo of a horse.", "a sks horse.", "", "photo of a photo of a horse x"]
CONCEPT = ConceptPrompts("horse", ("a photo of a {}.", "a {}."))


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: toy models run on one thread


def load_pipe(folder):
    """A fresh diffusers pipeline from the folder, local files only."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)


def pipeline_embeds(pipe, prompts) -> torch.Tensor:
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(list(prompts), torch.device("cpu"), 1, False)
    return embeds


@pytest.fixture(scope="module")
def loaded(pipeline_folder):  # noqa: F811
    model = BACKBONES.resolve(f"diffusers:{pipeline_folder}")[0](str(pipeline_folder))
    return model, load_pipe(pipeline_folder)


@pytest.mark.parametrize("use_attention_mask", [False, True])
def test_conditioning_equals_the_pipelines_encode_prompt(loaded, pipeline_folder, use_attention_mask):  # noqa: F811
    model, pipe = copy.deepcopy(loaded[0]), load_pipe(pipeline_folder)
    for encoder in (model.text_encoder, pipe.text_encoder):
        encoder.config.use_attention_mask = use_attention_mask
    assert model.text_mask is use_attention_mask
    assert model.max_length == pipe.tokenizer.model_max_length
    with torch.no_grad():
        ours = model.encode_prompt_tokens(model.tokenize(PROMPTS))
    torch.testing.assert_close(ours, pipeline_embeds(pipe, PROMPTS), rtol=0, atol=1e-6)


def test_the_mask_convention_matters_on_padding_only(loaded):
    """What the issue measured: the real tokens' states agree either way (CLIP is causal),
    the padding states do not, so following the pipeline's rule is not a no-op."""
    model, _ = loaded
    tokens = model.tokenize(PROMPTS[:1])
    with torch.no_grad():
        masked = model.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        plain = model.text_encoder(tokens.input_ids).last_hidden_state
    real = tokens.attention_mask.bool()
    torch.testing.assert_close(masked[real], plain[real], rtol=0, atol=1e-5)
    assert (masked[~real] - plain[~real]).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["cones", "textual-inversion", "unet-attn", "full-ft"])
def test_every_adapter_starts_from_the_pipelines_conditioning(loaded, method):
    """Training and sampling see what the pipeline would compute: ConES's one text pass,
    textual inversion at step 0 (its token is the initializer's row), the UNet methods'
    frozen "sks horse" prompts, and every adapter's empty prompt for guidance."""
    model, pipe = loaded
    cls, variant = resolve_method(method, "generation")
    adapter = cls(copy.deepcopy(model), CONCEPT, method_config(cls, variant, method))
    words = "sks horse" if method in ("unet-attn", "full-ft") else "horse"
    with torch.no_grad():
        states, _ = adapter.conditioning(torch.arange(len(CONCEPT.prompts)))
    if method == "cones":  # its slot starts at the mean over prompts: compare the text pass itself
        states = adapter.states
    torch.testing.assert_close(states, pipeline_embeds(pipe, CONCEPT.filled(words)), rtol=0, atol=1e-6)
    torch.testing.assert_close(adapter.null_states, pipeline_embeds(pipe, [""]), rtol=0, atol=1e-6)


def test_a_too_long_prompt_is_refused_not_truncated(loaded):
    model, _ = loaded
    with pytest.raises(ConfigError, match="longer than 24 tokens: shorten it"):
        model.tokenize(["a photo of a horse " * 6])


def test_mini_t2i_keeps_bert_with_its_padding_mask(tmp_path):
    """mini-t2i (here tiny-t2i, its code path) is no SD pipeline: its BERT tower was
    trained with the padding mask, declared under diffusers' own flag, and a saved
    folder keeps the declaration."""
    model = BACKBONES.get("tiny-t2i")(None)
    assert model.text_mask and model.settings.encoder_mask
    tokens = model.tokenize(["a photo of a horse.", "a zebra"])
    with torch.no_grad():
        expected = model.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        torch.testing.assert_close(model.encode_prompt_tokens(tokens), expected, rtol=0, atol=0)
    save_pipeline_folder(model, tmp_path / "saved")
    assert load_pipeline_folder(tmp_path / "saved", content_id="x").text_mask
