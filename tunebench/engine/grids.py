"""Sample grids as PNG bytes: rows of small images, enlarged so a reader can see them.

PIL writes no timestamp or version into a PNG, so the same images give the same bytes.
"""

from __future__ import annotations

import io

import numpy as np


def png_grid(rows: list[np.ndarray], *, scale: int = 3, gap: int = 2, background: int = 96) -> bytes:
    """``rows``: each a uint8 array (n, H, W) or (n, H, W, 3), all images one size.

    Rows may hold different numbers of images (a references row above the samples);
    shorter rows are left-aligned on a grey background, which also fills the gaps.
    """
    from PIL import Image

    if not rows or not any(len(r) for r in rows):
        raise ValueError("png_grid needs at least one image")
    first = next(r for r in rows if len(r))
    h, w = first.shape[1:3]
    colour = first.ndim == 4
    cols = max(len(r) for r in rows)
    height = len(rows) * (h + gap) + gap
    width = cols * (w + gap) + gap
    canvas = np.full((height, width, 3) if colour else (height, width), background, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            y, x = gap + i * (h + gap), gap + j * (w + gap)
            canvas[y : y + h, x : x + w] = image
    canvas = canvas.repeat(scale, axis=0).repeat(scale, axis=1)  # nearest-neighbour: no blur
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
