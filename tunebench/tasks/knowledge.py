""""Knowledge kept": how much of each tower's pretrained behaviour survives alignment.

Image side: the image tower's ImageNet predictions (its own pretrained classifier on
top of the pooled features) on scikit-image's sample photos, before and after; the
score is the share of photos whose top-1 class is unchanged. A locked tower scores
1.0 by construction, so the number only moves for presets that train it.

Text side: the text tower's pooled sentence embeddings (before the projection) of a
fixed, topic-diverse sentence set; the score is the mean absolute change of the
pairwise cosine similarities. 0 means the tower relates sentences exactly as before.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# scikit-image ships these in its wheel (no download); greyscale ones are kept too:
# they are photos all the same, and the tower sees them as three equal channels.
SAMPLE_PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins",
    "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "page",
    "rocket", "text", "colorwheel", "logo", "retina",
)

SENTENCES = (
    "A dog is running across the park.",
    "A puppy plays on the grass.",
    "The stock market fell sharply today.",
    "Investors sold shares after the report.",
    "She is cooking pasta in the kitchen.",
    "A man prepares dinner at the stove.",
    "The spacecraft landed on the moon.",
    "Astronauts walked on the lunar surface.",
    "It is raining heavily in the city.",
    "Storm clouds gathered over the town.",
    "The orchestra played a symphony.",
    "A violinist performs on stage.",
    "He scored a goal in the final minute.",
    "The team won the championship match.",
    "Fresh bread is sold at the bakery.",
    "The doctor examined the patient's x-ray.",
    "A red sports car drove down the highway.",
    "Children are building a sandcastle on the beach.",
    "The programmer fixed a bug in the code.",
    "An old castle stands on the hill.",
)


def sample_photos() -> list[np.ndarray]:
    """The sample photos that load offline, as uint8 RGB arrays."""
    import skimage.data

    photos = []
    for name in SAMPLE_PHOTOS:
        try:
            image = np.asarray(getattr(skimage.data, name)())
        except Exception:  # noqa: BLE001 - a photo that needs a download is skipped
            continue
        if image.dtype != np.uint8:
            image = (255 * (image.astype(np.float64) / max(1.0, float(image.max())))).astype(np.uint8)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        photos.append(image[..., :3])
    return photos


@torch.no_grad()
def imagenet_top1(backbone, classifier: torch.nn.Module, photos: list[np.ndarray], device) -> torch.Tensor:
    """Top-1 ImageNet class of each photo, at the tower's pretraining resolution."""
    size = backbone.default_image_size
    was_training = backbone.training
    backbone.eval()
    pixels = torch.cat([backbone.preprocess(photo[None], size) for photo in photos]).to(device)
    logits = classifier.to(device)(backbone.encode_image_trunk(pixels).float())
    backbone.train(was_training)
    return logits.argmax(-1).cpu()


@torch.no_grad()
def sentence_similarities(backbone) -> torch.Tensor | None:
    """Pairwise cosine similarities of the fixed sentences in the text tower's own space."""
    try:
        pooled = backbone.encode_text_pooled(backbone.tokenize(list(SENTENCES)))
    except NotImplementedError:
        return None
    pooled = F.normalize(pooled.float().cpu(), dim=-1)
    return pooled @ pooled.T


class KnowledgeProbe:
    """Measures both towers once before tuning; ``after`` gives the two scores."""

    def __init__(self, backbone, device) -> None:
        self.device = device
        holder = getattr(backbone, "imagenet_classifier", None)
        self.classifier = holder[0] if holder else None
        self.photos = sample_photos() if self.classifier is not None else []
        self.top1_before = (
            imagenet_top1(backbone, self.classifier, self.photos, device) if self.photos else None
        )
        self.similarities_before = sentence_similarities(backbone)

    def after(self, backbone) -> dict[str, float | None]:
        agreement = drift = None
        if self.top1_before is not None:
            top1 = imagenet_top1(backbone, self.classifier, self.photos, self.device)
            agreement = float((top1 == self.top1_before).float().mean())
        if self.similarities_before is not None:
            now = sentence_similarities(backbone)
            upper = torch.triu_indices(len(SENTENCES), len(SENTENCES), offset=1)
            drift = float((now - self.similarities_before)[upper[0], upper[1]].abs().mean())
        return {"imagenet_agreement": agreement, "text_similarity_drift": drift,
                "probe_photos": len(self.photos)}
