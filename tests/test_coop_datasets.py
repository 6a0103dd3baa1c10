"""``coop:DATA/<name>``: CoOp's dataset folders, built here in their exact layout.

Each tree holds three classes of tiny JPEGs (3 train, 1 val, 2 test images per class)
with the folder names, split files and class names of CoOp's DATASETS.md and readers.
The expected prompt templates are written out here, not read from the code under test.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tunebench.bench.cli import main
from tunebench.datasets import check_shots, dataset_label, fewshot_indices, load_dataset
from tunebench.datasets.coop import coop_dataset
from tunebench.datasets.imagefolder import folder_label
from tunebench.errors import ConfigError, DataError

PER_SPLIT = {"train": 3, "val": 1, "test": 2}
TINY_SETS = ["--set", "train.steps=2", "--set", "train.batch_size=6", "--set", "train.image_size=16",
             "--set", "train.save_artifacts=false"]


@dataclass(frozen=True)
class Layout:
    image_dir: str
    split_file: str
    template: str
    # Per class: (image path pattern relative to image_dir, the class name the split stores).
    # Patterns take {n}, a number unique in the tree, and {part}: train or test.
    classes: tuple[tuple[str, str], ...]
    classnames: tuple[str, ...]  # what the prompts must read


SPLIT_JSON = {
    "caltech-101": Layout(
        "101_ObjectCategories", "split_zhou_Caltech101.json", "a photo of a {}.",
        (("accordion/image_{n:04d}.jpg", "accordion"), ("airplanes/image_{n:04d}.jpg", "airplane"),
         ("Faces/image_{n:04d}.jpg", "face")),
        ("accordion", "airplane", "face")),
    "oxford_pets": Layout(
        "images", "split_zhou_OxfordPets.json", "a photo of a {}, a type of pet.",
        (("Abyssinian_{n}.jpg", "abyssinian"), ("american_bulldog_{n}.jpg", "american_bulldog"),
         ("Bengal_{n}.jpg", "bengal")),
        ("abyssinian", "american bulldog", "bengal")),
    "stanford_cars": Layout(
        "", "split_zhou_StanfordCars.json", "a photo of a {}.",
        (("cars_{part}/{n:05d}.jpg", "2000 AM General Hummer SUV"), ("cars_{part}/{n:05d}.jpg", "2012 Acura RL Sedan"),
         ("cars_{part}/{n:05d}.jpg", "2012 Acura TL Sedan")),
        ("2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Acura TL Sedan")),
    "oxford_flowers": Layout(
        "jpg", "split_zhou_OxfordFlowers.json", "a photo of a {}, a type of flower.",
        (("image_{n:05d}.jpg", "pink primrose"), ("image_{n:05d}.jpg", "hard-leaved pocket orchid"),
         ("image_{n:05d}.jpg", "canterbury bells")),
        ("pink primrose", "hard-leaved pocket orchid", "canterbury bells")),
    "food-101": Layout(
        "images", "split_zhou_Food101.json", "a photo of {}, a type of food.",
        (("apple_pie/{n}.jpg", "apple_pie"), ("baby_back_ribs/{n}.jpg", "baby_back_ribs"),
         ("baklava/{n}.jpg", "baklava")),
        ("apple pie", "baby back ribs", "baklava")),
    "sun397": Layout(
        "SUN397", "split_zhou_SUN397.json", "a photo of a {}.",
        (("a/abbey/sun_{n}.jpg", "abbey"), ("a/apartment_building/outdoor/sun_{n}.jpg", "outdoor apartment_building"),
         ("b/bakery/shop/sun_{n}.jpg", "shop bakery")),
        ("abbey", "outdoor apartment building", "shop bakery")),
    "dtd": Layout(
        "images", "split_zhou_DescribableTextures.json", "{} texture.",
        (("banded/banded_{n:04d}.jpg", "banded"), ("blotchy/blotchy_{n:04d}.jpg", "blotchy"),
         ("braided/braided_{n:04d}.jpg", "braided")),
        ("banded", "blotchy", "braided")),
    "eurosat": Layout(
        "2750", "split_zhou_EuroSAT.json", "a centered satellite photo of {}.",
        (("AnnualCrop/AnnualCrop_{n}.jpg", "Annual Crop Land"), ("Forest/Forest_{n}.jpg", "Forest"),
         ("SeaLake/SeaLake_{n}.jpg", "Sea or Lake")),
        ("Annual Crop Land", "Forest", "Sea or Lake")),
    "ucf101": Layout(
        "UCF-101-midframes", "split_zhou_UCF101.json", "a photo of a person doing {}.",
        (("Apply_Eye_Makeup/v_ApplyEyeMakeup_g{n:02d}_c01.jpg", "Apply_Eye_Makeup"),
         ("Band_Marching/v_BandMarching_g{n:02d}_c01.jpg", "Band_Marching"),
         ("Yo_Yo/v_YoYo_g{n:02d}_c01.jpg", "Yo_Yo")),
        ("Apply Eye Makeup", "Band Marching", "Yo Yo")),
}


def write_image(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), (shade % 256, 90, 160)).save(path)


def build_split_json(data: Path, name: str) -> dict[str, list[list]]:
    """DATA/<name>/ with its images and split_zhou_*.json; returns the split as written.
    Entries interleave the classes, so labels must come from the file, not from order."""
    layout = SPLIT_JSON[name]
    folder = data / name
    image_root = folder / layout.image_dir
    counter = itertools.count(1)
    split: dict[str, list[list]] = {}
    for part, count in PER_SPLIT.items():
        split[part] = []
        for _ in range(count):
            for label, (pattern, stored_name) in enumerate(layout.classes):
                n = next(counter)
                relative = pattern.format(n=n, part="test" if part == "test" else "train")
                write_image(image_root / relative, 40 * label + n)
                split[part].append([relative, label, stored_name])
    (folder / layout.split_file).write_text(json.dumps(split))
    return split


VARIANTS = ("707-320", "727-200", "A300B4")


def build_fgvc(data: Path) -> Path:
    folder = data / "fgvc_aircraft"
    counter = itertools.count(1034000)
    for part, count in PER_SPLIT.items():
        lines = []
        for _ in range(count):
            for label, variant in enumerate(VARIANTS):
                image_id = f"{next(counter):07d}"
                write_image(folder / "images" / f"{image_id}.jpg", 50 * label)
                lines.append(f"{image_id} {variant}")
        (folder / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")
    (folder / "variants.txt").write_text("\n".join(VARIANTS) + "\n")
    return folder


WNIDS = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}


def build_imagenet(data: Path) -> Path:
    folder = data / "imagenet"
    counter = itertools.count(1)
    for part, count in (("train", 3), ("val", 2)):
        for label, wnid in enumerate(WNIDS):
            for _ in range(count):
                n = next(counter)
                stem = f"{wnid}_{n}" if part == "train" else f"ILSVRC2012_val_{n:08d}"
                write_image(folder / "images" / part / wnid / f"{stem}.JPEG", 60 * label + n)
    (folder / "images" / "train" / next(iter(WNIDS)) / ".DS_Store").write_text("")
    # CoOp's file names all 1,000 classes; lines for classes not on disk are ignored.
    lines = [f"{wnid} {name}" for wnid, name in WNIDS.items()] + ["n01491361 tiger shark"]
    (folder / "classnames.txt").write_text("\n".join(lines) + "\n")
    return folder


# ---- the eleven layouts -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SPLIT_JSON))
def test_reads_each_split_json_layout(tmp_path: Path, name: str) -> None:
    written = build_split_json(tmp_path / "DATA", name)
    layout = SPLIT_JSON[name]
    data = coop_dataset(tmp_path / "DATA" / name, size=32)
    assert data.classnames == layout.classnames
    assert data.templates == (layout.template,)
    assert data.name == dataset_label(f"coop:{tmp_path / 'DATA' / name}")
    assert data.name.startswith(f"{name}-")
    assert data.val is not None
    image_root = tmp_path / "DATA" / name / layout.image_dir
    for part, source in (("train", data.train), ("val", data.val), ("test", data.test)):
        assert len(source) == PER_SPLIT[part] * 3
        assert source.labels.tolist() == [label for _, label, _ in written[part]]
        assert [source.identity(i) for i in range(len(source))] == [
            str(image_root / relative) for relative, _, _ in written[part]
        ]
    pixels = data.test.load(np.arange(2))
    assert pixels.shape == (2, 32, 32, 3) and pixels.dtype == np.uint8


def test_reads_fgvc_aircraft_variant_files(tmp_path: Path) -> None:
    folder = build_fgvc(tmp_path / "DATA")
    data = load_dataset(f"coop:{folder}")
    assert data.classnames == VARIANTS
    assert data.templates == ("a photo of a {}, a type of aircraft.",)
    assert data.val is not None
    assert [len(data.train), len(data.val), len(data.test)] == [9, 3, 6]
    assert data.test.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert data.train.identity(0) == str(folder / "images" / "1034000.jpg")
    assert data.train.load(np.array([0])).shape == (1, 224, 224, 3)


def test_reads_imagenet_folders_and_classnames(tmp_path: Path) -> None:
    folder = build_imagenet(tmp_path / "DATA")
    data = coop_dataset(folder, size=32)
    assert data.classnames == ("tench", "goldfish", "great white shark")
    assert data.templates == ("a photo of a {}.",)
    assert data.val is None  # CoOp publishes no validation split for ImageNet
    assert data.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # .DS_Store skipped
    assert data.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert all("/images/val/" in data.test.identity(i) for i in range(len(data.test)))
    assert data.test.load(np.array([5])).shape == (1, 32, 32, 3)


def test_label_is_short_and_apart_from_imagefolder(tmp_path: Path) -> None:
    folder = tmp_path / "DATA" / "dtd"
    label = dataset_label(f"coop:{folder}")
    assert label.startswith("dtd-") and len(label) == len("dtd-") + 8
    assert label != folder_label(folder)  # the same folder read as imagefolder: is other data
    assert label == dataset_label(f"coop:{tmp_path}/DATA/../DATA/dtd/")


def test_fewshot_draws_from_train_with_the_usual_seeds(tmp_path: Path) -> None:
    build_split_json(tmp_path / "DATA", "eurosat")
    data = coop_dataset(tmp_path / "DATA" / "eurosat")
    def draw(seed: int) -> np.ndarray:
        # The folder's own val list is the validation split: no train image is held out,
        # so 20 per class asks nothing of the 3 training images per class.
        return fewshot_indices(data, shots=2, seed=seed, cache_dir=tmp_path / "splits", val_per_class=20)

    first = draw(1)
    assert np.bincount(data.train.labels[first]).tolist() == [2, 2, 2]
    assert np.array_equal(first, draw(1))
    assert not np.array_equal(first, draw(2))
    check_shots(data, 3)  # every class has 3 training images
    with pytest.raises(DataError, match=r"4 shots asked, but class\(es\) Annual Crop Land \(3\), Forest \(3\), "
                                        r"Sea or Lake \(3\) have fewer training images: use at most 3 shots"):
        check_shots(data, 4)
    with pytest.raises(ConfigError, match="shots must be >= 1"):
        check_shots(data, 0)


def test_fewshot_cls_runs_end_to_end_on_a_coop_folder(tmp_path: Path, capsys) -> None:
    build_split_json(tmp_path / "DATA", "oxford_pets")
    dataset = f"coop:{tmp_path / 'DATA' / 'oxford_pets'}"
    code = main(["run", "--method", "coop", "--dataset", dataset, "--backbone", "tiny-clip", "--shots", "2",
                 "--results", str(tmp_path / "results"), *TINY_SETS])
    assert code == 0, capsys.readouterr().err
    (path,) = (tmp_path / "results" / "runs").glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok"
    assert record["dataset"] == dataset and record["dataset_label"] == dataset_label(dataset)
    assert record["metrics"]["num_classes"] == 3
    assert record["metrics"]["test_images"] == 6 and record["metrics"]["train_images"] == 6
    assert 0.0 <= record["metrics"]["top1"] <= 1.0


# ---- bad input: one line, nothing stored --------------------------------------------


def _pets(data: Path) -> Path:
    build_split_json(data, "oxford_pets")
    return data / "oxford_pets"


def _edit_split(folder: Path, edit) -> None:
    file = folder / "split_zhou_OxfordPets.json"
    split = json.loads(file.read_text())
    edit(split)
    file.write_text(json.dumps(split))


def missing_image(data: Path) -> Path:
    folder = _pets(data)
    (folder / "images" / "Bengal_9.jpg").unlink()  # train's third class, third row
    return folder


def label_outside(data: Path) -> Path:
    folder = _pets(data)
    _edit_split(folder, lambda split: split["test"][1].__setitem__(1, 7))
    return folder


def label_name_clash(data: Path) -> Path:
    folder = _pets(data)
    _edit_split(folder, lambda split: split["val"][0].__setitem__(2, "bengal"))
    return folder


def malformed_entry(data: Path) -> Path:
    folder = _pets(data)
    _edit_split(folder, lambda split: split["train"].__setitem__(0, ["Abyssinian_1.jpg", "0"]))
    return folder


def one_class(data: Path) -> Path:
    folder = _pets(data)
    _edit_split(folder, lambda split: [split.__setitem__(p, [e for e in split[p] if e[1] == 0]) for p in split])
    return folder


def no_split_file(data: Path) -> Path:
    folder = _pets(data)
    (folder / "split_zhou_OxfordPets.json").unlink()
    return folder


def unknown_name(data: Path) -> Path:
    _pets(data)
    return data / "oxford_pet"


def no_dataset_folder(data: Path) -> Path:
    _pets(data)
    return data / "dtd"


def fgvc_unknown_variant(data: Path) -> Path:
    folder = build_fgvc(data)
    with (folder / "images_variant_test.txt").open("a") as stream:
        stream.write("1034999 747-400\n")
    return folder


def imagenet_unnamed_class(data: Path) -> Path:
    folder = build_imagenet(data)
    (folder / "classnames.txt").write_text("n01440764 tench\nn01443537 goldfish\n")
    return folder


def imagenet_val_class_train_lacks(data: Path) -> Path:
    folder = build_imagenet(data)
    write_image(folder / "images" / "val" / "n01491361" / "ILSVRC2012_val_00000099.JPEG", 0)
    return folder


def cased_like_coop_configs(data: Path) -> Path:
    _pets(data)
    return data / "OxfordPets"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (missing_image, "split_zhou_OxfordPets.json names 1 image(s) missing from {folder}/images "
                        "(first, in train: Bengal_9.jpg): restore them"),
        (label_outside, "split_zhou_OxfordPets.json: test[1] has label 7, outside the class list 0..2"),
        (label_name_clash, "val[0] pairs label 0 with 'bengal', but an earlier entry pairs label 0 with "
                           "'abyssinian'"),
        (malformed_entry, 'train[0] is ["Abyssinian_1.jpg", "0"], not [image path, label, class name]'),
        (one_class, "{folder} has one class (abyssinian): a classifier needs at least two"),
        (no_split_file, "{folder} has no split_zhou_OxfordPets.json: download it as CoOp's DATASETS.md says"),
        (unknown_name, "'oxford_pet' is not a CoOp dataset folder. Did you mean {folder}s?"),
        (no_dataset_folder, "{folder} does not exist: put CoOp's dtd/ folder in"),
        (fgvc_unknown_variant, "images_variant_test.txt:7 names variant '747-400', outside the class list"),
        (imagenet_unnamed_class, "classnames.txt has no line for n01484850"),
        (imagenet_val_class_train_lacks, "{folder}/images/val/n01491361 is a class that {folder}/images/train "
                                         "lacks (outside the class list)"),
        (cased_like_coop_configs, "'OxfordPets' is not a CoOp dataset folder. Did you mean {folder.parent}/oxford_pets?"),
    ],
    ids=lambda value: getattr(value, "__name__", ""),
)
def test_bad_folder_stops_with_one_line_and_stores_nothing(tmp_path: Path, capsys, make, message) -> None:
    folder = make(tmp_path / "DATA")
    code = main(["run", "--method", "cones", "--dataset", f"coop:{folder}", "--backbone", "tiny-clip",
                 "--shots", "1", "--results", str(tmp_path / "results"), *TINY_SETS])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tunebench: error: "), err
    assert message.format(folder=folder) in err
    assert not (tmp_path / "results").exists()


def test_too_many_shots_stops_a_sweep_before_its_first_cell(tmp_path: Path, capsys) -> None:
    """The 1-shot cell could run; the 4-shot one cannot (3 training images per class), and
    validation refuses the sweep before the first cell writes anything."""
    folder = _pets(tmp_path / "DATA")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"task: fewshot-cls\nbackbone: tiny-clip\ndatasets: ['coop:{folder}']\nmethods: [cones]\n"
        "shots: [1, 4]\nseeds: [1]\n"
        "train: {steps: 2, batch_size: 6, image_size: 16, save_artifacts: false}\n"
    )
    code = main(["bench", str(sweep), "--results", str(tmp_path / "results"), "--no-report"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "4 shots asked, but class(es) abyssinian (3), american bulldog (3), bengal (3) have fewer training " \
           "images: use at most 3 shots" in err
    assert not (tmp_path / "results").exists()
