"""Scoring generated samples: subject fidelity, CLIP-I, CLIP-T, DINO, diversity, time to threshold.

Definitions (every metric is a plain function of embeddings or labels, tested on
constructed inputs):

- **fidelity**: share of samples the judge (a classifier of all 20 Fashion/Animal-MNIST
  classes, never used in tuning) labels as the concept's class. Only the built-in
  concepts have it: no judge knows a subject of your own (``subject:PATH``).
- **CLIP-I**: mean cosine, in the image space of the CLIP chosen by
  ``task_config.clip_backbone`` (mini-clip by default), between every sample and every
  reference image (DreamBooth's subject-similarity measure).
- **CLIP-T**: mean cosine between each sample and its prompt with the concept's real
  name (its class noun, for a subject) in the slot ("a drawing of a zebra.").
- **DINO**: CLIP-I's mean cosine in a self-supervised image model's space, when
  ``task_config.dino_model`` names a local one (``models/image_embedder.py``).
- **diversity**: mean over prompts of the mean pairwise (1 − cosine) among that
  prompt's samples; 0 when a method draws the same image for every seed.
- **seconds to threshold**: train seconds at which the fidelity curve first reaches
  the threshold, linearly interpolated between checkpoints; None if never
  (``tunebench/scores.py``, shared with the report).

Calibration, in a final run: a concept's real test images scored as samples are
(``real_*``); a subject has no test photos, so its references are scored against each
other and the prompts (``reference_*``).

Samples are drawn with fixed seeds, the same for every method and run, so methods are
compared on the same noise: sample j of prompt p starts from seed p × N + j (N samples a
prompt), plus ``VALIDATION_SEEDS`` in a selection trial (``eval_split: validation``).
A selection trial scores held-out material only: samples from those other seeds,
CLIP-I (and DINO) against the dataset's validation images instead of the references
(which the run tuned on), and no calibration (a concept's reads test images). Seeds
differ between prompts because this small model draws nearly the same image for one
noise whatever the template; the curve's checkpoints score the first samples of every
prompt, a subset of the final samples.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from tunebench.engine.grids import png_grid
from tunebench.engine.training import autocast_for

# Selection trials draw from seeds this far above the final runs' (which stay far below).
VALIDATION_SEEDS = 1_000_000

# ---- metrics on embeddings and labels --------------------------------------------------


def fidelity(labels: np.ndarray, target: int) -> float:
    labels = np.asarray(labels)
    return float((labels == target).mean()) if labels.size else 0.0


def clip_i(samples: torch.Tensor, references: torch.Tensor) -> float:
    """Mean cosine of every sample with every reference (rows L2-normalised here)."""
    return float((F.normalize(samples, dim=-1) @ F.normalize(references, dim=-1).T).mean())


def clip_t(samples: torch.Tensor, texts: torch.Tensor) -> float:
    """Mean cosine of sample i with text i."""
    return float((F.normalize(samples, dim=-1) * F.normalize(texts, dim=-1)).sum(-1).mean())


def mean_cosine_among(embeddings: torch.Tensor) -> float:
    """Mean cosine over the distinct pairs of rows (needs two rows or more)."""
    emb = F.normalize(embeddings, dim=-1)
    n = len(emb)
    return float(((emb @ emb.T).sum() - (emb * emb).sum()) / (n * (n - 1)))


def diversity(samples: torch.Tensor, groups: int) -> float:
    """``samples`` (groups × n, D), group-major: mean pairwise 1 − cosine within each group."""
    emb = F.normalize(samples, dim=-1).reshape(groups, -1, samples.shape[-1])
    n = emb.shape[1]
    if n < 2:
        return 0.0
    sim = emb @ emb.transpose(1, 2)
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    return float((1 - sim[:, off_diagonal]).mean())


# ---- the scorer models -------------------------------------------------------------------


@functools.cache
def _clip_backbone(name: str, pretrained: str | None = None):
    from tunebench.registry import BACKBONES

    builder, argument = BACKBONES.resolve(name)
    return builder(argument, pretrained=pretrained).eval().requires_grad_(False)


class ClipScorer:
    """mini-clip (or any registered CLIP backbone) as an image and text embedder."""

    def __init__(self, name: str, image_size: int, device: torch.device, pretrained: str | None = None) -> None:
        self.backbone = _clip_backbone(name, pretrained).to(device)
        self.image_size = image_size
        self.device = device

    @torch.no_grad()
    def images(self, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
        out = [self.backbone.encode_image(self.backbone.preprocess(images[s : s + batch_size],
                                                                   self.image_size).to(self.device))
               for s in range(0, len(images), batch_size)]
        return torch.cat(out).float().cpu()

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        return self.backbone.encode_text(self.backbone.tokenize(texts)).float().cpu()


class Evaluator:
    """Draws samples for the evaluation prompts and scores them against the references.

    The judge scores only datasets it knows (``dataset.judged``: the built-in concepts);
    a subject of your own has none, so its curve's checkpoints score CLIP-I instead of
    fidelity (``curve_metric``). DINO runs when ``settings.dino_model`` names a model."""

    def __init__(self, *, concept, references: np.ndarray, reference_view: np.ndarray,
                 eval_index: torch.Tensor, prompts: list[str], settings, precision: str,
                 device: torch.device, split: str = "test") -> None:
        self.concept = concept
        self.settings = settings
        self.eval_index = eval_index
        self.precision = precision
        self.device = device
        self.judge = None
        if concept.judged:
            from tunebench.models.judge import load_judge

            self.judge = load_judge(settings.judge)
            self.target = self.judge.label(concept.source, concept.classname)
        self.clip = ClipScorer(settings.clip_backbone, settings.clip_image_size, device,
                               pretrained=settings.clip_pretrained or None)
        self.dino = None
        if settings.dino_model:
            from tunebench.models.image_embedder import load_image_embedder

            self.dino = load_image_embedder(settings.dino_model).to(device)
        self.reference_view = reference_view  # the references as the model draws (size, channels)
        self.final_run = split == "test"
        self.first_seed = 0 if self.final_run else VALIDATION_SEEDS
        # CLIP-I's other side: the references in a final run; in a selection trial the
        # held-out validation images, so that copying the references earns nothing there.
        compared = references if self.final_run else concept.validation.load(np.arange(len(concept.validation)))
        self.reference_emb = self.clip.images(compared)
        self.reference_dino = self.dino(compared) if self.dino is not None else None
        # CLIP-T's prompts name the concept by its class ("a drawing of a zebra.").
        self.prompt_emb = self.clip.texts([p.format(concept.classname) for p in prompts])  # (P, D)

    @property
    def curve_metric(self) -> str:
        """What the curve's checkpoints score: the judge's fidelity where there is a judge."""
        return "fidelity" if self.judge is not None else "clip_i"

    @torch.no_grad()
    def draw(self, adapter, per_prompt: int) -> np.ndarray:
        """uint8 samples, prompt-major: (P × per_prompt, H, W[, 3])."""
        index = self.eval_index.repeat_interleave(per_prompt).to(self.device)
        adapter.eval()
        with autocast_for(self.device, self.precision):
            states, mask = adapter.conditioning(index)
            pixels = adapter.model.sample(
                states, mask, null_states=adapter.null_states, null_mask=adapter.null_mask,
                seeds=[self.first_seed + p * self.settings.samples_per_prompt + j
                       for p in range(len(self.eval_index)) for j in range(per_prompt)],
                steps=self.settings.sampling_steps, guidance=self.settings.guidance,
                batch_size=self.settings.sample_batch_size,
            )
        return adapter.model.to_uint8(pixels)

    def facts(self) -> dict:
        """With a judge: which judge scored the run and how often it names real held-out
        images of this concept correctly (its ceiling-ish reading of fidelity; None for a
        judge built before the record held it). Without one, why DINO is missing if it is."""
        if self.judge is None:
            return {} if self.dino is not None else {"dino_note": "not scored: no task_config.dino_model given"}
        held_out = self.judge.record.get("concept_accuracy", {}).get(self.concept.concept, {})
        return {"judge": self.judge.record.get("recipe_hash"), "judge_accuracy": held_out.get("accuracy"),
                "judge_held_out_images": held_out.get("images")}

    def probe(self, adapter) -> float:
        """``curve_metric`` on the curve's sample subset (the first seeds of every prompt)."""
        samples = self.draw(adapter, self.settings.curve_samples_per_prompt)
        if self.judge is not None:
            return fidelity(self.judge.classify(samples), self.target)
        return clip_i(self.clip.images(samples), self.reference_emb)

    def final(self, adapter) -> tuple[dict, bytes, float]:
        """(metrics, sample-grid PNG, ``curve_metric`` of the curve's subset of these samples)."""
        n, prompts = self.settings.samples_per_prompt, len(self.eval_index)
        samples = self.draw(adapter, n)
        emb = self.clip.images(samples)
        texts = self.prompt_emb.repeat_interleave(n, dim=0)
        metrics = {
            "clip_i": round(clip_i(emb, self.reference_emb), 5),
            "clip_t": round(clip_t(emb, texts), 5),
            "diversity": round(diversity(emb, prompts), 5),
            "samples": int(len(samples)),
        }
        if self.dino is not None:  # the same mean cosine as CLIP-I, in DINO's space
            metrics["dino"] = round(clip_i(self.dino(samples), self.reference_dino), 5)
        in_subset = torch.arange(len(samples)) % n < self.settings.curve_samples_per_prompt
        if self.judge is not None:
            labels = self.judge.classify(samples)
            per_prompt = labels.reshape(prompts, n)
            metrics.update(fidelity=round(fidelity(labels, self.target), 5),
                           fidelity_per_prompt=[round(fidelity(row, self.target), 5) for row in per_prompt],
                           judge_labels_top=_top_labels(labels, self.judge.classes))
            probe = fidelity(labels[in_subset.numpy()], self.target)
        else:
            probe = clip_i(emb[in_subset], self.reference_emb)
        if self.final_run:
            metrics.update(self._real_calibration() if self.judge is not None else self._reference_calibration())
        rows = [self.reference_view] + [samples[i * n : (i + 1) * n] for i in range(prompts)]
        return metrics, png_grid(rows), probe

    def _real_calibration(self) -> dict:
        """How real, held-out images of the concept score on the same measures."""
        real = self.concept.test.load(np.arange(min(len(self.concept.test), self.settings.real_images)))
        emb = self.clip.images(real)
        return {
            "real_fidelity": round(fidelity(self.judge.classify(real), self.target), 5),
            "real_clip_i": round(clip_i(emb, self.reference_emb), 5),
            "real_clip_t": round(float(np.mean([clip_t(emb, t.expand(len(emb), -1)) for t in self.prompt_emb])), 5),
        }

    def _reference_calibration(self) -> dict:
        """A subject has no test photos (its held-out ones are validation material): how its
        references score among themselves, each against the others (what a sample as
        like the subject as its own photos would reach), and against the prompts."""
        emb = self.reference_emb
        out = {"reference_clip_t": round(float(np.mean([clip_t(emb, t.expand(len(emb), -1))
                                                         for t in self.prompt_emb])), 5)}
        if len(emb) > 1:  # one reference has no other to be compared with
            out["reference_clip_i"] = round(mean_cosine_among(emb), 5)
            if self.reference_dino is not None:
                out["reference_dino"] = round(mean_cosine_among(self.reference_dino), 5)
        return out


def _top_labels(labels: np.ndarray, classes: list[str], k: int = 3) -> dict[str, float]:
    """What the judge saw most often: {class: share} for the k commonest labels."""
    values, counts = np.unique(labels, return_counts=True)
    order = sorted(zip(-counts, values, strict=True))[:k]
    return {classes[int(v)]: round(float(-c) / len(labels), 4) for c, v in order}
