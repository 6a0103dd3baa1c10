"""Datasets, few-shot splits and evaluation subsets (fast: no model, no download)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tunebench.datasets import fewshot_indices, load_dataset, test_indices
from tunebench.datasets.fashion_mnist import DEFAULT_DIR as FASHION_DIR
from tunebench.datasets.fewshot import held_out_for_validation
from tunebench.datasets.imagefolder import image_folder
from tunebench.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Split files go to a temporary folder, never to the real cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TUNEBENCH_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def tiny():
    return load_dataset("tiny-shapes")


VAL = 8  # validation images held out per class: tiny-shapes' 24 leave 16 to draw from


def split_files(cache: Path) -> list[Path]:
    return sorted((cache / "splits").glob("*.json"))


# ---- tiny-shapes --------------------------------------------------------------------


def test_tiny_shapes_shapes_and_labels(tiny) -> None:
    assert tiny.classnames == ("circle", "square", "triangle", "cross")
    assert tiny.templates[0] == "a photo of a {}."
    assert tiny.native_size == 16
    images = tiny.train.load(np.arange(len(tiny.train)))
    assert images.shape == (96, 16, 16) and images.dtype == np.uint8
    assert np.bincount(tiny.train.labels).tolist() == [24] * 4
    assert np.bincount(tiny.test.labels).tolist() == [12] * 4
    assert images.std() > 20  # shapes are drawn, not blank


def test_tiny_shapes_is_deterministic(tiny) -> None:
    from tunebench.datasets.tiny import tiny_shapes

    again = tiny_shapes()  # a fresh build, not the memoised one
    assert np.array_equal(again.train.load(np.arange(96)), tiny.train.load(np.arange(96)))
    assert np.array_equal(again.test.labels, tiny.test.labels)


# ---- few-shot splits ----------------------------------------------------------------


def test_fewshot_k_per_class_and_seeded(tiny) -> None:
    first = fewshot_indices(tiny, shots=4, seed=1, val_per_class=VAL)
    assert np.all(np.diff(first) > 0)  # sorted, no repeats
    assert np.bincount(tiny.train.labels[first]).tolist() == [4] * 4
    assert np.array_equal(first, fewshot_indices(tiny, shots=4, seed=1, val_per_class=VAL))
    assert not np.array_equal(first, fewshot_indices(tiny, shots=4, seed=2, val_per_class=VAL))


def test_fewshot_split_file_is_written_and_read_back(tiny, private_cache: Path) -> None:
    drawn = fewshot_indices(tiny, shots=2, seed=3, val_per_class=VAL)
    [path] = split_files(private_cache)
    assert path.name == "tiny-shapes_96pool_2shot_seed3_val8.json"
    record = json.loads(path.read_text())
    assert record["indices"] == drawn.tolist()
    assert record["identities"] == [tiny.train.identity(int(i)) for i in drawn]

    # Other valid indices in the file are what comes back: the file is the source of truth.
    free = np.setdiff1d(np.arange(len(tiny.train)), held_out_for_validation(tiny, VAL))
    last_two = [free[tiny.train.labels[free] == c][-2:] for c in range(4)]
    others = np.sort(np.concatenate(last_two))
    assert not np.array_equal(others, drawn)
    record["indices"] = others.tolist()
    record["identities"] = [tiny.train.identity(int(i)) for i in others]
    path.write_text(json.dumps(record))
    assert np.array_equal(fewshot_indices(tiny, shots=2, seed=3, val_per_class=VAL), others)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda text, record: "{not json",
        lambda text, record: json.dumps({**record, "indices": record["indices"][:-1]}),
        lambda text, record: json.dumps({**record, "indices": [10_000] * len(record["indices"])}),
        lambda text, record: json.dumps({**record, "identities": ["elsewhere"] * 8}),
    ],
    ids=["corrupt-json", "wrong-count", "out-of-range", "stale-identities"],
)
def test_fewshot_bad_split_file_is_redrawn(tiny, private_cache: Path, tamper) -> None:
    drawn = fewshot_indices(tiny, shots=2, seed=0, val_per_class=VAL)
    [path] = split_files(private_cache)
    text = path.read_text()
    path.write_text(tamper(text, json.loads(text)))
    with pytest.warns(UserWarning, match="drawing the split again"):
        assert np.array_equal(fewshot_indices(tiny, shots=2, seed=0, val_per_class=VAL), drawn)
    assert json.loads(path.read_text())["indices"] == drawn.tolist()  # repaired on disk


def test_fewshot_explicit_cache_dir(tiny, tmp_path: Path, private_cache: Path) -> None:
    fewshot_indices(tiny, shots=1, seed=0, cache_dir=tmp_path / "elsewhere", val_per_class=VAL)
    assert len(list((tmp_path / "elsewhere").glob("*.json"))) == 1
    assert split_files(private_cache) == []


def test_fewshot_too_many_shots(tiny) -> None:
    with pytest.raises(DataError, match="at most 24 shots"):
        fewshot_indices(tiny, shots=25, seed=0, val_per_class=VAL)
    with pytest.raises(ConfigError):
        fewshot_indices(tiny, shots=0, seed=0, val_per_class=VAL)


def test_test_indices(tiny) -> None:
    assert np.array_equal(test_indices(tiny, None), np.arange(48))
    subset = test_indices(tiny, 5)
    assert np.all(np.diff(subset) > 0)
    assert np.bincount(tiny.test.labels[subset]).tolist() == [5] * 4
    assert np.array_equal(subset, test_indices(tiny, 5))
    assert len(test_indices(tiny, 100)) == 48  # a class smaller than asked gives all it has


# ---- imagefolder --------------------------------------------------------------------


def write_images(folder: Path, count: int, suffix: str = ".png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (20, 12), (i * 20, 100, 50)).save(folder / f"img{i}{suffix}")


def test_imagefolder_flat_layout_splits_80_20(tmp_path: Path) -> None:
    write_images(tmp_path / "golden_retriever", 10)
    write_images(tmp_path / "tabby-cat", 5, suffix=".JPG")
    (tmp_path / "tabby-cat" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.classnames == ("golden retriever", "tabby cat")
    assert np.bincount(data.test.labels).tolist() == [2, 1]
    assert np.bincount(data.train.labels).tolist() == [8, 4]
    assert data.train.load(np.arange(2)).shape == (2, 224, 224, 3)
    assert data.templates[0] == "a photo of a {}."


def test_imagefolder_train_test_layout(tmp_path: Path) -> None:
    for name, count in (("ant", 3), ("bee", 4)):
        write_images(tmp_path / "train" / name, count)
    write_images(tmp_path / "test" / "bee", 2)
    data = image_folder(tmp_path, size=32)
    assert data.classnames == ("ant", "bee")
    assert data.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert data.test.labels.tolist() == [1, 1]
    assert data.test.load(np.array([1])).shape == (1, 32, 32, 3)


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}")
    with pytest.raises(DataError, match="no class folders"):
        image_folder(tmp_path)
    write_images(tmp_path / "full", 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"class folder .*empty has no images"):
        image_folder(tmp_path)
    with pytest.raises(ConfigError, match="needs a path"):
        load_dataset("imagefolder:")


def test_imagefolder_corrupt_image_names_the_file(tmp_path: Path) -> None:
    write_images(tmp_path / "a", 4)
    write_images(tmp_path / "b", 4)
    (tmp_path / "b" / "img0.png").write_bytes(b"not a png")
    data = image_folder(tmp_path)
    everything = [(data.train, i) for i in range(len(data.train))] + [
        (data.test, i) for i in range(len(data.test))
    ]
    source, index = next((s, i) for s, i in everything if s.identity(i).endswith("b/img0.png"))
    with pytest.raises(DataError, match=r"b/img0\.png"):
        source.load(np.array([index]))


# ---- registry -----------------------------------------------------------------------


def test_unknown_dataset_suggests_names() -> None:
    with pytest.raises(ConfigError, match="Did you mean fashion-mnist"):
        load_dataset("fashion-mnsit")


def test_load_dataset_is_memoised() -> None:
    assert load_dataset("tiny-shapes") is load_dataset("tiny-shapes")


def test_every_dataset_starts_with_the_shared_template() -> None:
    from tunebench.datasets import animal_mnist, fashion_mnist, imagefolder, textile

    for module in (animal_mnist, fashion_mnist, imagefolder, textile):
        assert module.TEMPLATES[0] == "a photo of a {}."


# ---- real datasets (skipped where their data is not installed) ----------------------


@pytest.mark.skipif(
    not (FASHION_DIR / "t10k-labels-idx1-ubyte.gz").exists(),
    reason="apt-get install dataset-fashion-mnist",
)
def test_fashion_mnist() -> None:
    data = load_dataset("fashion-mnist")
    assert (data.num_classes, data.native_size) == (10, 28)
    assert (len(data.train), len(data.test)) == (60000, 10000)
    assert data.test.load(np.arange(3)).shape == (3, 28, 28)
    assert np.bincount(data.test.labels).tolist() == [1000] * 10


def test_fashion_mnist_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunebench.datasets.fashion_mnist import fashion_mnist

    monkeypatch.setenv("TUNEBENCH_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist()


@pytest.mark.skipif(
    importlib.util.find_spec("animal_mnist") is None, reason="pip install --no-deps animal-mnist"
)
def test_animal_mnist() -> None:
    data = load_dataset("animal-mnist")
    assert data.num_classes == 10 and data.classnames[0] == "bear"
    assert np.bincount(data.test.labels).tolist() == [200] * 10
    assert data.train.load(np.arange(2)).shape == (2, 28, 28)
    # Duplicates were dropped, so no test image is also a training image.
    train = {bytes(x) for x in data.train.load(np.arange(len(data.train)))}
    assert not any(bytes(x) in train for x in data.test.load(np.arange(len(data.test))))


@pytest.mark.skipif(
    importlib.util.find_spec("conformal_clip_data") is None,
    reason="pip install --no-deps conformal-clip-data",
)
def test_textile_defects() -> None:
    data = load_dataset("textile-defects")
    assert data.num_classes == 3
    assert np.bincount(data.test.labels).tolist() == [100] * 3
    assert np.bincount(data.train.labels).tolist() == [900, 400, 400]
    assert data.test.load(np.arange(2)).shape == (2, 224, 224, 3)
