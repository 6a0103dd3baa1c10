"""``subject:PATH``: your own subject on the generation track (issue 13).

Subjects here are folders of PNGs written from Animal-MNIST's zebra images (some padded
to a non-square shape), scored by ``tiny-clip`` on ``tiny-t2i``: the real code path, at
a size that takes seconds. What is checked: the folder's class noun and fixed split,
bad input refused in one line before anything is stored, runs end to end with CLIP-I
and CLIP-T and no fidelity, DINO from a local image model, lr selection by CLIP-I on
the held-out photos, and the report's generation section with subjects in it.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.test_generation import FAST_TASK, cell
from tests.test_generation_diffusers import pipeline_folder  # noqa: F401 (a fixture, shared)
from tests.test_generation_report import gen_record, write
from tests.test_report import make_results
from tunebench.bench.cli import main
from tunebench.bench.runner import Runner, validate_cells
from tunebench.bench.selection import plan_selection
from tunebench.bench.sweep import load_sweep
from tunebench.config import method_config, task_config
from tunebench.datasets import dataset_label, load_dataset
from tunebench.datasets.imagefolder import folder_label
from tunebench.datasets.subject import HOLD_OUT_FROM, SubjectDataset
from tunebench.errors import TunebenchError
from tunebench.genmethods.base import ConceptPrompts
from tunebench.methods.base import resolve_method
from tunebench.registry import BACKBONES, METHODS, TASKS, load_all
from tunebench.report.build import build_report
from tunebench.tasks.generation import SUBJECT_PROMPTS, GenerationSettings

load_all()

SUBJECT_TASK = {**FAST_TASK, "subject_prompts": ["a photo of a {} on a sandy beach."]}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: toy models run on one thread


def zebra_images(n: int) -> np.ndarray:
    concept = load_dataset("concept:zebra")
    return concept.train.load(np.arange(n))  # (n, 28, 28) uint8


def make_subject(parent: Path, photos: int, *, name: str = "horse-stripes", noun: str | None = None,
                 wide: bool = True) -> Path:
    """``photos`` PNGs of zebras in ``parent/name``; every third one padded to 28 × 40
    (black bars a side), so decoding must centre-crop it back to the 28 × 28 original."""
    folder = parent / name
    folder.mkdir(parents=True)
    for i, image in enumerate(zebra_images(photos)):
        if wide and i % 3 == 0:
            image = np.pad(image, ((0, 0), (6, 6)))
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    if noun is not None:
        (folder / "class.txt").write_text(noun + "\n")
    return folder


# ---- the dataset ------------------------------------------------------------------------
def test_class_noun_from_the_folder_name_or_class_txt(tmp_path):
    subject = load_dataset(f"subject:{make_subject(tmp_path, 4)}")
    assert isinstance(subject, SubjectDataset)
    assert (subject.classname, subject.noun_from, subject.initializer) == ("horse", "folder name", "horse")
    bear = load_dataset(f"subject:{make_subject(tmp_path, 3, name='teddy_bear-ted')}")
    assert (bear.classname, bear.initializer) == ("teddy bear", "bear")  # the head noun starts tuning
    named = load_dataset(f"subject:{make_subject(tmp_path, 3, name='ted', noun='  stuffed   toy ')}")
    assert (named.classname, named.noun_from, named.concept) == ("stuffed toy", "class.txt", "ted")
    overruled = load_dataset(f"subject:{make_subject(tmp_path, 3, name='cat-tom', noun='dog')}")
    assert overruled.classname == "dog"  # class.txt wins over the folder's name


def test_photos_are_centre_cropped_at_their_own_size(tmp_path):
    subject = load_dataset(f"subject:{make_subject(tmp_path, 5)}")
    assert subject.native_size == 28  # the smallest side: 28 px photos are not blown up
    # Under 8 photos nothing is held out: the pool is every photo, in name order, and the
    # padded ones (00, 03) come back as their 28 × 28 originals.
    assert len(subject.validation) == 0 and subject.train.images.shape == (5, 28, 28, 3)
    assert np.array_equal(subject.train.images[..., 0], zebra_images(5))
    assert np.array_equal(subject.train.images[..., 0], subject.train.images[..., 2])  # grey read as RGB


@pytest.mark.parametrize("photos, held", [(5, 0), (HOLD_OUT_FROM, 2), (10, 2), (20, 5)])
def test_a_quarter_is_held_out_from_eight_photos_on_and_never_drawn(tmp_path, photos, held):
    subject = load_dataset(f"subject:{make_subject(tmp_path, photos)}")
    assert (len(subject.validation), len(subject.train), subject.photos) == (held, photos - held, photos)
    pool = {im.tobytes() for im in subject.train.images}
    assert not pool & {im.tobytes() for im in subject.validation.images}
    again = load_dataset(f"subject:{tmp_path / 'horse-stripes'}/")  # another name, a fresh load: the same cut
    assert np.array_equal(again.validation.images, subject.validation.images)
    for seed in (1, 2, 3):  # K = 2 is a subset of K = pool for one seed
        small, large = subject.references(2, seed), subject.references(len(subject.train), seed)
        assert set(small) <= set(large) == set(range(len(subject.train)))


def test_label_and_facts(tmp_path):
    folder = make_subject(tmp_path, 9)
    assert dataset_label(f"subject:{folder}") == folder_label(folder)
    facts = load_dataset(f"subject:{folder}").facts()
    assert {k: facts[k] for k in ("class_noun", "class_noun_from", "subject_photos", "held_out_photos")} == \
        {"class_noun": "horse", "class_noun_from": "folder name", "subject_photos": 9, "held_out_photos": 2}
    assert len(facts["subject_content"]) == 16


def test_default_subject_prompts_fit_the_pixel_models_prompt_length():
    """mini-t2i and tiny-t2i pad prompts to 16 tokens: every default prompt must fit with the
    placeholder (ConES, TI) and with "sks <noun>" (the UNet methods)."""
    model = BACKBONES.get("tiny-t2i")(None)
    prompts = ConceptPrompts("dog", tuple(GenerationSettings().train_templates + SUBJECT_PROMPTS))
    for name in METHODS.names_for("generation"):
        cls, variant = resolve_method(name, "generation")
        cls(copy.deepcopy(model), prompts, method_config(cls, variant, name))  # a prompt too long raises


# ---- settings added later keep stored cells' hashes ---------------------------------------
def test_new_generation_settings_stay_out_of_the_hash_at_their_defaults():
    defaults = task_config(TASKS.get("generation"), {})
    assert not {"subject_prompts", "dino_model", "clip_pretrained"} & set(defaults)
    assert {"eval_prompts", "clip_backbone", "judge"} <= set(defaults)  # the older ones stay
    assert task_config(TASKS.get("generation"), {"dino_model": "/x"})["dino_model"] == "/x"
    # The settings a generation cell hashed before issue 13 (as in its committed records):
    # a cell at the defaults still hashes as it did.
    assert set(defaults) == {"checkpoints", "clip_backbone", "clip_image_size", "curve_samples_per_prompt",
                             "eval_prompts", "fidelity_threshold", "flip", "guidance", "initializers", "judge",
                             "real_images", "sample_batch_size", "samples_per_prompt", "sampling_steps",
                             "timing_repeats", "train_templates"}


# ---- bad input: one line, nothing stored ---------------------------------------------------
def cli_refuses(tmp_path, capsys, dataset: str, match: str, *, shots: int = 3) -> None:
    results = tmp_path / "results"
    code = main(["run", "--task", "generation", "--method", "cones", "--dataset", dataset, "--backbone", "tiny-t2i",
                 "--shots", str(shots), "--results", str(results)])
    lines = capsys.readouterr().err.strip().splitlines()
    error = next(i for i, line in enumerate(lines) if line.startswith("tunebench: error: "))
    assert code == 2 and error == len(lines) - 1 and match in lines[error], lines  # one line, the last
    assert not results.exists()  # nothing written


def test_a_folder_that_does_not_exist(tmp_path, capsys):
    cli_refuses(tmp_path, capsys, f"subject:{tmp_path / 'nowhere'}", "does not exist")


def test_no_class_noun(tmp_path, capsys):
    folder = make_subject(tmp_path, 4, name="stripes")
    cli_refuses(tmp_path, capsys, f"subject:{folder}", "has no class noun: write it in")
    (folder / "class.txt").write_text("horse\nzebra\n")
    cli_refuses(tmp_path, capsys, f"subject:{folder}", "holds 2 non-empty lines")


def test_too_few_photos(tmp_path, capsys):
    cli_refuses(tmp_path, capsys, f"subject:{make_subject(tmp_path, 2)}", "has 2 photo(s)")


def test_fewer_reference_photos_than_k(tmp_path, capsys):
    cli_refuses(tmp_path, capsys, f"subject:{make_subject(tmp_path, 5)}", "must be 1..5, got 6", shots=6)
    # 10 photos hold 2 out: 8 can be references.
    cli_refuses(tmp_path, capsys, f"subject:{make_subject(tmp_path, 10, name='dog-rex')}",
                "must be 1..8, got 9: the folder's reference pool has 8 photo(s) (2 more are held out", shots=9)


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_unreadable_photo(tmp_path, capsys, content):
    folder = make_subject(tmp_path, 4)
    good = (folder / "00.png").read_bytes()
    (folder / "zz.png").write_bytes(good[: len(good) // 2] if content == "truncated" else content)
    cli_refuses(tmp_path, capsys, f"subject:{folder}", f"cannot read photo {folder.resolve() / 'zz.png'}")


def test_selection_without_held_out_photos_and_a_bad_dino_folder(tmp_path):
    small = f"subject:{make_subject(tmp_path, 5)}"
    trial = dataclasses.replace(cell("cones", dataset=small, **SUBJECT_TASK), eval_split="validation")
    with pytest.raises(TunebenchError, match="holds out no photos for lr selection .it has 5; a folder of 8") as e:
        validate_cells([trial])
    assert "\n" not in str(e.value)
    (tmp_path / "dino").mkdir()
    with pytest.raises(TunebenchError, match="has no config.json"):
        validate_cells([cell("cones", dataset=small, **SUBJECT_TASK, dino_model=str(tmp_path / "dino"))])
    with pytest.raises(TunebenchError, match="is not a CLIP"):
        validate_cells([cell("cones", dataset=small, **{**SUBJECT_TASK, "clip_backbone": "tiny-t2i"})])


# ---- end to end --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def subject_runs(tmp_path_factory):
    """Every generation method on a 10-photo subject (2 held out), K = 3, into one results folder."""
    root = tmp_path_factory.mktemp("subject")
    records = {}
    with pytest.MonkeyPatch.context() as patch:  # the conftest's cache, set before its fixture runs
        patch.setenv("TUNEBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        dataset = f"subject:{make_subject(root, 10)}"
        runner = Runner(root / "results")
        for method in METHODS.names_for("generation"):
            config = cell(method, dataset=dataset, **SUBJECT_TASK)
            validate_cells([config])
            records[method] = runner.run(config)
    return root / "results", dataset, records


@pytest.mark.parametrize("method", METHODS.names_for("generation"))
def test_subject_runs_end_to_end_without_fidelity(subject_runs, method):
    results, _, records = subject_runs
    record = records[method]
    assert record["status"] == "ok", record.get("traceback")
    metrics = record["metrics"]
    for name in ("clip_i", "clip_t", "diversity", "reference_clip_i", "reference_clip_t"):
        assert math.isfinite(metrics[name]), name
    for absent in ("fidelity", "fidelity_threshold", "seconds_to_threshold", "judge", "real_fidelity", "dino"):
        assert absent not in metrics, absent  # no judge knows the subject; no DINO model was given
    assert metrics["dino_note"].startswith("not scored")
    assert (metrics["class_noun"], metrics["initializer"], metrics["subject_photos"]) == ("horse", "horse", 10)
    assert metrics["samples"] == 2  # one subject prompt × 2 samples
    curve = metrics["curve"]
    assert [p["step"] for p in curve] == [0, 2, 4] and all(set(p) == {"step", "train_seconds", "clip_i"} for p in curve)
    assert (results / record["pictures"]["samples"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stored = json.loads((results / "runs" / f"{record['config_hash']}.json").read_text())
    assert stored["dataset_label"] == folder_label(record["dataset"].removeprefix("subject:"))


def test_report_shows_subjects_without_fidelity_columns(subject_runs):
    results, _, _ = subject_runs
    build_report(results)
    text = (results / "report.md").read_text()
    section = text[text.index("## Generation track"):]
    assert "### Subject horse-stripes-" in section and "DINO: not scored" in section
    header = next(line for line in section.splitlines() if line.startswith("| Method | K | CLIP-I"))
    assert "Fidelity" not in header and "DINO" not in header and "s to" not in header
    assert "Headline: ConES / textual-inversion time at equal fidelity" not in section  # no fidelity to compare
    for row in csv.DictReader((results / "summary_gen.csv").open()):  # unmeasured is empty, never 0
        assert row["fidelity_mean"] == "" and row["reached_threshold"] == "" and float(row["clip_i_mean"]) != 0
        assert row["reference_clip_i_mean"] != ""


def test_a_selection_trial_scores_clip_i_against_the_held_out_photos(subject_runs):
    results, dataset, records = subject_runs
    final = cell("cones", dataset=dataset, **SUBJECT_TASK)
    trial = Runner(results.parent / "trials").run(dataclasses.replace(final, eval_split="validation"))
    assert trial["status"] == "ok", trial.get("traceback")
    metrics = trial["metrics"]
    assert math.isfinite(metrics["clip_i"]) and metrics["clip_i"] != records["cones"]["metrics"]["clip_i"]
    assert not {"reference_clip_i", "reference_clip_t"} & set(metrics)  # no calibration in a trial
    assert TASKS.get("generation").selection_metric_for(dataset) == "clip_i"
    assert TASKS.get("generation").selection_metric_for("concept:zebra") == "fidelity"


@pytest.mark.parametrize("method", ["cones", "full-ft"])
def test_subject_runs_on_a_pipeline_folder(method, pipeline_folder, tmp_path):  # noqa: F811 (the fixture)
    """The tiny Stable-Diffusion folder (VAE, CLIP text encoder, v-prediction): RGB photos
    through the latent path. Its toy tokenizer knows a handful of words, so the prompts
    are made of them."""
    words = {"train_templates": ["a photo of a {}."], "subject_prompts": ["a photo of a {}."]}
    config = cell(method, backbone=f"diffusers:{pipeline_folder}", dataset=f"subject:{make_subject(tmp_path, 4)}",
                  shots=2, **{**SUBJECT_TASK, **words})
    validate_cells([config])
    record = Runner(tmp_path / "results").run(config)
    assert record["status"] == "ok", record.get("traceback")
    metrics = record["metrics"]
    assert math.isfinite(metrics["clip_i"]) and math.isfinite(metrics["clip_t"]) and "fidelity" not in metrics
    assert metrics["initializer"] == "horse" and metrics["samples"] == 2


def test_dino_from_a_local_image_model(tmp_path):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32), add_pooling_layer=False).save_pretrained(tmp_path / "dino")
    config = cell("cones", dataset=f"subject:{make_subject(tmp_path, 4)}", **SUBJECT_TASK,
                  dino_model=str(tmp_path / "dino"))
    validate_cells([config])
    record = Runner(tmp_path / "results").run(config)
    assert record["status"] == "ok", record.get("traceback")
    metrics = record["metrics"]
    assert -1 <= metrics["dino"] <= 1 and -1 <= metrics["reference_dino"] <= 1 and "dino_note" not in metrics


def test_select_chooses_a_subjects_lr_by_clip_i(tmp_path, capsys):
    sweep = {"task": "generation", "backbone": "tiny-t2i", "datasets": [f"subject:{make_subject(tmp_path, 8)}"],
             "methods": ["cones"], "shots": [3], "seeds": [1],
             "train": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "save_artifacts": False},
             "selection": {"lr_factors": [1, 2]}, "task_config": SUBJECT_TASK}
    path = tmp_path / "subject.yaml"
    path.write_text(yaml.safe_dump(sweep))
    plan = plan_selection(load_sweep(path))
    (key,) = plan.trials
    assert plan.metric == "fidelity" and plan.metric_of(key) == "clip_i"
    assert main(["select", str(path), "--results", str(tmp_path / "results")]) == 0, capsys.readouterr().err
    (choice,) = (tmp_path / "results" / "selection" / "choices").glob("*.json")
    chosen = json.loads(choice.read_text())
    assert chosen["metric"] == "clip_i" and chosen["split"] == "validation"
    assert all(isinstance(s, float) for s in chosen["scores"])


# ---- the report on hand-made records --------------------------------------------------------
def subject_record(method: str, seed: int, *, dino: bool) -> dict:
    run = gen_record(method, seed)
    metrics = {k: v for k, v in run["metrics"].items() if "fidelity" not in k and not k.startswith("real_")
               and k not in ("seconds_to_threshold", "curve")}
    metrics.update(clip_i=0.6 + 0.01 * seed, clip_t=0.2, reference_clip_i=0.7, reference_clip_t=0.21,
                   class_noun="dog", class_noun_from="folder name", subject_photos=10, held_out_photos=2,
                   curve=[{"step": 0, "train_seconds": 1.0, "clip_i": 0.5}, {"step": 100, "train_seconds": 9.0,
                                                                            "clip_i": 0.6}])
    metrics.update({"dino": 0.4, "reference_dino": 0.5} if dino else {"dino_note": "not scored: no model"})
    key = f"subj-{method}-{seed}-{dino}"
    return {**run, "dataset": "subject:/photos/dog-rex", "dataset_label": "dog-rex-0123abcd", "config_hash": key,
            "metrics": metrics, "pictures": {"samples": f"pictures/{key}-samples.png"}}


@pytest.mark.parametrize("dino", [False, True])
def test_report_handles_concepts_and_subjects_side_by_side(tmp_path, dino):
    from tests.test_generation_report import gen_runs

    results = make_results(tmp_path)
    write(results, gen_runs() + [subject_record(m, s, dino=dino) for m in ("cones", "textual-inversion")
                                 for s in (1, 2)])
    build_report(results)
    text = (results / "report.md").read_text()
    subject = text[text.index("### Subject dog-rex-0123abcd, mini-t2i"):]
    subject = subject[: subject.index("\n### ", 1)]
    assert "10 photos of a dog (2 held out for lr selection)" in subject
    assert "Its reference photos score CLIP-I 0.700 against each other" in subject
    header = next(line for line in subject.splitlines() if line.startswith("| Method"))
    assert header.startswith("| Method | K | CLIP-I | CLIP-T |") and "Fidelity" not in header
    assert ("| DINO |" in header) == dino and ("DINO: not scored" in subject) != dino
    assert "| cones | 3 | 0.615 ± 0.007 | 0.200 ± 0.000 |" in subject  # CLIP-I over seeds 1, 2
    # The concept's tables and headline are as without the subject.
    assert "**At equal fidelity ConES takes 0.47× textual inversion's training time**" in text
    assert "### zebra, mini-t2i" in text and "Real held-out zebra images score fidelity 95.0%" in text
    assert "Your own subjects (`subject:PATH`) have no judge" in text
    columns = (results / "summary_gen.csv").read_text().splitlines()[0].split(",")
    assert ("dino_mean" in columns) == dino and "reference_clip_i_mean" in columns
