"""Scoring generated samples: subject fidelity, CLIP-I, CLIP-T, diversity, time to threshold.

Definitions (every metric is a plain function of embeddings or labels, tested on
constructed inputs):

- **fidelity**: share of samples the judge (a classifier of all 20 Fashion/Animal-MNIST
  classes, never used in tuning) labels as the concept's class.
- **CLIP-I**: mean cosine, in mini-clip's image space, between every sample and every
  reference image (DreamBooth's subject-similarity measure).
- **CLIP-T**: mean cosine between each sample and its prompt with the concept's real
  name in the slot ("a drawing of a zebra.").
- **diversity**: mean over prompts of the mean pairwise (1 − cosine) among that
  prompt's samples; 0 when a method draws the same image for every seed.
- **seconds to threshold**: train seconds at which the fidelity curve first reaches
  the threshold, linearly interpolated between checkpoints; None if never
  (``tunebench/scores.py``, shared with the report).

Samples are drawn with fixed seeds, the same for every method and run, so methods are
compared on the same noise: sample j of prompt p starts from seed p × N + j (N samples a
prompt), plus ``VALIDATION_SEEDS`` in a selection trial (``eval_split: validation``).
A selection trial scores held-out material only: samples from those other seeds,
CLIP-I against the concept's validation images instead of the references (which the
run tuned on), and no real-image calibration (it reads test images). Seeds differ between prompts because this small model draws nearly the same
image for one noise whatever the template; the curve's checkpoints score the first
samples of every prompt, a subset of the final samples.
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
def _clip_backbone(name: str):
    from tunebench.registry import BACKBONES

    builder, argument = BACKBONES.resolve(name)
    return builder(argument).eval().requires_grad_(False)


class ClipScorer:
    """mini-clip (or any registered CLIP backbone) as an image and text embedder."""

    def __init__(self, name: str, image_size: int, device: torch.device) -> None:
        self.backbone = _clip_backbone(name).to(device)
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
    """Draws samples for the evaluation prompts and scores them against the references."""

    def __init__(self, *, concept, references: np.ndarray, reference_view: np.ndarray,
                 eval_index: torch.Tensor, settings, precision: str, device: torch.device,
                 split: str = "test") -> None:
        from tunebench.models.judge import load_judge

        self.concept = concept
        self.settings = settings
        self.eval_index = eval_index
        self.precision = precision
        self.device = device
        self.judge = load_judge(settings.judge)
        self.target = self.judge.label(concept.source, concept.classname)
        self.clip = ClipScorer(settings.clip_backbone, settings.clip_image_size, device)
        self.reference_view = reference_view  # the references as the model draws (size, channels)
        self.final_run = split == "test"
        self.first_seed = 0 if self.final_run else VALIDATION_SEEDS
        # CLIP-I's other side: the references in a final run; in a selection trial the
        # held-out validation images, so that copying the references earns nothing there.
        compared = references if self.final_run else concept.validation.load(np.arange(len(concept.validation)))
        self.reference_emb = self.clip.images(compared)
        named = [p.format(concept.classname) for p in settings.eval_prompts]
        self.prompt_emb = self.clip.texts(named)  # (P, D)

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

    def judge_facts(self) -> dict:
        """Which judge scored the run and how often it names real held-out images of this
        concept correctly (its ceiling-ish reading of fidelity); None for a judge built
        before the record held it."""
        held_out = self.judge.record.get("concept_accuracy", {}).get(self.concept.concept, {})
        return {"judge": self.judge.record.get("recipe_hash"), "judge_accuracy": held_out.get("accuracy"),
                "judge_held_out_images": held_out.get("images")}

    def probe_fidelity(self, adapter) -> float:
        """Fidelity on the curve's sample subset (the first seeds of every prompt)."""
        return fidelity(self.judge.classify(self.draw(adapter, self.settings.curve_samples_per_prompt)),
                        self.target)

    def final(self, adapter) -> tuple[dict, bytes, float]:
        """(metrics, sample-grid PNG, fidelity of the curve's subset of these samples)."""
        n, prompts = self.settings.samples_per_prompt, len(self.eval_index)
        samples = self.draw(adapter, n)
        labels = self.judge.classify(samples)
        emb = self.clip.images(samples)
        texts = self.prompt_emb.repeat_interleave(n, dim=0)
        per_prompt = labels.reshape(prompts, n)
        subset = per_prompt[:, : self.settings.curve_samples_per_prompt]
        metrics = {
            "fidelity": round(fidelity(labels, self.target), 5),
            "fidelity_per_prompt": [round(fidelity(row, self.target), 5) for row in per_prompt],
            "clip_i": round(clip_i(emb, self.reference_emb), 5),
            "clip_t": round(clip_t(emb, texts), 5),
            "diversity": round(diversity(emb, prompts), 5),
            "samples": int(len(samples)),
            "judge_labels_top": _top_labels(labels, self.judge.classes),
            **(self._real_calibration() if self.final_run else {}),
        }
        rows = [self.reference_view] + [samples[i * n : (i + 1) * n] for i in range(prompts)]
        return metrics, png_grid(rows), fidelity(subset.ravel(), self.target)

    def _real_calibration(self) -> dict:
        """How real, held-out images of the concept score on the same measures."""
        real = self.concept.test.load(np.arange(min(len(self.concept.test), self.settings.real_images)))
        emb = self.clip.images(real)
        return {
            "real_fidelity": round(fidelity(self.judge.classify(real), self.target), 5),
            "real_clip_i": round(clip_i(emb, self.reference_emb), 5),
            "real_clip_t": round(float(np.mean([clip_t(emb, t.expand(len(emb), -1)) for t in self.prompt_emb])), 5),
        }


def _top_labels(labels: np.ndarray, classes: list[str], k: int = 3) -> dict[str, float]:
    """What the judge saw most often: {class: share} for the k commonest labels."""
    values, counts = np.unique(labels, return_counts=True)
    order = sorted(zip(-counts, values, strict=True))[:k]
    return {classes[int(v)]: round(float(-c) / len(labels), 4) for c, v in order}
