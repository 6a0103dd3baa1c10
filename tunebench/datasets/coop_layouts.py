"""Where each dataset of CoOp's benchmark keeps its images and splits under ``DATA/``.

The table follows CoOp's DATASETS.md and its ``datasets/*.py`` readers (KaiyangZhou/CoOp):
the folder name under ``DATA/``, the folder the split's image paths are relative to,
the split file, and the one prompt CoOp's zero-shot CLIP and CoOp's initialisation
use for that dataset (``CUSTOM_TEMPLATES`` in its trainers). Keeping it as data means
adding a dataset that ships a ``split_zhou_*.json`` is one row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# How a layout's splits are stored (see tunebench/datasets/coop.py for each reader).
SplitFormat = Literal["split-json", "fgvc-variants", "imagenet-folders"]


@dataclass(frozen=True)
class CoopLayout:
    folder: str  # CoOp's folder name under DATA/, which is also how a user names the dataset
    coop_name: str  # CoOp's dataset class (its configs and CUSTOM_TEMPLATES use this name)
    image_dir: str  # split paths are relative to DATA/<folder>/<image_dir> ("" = the folder itself)
    split_format: SplitFormat
    split_file: str  # the file the split is read from, inside DATA/<folder>/
    template: str  # CoOp's single prompt for this dataset, one "{}"


LAYOUTS: dict[str, CoopLayout] = {
    layout.folder: layout
    for layout in (
        CoopLayout("caltech-101", "Caltech101", "101_ObjectCategories", "split-json",
                   "split_zhou_Caltech101.json", "a photo of a {}."),
        CoopLayout("oxford_pets", "OxfordPets", "images", "split-json",
                   "split_zhou_OxfordPets.json", "a photo of a {}, a type of pet."),
        # Stanford Cars' split paths start with cars_train/ or cars_test/, relative to the root.
        CoopLayout("stanford_cars", "StanfordCars", "", "split-json",
                   "split_zhou_StanfordCars.json", "a photo of a {}."),
        CoopLayout("oxford_flowers", "OxfordFlowers", "jpg", "split-json",
                   "split_zhou_OxfordFlowers.json", "a photo of a {}, a type of flower."),
        CoopLayout("food-101", "Food101", "images", "split-json",
                   "split_zhou_Food101.json", "a photo of {}, a type of food."),
        # FGVC-Aircraft keeps the dataset's own text splits: variants.txt lists the
        # classes, images_variant_{train,val,test}.txt hold "<image id> <variant>" lines.
        CoopLayout("fgvc_aircraft", "FGVCAircraft", "images", "fgvc-variants",
                   "variants.txt", "a photo of a {}, a type of aircraft."),
        CoopLayout("sun397", "SUN397", "SUN397", "split-json",
                   "split_zhou_SUN397.json", "a photo of a {}."),
        CoopLayout("dtd", "DescribableTextures", "images", "split-json",
                   "split_zhou_DescribableTextures.json", "{} texture."),
        CoopLayout("eurosat", "EuroSAT", "2750", "split-json",
                   "split_zhou_EuroSAT.json", "a centered satellite photo of {}."),
        CoopLayout("ucf101", "UCF101", "UCF-101-midframes", "split-json",
                   "split_zhou_UCF101.json", "a photo of a person doing {}."),
        # ImageNet has no split file: images/train/<wnid>/ and images/val/<wnid>/ plus
        # classnames.txt ("<wnid> <name>" lines); the val folder is the test split.
        CoopLayout("imagenet", "ImageNet", "images", "imagenet-folders",
                   "classnames.txt", "a photo of a {}."),
    )
}
