"""What a generation run learned loads into a fresh standard pipeline and redraws the run.

Each method runs one cell on the tiny SD folder of ``test_generation_diffusers`` through
the runner, with artifacts saved. Its export (``artifacts/<hash>-<name>.safetensors``) is
then loaded into a fresh diffusers ``StableDiffusionPipeline`` from the same folder, as
docs/generation.md shows, and the pipeline draws the run's first sample (first
evaluation prompt, seed 0, DDIM, the run's guidance and steps). It must match the
run's sample grid to one grey level (the grid is uint8), and the untouched pipeline must
not: the check has teeth only if tuning changed the picture.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.test_generation_conditioning import load_pipe
from tests.test_generation_diffusers import pipeline_folder  # noqa: F401  (the fixture)
from tests.test_methods import make
from tunebench.bench.runner import Runner, validate_cells
from tunebench.bench.store import RunStore
from tunebench.config import RunConfig, TrainConfig, method_config, task_config
from tunebench.errors import ConfigError
from tunebench.genmethods.base import ConceptPrompts
from tunebench.genmethods.exports import cones_prompt_embeds, load_unet_weights, read_export
from tunebench.methods.base import resolve_method
from tunebench.models.t2i_backbones import make_unet
from tunebench.registry import BACKBONES, TASKS, load_all

load_all()
SAMPLING_STEPS, GUIDANCE = 3, 2.0
TASK = {"judge": "tiny", "clip_backbone": "tiny-clip", "clip_image_size": 16, "samples_per_prompt": 2,
        "curve_samples_per_prompt": 1, "sampling_steps": SAMPLING_STEPS, "guidance": GUIDANCE,
        "real_images": 2, "timing_repeats": 1, "train_templates": ["a photo of a {}."],
        "eval_prompts": ["a {}."], "checkpoints": [1.0]}
# Large steps, so that four of them move the tiny random model's drawing visibly.
LR = {"cones": 0.5, "textual-inversion": 0.5, "unet-attn": 0.05, "full-ft": 0.01}
EXPORT = {"cones": "cones", "textual-inversion": "learned_embeds", "unet-attn": "unet", "full-ft": "unet"}
GRID_SCALE, GRID_GAP = 3, 2  # engine/grids.png_grid's defaults


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: toy models run on one thread


def run_cell(method: str, folder, results) -> dict:
    cls, variant = resolve_method(method, "generation")
    config = RunConfig(
        task="generation", dataset="concept:zebra", method=method, backbone=f"diffusers:{folder}",
        shots=2, seed=1, train=TrainConfig(steps=4, batch_size=2, warmup_steps=0, device="cpu"),
        method_config=dataclasses.asdict(method_config(cls, {**variant, "lr": LR[method]}, "test")),
        task_config=task_config(TASKS.get("generation"), TASK),
    )
    validate_cells([config])
    record = Runner(results).run(config)
    assert record["status"] == "ok", record.get("traceback")
    return record


def first_sample(results, record) -> np.ndarray:
    """The run's first sample (row 1, column 0 of its grid; row 0 holds the references)."""
    grid = np.asarray(Image.open(io.BytesIO((results / record["pictures"]["samples"]).read_bytes())))
    size = 16  # the tiny pipeline draws 16 px
    y, x = (GRID_GAP + size + GRID_GAP) * GRID_SCALE, GRID_GAP * GRID_SCALE
    return grid[y : y + size * GRID_SCALE : GRID_SCALE, x : x + size * GRID_SCALE : GRID_SCALE]


def draw(pipe, seed: int = 0, **prompt) -> np.ndarray:
    """One picture, sampled as the generation task samples: DDIM (eta 0) from the seed's
    noise, classifier-free guidance against the empty prompt; uint8 as the grid holds it."""
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    unet = pipe.unet.config
    noise = torch.randn(unet.in_channels, unet.sample_size, unet.sample_size,
                        generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        image = pipe(**prompt, num_inference_steps=SAMPLING_STEPS, guidance_scale=GUIDANCE, eta=0.0,
                     latents=noise[None], output_type="np").images[0]
    return np.round(image * 255).clip(0, 255).astype(np.uint8)


def redraw(method: str, folder, path) -> tuple[np.ndarray, np.ndarray]:
    """(the first sample drawn by a fresh pipeline with the export, and without it)."""
    pipe, base = load_pipe(folder), load_pipe(folder)
    if method == "textual-inversion":
        pipe.load_textual_inversion(str(path), local_files_only=True)  # its token: "<zebra>"
        return draw(pipe, prompt="a <zebra>."), draw(base, prompt="a horse.")
    if method == "cones":
        return (draw(pipe, prompt_embeds=cones_prompt_embeds(pipe, path, "a <zebra>.")),
                draw(base, prompt="a horse."))
    load_unet_weights(pipe, path)
    return draw(pipe, prompt="a sks horse."), draw(base, prompt="a sks horse.")


@pytest.mark.parametrize("method", ["cones", "textual-inversion", "unet-attn", "full-ft"])
def test_an_export_redraws_the_runs_first_sample_in_a_fresh_pipeline(method, pipeline_folder, tmp_path):  # noqa: F811
    record = run_cell(method, pipeline_folder, tmp_path)
    name = EXPORT[method]
    export = record["exports"][name]
    path = tmp_path / export["path"]
    assert path.name == f"{record['config_hash']}-{name}.safetensors" and path.parent.name == "artifacts"
    assert export["path"] in RunStore(tmp_path).files_of(record)  # shipped by workers, kept by cleaning
    tensors, metadata = read_export(path, name)
    assert sum(t.numel() for t in tensors.values()) == record["trainable_params"]
    assert metadata["backbone"] == record["backbone_content_id"]
    if method == "textual-inversion":  # diffusers' layout: one tensor under the token
        assert list(tensors) == ["<zebra>"] and tensors["<zebra>"].shape == (32,)
        assert metadata["format"] == "pt" and metadata["initializer"] == "horse"

    run = first_sample(tmp_path, record)
    with_export, without = redraw(method, pipeline_folder, path)
    assert run.shape == with_export.shape == (16, 16, 3)
    difference = np.abs(run.astype(int) - with_export.astype(int)).max()
    assert difference <= 1, f"{method}: the pipeline's picture is {difference} grey levels off the run's"
    assert np.abs(run.astype(int) - without.astype(int)).max() > 1, "tuning left the picture unchanged"


@pytest.mark.parametrize("name", ["cones", "textual-inversion", "full-ft"])
def test_classification_adapters_export_nothing(name, tiny_backbone, tiny_classes):
    """Only methods with an ecosystem form export (the runner then adds no record key)."""
    assert make(name, tiny_backbone, tiny_classes).exports() == {}


def test_an_unnamed_export_file_is_cleaned_as_a_leftover(tmp_path):
    store = RunStore(tmp_path)
    store.artifacts_dir.mkdir(parents=True)
    stray = store.artifacts_dir / "0123456789abcdef-unet.safetensors"
    save_file({"x": torch.zeros(1)}, str(stray))
    store.runs_dir.mkdir()
    assert stray in store.remove_leftovers() and not stray.exists()


# ---- bad input: one line each ---------------------------------------------------------------
@pytest.fixture
def exports(pipeline_folder, tmp_path):  # noqa: F811
    """A ConES and a unet-attn export written from adapters built on the tiny pipeline
    (no run: these checks need files, not trained values); ConES's state set to 0.5."""
    model = BACKBONES.resolve(f"diffusers:{pipeline_folder}")[0](str(pipeline_folder))
    concept = ConceptPrompts("horse", ("a photo of a {}.",), name="zebra")
    paths = []
    for method in ("cones", "unet-attn"):
        cls, variant = resolve_method(method, "generation")
        adapter = cls(model, concept, method_config(cls, variant, method))
        if method == "cones":
            adapter.concept_state.data.fill_(0.5)
        (name, (tensors, metadata)), = adapter.exports().items()
        paths.append(tmp_path / f"{name}.safetensors")
        save_file(tensors, str(paths[-1]), metadata=metadata)
    return tuple(paths)


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_loaders_refuse_bad_input_in_one_line(exports, pipeline_folder, tmp_path):  # noqa: F811
    cones, unet = exports
    pipe = load_pipe(pipeline_folder)
    with pytest.raises(ConfigError) as excinfo:
        cones_prompt_embeds(pipe, tmp_path / "missing.safetensors", "a <zebra>.")
    assert one_line(excinfo).startswith("export not found")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="cannot read .* as safetensors") as excinfo:
        load_unet_weights(pipe, garbage)
    one_line(excinfo)
    with pytest.raises(ConfigError, match="is a 'unet' export; expected a 'cones' export") as excinfo:
        cones_prompt_embeds(pipe, unet, "a <zebra>.")
    one_line(excinfo)
    with pytest.raises(ConfigError, match="does not name the concept: write '<zebra>'") as excinfo:
        cones_prompt_embeds(pipe, cones, "a horse.")
    one_line(excinfo)
    with pytest.raises(ConfigError, match="does not stand as a word of its own") as excinfo:
        cones_prompt_embeds(pipe, cones, "a <zebra>s.")  # "horses" is no "horse" token
    one_line(excinfo)
    with pytest.raises(ConfigError, match="another architecture") as excinfo:
        load_unet_weights(make_unet("tiny", 16), unet)  # same blocks, 16-wide text: K/V shapes differ
    one_line(excinfo)


def test_cones_loader_fills_every_occurrence(exports, pipeline_folder):  # noqa: F811
    cones, _ = exports
    pipe = load_pipe(pipeline_folder)
    state = read_export(cones, "cones")[0]["concept_state"]
    embeds = cones_prompt_embeds(pipe, cones, "a <zebra> of a <zebra>.")
    base, _ = pipe.encode_prompt("a horse of a horse.", torch.device("cpu"), 1, False)
    replaced = (embeds[0] != base[0]).any(-1).nonzero().flatten().tolist()
    assert replaced == [2, 5]  # <start> a [horse] of a [horse] . <end>
    assert torch.equal(embeds[0, 2], state) and torch.equal(embeds[0, 5], state)
