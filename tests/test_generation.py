"""The generation track: adapters on tiny-t2i, the text-encoder rules, metrics, bad input.

Everything runs on ``tiny-t2i`` (random 2-layer text tower, tiny UNet, mini-t2i's code
path), the ``tiny`` judge and ``tiny-clip`` as the scorer, so the whole file takes
seconds on one core.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tunebench import scores
from tunebench.bench.runner import Runner, validate_cells
from tunebench.config import RunConfig, TrainConfig, method_config, task_config
from tunebench.errors import ConfigError
from tunebench.genmethods.base import ConceptPrompts
from tunebench.genmethods.unet_attn import PRESETS
from tunebench.methods.base import resolve_method
from tunebench.models.base import count_parameters
from tunebench.registry import BACKBONES, METHODS, TASKS, load_all
from tunebench.tasks import gen_eval

load_all()


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: toy models run on one thread
GEN_METHODS = METHODS.names_for("generation")
CONCEPT = ConceptPrompts("horse", ("a photo of a {}.", "a {}.", "a drawing of a {}."))
FAST_TASK = {"judge": "tiny", "clip_backbone": "tiny-clip", "clip_image_size": 16, "samples_per_prompt": 2,
             "curve_samples_per_prompt": 1, "sampling_steps": 2, "real_images": 4, "timing_repeats": 1,
             "train_templates": ["a photo of a {}.", "a {}."], "eval_prompts": ["a drawing of a {}."],
             "checkpoints": [0.0, 0.5, 1.0]}


@pytest.fixture(scope="module")
def _tiny_t2i():
    return BACKBONES.get("tiny-t2i")(None)


@pytest.fixture
def model(_tiny_t2i):
    return copy.deepcopy(_tiny_t2i)


def make(name: str, model, **settings):
    cls, variant = resolve_method(name, "generation")
    return cls(model, CONCEPT, method_config(cls, {**settings, **variant}, name))


class TextEncoderCalls:
    """Counts text-encoder forwards; ``forbid()`` makes any further call fail the test."""

    def __init__(self, model) -> None:
        self.count, self.forbidden = 0, False
        model.text_encoder.register_forward_pre_hook(self._hook)

    def _hook(self, *args):
        if self.forbidden:
            raise AssertionError("the text encoder ran")
        self.count += 1

    def forbid(self) -> None:
        self.forbidden = True


def train_steps(adapter, steps: int = 4) -> None:
    """A few denoising steps on random references through the adapter's conditioning."""
    model = adapter.model
    scheduler = model.noise_scheduler()
    params = [p for _, p in adapter.trainable_named_parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand((4, 1, 32, 32), generator=generator) * 2 - 1
    adapter.train()
    for _ in range(steps):
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, 1000, (4,), generator=generator)
        states, mask = adapter.conditioning(torch.tensor([0, 1, 0, 1]))
        loss = torch.nn.functional.mse_loss(model.denoise(scheduler.add_noise(x0, noise, t), t, states, mask), noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    adapter.eval()


# ---- what trains ------------------------------------------------------------------------
def expected_trainable(name: str, model) -> set[str]:
    unet = {f"model.unet.{n}" for n, _ in model.unet.named_parameters()}
    if name == "cones":
        return {"concept_state"}
    if name == "textual-inversion":
        return {"token"}
    if name == "full-ft":
        return unet
    if name == "unet-attn":  # default preset kv: cross-attention key and value projections
        return {n for n in unet if ".attn2.to_k." in n or ".attn2.to_v." in n}
    raise AssertionError(f"no expectation written for new generation method {name!r}: add one here")


def test_every_generation_method_is_registered():
    assert set(GEN_METHODS) == {"cones", "textual-inversion", "full-ft", "unet-attn"}


@pytest.mark.parametrize("name", GEN_METHODS)
def test_trainable_set_and_true_count(name, model):
    adapter = make(name, model)
    names = {n for n, _ in adapter.trainable_named_parameters()}
    assert names == expected_trainable(name, model)
    assert adapter.trainable_count() == sum(p.numel() for n, p in adapter.named_parameters() if n in names)
    model_total = count_parameters(model.parameters())
    added = {"cones": model.text_width, "textual-inversion": model.text_width}.get(name, 0)
    assert adapter.total_count() == model_total + added
    if name in ("cones", "textual-inversion"):
        assert adapter.trainable_count() == model.text_width  # one vector, not the embedding table
    if name == "unet-attn":
        assert 0 < adapter.trainable_count() < count_parameters(model.unet.parameters()) / 5


def test_unet_attn_presets_grow(model):
    counts = {p: make("unet-attn", copy.deepcopy(model), preset=p).trainable_count() for p in PRESETS}
    assert counts["kv"] < counts["cross-attn"] < counts["attn"]


@pytest.mark.parametrize("name", GEN_METHODS)
def test_gradients_reach_only_trainable(name, model):
    adapter = make(name, model)
    states, mask = adapter.conditioning(torch.tensor([0, 2]))
    x = torch.randn(2, 1, 32, 32)
    model.denoise(x, torch.tensor([10, 500]), states, mask).square().mean().backward()
    trainable = {n for n, _ in adapter.trainable_named_parameters()}
    with_grad = {n for n, p in adapter.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    assert any(float(p.grad.abs().sum()) > 0 for n, p in adapter.named_parameters() if n in trainable)


@pytest.mark.parametrize("name", GEN_METHODS)
def test_artifact_round_trip(name, model, tmp_path):
    pristine = copy.deepcopy(model)
    adapter = make(name, model)
    with torch.no_grad():
        for _, p in adapter.trainable_named_parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_file(adapter.artifact(), str(tmp_path / "a.safetensors"))
    reloaded = make(name, pristine)
    assert not reloaded.load_state_dict(load_file(str(tmp_path / "a.safetensors")), strict=False).unexpected_keys
    index, x, t = torch.tensor([0, 1, 2]), torch.randn(3, 1, 32, 32), torch.tensor([1, 100, 900])
    with torch.no_grad():
        a = adapter.model.denoise(x, t, *adapter.conditioning(index))
        b = reloaded.model.denoise(x, t, *reloaded.conditioning(index))
    assert torch.allclose(a, b, atol=1e-5)


# ---- the text-encoder rules ----------------------------------------------------------------
def test_cones_never_runs_the_text_encoder_while_tuning_or_sampling(model):
    calls = TextEncoderCalls(model)
    adapter = make("cones", model)
    assert calls.count == 2  # at build: the prompts with the initializer, and the empty prompt
    before = adapter.concept_state.detach().clone()
    calls.forbid()
    train_steps(adapter)
    assert not torch.equal(before, adapter.concept_state)  # it did tune
    states, mask = adapter.conditioning(torch.tensor([2, 2]))
    model.sample(states, mask, null_states=adapter.null_states, null_mask=adapter.null_mask,
                 seeds=[0, 1], steps=2, guidance=2.0)


def test_cones_starts_from_the_initializer_outputs(model):
    adapter = make("cones", model)
    tokens = model.tokenize(CONCEPT.filled("horse"))
    with torch.no_grad():
        real = model.encode_prompt_tokens(tokens)
    states, _ = adapter.conditioning(torch.arange(3))
    slot = adapter.slot_mask
    assert torch.equal(states[~slot], real[~slot])  # every other token's state is the real one
    assert torch.allclose(states[slot], real[slot].mean(0).expand(3, -1))  # the concept: their mean


def test_textual_inversion_changes_only_its_own_row_and_runs_the_encoder(model):
    table_before = model.token_embedding().weight.detach().clone()
    unet_before = {n: p.detach().clone() for n, p in model.unet.named_parameters()}
    calls = TextEncoderCalls(model)
    adapter = make("textual-inversion", model)
    token_before = adapter.token.detach().clone()
    built = calls.count
    train_steps(adapter, steps=4)
    assert calls.count == built + 4  # forward at every step
    assert torch.equal(table_before, model.token_embedding().weight)  # every row bit-identical
    assert all(torch.equal(unet_before[n], p) for n, p in model.unet.named_parameters())
    assert not torch.equal(token_before, adapter.token)
    # The learned row is what the placeholder slot receives.
    assert torch.equal(token_before, table_before[model.word_token_ids("horse")[0]])


def test_ti_step_zero_equals_the_initializer_prompt(model):
    adapter = make("textual-inversion", model)
    with torch.no_grad():
        states, _ = adapter.conditioning(torch.arange(3))
        real = model.encode_prompt_tokens(model.tokenize(CONCEPT.filled("horse")))
    assert torch.allclose(states, real, atol=1e-6)


def test_unet_methods_encode_fixed_prompts_once(model):
    calls = TextEncoderCalls(model)
    adapter = make("full-ft", model, identifier="sks")
    built = calls.count
    train_steps(adapter, steps=2)
    assert calls.count == built
    with torch.no_grad():
        real = model.encode_prompt_tokens(model.tokenize(CONCEPT.filled("sks horse")))
    assert torch.allclose(adapter.conditioning(torch.arange(3))[0], real)


# ---- metrics on constructed inputs --------------------------------------------------------------
def test_fidelity_is_the_share_labelled_as_the_concept():
    assert gen_eval.fidelity(np.array([3, 3, 1, 3]), 3) == 0.75
    assert gen_eval.fidelity(np.array([], dtype=int), 3) == 0.0


def test_clip_scores_are_cosines():
    samples = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    references = torch.tensor([[3.0, 0.0]])
    assert gen_eval.clip_i(samples, references) == pytest.approx(0.5)  # cos 1 and cos 0
    texts = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    assert gen_eval.clip_t(samples, texts) == pytest.approx((math.sqrt(0.5) - 1.0) / 2)


def test_diversity_is_within_prompt_pairwise_distance():
    same = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)
    assert gen_eval.diversity(same, groups=2) == pytest.approx(0.0)  # identical within each prompt
    spread = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    # prompt 1: one orthogonal pair (1 - 0); prompt 2: one opposite pair (1 - (-1)).
    assert gen_eval.diversity(spread, groups=2) == pytest.approx((1.0 + 2.0) / 2)
    assert gen_eval.diversity(torch.ones(2, 3), groups=2) == 0.0  # one sample per prompt


def test_seconds_to_threshold_interpolates_or_is_none():
    curve = [{"step": 0, "train_seconds": 1.0, "fidelity": 0.0},
             {"step": 10, "train_seconds": 11.0, "fidelity": 0.25},
             {"step": 20, "train_seconds": 21.0, "fidelity": 0.75}]
    assert scores.seconds_to_threshold(curve, 0.5) == pytest.approx(16.0)  # halfway from 11 to 21
    assert scores.seconds_to_threshold(curve, 0.75) == pytest.approx(21.0)
    assert scores.seconds_to_threshold(curve, 0.8) is None
    assert scores.seconds_to_threshold(curve[1:], 0.2) == 11.0  # first checkpoint already above
    assert scores.seconds_to_threshold(list(reversed(curve)), 0.5) == pytest.approx(16.0)


def test_equal_fidelity_is_the_highest_level_both_reach():
    fast = [{"step": 0, "train_seconds": 0.0, "fidelity": 0.0}, {"step": 5, "train_seconds": 2.0, "fidelity": 1.0}]
    slow = [{"step": 0, "train_seconds": 0.0, "fidelity": 0.0}, {"step": 5, "train_seconds": 8.0, "fidelity": 0.5}]
    assert scores.equal_fidelity(fast, slow) == (0.5, 1.0, 8.0)  # fast reaches 0.5 halfway, at 1 s
    flat = [{"step": 0, "train_seconds": 0.0, "fidelity": 0.5}, {"step": 5, "train_seconds": 8.0, "fidelity": 0.5}]
    assert scores.equal_fidelity(fast, flat) is None  # no gain over its start: time says nothing


# ---- end to end through the runner -------------------------------------------------------------
def cell(method: str, *, backbone: str = "tiny-t2i", dataset: str = "concept:zebra", shots: int = 3, **task):
    cls, variant = resolve_method(method, "generation")
    return RunConfig(
        task="generation", dataset=dataset, method=method, backbone=backbone, shots=shots, seed=1,
        train=TrainConfig(steps=4, batch_size=4, warmup_steps=1, save_artifacts=True),
        method_config=dataclasses.asdict(method_config(cls, variant, "test")),
        task_config=task_config(TASKS.get("generation"), {**FAST_TASK, **task}),
    )


@pytest.mark.parametrize("method", ["cones", "textual-inversion", "full-ft", "unet-attn:kv"])
def test_tiny_generation_run_end_to_end(method, tmp_path):
    config = cell(method)
    validate_cells([config])
    record = Runner(tmp_path).run(config)
    assert record["status"] == "ok", record.get("traceback")
    metrics = record["metrics"]
    for name in ("fidelity", "clip_i", "clip_t", "diversity", "real_fidelity"):
        assert math.isfinite(metrics[name])
    assert 0.0 <= metrics["fidelity"] <= 1.0 and metrics["samples"] == 2
    assert [p["step"] for p in metrics["curve"]] == [0, 2, 4]
    seconds = [p["train_seconds"] for p in metrics["curve"]]
    assert seconds == sorted(seconds) and seconds[-1] == pytest.approx(record["train_seconds"], abs=1e-3)
    assert record["eval_seconds"] > 0 and metrics["step_seconds"] > 0
    assert record["curve_eval_seconds"] > 0  # the probes at 0 and 2 steps, apart from the final scoring
    assert metrics["text_encoder_per_step"] == (method == "textual-inversion")
    grid = tmp_path / record["pictures"]["samples"]
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    artifact = load_file(str(tmp_path / record["artifact"]["path"]))
    assert sum(t.numel() for t in artifact.values()) == record["trainable_params"]
    stored = json.loads((tmp_path / "runs" / f"{config.config_hash}.json").read_text())
    assert stored["metrics"] == metrics


def test_timing_only_backbone_records_steps_without_quality(tmp_path, monkeypatch):
    from tunebench.models import t2i_backbones

    monkeypatch.setitem(t2i_backbones.TEXT_SIZES, "minilm", t2i_backbones.TEXT_SIZES["tiny"])
    monkeypatch.setitem(t2i_backbones.UNET_SIZES, "small", t2i_backbones.UNET_SIZES["tiny"])
    record = Runner(tmp_path).run(cell("textual-inversion", backbone="t2i-timing:minilm-small"))
    assert record["status"] == "ok", record.get("traceback")
    assert record["metrics"]["timing_only"] is True and "fidelity" not in record["metrics"]
    assert record["metrics"]["conditioning_seconds"] > 0 and not record.get("pictures")


# ---- bad input is one line -------------------------------------------------------------
def one_line_error(make_cells, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as error:
        validate_cells(make_cells())
    assert "\n" not in str(error.value)


def test_bad_generation_input_is_one_line(tmp_path):
    one_line_error(lambda: [cell("cones", dataset="concept:zebr")], "Did you mean zebra")
    one_line_error(lambda: [cell("cones", dataset="animal-mnist")], "concept dataset")
    one_line_error(lambda: [dataclasses.replace(cell("cones"), method="linear-probe")],
                   "method 'linear-probe' does not serve the generation task")
    one_line_error(lambda: [cell("cones", backbone=f"diffusers:{tmp_path / 'nowhere'}")],
                   "pipeline folder not found")
    (tmp_path / "half" / "unet").mkdir(parents=True)
    one_line_error(lambda: [cell("cones", backbone=f"diffusers:{tmp_path / 'half'}")],
                   "missing tokenizer/, text_encoder/, scheduler/")
    one_line_error(lambda: [cell("cones", backbone="mini-t2i")], "run `tunebench build mini-t2i`")
    one_line_error(lambda: [cell("cones", backbone="tiny-clip")], "text-to-image backbone")
    one_line_error(lambda: [cell("cones", shots=10**6)], "must be 1")
    one_line_error(lambda: [cell("cones", eval_prompts=["a photo of a cat."])], "exactly one")
    one_line_error(lambda: [cell("cones", initializers={"giraffe": "horse"})], "no initializer word")


def test_multi_token_initializer_is_refused(model):
    with pytest.raises(ConfigError, match="'giraffe' is 3 tokens"):
        cls, _ = resolve_method("cones", "generation")
        cls(model, ConceptPrompts("giraffe", ("a {}.",)), method_config(cls, {}, "x"))
