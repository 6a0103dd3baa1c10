"""A picture of a run's detections on a few test images (PNG bytes, deterministic).

Masks are tinted, boxes outlined, each labelled with class and score; novel classes
in orange, base classes in blue, so a glance shows which kind of class a method finds.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

NOVEL_COLOUR = (255, 140, 0)
BASE_COLOUR = (40, 140, 255)
SCALE = 2  # the canvases are small: draw at twice their size so labels stay legible
MAX_PER_IMAGE = 8


def draw_predictions(images: list[np.ndarray], dets: list[dict], classnames, novel, *,
                     min_score: float = 0.3) -> bytes:
    font = ImageFont.load_default()
    tiles = []
    for image, det in zip(images, dets, strict=True):
        height, width = image.shape[:2]
        rgb = image.astype(np.float32).copy()
        keep = [k for k in range(len(det["scores"])) if float(det["scores"][k]) >= min_score][:MAX_PER_IMAGE]
        for k in keep:
            colour = np.array(NOVEL_COLOUR if novel[int(det["labels"][k])] else BASE_COLOUR, dtype=np.float32)
            mask = det["masks"][k].numpy()
            rgb[mask] = 0.55 * rgb[mask] + 0.45 * colour
        tile = Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).resize((width * SCALE, height * SCALE),
                                                                         Image.NEAREST)
        draw = ImageDraw.Draw(tile)
        for k in keep:
            label = int(det["labels"][k])
            colour = NOVEL_COLOUR if novel[label] else BASE_COLOUR
            x1, y1, x2, y2 = (float(v) * SCALE for v in det["boxes"][k])
            draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
            text = f"{classnames[label]} {float(det['scores'][k]):.2f}"
            draw.rectangle([x1, max(0, y1 - 11), x1 + 6 * len(text) + 2, max(11, y1)], fill=(0, 0, 0))
            draw.text((x1 + 1, max(0, y1 - 11)), text, fill=colour, font=font)
        tiles.append(tile)
    if not tiles:
        return b""
    gap = 4
    width = sum(t.width for t in tiles) + gap * (len(tiles) - 1)
    sheet = Image.new("RGB", (width, max(t.height for t in tiles)), (255, 255, 255))
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width + gap
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()
