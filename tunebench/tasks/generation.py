"""``generation``: personalised text-to-image — learn a new concept from K images.

A cell is (method, concept, K = ``shots``, seed). The dataset names the concept: a
built-in one (``concept:zebra``, a class the text-to-image model never saw) or your own
subject (``subject:PATH``, a folder of photos of one thing; ``datasets/subject.py``).
Per seed, K reference images are drawn from the concept's pool; each method learns it
from them with the standard denoising loss (noise prediction MSE at random timesteps,
random references with horizontal flips, random training templates), AdamW with
warm-up + cosine, the same steps and batch for every method.

Measured, per run (``metrics``):
- quality after tuning: fidelity, CLIP-I, CLIP-T, diversity, DINO when a model is
  given (see ``gen_eval``), with calibration beside them (how real images score);
- a quality-vs-train-time curve at checkpoint fractions of the steps (the train clock
  is paused while the checkpoints are scored): fidelity, and seconds to the fidelity
  threshold, for the built-in concepts; CLIP-I for a subject, which no judge knows;
- step timing for the text-encoder-share analysis: median seconds per training step,
  and median seconds to produce (forward + backward) one batch's conditioning, timed
  apart after training. For textual inversion the latter is the text encoder's part of
  its step; for ConES it is an index and a copy.

With ``eval_split: validation`` (a selection trial) every quality measure is taken on
held-out material (see ``gen_eval``): samples from other seeds, CLIP-I against the
dataset's validation images. Trials are compared by fidelity on a built-in concept and
by CLIP-I against the held-out photos on a subject (``selection_metric_for``).

Train seconds include building the adapter (ConES's one text pass, the frozen prompts'
encoding) and encoding the references. Timing-only backbones (random weights) skip
every quality measure and record the step timing alone.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from tunebench.config import RunConfig, build_dataclass
from tunebench.datasets import load_dataset
from tunebench.datasets.concepts import ConceptDataset
from tunebench.datasets.subject import HOLD_OUT_FROM, SubjectDataset
from tunebench.engine.checkpoints import Checkpoints
from tunebench.engine.measure import Stopwatch, synchronize
from tunebench.engine.training import Optimization, autocast_for
from tunebench.errors import ConfigError
from tunebench.genmethods.base import ConceptPrompts
from tunebench.registry import BACKBONES, TASKS
from tunebench.scores import seconds_to_threshold
from tunebench.tasks.base import TaskContext, TaskResult, method_and_settings, with_start
from tunebench.tasks.gen_eval import Evaluator

# Fewer held-out images than this make CLIP-I against them too noisy to rank trials by.
MIN_VALIDATION_IMAGES = 16
# A subject is 3-20 photos: its held-out few are all there is. Two is the least whose mean
# is not one photo's framing; the samples (prompts × seeds) carry the rest of the noise.
MIN_SUBJECT_VALIDATION = 2

# Evaluation prompts for a subject of your own, in the manner of DreamBooth's evaluation
# (written for tunebench): the subject put somewhere new, given an accessory, or changed in
# a property. Short enough for mini-t2i's 16 tokens with "sks <noun>" in the slot.
SUBJECT_PROMPTS = [
    "a photo of a {} on a snowy hill.",  # recontextualisation
    "a photo of a {} on a sandy beach.",
    "a photo of a {} in a busy city street.",
    "a photo of a {} on a wooden kitchen table.",
    "a photo of a {} wearing a knitted scarf.",  # accessories
    "a photo of a {} with a tiny crown.",
    "a photo of a green {}.",  # properties: colour, and rendering
    "a pencil sketch of a {}.",
]


def _setting(default, help: str, *, added_later: bool = False):
    # added_later: left out of a cell's hash while at its default (config.task_config), so
    # the cells stored before the setting existed are still found.
    metadata = {"help": help, **({"added_later": True} if added_later else {})}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class GenerationSettings:
    # One-token words the concept starts from. The nearest class mini-t2i saw, by shape:
    # zebra and giraffe are four-legged, long-necked animals ("horse"); an ankle boot is
    # a boot (the base model knows "sneaker"/"sandal", but both are two tokens in MiniLM's
    # vocabulary, and the boot is the shape to learn).
    initializers: dict = _setting({"zebra": "horse", "giraffe": "horse", "ankle-boot": "boot"},
                                  "concept (a subject: its folder's name) -> one-token initializer word; "
                                  "a subject without one starts from its class noun's last word")
    train_templates: list = _setting(["a photo of a {}.", "a picture of a {}.", "a {}.", "an image of a {}."],
                                     "prompts tuned on, '{}' = the concept")
    # Two templates the base model was trained with, one it never saw ("drawing"), and
    # one that composes the concept with another word ("large").
    eval_prompts: list = _setting(["a photo of a {}.", "a black and white photo of a {}.",
                                   "a drawing of a {}.", "a photo of a large {}."],
                                  "prompts sampled after tuning on a concept:NAME, '{}' = the concept")
    subject_prompts: list = _setting(SUBJECT_PROMPTS, "prompts sampled after tuning on a subject:PATH, "
                                     "'{}' = the subject (DreamBooth-style)", added_later=True)
    samples_per_prompt: int = _setting(8, "samples per evaluation prompt (prompt p: seeds p*N .. p*N+N-1)")
    curve_samples_per_prompt: int = _setting(3, "samples per prompt scored at each curve checkpoint")
    checkpoints: list = _setting([0.0, 0.25, 0.5, 0.75, 1.0], "fractions of the steps where fidelity is scored")
    sampling_steps: int = _setting(20, "DDIM steps per sample")
    guidance: float = _setting(2.0, "classifier-free guidance scale (mini-t2i's self-check: 2 draws best)")
    sample_batch_size: int = _setting(64, "samples drawn at once")
    fidelity_threshold: float = _setting(0.5, "fidelity whose train time is reported")
    flip: bool = _setting(True, "random horizontal flips of the references while tuning")
    judge: str = _setting("mnist20", "fidelity judge (models/judge.py)")
    clip_backbone: str = _setting("mini-clip", "CLIP that scores CLIP-I and CLIP-T (mini-clip, open_clip:ARCH, "
                                  "hf-clip:PATH)")
    clip_image_size: int = _setting(64, "pixels per side fed to that CLIP's image tower (a ViT's own: 224 for B/32)")
    clip_pretrained: str = _setting("", "local checkpoint of that CLIP (open_clip:ARCH needs one; '' = the "
                                    "backbone's own weights)", added_later=True)
    dino_model: str = _setting("", "local Hugging Face image-model folder (a DINO ViT) for the DINO score; "
                               "'' skips it", added_later=True)
    real_images: int = _setting(32, "real test images of the concept scored for calibration")
    timing_repeats: int = _setting(5, "repeats of the conditioning timing probe")

    def __post_init__(self) -> None:
        for name in ("train_templates", "eval_prompts", "subject_prompts"):
            prompts = getattr(self, name)
            if not isinstance(prompts, list) or not prompts:
                raise ValueError(f"{name} must be a non-empty list of prompts")
            bad = [p for p in prompts if not isinstance(p, str) or p.count("{}") != 1]
            if bad:
                raise ValueError(f"{name}: every prompt needs exactly one '{{}}' for the concept, not {bad[0]!r}")
        if not self.checkpoints or sorted(self.checkpoints) != self.checkpoints or \
                not all(0 <= f <= 1 for f in self.checkpoints) or self.checkpoints[-1] != 1.0:
            raise ValueError("checkpoints must be increasing fractions in [0, 1] ending with 1.0")
        if not 1 <= self.curve_samples_per_prompt <= self.samples_per_prompt:
            raise ValueError("curve_samples_per_prompt must be 1..samples_per_prompt")
        if self.sampling_steps < 1 or self.sample_batch_size < 1 or self.timing_repeats < 1:
            raise ValueError("sampling_steps, sample_batch_size and timing_repeats must be >= 1")
        if not 0 < self.fidelity_threshold <= 1:
            raise ValueError("fidelity_threshold must be in (0, 1]")


@TASKS.register("generation")
class Generation:
    summary = ("personalised text-to-image: learn a held-out concept or your own subject from K images; "
               "metrics: fidelity (built-in concepts), CLIP-I, CLIP-T, DINO, diversity, time to a fidelity threshold")
    config_class = GenerationSettings
    hooks = frozenset({"conditioning"})  # GenerationAdapter's one hook
    # Higher is better; what `tunebench select` compares trials by: the report's headline,
    # judged on samples from validation seeds (docs/generation.md). A subject of your own
    # has no judge and is compared by CLIP-I instead (``selection_metric_for``).
    selection_metric = "fidelity"
    shots_unit = "reference images"
    # Adapters are built through ``tasks.base.with_start``: a cell may start from another run.
    chains = True

    @classmethod
    def selection_metric_for(cls, dataset: str) -> str:
        """The metric trials on ``dataset`` are compared by: fidelity on a built-in concept;
        CLIP-I against the held-out photos on a subject (no judge knows it, and CLIP-I is
        DreamBooth's subject-fidelity measure)."""
        return load_dataset(dataset).selection_metric

    def validate(self, config: RunConfig) -> None:
        dataset = load_dataset(config.dataset)  # a subject folder's bad input stops here
        if not isinstance(dataset, ConceptDataset | SubjectDataset):
            raise ConfigError(f"generation needs a concept dataset (concept:zebra, concept:giraffe, ...) or your "
                              f"own subject (subject:PATH), not {config.dataset!r}")
        method_cls, _ = method_and_settings(config)
        settings = build_dataclass(GenerationSettings, config.task_config, "task_config")
        if initializer_for(dataset, settings) is None:
            raise ConfigError(f"task_config.initializers has no initializer word for {dataset.concept!r}")
        dataset.references(config.shots, config.seed)  # too many shots fails here
        if config.eval_split == "validation":
            _check_validation(dataset)
        if settings.dino_model:
            from tunebench.models.image_embedder import check_image_model_folder

            check_image_model_folder(settings.dino_model)
        builder, _ = BACKBONES.resolve(config.backbone)
        if not getattr(builder, "text_to_image", False):
            raise ConfigError(f"generation needs a text-to-image backbone (mini-t2i, diffusers:PATH, "
                              f"tiny-t2i), not {config.backbone!r}")
        _check_clip_scorer(settings)

    def run(self, config: RunConfig, context: TaskContext) -> TaskResult:
        concept: ConceptDataset | SubjectDataset = load_dataset(config.dataset)
        settings = build_dataclass(GenerationSettings, config.task_config, "task_config")
        method_cls, method_settings = method_and_settings(config)
        model, device, train_cfg = context.backbone, context.device, config.train
        train_watch, eval_watch = Stopwatch(device), Stopwatch(device)
        n_train = len(settings.train_templates)
        eval_prompts = evaluation_prompts(concept, settings)
        prompts = ConceptPrompts(initializer_for(concept, settings), tuple(settings.train_templates + eval_prompts),
                                 name=concept.concept)
        eval_index = torch.arange(n_train, len(prompts.prompts))
        references = concept.train.load(concept.references(config.shots, config.seed))

        with train_watch.measure():
            adapter = with_start(method_cls(model, prompts, method_settings).to(device), context)
            latents = model.encode_latents(model.preprocess(references).to(device))
        evaluator = None
        if not model.timing_only:  # scorer models load outside both clocks, once per process
            evaluator = Evaluator(concept=concept, references=references, eval_index=eval_index,
                                  prompts=eval_prompts, reference_view=model.to_uint8(model.preprocess(references)),
                                  settings=settings, precision=train_cfg.precision, device=device,
                                  split=config.eval_split)

        curve: list[dict] = []
        # The probes before the end are the curve's price, kept out of eval_seconds (the
        # final scoring alone, as in every track): recorded as curve_eval_seconds.
        curve_watch = Stopwatch(device)

        def checkpoint(step: int) -> None:
            with curve_watch.measure():
                curve.append({"step": step, "train_seconds": round(train_watch.seconds, 4),
                              evaluator.curve_metric: round(evaluator.probe(adapter), 5)})

        at = {round(f * train_cfg.steps) for f in settings.checkpoints[:-1]} if evaluator else set()
        outcome = train_concept(adapter, latents, torch.arange(n_train), config=config, settings=settings,
                         watch=train_watch, checkpoints=at, on_checkpoint=checkpoint)
        metrics: dict = {"concept": concept.concept, "initializer": prompts.initializer,
                         "timing_only": model.timing_only, **concept.facts()}
        pictures = {}
        if evaluator is not None:
            with eval_watch.measure():
                quality, grid, final_probe = evaluator.final(adapter)
            curve.append({"step": train_cfg.steps, "train_seconds": round(train_watch.seconds, 4),
                          evaluator.curve_metric: round(final_probe, 5)})
            metrics.update(quality, **evaluator.facts())
            metrics["curve"] = curve
            if evaluator.curve_metric == "fidelity":  # the threshold is a fidelity level
                metrics["fidelity_threshold"] = settings.fidelity_threshold
                metrics["seconds_to_threshold"] = seconds_to_threshold(curve, settings.fidelity_threshold)
            pictures["samples"] = grid
        conditioning = _time_conditioning(adapter, config, settings, device)
        metrics.update(
            step_seconds=round(outcome["step_seconds"], 6),
            conditioning_seconds=round(conditioning, 6),
            text_encoder_per_step=method_cls.text_encoder_per_step,
            final_train_loss=round(outcome["loss"], 6),
            reference_images=config.shots,
            # Sizes behind the step times (the text-encoder-share study reads them).
            text_encoder_params=sum(p.numel() for p in model.text_encoder.parameters()),
            unet_params=sum(p.numel() for p in model.unet.parameters()),
        )
        return TaskResult(
            adapter=adapter, metrics=metrics, train_seconds=train_watch.seconds,
            eval_seconds=eval_watch.seconds, feature_seconds=0.0, steps=train_cfg.steps,
            images_seen=train_cfg.steps * train_cfg.batch_size, image_input="pixels",
            extra={"preset": getattr(method_settings, "preset", None),
                   **({"curve_eval_seconds": round(curve_watch.seconds, 4)} if evaluator else {})},
            pictures=pictures,
        )


def evaluation_prompts(dataset, settings: GenerationSettings) -> list[str]:
    """A built-in concept is sampled with ``eval_prompts`` (templates its 28 px classes were
    drawn with); your own subject with ``subject_prompts`` (DreamBooth-style scenes)."""
    return settings.subject_prompts if isinstance(dataset, SubjectDataset) else settings.eval_prompts


def initializer_for(dataset, settings: GenerationSettings) -> str | None:
    """The word the concept starts from: ``task_config.initializers`` first; else the
    dataset's own (a subject's head noun; None for a built-in concept)."""
    return settings.initializers.get(dataset.concept) or dataset.initializer


def _check_clip_scorer(settings: GenerationSettings) -> None:
    """The scoring CLIP is a CLIP, and its checkpoint file is there (no weights are read)."""
    from tunebench.models.mini_det import is_detection_backbone

    builder, _ = BACKBONES.resolve(settings.clip_backbone)
    if getattr(builder, "text_to_image", False) or is_detection_backbone(settings.clip_backbone):
        raise ConfigError(f"task_config.clip_backbone {settings.clip_backbone!r} is not a CLIP: name one "
                          "(mini-clip, open_clip:ARCH with clip_pretrained, hf-clip:PATH)")
    if settings.clip_pretrained and not Path(settings.clip_pretrained).expanduser().is_file():
        raise ConfigError(f"task_config.clip_pretrained: checkpoint {settings.clip_pretrained} not found")


def _check_validation(dataset) -> None:
    """Enough held-out images for a selection trial, or one line saying what to do."""
    if isinstance(dataset, SubjectDataset):
        if len(dataset.validation) < MIN_SUBJECT_VALIDATION:
            raise ConfigError(f"{dataset.name} holds out no photos for lr selection (it has {dataset.photos}; a "
                              f"folder of {HOLD_OUT_FROM} or more holds out a quarter): add photos, choose on "
                              f"another dataset (selection.pilot.dataset) or set each method's lr in method_config")
    elif len(dataset.validation) < MIN_VALIDATION_IMAGES:
        raise ConfigError(f"{dataset.name} holds out {len(dataset.validation)} validation images; selection "
                          f"needs >= {MIN_VALIDATION_IMAGES}: raise VALIDATION_IMAGES in datasets/concepts.py")


def train_concept(adapter, latents, train_index, *, config: RunConfig, settings: GenerationSettings,
           watch: Stopwatch, checkpoints: set[int], on_checkpoint) -> dict:
    """Denoising loss on the references; fidelity checkpoints run with the clock paused."""
    model, train_cfg = adapter.model, config.train
    device = latents.device
    run = Optimization.for_run(adapter.optimizer_groups(), train_cfg)
    noise_schedule = model.noise_scheduler()
    generator = torch.Generator().manual_seed(config.seed)
    batch = train_cfg.batch_size
    step_times: list[float] = []
    # The engine scores the checkpoints (samples in eval mode, then train mode again);
    # ``watch`` runs only inside each step's update below, so it is not running then.
    scoring = Checkpoints(evaluate=on_checkpoint, clock=watch, at=frozenset(checkpoints))
    for step in run.steps(desc=config.label, model=adapter, checkpoints=scoring):
        # The batch's randomness is drawn from the run's seed on the CPU: every method
        # sees the same references, flips, timesteps, noise and templates at each step.
        pick = torch.randint(0, len(latents), (batch,), generator=generator)
        flip = torch.rand(batch, generator=generator) < (0.5 if settings.flip else 0.0)
        prompt = train_index[torch.randint(0, len(train_index), (batch,), generator=generator)]
        noise = torch.randn((batch, *latents.shape[1:]), generator=generator).to(device)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (batch,), generator=generator).to(device)
        started = time.perf_counter()
        with watch.measure():
            x0 = latents[pick.to(device)]
            x0 = torch.where(flip.to(device).view(-1, 1, 1, 1), x0.flip(-1), x0)
            with autocast_for(device, train_cfg.precision):
                states, mask = adapter.conditioning(prompt.to(device))
                prediction = model.denoise(noise_schedule.add_noise(x0, noise, t), t, states, mask)
            target = model.training_target(noise_schedule, x0, noise, t)
            run.update(F.mse_loss(prediction.float(), target.float()), step)
        step_times.append(time.perf_counter() - started)
    # A checkpoint at the last step ran after the parameters' finite check.
    adapter.eval()
    # The first step pays one-off costs (allocations, kernel selection): left out of the median.
    steady = step_times[1:] or step_times
    return {"loss": run.loss, "step_seconds": statistics.median(steady)}


def _time_conditioning(adapter, config: RunConfig, settings: GenerationSettings, device) -> float:
    """Median seconds to produce one training batch's conditioning, forward and backward.

    Timed after training, apart from the step: for textual inversion this is the text
    encoder's share of its step, the cost that ConES removes.
    """
    index = torch.arange(config.train.batch_size) % len(settings.train_templates)
    times = []
    for _ in range(settings.timing_repeats + 1):
        synchronize(device)
        started = time.perf_counter()
        with autocast_for(device, config.train.precision):
            states, _ = adapter.conditioning(index.to(device))
        if states.requires_grad:
            states.float().square().mean().backward()
        synchronize(device)
        times.append(time.perf_counter() - started)
    adapter.zero_grad(set_to_none=True)
    return statistics.median(times[1:])
