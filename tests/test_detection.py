"""Detection track: canvases and COCO files, the evaluator, the detector, every method
on the tiny detector, and an end-to-end run through the runner."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from tests.test_curves import assert_curve_ends_at_final
from tunebench.config import RunConfig, TrainConfig, method_config
from tunebench.datasets import load_dataset
from tunebench.datasets.canvas import CanvasRecipe, SpritePool, compose, tight_box
from tunebench.datasets.detection import fewshot_images, load_coco_folder, write_split
from tunebench.errors import ConfigError, DataError
from tunebench.methods.base import ClassPrompts, resolve_method
from tunebench.registry import BACKBONES, load_all
from tunebench.tasks.detection_eval import coco_metrics

load_all()


@pytest.fixture(scope="module")
def _tiny_detector():
    return BACKBONES.get("tiny-detector")(None)


@pytest.fixture
def tiny_detector(_tiny_detector):
    return copy.deepcopy(_tiny_detector)


@pytest.fixture
def tiny_det():
    return load_dataset("tiny-det")


def _square_sprites():
    sprites = np.zeros((2, 10, 10), dtype=np.uint8)
    sprites[0, 2:8, 2:8] = 200  # a filled square
    sprites[1, :, 4:6] = 180  # a bar
    return SpritePool(sprites, np.array([0, 1]))


def test_canvas_masks_are_the_visible_sprite_pixels_and_boxes_are_tight():
    recipe = CanvasRecipe(size=40, objects=(3, 3), sprite_size=(10, 14), min_visible=0.5)
    canvas, objects = compose(np.random.default_rng(0), _square_sprites(), recipe)
    assert len(objects) >= 2
    owner = np.zeros(canvas.shape, dtype=int)
    for obj in objects:
        assert not (owner[obj.mask] > 0).any()  # visible masks never overlap
        owner[obj.mask] += 1
        assert (canvas[obj.mask] > 40).all()  # every mask pixel shows the object
        x, y, w, h = tight_box(obj.mask)
        ys, xs = np.nonzero(obj.mask)
        assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
    assert (canvas[owner == 0] <= recipe.background_max).all()  # no unannotated object pixel


def test_placement_keeps_every_object_mostly_visible():
    recipe = CanvasRecipe(size=24, objects=(4, 4), sprite_size=(12, 12), min_visible=0.9, opaque=True)
    for seed in range(5):
        _, objects = compose(np.random.default_rng(seed), _square_sprites(), recipe)
        for obj in objects:
            assert obj.mask.sum() >= 0.9 * 144


def test_coco_files_round_trip_through_the_evaluator(tmp_path):
    recipe = CanvasRecipe(size=48, objects=(1, 3), sprite_size=(12, 18))
    rng = np.random.default_rng(1)
    canvases = [compose(rng, _square_sprites(), recipe) for _ in range(6)]
    categories = [{"id": 7, "name": "square", "split": "base"}, {"id": 9, "name": "bar"}]
    for split in ("train", "test"):
        write_split(tmp_path, split, canvases, categories)
    dataset = load_coco_folder(tmp_path, "mine")
    assert dataset.classnames == ("square", "bar") and dataset.novel == (False, True)
    test = dataset.split("test")
    target = test.target(0)
    assert target["masks"].shape[0] == len(target["boxes"]) == len(canvases[0][1])
    assert np.array_equal(target["masks"][0].astype(bool), canvases[0][1][0].mask)

    truth = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0,
              "segmentation": a["segmentation"]} for a in test.coco["annotations"]]
    ids = [test.image_id(p) for p in range(len(test))]
    perfect = coco_metrics(test, dataset, truth, ids)
    assert perfect["all_bbox_ap"] == perfect["all_segm_ap"] == perfect["novel_bbox_ap"] == 1.0
    shifted = []
    for r in truth:
        x, y, w, h = r["bbox"]
        shifted.append({**r, "bbox": [x + 0.3 * w, y + 0.3 * h, w, h]})
    worse = coco_metrics(test, dataset, shifted, ids)
    assert worse["all_bbox_ap"] < 0.5 and worse["all_bbox_ap50"] < 1.0
    assert worse["all_segm_ap"] == 1.0  # masks untouched: only boxes moved
    none = coco_metrics(test, dataset, [], ids)
    assert none["all_bbox_ap"] == 0.0


def test_coco_folder_errors_are_one_line(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        load_dataset(f"coco:{tmp_path}/missing")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "train.json").write_text("{not json")
    with pytest.raises(DataError, match="not readable COCO JSON"):
        load_coco_folder(tmp_path, "bad")
    (tmp_path / "annotations" / "train.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match="lacks"):
        load_coco_folder(tmp_path, "bad")


def test_fewshot_images_hold_each_class_k_times_and_depend_on_the_seed(tiny_det):
    split = tiny_det.split("train")
    labels = list(range(tiny_det.num_classes))
    chosen = fewshot_images(split, labels, 2, seed=1)
    for label in labels:
        assert sum(label in split.labels_in(p) for p in chosen) >= 2
    assert chosen == fewshot_images(split, labels, 2, seed=1)
    assert chosen != fewshot_images(split, labels, 2, seed=2)
    with pytest.raises(DataError, match="lower shots"):
        fewshot_images(split, labels, 1000, seed=1)


EXPECTED = {  # method -> what may train, by parameter-name prefix
    "zero-shot": (),
    "cones": ("concepts",),
    "coop": ("context",),
    "textual-inversion": ("tokens",),
    "lit:heads": ("backbone.detector.", "backbone.text_projection.", "backbone.text_tower."),
    "full-ft": ("backbone.",),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_trainable_sets_on_the_detector(name, tiny_detector, tiny_det):
    cls, variant = resolve_method(name, "detect")
    adapter = cls(tiny_detector, ClassPrompts(tiny_det.classnames, tiny_det.templates),
                  method_config(cls, variant, name))
    names = [n for n, _ in adapter.trainable_named_parameters()]
    if EXPECTED[name]:
        # Non-empty first: all() over no names is True, so a method that froze what it
        # should train (CoOp's context, say) would otherwise pass.
        assert names, f"{name} trains nothing"
        assert all(n.startswith(EXPECTED[name]) for n in names)
    else:
        assert not names
    assert adapter.trainable_count() == sum(p.numel() for _, p in adapter.trainable_named_parameters())
    detector = {n for n, _ in tiny_detector.detector.named_parameters()}
    if name == "lit:heads":
        assert {n.removeprefix("backbone.detector.") for n in names if ".detector." in n} == detector
        assert not any(n.startswith("backbone.image_tower.") for n in names)
        text = [n for n in names if n.startswith("backbone.text_tower.")]
        assert text and all("LayerNorm" in n for n in text)
    if name == "full-ft":
        assert adapter.trainable_count() == adapter.total_count()
    if name in ("cones", "textual-inversion"):
        assert adapter.trainable_count() == tiny_det.num_classes * (
            24 if name == "cones" else tiny_detector.text_width)


def test_linear_probe_and_non_detection_inputs_are_refused():
    from tunebench.tasks.detection import Detect

    def cell(**kw):
        base = dict(task="detect", dataset="tiny-det", method="cones", backbone="tiny-detector", shots=1, seed=1)
        return RunConfig(**{**base, **kw})

    with pytest.raises(ConfigError, match="method 'linear-probe' does not serve the detect task"):
        Detect().validate(cell(method="linear-probe"))
    with pytest.raises(ConfigError, match="needs a detection dataset"):
        Detect().validate(cell(dataset="tiny-shapes"))
    with pytest.raises(ConfigError, match="no parameter group 'detector_heads'"):
        tiny = BACKBONES.get("tiny-clip")(None)
        cls, variant = resolve_method("lit:heads")
        cls(tiny, ClassPrompts(("a",), ("{}",)), method_config(cls, variant, "lit"))


def test_detector_losses_and_gradients_reach_only_what_trains(tiny_detector, tiny_det):
    from tunebench.models.detector import to_image_list

    split = tiny_det.split("train")
    images = to_image_list([tiny_detector.pixels(split.load(p)) for p in range(3)])
    targets = [{k: torch.from_numpy(v) for k, v in split.target(p).items()} for p in range(3)]
    tiny_detector.detector.requires_grad_(True)
    classes = torch.nn.functional.normalize(torch.randn(tiny_det.num_classes, 24), dim=-1)
    losses = tiny_detector.detector.losses(tiny_detector.image_tower, images, targets, classes, train_tower=False)
    assert set(losses) >= {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is None for p in tiny_detector.image_tower.parameters())
    assert tiny_detector.detector.region_projection.weight.grad is not None
    out = tiny_detector.detector.detect_regions(tiny_detector.image_tower, images)
    assert len(out) == 3 and out[0]["embeddings"].shape[1] == 24
    assert torch.allclose(out[0]["embeddings"].norm(dim=-1), torch.ones(len(out[0]["boxes"])), atol=1e-5)


def _config(method: str, shots: int = 2, **train) -> RunConfig:
    cls, variant = resolve_method(method, "detect")
    settings = {"steps": 3, "batch_size": 4, "warmup_steps": 1, **train}
    return RunConfig(task="detect", dataset="tiny-det", method=method, backbone="tiny-detector",
                     shots=shots if cls.trains else 0, seed=1 if cls.trains else 0,
                     train=TrainConfig(**settings),
                     method_config=dict(method_config(cls, variant, method).__dict__),
                     task_config={"test_images": 6, "images_per_batch": 4, "pictures": 2,
                                  "picture_min_score": 0.3})


def assert_ap_values(metrics: dict, dataset, scored: set[int]) -> None:
    """Every AP a number in [0, 1] where the scored images hold an object of the subset,
    and None exactly where they hold none (COCO's AP is undefined there, not zero)."""
    subsets = {"novel": dataset.novel_labels, "base": dataset.base_labels, "all": range(dataset.num_classes)}
    for subset, labels in subsets.items():
        present = bool(set(labels) & scored)
        for key in (f"{subset}_{kind}_{name}" for kind in ("bbox", "segm") for name in ("ap", "ap50", "ap75")):
            value = metrics[key]
            if present:
                assert isinstance(value, float) and 0.0 <= value <= 1.0, (key, value)
            else:
                assert value is None, (key, value)


def test_ap_is_none_only_for_a_subset_without_objects(tiny_det):
    test = tiny_det.split("test")
    without_novel = [p for p in range(len(test)) if not set(tiny_det.novel_labels) & test.labels_in(p)]
    scored = set().union(*(test.labels_in(p) for p in without_novel))
    assert set(tiny_det.base_labels) & scored and not set(tiny_det.novel_labels) & scored
    metrics = coco_metrics(test, tiny_det, [], [test.image_id(p) for p in without_novel])
    assert_ap_values(metrics, tiny_det, scored)
    assert metrics["novel_bbox_ap"] is None and metrics["base_bbox_ap"] == 0.0  # no detections: AP 0


@pytest.mark.parametrize("method", ["zero-shot", "cones", "coop", "textual-inversion", "lit:heads", "full-ft"])
def test_end_to_end_detect_run_stores_metrics_and_pictures(method, tmp_path, tiny_det):
    from tunebench.bench.runner import Runner

    config = _config(method)
    record = Runner(tmp_path).run(config)
    assert record["status"] == "ok", record.get("traceback")
    metrics = record["metrics"]
    assert metrics["test_images"] == 6
    scored = set().union(*(tiny_det.split("test").labels_in(p) for p in range(6)))
    assert set(tiny_det.novel_labels) & scored and set(tiny_det.base_labels) & scored  # both are scored
    assert_ap_values(metrics, tiny_det, scored)
    picture = tmp_path / record["pictures"]["predictions"]
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cached = method in ("zero-shot", "cones", "coop", "textual-inversion")
    assert record["image_input"] == ("cached-regions" if cached else "pixels")
    if cached and method != "zero-shot":
        assert record["train_seconds"] > 0 and record["trainable_params"] > 0


def test_cached_training_changes_only_the_class_embeddings(tmp_path):
    from tunebench.bench.runner import Runner

    runner = Runner(tmp_path)
    pristine = copy.deepcopy(runner._pristine_backbone(_config("cones")))
    record = runner.run(_config("cones", steps=5))
    from safetensors.torch import load_file

    saved = load_file(tmp_path / record["artifact"]["path"])
    assert set(saved) == {"concepts"}
    # The runner's pristine detector is untouched by the run (each run gets a copy).
    after = runner._pristine_backbone(_config("cones"))
    for (name, a), (_, b) in zip(pristine.state_dict().items(), after.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_region_cache_is_reused_across_methods(tmp_path, monkeypatch):
    from tunebench.bench.runner import Runner

    monkeypatch.setenv("TUNEBENCH_CACHE_DIR", str(tmp_path / "cache"))  # start with no regions
    runner = Runner(tmp_path)
    first = runner.run(_config("cones"))
    second = runner.run(_config("textual-inversion"))
    assert first["feature_seconds"] > 0
    assert second["feature_seconds"] == 0  # same detector, images and splits: all cached


def test_detector_checkpoint_loads_from_a_local_file(tmp_path):
    """det:NAME --pretrained FILE: the detector's weights from a local state dict; a file
    that does not fit says so in one line."""
    from safetensors.torch import save_file

    from tunebench.bench.runner import backbone_version

    builder, argument = BACKBONES.resolve("det:tiny-clip")
    with pytest.warns(UserWarning, match="random detector heads"):
        random = builder(argument)
    state = {f"detector.{k}": v.clone() + 0.5 for k, v in random.detector.state_dict().items()}
    path = tmp_path / "detector.safetensors"
    save_file(state, str(path))
    loaded = builder(argument, pretrained=str(path))
    for key, value in loaded.detector.state_dict().items():
        assert torch.equal(value, state[f"detector.{key}"]), key
    assert loaded.content_id != random.content_id
    assert backbone_version("det:tiny-clip", str(path))  # the file's identity enters config hashes
    save_file({"detector.nonsense": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConfigError, match="does not fit this detector"):
        builder(argument, pretrained=str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConfigError, match="checkpoint not found"):
        builder(argument, pretrained=str(tmp_path / "missing.safetensors"))


def _write_folder(root, *, images=None, annotations=None, categories=None, size=(48, 48)):
    """A tiny hand-made coco: folder (train and test the same) for bad-input tests."""
    from PIL import Image

    (root / "images" / "train").mkdir(parents=True)
    (root / "images" / "test").mkdir(parents=True)
    Image.fromarray(np.zeros(size, dtype=np.uint8)).save(root / "images" / "train" / "a.png")
    Image.fromarray(np.zeros(size, dtype=np.uint8)).save(root / "images" / "test" / "a.png")
    coco = {
        "images": images if images is not None else [{"id": 1, "file_name": "a.png", "height": 48, "width": 48}],
        "annotations": annotations if annotations is not None else [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 10, 10]}],
        "categories": categories if categories is not None else [{"id": 1, "name": "thing"}],
    }
    (root / "annotations").mkdir()
    for split in ("train", "test"):
        (root / "annotations" / f"{split}.json").write_text(json.dumps(coco))
    return root


def test_user_coco_folders_get_defaults_or_one_line_errors(tmp_path):
    dataset = load_coco_folder(_write_folder(tmp_path / "ok"), "ok")  # no iscrowd, area, segmentation
    target = dataset.split("test").target(0)
    assert target["masks"].sum() == 100  # the box stands in for the missing mask
    ids = [dataset.split("test").image_id(0)]
    truth = [{"image_id": 1, "category_id": 1, "bbox": [4, 4, 10, 10], "score": 1.0}]
    assert coco_metrics(dataset.split("test"), dataset, truth, ids)["novel_bbox_ap"] == 1.0
    json.dumps(dataset.split("test").coco)  # the evaluator left the dataset's own JSON intact

    with pytest.raises(DataError, match="category_id 9, not in the categories"):
        load_coco_folder(_write_folder(tmp_path / "cat", annotations=[
            {"id": 1, "image_id": 1, "category_id": 9, "bbox": [1, 1, 5, 5]}]), "cat")
    with pytest.raises(DataError, match="lacks \\['height'\\]"):
        load_coco_folder(_write_folder(tmp_path / "h", images=[{"id": 1, "file_name": "a.png", "width": 48}]), "h")
    with pytest.raises(DataError, match="fewer than 3 points"):
        load_coco_folder(_write_folder(tmp_path / "poly", annotations=[
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "segmentation": [[1, 1, 5, 5]]}]),
            "poly")
    resized = load_coco_folder(_write_folder(tmp_path / "size", size=(64, 64)), "size")
    with pytest.raises(DataError, match="is 64x64 px but its annotation says 48x48"):
        resized.split("test").load(0)


def test_subset_with_no_object_among_scored_images_is_none(tiny_det):
    test = tiny_det.split("test")
    without_novel = [p for p in range(len(test)) if not set(tiny_det.novel_labels) & test.labels_in(p)]
    ids = [test.image_id(p) for p in without_novel]
    novel_id = tiny_det.category_ids[tiny_det.novel_labels[0]]
    false_positive = [{"image_id": ids[0], "category_id": novel_id, "bbox": [1, 1, 5, 5], "score": 0.9}]
    assert coco_metrics(test, tiny_det, [], ids)["novel_bbox_ap"] is None
    assert coco_metrics(test, tiny_det, false_positive, ids)["novel_bbox_ap"] is None


def test_detector_losses_take_an_image_without_objects(tiny_detector, tiny_det):
    from tunebench.models.detector import to_image_list

    split = tiny_det.split("train")
    images = to_image_list([tiny_detector.pixels(split.load(p)) for p in range(2)])
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
             "masks": torch.zeros(0, 48, 48, dtype=torch.uint8)}
    targets = [{k: torch.from_numpy(v) for k, v in split.target(0).items()}, empty]
    tiny_detector.detector.requires_grad_(True)
    classes = torch.nn.functional.normalize(torch.randn(tiny_det.num_classes, 24), dim=-1)
    losses = tiny_detector.detector.losses(tiny_detector.image_tower, images, targets, classes, train_tower=True)
    assert all(torch.isfinite(v) for v in losses.values())


def test_every_trainable_parameter_of_full_ft_gets_a_gradient(tiny_detector, tiny_det):
    """True counts: full-ft on a detector counts only parameters that shape a detection
    (no CLIP temperature, image projection or text pooler left over)."""
    from tunebench.models.detector import to_image_list

    cls, variant = resolve_method("full-ft", "detect")
    adapter = cls(tiny_detector, ClassPrompts(tiny_det.classnames, tiny_det.templates),
                  method_config(cls, variant, "full-ft"))
    split = tiny_det.split("train")
    images = to_image_list([tiny_detector.pixels(split.load(p)) for p in range(4)])
    targets = [{k: torch.from_numpy(v) for k, v in split.target(p).items()} for p in range(4)]
    losses = tiny_detector.detector.losses(tiny_detector.image_tower, images, targets, adapter.class_embeddings(),
                                           train_tower=True)
    sum(losses.values()).backward()
    without = [n for n, p in adapter.trainable_named_parameters() if p.grad is None]
    assert not without


def test_detection_backbones_and_tasks_must_match():
    from tunebench.bench.runner import validate_cells

    with pytest.raises(ConfigError, match="is a detector"):
        validate_cells([RunConfig(task="fewshot-cls", dataset="tiny-shapes", method="cones",
                                  backbone="tiny-detector", shots=1, seed=1)])
    with pytest.raises(ConfigError, match="has no detector"):
        validate_cells([RunConfig(task="detect", dataset="tiny-det", method="cones",
                                  backbone="tiny-clip", shots=1, seed=1)])


def test_towers_without_growing_strides_are_refused():
    from tunebench.models.detector import pyramid_taps

    class ViTLike(torch.nn.Module):
        feature_info = [{"module": f"blocks.{i}", "num_chs": 32, "reduction": 16} for i in range(4)]

    with pytest.raises(ValueError, match="growing strides"):
        pyramid_taps(ViTLike())


def test_pictures_show_novel_objects_first():
    from tunebench.tasks.detection import picture_positions

    class FakeSplit:
        labels = {0: {1}, 1: {2, 5}, 2: {0}, 3: {5}, 4: {3}}

        def labels_in(self, position):
            return self.labels[position]

    novel = [5]
    assert picture_positions(FakeSplit(), [0, 1, 2, 3, 4], 3, novel) == [1, 3, 0]
    assert picture_positions(FakeSplit(), [0, 2, 4], 2, novel) == [0, 2]  # none novel: in order
    assert picture_positions(FakeSplit(), [0, 1, 2, 3, 4], 0, novel) == []


@pytest.mark.parametrize("method", ["cones", "lit:heads"])
def test_detect_run_records_a_box_ap_curve_ending_at_the_final_score(method, tmp_path):
    from tunebench.bench.runner import Runner

    record = Runner(tmp_path).run(_config(method, steps=4))
    assert_curve_ends_at_final(record, [0, 1, 2, 4], ("novel_bbox_ap", "base_bbox_ap", "all_bbox_ap"))
    zero_shot = Runner(tmp_path).run(_config("zero-shot"))
    assert "curve" not in zero_shot["metrics"] and "curve_eval_seconds" not in zero_shot
