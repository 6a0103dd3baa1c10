"""``subject:PATH``: your own subject for the generation track, in DreamBooth's layout.

    PATH/                     e.g. ~/photos/dog-rex/
      class.txt               optional: the class noun, one line ("dog", "teddy bear")
      01.jpg 02.jpg 03.png    3–20 photos of the one subject (.jpg .jpeg .png .bmp .webp)

**The class noun** is what the subject is an instance of. It comes from ``class.txt``
when the folder has one, otherwise from the folder's name written ``NOUN-NAME``:
everything before the first ``-``, underscores read as spaces (``dog-rex`` → "dog",
``teddy_bear-ted`` → "teddy bear"). CLIP-T's prompts name the subject by it ("a dog
wearing a scarf."), and its last word (the head noun: "bear") is the word tuning
starts from unless ``task_config.initializers`` names one for the folder.

**Photos** are the image files directly in PATH, in name order. Each is turned
upright (phone photos store their rotation in EXIF), centre-cropped to a square and
decoded at the smallest photo's side, at most 512 px: small images are not blown up,
and 20 phone photos cost ~15 MB. Every photo is decoded when the dataset is loaded,
so an unreadable file stops a sweep before anything runs or is stored.

**The split** is made once, by a fixed permutation (``PARTITION_SEED``, not a run's
seed), as ``concept:NAME`` cuts its images:

- ``validation``: a folder of ``HOLD_OUT_FROM`` or more photos holds a quarter of them
  out. Selection trials score CLIP-I against them; no run ever tunes on them;
- ``train``, the reference pool: the rest. A run's K references are the first K of a
  seeded permutation of the pool, so K = 3 is a subset of K = 5 for the same seed.

A smaller folder (DreamBooth's usual 3–5 photos) holds none out: every photo can be a
reference, and a selection trial on it is refused in one line. There is no test split
and no judge: a subject is scored by CLIP-I and CLIP-T (and DINO when a model is given;
``tasks/gen_eval.py``), never by the CNN judge of the built-in concepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from tunebench.datasets.base import ArrayImages
from tunebench.datasets.imagefolder import IMAGE_EXTENSIONS, folder_label
from tunebench.errors import ConfigError, DataError
from tunebench.registry import DATASETS

CLASS_FILE = "class.txt"
MIN_PHOTOS = 3  # DreamBooth's smallest subject; fewer cannot show a subject from more than one side
HOLD_OUT_FROM = 8  # photos from which a quarter (at least 2) is held out for validation
MAX_SIZE = 512  # pixels per side, at most: Stable Diffusion's resolution
PARTITION_SEED = 11  # any fixed number: the cut must not depend on a run's seed


@dataclass(frozen=True)
class SubjectDataset:
    name: str  # "subject:~/photos/dog-rex", as given
    concept: str  # the folder's name: its key in task_config.initializers
    classname: str  # the class noun, for CLIP-T's prompts
    noun_from: str  # where the noun came from: "class.txt" or "folder name"
    train: ArrayImages  # the reference pool
    validation: ArrayImages  # held-out photos (none in a folder of fewer than HOLD_OUT_FROM)
    photos: int  # photos in the folder
    native_size: int  # pixels per side the photos were decoded at

    # What the generation task asks every dataset it runs on (ConceptDataset answers too).
    judged: ClassVar[bool] = False  # no CNN judge knows this subject: no fidelity
    selection_metric: ClassVar[str] = "clip_i"  # on the held-out photos (a selection trial)

    @property
    def initializer(self) -> str:
        """The head noun: "bear" for "teddy bear" (English compounds end in their head)."""
        return self.classname.split()[-1]

    def references(self, shots: int, seed: int) -> np.ndarray:
        """Indices into ``train`` of the K reference photos for ``seed``."""
        pool = len(self.train)
        if not 1 <= shots <= pool:
            held = f" ({len(self.validation)} more are held out for validation)" if len(self.validation) else ""
            raise ConfigError(f"{self.name}: shots (reference photos) must be 1..{pool}, got {shots}: the folder's "
                              f"reference pool has {pool} photo(s){held}; add photos or lower shots")
        return np.random.RandomState(seed).permutation(pool)[:shots]

    def facts(self) -> dict:
        """What a run records about its subject: where the noun came from, how many photos,
        and a digest of their pixels (the cell's hash names the folder, not its content)."""
        every = np.concatenate([self.train.images, self.validation.images])
        return {"class_noun": self.classname, "class_noun_from": self.noun_from, "subject_photos": self.photos,
                "held_out_photos": len(self.validation),
                "subject_content": ArrayImages(every, np.zeros(len(every)), self.name).content_key}


def class_noun(root: Path, name: str) -> tuple[str, str]:
    """(noun, where it came from); a one-line error naming both ways to give one."""
    how = (f"write it in {root / CLASS_FILE} (one line, e.g. dog) or name the folder NOUN-NAME "
           f"(e.g. dog-{root.name})")
    file = root / CLASS_FILE
    if file.is_file():
        try:
            lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{name}: cannot read {file} ({type(exc).__name__}): {how}") from exc
        if len(lines) != 1:
            raise ConfigError(f"{name}: {file} holds {len(lines)} non-empty lines; it must hold one, the class "
                              f"noun: {how}")
        noun, source = lines[0], CLASS_FILE
    elif "-" in root.name.strip("-"):
        noun, source = root.name.split("-", 1)[0].replace("_", " "), "folder name"
    else:
        raise ConfigError(f"{name} has no class noun: {how}")
    noun = " ".join(noun.split())
    if not noun or "{" in noun or "}" in noun:  # braces would break the prompt templates
        raise ConfigError(f"{name}: class noun {noun!r} is not a word: {how}")
    return noun, source


def photo_files(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def decode(paths: list[Path], name: str) -> np.ndarray:
    """Every photo upright, centre-cropped square, at one size: (n, S, S, 3) uint8."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    def opened(path: Path, action):
        try:
            with Image.open(path) as image:
                return action(image)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{name}: cannot read photo {path} ({type(exc).__name__}): "
                            "remove or replace the file") from exc

    # Sizes first, from the headers alone (turning upright keeps the short side), so that
    # the one size is known before any pixels are kept.
    size = min(MAX_SIZE, *(min(opened(p, lambda im: im.size)) for p in paths))

    def square(image):
        image = ImageOps.exif_transpose(image)
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.convert("RGB").crop((left, top, left + side, top + side))
        return np.asarray(image.resize((size, size), Image.BICUBIC), dtype=np.uint8)

    return np.stack([opened(p, square) for p in paths])


@DATASETS.register("subject:")
def subject_dataset(argument: str) -> SubjectDataset:
    """Your own subject for generation: a folder of 3-20 photos of one thing (class noun in class.txt or NOUN-NAME)."""
    name = f"subject:{argument}"
    root = Path(argument).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{name}: folder {root} does not exist: check the path after 'subject:'")
    noun, source = class_noun(root, name)  # before the photos: the cheaper mistake first
    paths = photo_files(root)
    if len(paths) < MIN_PHOTOS:
        raise ConfigError(f"{name} has {len(paths)} photo(s) ({', '.join(sorted(IMAGE_EXTENSIONS))}); a subject "
                          f"needs at least {MIN_PHOTOS}: add photos of it to {root}")
    images = decode(paths, name)
    order = np.random.RandomState(PARTITION_SEED).permutation(len(paths))
    held = max(2, len(paths) // 4) if len(paths) >= HOLD_OUT_FROM else 0
    parts = {"validation": np.sort(order[:held]), "train": np.sort(order[held:])}
    splits = {split: ArrayImages(images[index], np.zeros(len(index), dtype=np.int64), f"{name}/{split}")
              for split, index in parts.items()}
    return SubjectDataset(name=name, concept=root.name, classname=noun, noun_from=source,
                          photos=len(paths), native_size=int(images.shape[1]), **splits)


# How reports and file names call a subject (``dog-rex-3f2a9c1b``) without reading it.
subject_dataset.label = folder_label
subject_dataset.example = "/path/to/photos/dog-rex"
