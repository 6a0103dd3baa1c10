"""detect's validation split: held-out canvases that selection trials score on."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil

import numpy as np
import pytest

from tests.test_detection import _config, _square_sprites, assert_ap_values
from tunebench.bench.runner import Runner, validate_cells
from tunebench.datasets import detection as detection_data
from tunebench.datasets import load_dataset
from tunebench.datasets.canvas import CanvasRecipe, SpritePool, compose
from tunebench.datasets.detection import load_coco_folder, write_split
from tunebench.errors import ConfigError
from tunebench.registry import TASKS
from tunebench.report.sections import detect as detect_report
from tunebench.tasks import detection


def canvas_hashes(split, positions) -> list[str]:
    return [hashlib.sha256(split.load(p).tobytes()).hexdigest()[:16] for p in positions]


def test_tiny_det_holds_out_validation_canvases_with_every_class():
    data = load_dataset("tiny-det")
    validation = data.split("validation")
    assert len(validation) == 12
    detection._check_held_out(data, validation)  # no canvas is also a train or test canvas
    held = set().union(*(validation.labels_in(p) for p in range(len(validation))))
    assert held == set(range(data.num_classes))


# sha256 (first 16 hex) of tiny-det's first train and test canvases, as the generator drew
# them before pools recorded their draws (commit bf774ed; unchanged since): recording, and
# anything else, must change no canvas, since a generated set's cache key does not see
# the code that draws it.
PINNED = {"train": ["32dd4c2da8ec14a0", "2fa600d9b0b71519", "4615d78953be6b0e", "e1b93ec44f167f3b"],
          "test": ["cc929890120fcd58", "919d94d081a8fd8f", "4b9d7517bddceb9f", "63e6bfc5801e5f9c"]}


def test_recording_draws_changes_no_canvas():
    data = load_dataset("tiny-det")
    for split, hashes in PINNED.items():
        assert canvas_hashes(data.split(split), range(len(hashes))) == hashes, split


def _logged_draws(monkeypatch) -> list[tuple[int, str]]:
    """Every draw as (id() of the pool, sha256 of the sprite it handed out): a record of
    the sprites used kept apart from the pools' own ``drawn`` bookkeeping."""
    calls: list[tuple[int, str]] = []
    real = SpritePool.draw

    def draw(self, rng):
        sprite, category = real(self, rng)
        calls.append((id(self), hashlib.sha256(sprite.tobytes()).hexdigest()))
        return sprite, category

    monkeypatch.setattr(SpritePool, "draw", draw)
    return calls


def _sources(classes: int, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bright random sprites, each one unique, and their labels."""
    sprites = np.random.default_rng(seed).integers(60, 256, size=(classes * per_class, 10, 10), dtype=np.uint8)
    return sprites, np.repeat(np.arange(classes), per_class)


def test_a_pool_records_its_draws_and_leaves_them_out_on_request():
    rng = np.random.default_rng(0)
    sprites = np.zeros((40, 10, 10), dtype=np.uint8)
    labels = np.repeat([0, 1], 20)
    pool = SpritePool(sprites, labels, ids=np.arange(100, 140))
    for _ in range(15):
        pool.draw(rng)
    assert 0 < len(pool.drawn) <= 15 and pool.drawn <= set(range(100, 140))
    rest = pool.excluding(pool.drawn)
    assert not set(rest.ids.tolist()) & pool.drawn and len(rest.ids) == 40 - len(pool.drawn)
    assert rest.categories == [0, 1]
    with pytest.raises(ValueError, match="categories \\[0\\]"):
        pool.excluding(set(range(100, 120)))


SMALL = CanvasRecipe(size=40, objects=(1, 3), sprite_size=(10, 14))
PATCHES = dataclasses.replace(SMALL, opaque=True, min_visible=1.0)  # det-textile's kind of canvas
# name: (its draw on small sources, classes, recipe, the splits validation objects must not be in)
GENERATORS = {
    "det-mnist": (lambda train, test, counts: detection_data.mnist_draws(train, test, [15, 16, 17, 18, 19],
                                                                         counts, SMALL),
                  20, SMALL, ("base", "train")),
    "det-textile": (lambda train, test, counts: detection_data.textile_draws(train, test, counts, PATCHES),
                    3, PATCHES, ("train",)),
}


@pytest.mark.parametrize("name", GENERATORS)
def test_validation_canvases_show_no_sprite_that_a_base_or_train_canvas_shows(name, monkeypatch):
    """The generated sets' own draw, on small sources: the sprites handed out for the
    validation canvases are none of those handed out for the seen splits' canvases."""
    make, classes, recipe, seen = GENERATORS[name]
    train, test = _sources(classes, 12, seed=0), _sources(classes, 12, seed=1)
    counts = {"base": 12, "train": 12, "test": 4, "validation": 8}
    calls = _logged_draws(monkeypatch)
    draws = {split: (pool, canvases) for split, pool, canvases in make(train, test, counts)}
    assert list(draws) == [*seen, "test", "validation"]
    assert all(len(canvases) == counts[split] for split, (_, canvases) in draws.items())
    used = {split: {digest for owner, digest in calls if owner == id(pool)} for split, (pool, _) in draws.items()}
    shown_before = set().union(*(used[split] for split in seen))
    assert used["validation"] and not used["validation"] & shown_before
    # By id as well: the validation pool holds none of the sprites the seen pools drew.
    assert not set(draws["validation"][0].ids.tolist()) & set().union(*(draws[s][0].drawn for s in seen))
    test_sprites = {hashlib.sha256(sprite.tobytes()).hexdigest() for sprite in test[0]}
    assert used["test"] <= test_sprites and not (used["validation"] | shown_before) & test_sprites
    # The check has teeth: the same validation draw from the whole training pool reuses sprites.
    whole = SpritePool(*train)
    detection_data._canvases(whole, recipe, counts["validation"], detection_data.SPLIT_SEEDS["validation"])
    assert {digest for owner, digest in calls if owner == id(whole)} & shown_before


def test_the_selection_metric_is_the_reports_headline():
    assert TASKS.get("detect").selection_metric == detect_report.METRIC == "novel_bbox_ap"


@pytest.mark.parametrize("method", ["cones", "lit:heads"])  # cached regions, and a tuned detector on pixels
def test_a_selection_trial_scores_the_validation_canvases(method, tmp_path):
    data = load_dataset("tiny-det")
    config = dataclasses.replace(_config(method), eval_split="validation")
    validate_cells([config])
    record = Runner(tmp_path).run(config)
    assert record["status"] == "ok", record.get("traceback")
    metrics = record["metrics"]
    assert metrics["validation_images"] == 12 and "test_images" not in metrics
    validation = data.split("validation")
    assert_ap_values(metrics, data, set().union(*(validation.labels_in(p) for p in range(12))))
    assert not record.get("pictures")  # pictures show test images: none in a trial
    final = Runner(tmp_path).run(_config(method))["metrics"]
    assert final["novel_bbox_ap"] != metrics["novel_bbox_ap"] or final["base_bbox_ap"] != metrics["base_bbox_ap"]


def _folder(tmp_path, splits: dict[str, int]):
    recipe = CanvasRecipe(size=48, objects=(1, 1), sprite_size=(12, 18))
    rng = np.random.default_rng(1)
    categories = [{"id": 7, "name": "square", "split": "base"}, {"id": 9, "name": "bar"}]
    for split, count in splits.items():
        canvases = [compose(rng, _square_sprites(), recipe) for _ in range(count)]
        write_split(tmp_path, split, canvases, categories)
    return load_coco_folder(tmp_path, "mine")


def test_a_missing_small_or_partial_validation_split_is_one_line(tmp_path, monkeypatch):
    def refused(dataset, match):
        with pytest.raises(ConfigError, match=match) as error:
            detection._check_validation_split(dataset)
        assert "\n" not in str(error.value)

    refused(_folder(tmp_path / "none", {"train": 4, "test": 4}), "no validation split for selection: add")
    refused(_folder(tmp_path / "small", {"train": 4, "test": 4, "validation": 3}), "3 validation images")
    monkeypatch.setattr(detection, "MIN_VALIDATION_IMAGES", 1)
    one_class = _folder(tmp_path / "one", {"train": 4, "test": 4, "validation": 1})
    refused(one_class, "no validation image holds")
    monkeypatch.setattr(detection, "MIN_VALIDATION_IMAGES", 13)
    with pytest.raises(ConfigError, match="tiny-det has 12 validation images"):
        validate_cells([dataclasses.replace(_config("cones"), eval_split="validation")])
    validate_cells([_config("cones")])  # a final run does not need it


@pytest.mark.parametrize("other", ["train", "test"])
def test_a_validation_image_that_is_also_a_train_or_test_image_is_refused(tmp_path, monkeypatch, other):
    """Same pixels under another name count: the copy below keeps the annotations, so only
    hashing the images can find it; refused in one line before any cell runs."""
    monkeypatch.setattr(detection, "MIN_VALIDATION_IMAGES", 4)
    splits = {"train": 6, "test": 6, "validation": 8}
    detection._check_validation_split(_folder(tmp_path / "clean", splits))  # held out: accepted
    root = tmp_path / other
    _folder(root, splits)
    shutil.copyfile(root / "images" / other / "000002.png", root / "images" / "validation" / "000005.png")
    config = dataclasses.replace(_config("zero-shot"), dataset=f"coco:{root}", eval_split="validation")
    with pytest.raises(ConfigError, match=f"validation image 000005.png \\(id 5\\) is also {other} image "
                                          f"000002.png \\(id 2\\); selection must score held-out") as error:
        validate_cells([config])
    assert "\n" not in str(error.value)
    validate_cells([dataclasses.replace(config, eval_split="test")])  # a final run reads no validation images
