"""Base-to-new generalisation: the class split, the draws, what every method does on
classes it never trained on, the task end to end, and bad input stopped in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.test_faults_config import (
    TINY_SETS,
    assert_nothing_written,
    one_line_error,
    run_cli,
    stored,
)
from tests.test_methods import make
from tunebench.bench.runner import validate_cells
from tunebench.config import RunConfig, TrainConfig
from tunebench.datasets import fewshot_indices, load_dataset
from tunebench.datasets.base import ArrayImages, ClassificationDataset
from tunebench.datasets.class_split import split_base_new
from tunebench.errors import DataError
from tunebench.methods.base import ClassPrompts
from tunebench.registry import DATASETS, METHODS, load_all
from tunebench.scores import harmonic_mean

load_all()


def toy_dataset(n_classes: int, per_class: int = 6) -> ClassificationDataset:
    labels = np.repeat(np.arange(n_classes), per_class)
    images = np.arange(len(labels), dtype=np.uint8)[:, None, None].repeat(4, 1).repeat(4, 2)
    return ClassificationDataset(
        name=f"toy{n_classes}", classnames=tuple(f"class{c}" for c in range(n_classes)),
        templates=("a photo of a {}.",), train=ArrayImages(images, labels, "train"),
        test=ArrayImages(images.copy(), labels, "test"), native_size=4,
    )


# ---- the split ----------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "n_base"), [(2, 1), (5, 3), (10, 5)])
def test_first_half_rounded_up_is_base_and_each_half_is_relabelled(n, n_base):
    dataset = toy_dataset(n)
    split = split_base_new(dataset)
    assert split.num_base == n_base
    assert split.base.classnames == dataset.classnames[:n_base]
    assert split.new.classnames == dataset.classnames[n_base:]
    for half, first in ((split.base, 0), (split.new, n_base)):
        assert sorted(set(half.train.labels.tolist())) == list(range(len(half.classnames)))
        # Each relabelled image is the original image of class first + label.
        assert np.array_equal(dataset.train.labels[half.train.positions], half.train.labels + first)
        assert np.array_equal(half.train.load(np.arange(3)), dataset.train.load(half.train.positions[:3]))
        assert half.train.identity(0) == dataset.train.identity(int(half.train.positions[0]))


def test_base_draws_are_fewshot_draws_of_those_classes(tmp_path):
    """Same seed, same draw code: the base classes train on the images fewshot-cls uses."""
    dataset = load_dataset("tiny-shapes")
    split = split_base_new(dataset)
    full = fewshot_indices(dataset, 3, seed=7, cache_dir=tmp_path, val_per_class=5)
    base = split.base.train.positions[fewshot_indices(split.base, 3, seed=7, cache_dir=tmp_path,
                                                            val_per_class=5)]
    assert len(base) == 3 * split.num_base
    assert np.array_equal(base, full[dataset.train.labels[full] < split.num_base])


def test_harmonic_mean():
    assert harmonic_mean(0.8, 0.4) == pytest.approx(2 * 0.8 * 0.4 / 1.2)
    assert harmonic_mean(0.5, 0.5) == 0.5
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(0.9, None) is None


# ---- what each method does on classes it never trained on --------------------------------
# Three new classes against two base ones, so that scoring the base classes instead
# cannot pass the shape check.
NEW = ClassPrompts(("triangle", "cross", "star"), ("a photo of a {}.", "a drawing of a {}."))
RENAMED = ClassPrompts(("triangle", "cross", "hexagon"), NEW.templates)


def _perturb(tensors) -> None:
    with torch.no_grad():
        for t in tensors:
            t.add_(0.5 * torch.randn_like(t))


def first_template_embeddings(backbone, classes: ClassPrompts) -> torch.Tensor:
    """The shared start with init: single (NEW's default), written out: each name in the
    first template through the frozen text encoder, normalised."""
    texts = [classes.templates[0].format(name) for name in classes.classnames]
    return F.normalize(backbone.encode_text(backbone.tokenize(texts)), dim=-1)


def expected_new_class_behaviour(name, adapter, backbone):
    """(embeddings the new classes must be scored against, or None; what, when perturbed,
    must change the new-class logits, or None). Written out apart from the methods."""
    if name in ("zero-shot", "cones", "textual-inversion"):
        return first_template_embeddings(backbone, NEW), None
    if name in ("coop", "cocoop"):
        return None, [adapter.context]
    if name == "lit":
        return None, [m.up.weight for m in adapter.bottlenecks]
    if name == "full-ft":
        return None, [p for n, p in backbone.text_tower.named_parameters() if n.endswith("weight")][:4]
    if name == "linear-probe":
        return None, None
    raise AssertionError(f"write down what new method {name!r} does on new classes")


@pytest.mark.parametrize("name", METHODS.names_for("base2new"))
def test_new_class_scorer(name, tiny_backbone, tiny_classes):
    base = ClassPrompts(tiny_classes.classnames[:2], tiny_classes.templates)
    adapter = make(name, tiny_backbone, base).eval()
    expected, tuned = expected_new_class_behaviour(name, adapter, tiny_backbone)
    images = F.normalize(torch.randn(5, tiny_backbone.embed_dim), dim=-1)
    with torch.no_grad():
        scorer = adapter.new_class_scorer(NEW)
        if name == "linear-probe":
            assert scorer is None
            return
        logits = scorer(images)
        assert logits.shape == (5, len(NEW.classnames))
        if expected is not None:
            assert torch.allclose(logits, adapter.logit_scale() * images @ expected.T, atol=1e-5)
        # The names are what is scored: renaming the last new class moves its column only.
        renamed = adapter.new_class_scorer(RENAMED)(images)
        assert torch.allclose(renamed[:, :2], logits[:, :2], atol=1e-5)
        assert not torch.allclose(renamed[:, 2], logits[:, 2], atol=1e-4)
        if tuned is not None:
            _perturb(tuned)
            assert not torch.allclose(adapter.new_class_scorer(NEW)(images), logits, atol=1e-4)


# ---- the task end to end ------------------------------------------------------------------
@pytest.mark.parametrize("method", ["cones", "linear-probe", "zero-shot"])
def test_base2new_end_to_end(tmp_path, capsys, method):
    assert run_cli(tmp_path, "--task", "base2new", "--shots", "2", *TINY_SETS, method=method) == 0, \
        capsys.readouterr().err
    (record,) = stored(tmp_path)
    assert record["status"] == "ok", record["error"]
    metrics = record["metrics"]
    assert (metrics["base_classes"], metrics["new_classes"]) == (2, 2)
    assert metrics["base_test_images"] == metrics["new_test_images"] == 2 * 4  # test_per_class 4
    assert 0 <= metrics["base"] <= 1
    if method == "linear-probe":
        assert metrics["new"] is None and metrics["h"] is None
    else:
        assert 0 <= metrics["new"] <= 1
        assert metrics["h"] == pytest.approx(harmonic_mean(metrics["base"], metrics["new"]))
    assert metrics["train_images"] == (0 if method == "zero-shot" else 2 * 2)


# ---- bad input: one line, nothing stored ----------------------------------------------------
def _folder(root, counts: dict[str, tuple[int, int]]):
    """An imagefolder tree with train/ and test/ images per class: {class: (train, test)}."""
    rng = np.random.RandomState(0)
    for name, (n_train, n_test) in counts.items():
        for split, count in (("train", n_train), ("test", n_test)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.randint(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return f"imagefolder:{root}"


def test_fewer_than_two_classes_is_one_line(tmp_path, capsys, monkeypatch):
    # imagefolder refuses one class itself; a dataset module could still give one.
    monkeypatch.setitem(DATASETS._entries, "one-class", lambda: toy_dataset(1))
    assert run_cli(tmp_path, "--task", "base2new", "--shots", "1", *TINY_SETS, dataset="one-class") == 2
    assert "toy1 has 1 class(es): base-to-new needs at least 2" in one_line_error(capsys)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("task", ["base2new", "fewshot-cls"])
def test_a_dataset_that_is_not_for_classification_is_one_line(tmp_path, capsys, task):
    assert run_cli(tmp_path, "--task", task, "--shots", "1", *TINY_SETS, dataset="tiny-scenes") == 2
    assert f"{task} needs a classification dataset" in one_line_error(capsys)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("task", ["base2new", "fewshot-cls"])
def test_more_shots_than_a_class_has_is_one_line_naming_it(tmp_path, capsys, task):
    dataset = _folder(tmp_path / "fruit", {"apple": (2, 1), "banana": (5, 1), "cherry": (5, 1)})
    assert run_cli(tmp_path, "--task", task, "--shots", "3", *TINY_SETS, dataset=dataset) == 2
    assert "class(es) apple (2) have fewer training images: use at most 2 shots" in one_line_error(capsys)
    assert_nothing_written(tmp_path)


def test_only_base_classes_need_k_shots(tmp_path):
    dataset = _folder(tmp_path / "fruit", {"apple": (4, 1), "banana": (4, 1), "cherry": (1, 1)})
    # 3 shots + 1 image per class held out for validation
    cell = dict(dataset=dataset, method="coop", backbone="tiny-clip", shots=3, seed=1,
                train=TrainConfig(val_per_class=1))
    validate_cells([RunConfig(task="base2new", **cell)])  # cherry is new: it never trains
    with pytest.raises(DataError, match=r"class\(es\) cherry \(1\) have fewer"):
        validate_cells([RunConfig(task="fewshot-cls", **cell)])
