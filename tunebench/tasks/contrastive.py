"""Image–text contrastive loss and retrieval recall, the two halves of the align task.

Both take *meaning ids*: items with equal ids are interchangeable (two images with
the same caption, or two wordings of one description). In the loss, such items in
one batch are all positives of each other instead of being pushed apart as false
negatives; with all-distinct ids it is exactly CLIP's symmetric InfoNCE. In recall, a
query is answered when any top-K item shares its meaning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    logit_scale: torch.Tensor,
    meanings: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of pairs (row i of each input is pair i).

    Embeddings are normalised here; ``logit_scale`` is the log inverse temperature.
    Targets are uniform over each row's positives (the pair itself, plus any other
    item of the batch with the same meaning).
    """
    image = F.normalize(image_embeddings.float(), dim=-1)
    text = F.normalize(text_embeddings.float(), dim=-1)
    logits = logit_scale.exp() * image @ text.T
    if meanings is None:
        targets = torch.eye(len(image), device=logits.device)
    else:
        targets = (meanings[:, None] == meanings[None, :]).float().to(logits.device)
    targets = targets / targets.sum(1, keepdim=True)
    image_to_text = -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()
    text_to_image = -(targets.T * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return (image_to_text + text_to_image) / 2


def recall_at_k(
    similarity: torch.Tensor,
    query_meanings: torch.Tensor,
    item_meanings: torch.Tensor,
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict[int, float]:
    """Share of queries (rows) with an item of their meaning among the top K columns.

    Ties count against the model: a relevant item's rank is the number of irrelevant
    items scoring at least as high as the best relevant one. A model whose scores are
    all equal therefore gets zero recall at every K smaller than the number of
    irrelevant items, rather than credit for an arbitrary tie-break order.
    """
    relevant = query_meanings[:, None] == item_meanings[None, :]
    if not bool(relevant.any(1).all()):
        raise ValueError("every query needs at least one item with its meaning")
    best_relevant = similarity.masked_fill(~relevant, float("-inf")).max(1).values
    rank = ((similarity >= best_relevant[:, None]) & ~relevant).sum(1)
    return {k: float((rank < k).float().mean()) for k in ks}
