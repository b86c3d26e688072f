"""Dataset readers on the real fixtures (exact histograms) and tiny synthetic layouts, `check`, demo data."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from segkd.infer.datasets import (
    DATASETS,
    DatasetError,
    LabelError,
    UnreadableFileError,
    bit_palette,
    build_dataset,
    read_image,
    read_label,
)
from segkd.infer.datasets.check import check_dataset
from segkd.infer.datasets.cityscapes import LABELS
from segkd.infer.datasets.reading import write_png
from segkd.scenes.street import generate_demo, render_scene

REPO = Path(__file__).resolve().parents[1]
FRAME = "frankfurt/frankfurt_000000_000294"
CHECK = ("-m", "segkd.infer.datasets", "check")

# ../shared/fixtures/README.md, value: count
CITYSCAPES_FROM_LABEL_IDS = dict(
    [
        (0, 9740),
        (1, 2628),
        (2, 12744),
        (4, 44),
        (5, 396),
        (7, 188),
        (8, 664),
        (10, 581),
        (11, 107),
        (13, 1802),
    ]
    + [(255, 3874)]
)
CITYSCAPES_TRAIN_IDS_FILE = dict(
    [
        (0, 9737),
        (1, 2634),
        (2, 12748),
        (4, 43),
        (5, 400),
        (7, 190),
        (8, 663),
        (10, 579),
        (11, 106),
        (13, 1799),
    ]
    + [(255, 3869)]
)
VOC = {
    "2007_000063": {0: 72224, 9: 78930, 12: 27632, 255: 8714},
    "2007_000129": {0: 54389, 2: 34183, 15: 61143, 255: 17285},
    "2011_000003": {0: 122905, 5: 601, 15: 29270, 255: 16224},
    "2011_000006": {0: 91893, 9: 42251, 15: 27437, 18: 10951, 255: 14968},
    "2011_000025": {0: 62682, 6: 105698, 7: 4967, 255: 14153},
}
VOC_SHAPES = {"2007_000063": (375, 500), "2007_000129": (500, 334), "2011_000003": (338, 500)}


def _hist(label: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(label, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)


def _write_palette_png(path: Path, indices: np.ndarray, palette: list[tuple[int, int, int]]) -> None:
    """An 8-bit palette PNG (colour type 3) holding ``indices``, with ``palette`` as its PLTE chunk."""
    image = Image.fromarray(indices.astype(np.uint8))
    image.putpalette([c for rgb in palette for c in rgb])
    image.save(path, bits=8)


# --------------------------------------------------------------------------------------------- registry


def test_registry_names() -> None:
    assert DATASETS.names() == ["ade20k", "cityscapes", "cocostuff", "demo", "folder", "voc"]
    with pytest.raises(KeyError, match="cityscapes"):
        build_dataset("citiscapes", ".", "val")


# ------------------------------------------------------------------------------------------- cityscapes


def test_cityscapes_table_matches_official_csv(shared_fixtures: Path) -> None:
    with open(shared_fixtures / "labels" / "cityscapes_labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(LABELS) == 35
    for row, lab in zip(rows, LABELS):
        assert (row["name"], int(row["id"]), int(row["trainId"]), row["category"]) == lab[:4]
        assert (row["ignoreInEval"] == "True", tuple(int(row[f"color_{c}"]) for c in "rgb")) == lab[4:]


def test_cityscapes_label_ids_histogram(shared_fixtures: Path) -> None:
    ds = build_dataset("cityscapes", shared_fixtures / "cityscapes", "val")
    assert len(ds) == 1 and ds.num_classes == 19 and ds.ignore_index == 255
    assert ds.class_names[0] == "road" and ds.class_names[18] == "bicycle"
    assert ds.palette[0] == [128, 64, 128] and ds.palette[10] == [70, 130, 180]
    image_path, label_path = ds.samples[0]
    assert image_path.name.endswith("_leftImg8bit.png") and label_path.name.endswith("_gtFine_labelIds.png")
    image, label = ds[0]
    assert image.shape == (128, 256, 3) and image.dtype == np.uint8
    assert label.shape == (128, 256) and label.dtype == np.uint8
    assert _hist(label) == CITYSCAPES_FROM_LABEL_IDS


def test_cityscapes_train_ids_file_histogram(shared_fixtures: Path) -> None:
    ds = build_dataset("cityscapes", shared_fixtures / "cityscapes", "val", label_type="trainIds")
    assert ds.samples[0][1].name.endswith("_gtFine_labelTrainIds.png")
    assert _hist(ds[0][1]) == CITYSCAPES_TRAIN_IDS_FILE


def test_cityscapes_missing_split_and_root(shared_fixtures: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"leftImg8bit/train .*expected"):
        build_dataset("cityscapes", shared_fixtures / "cityscapes", "train")
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'nowhere'} is not a folder")):
        build_dataset("cityscapes", tmp_path / "nowhere", "val")
    with pytest.raises(DatasetError, match="label_type"):
        build_dataset("cityscapes", shared_fixtures / "cityscapes", "val", label_type="ids")


def test_palette_png_image_is_decoded_to_colour(shared_fixtures: Path) -> None:
    image = read_image(shared_fixtures / "cityscapes" / "demo_frame_palette.png")
    assert image.shape == (512, 1024, 3)
    assert (image[..., 0] != image[..., 2]).any()  # colours, not palette indices


# -------------------------------------------------------------------------------------------------- voc


@pytest.mark.parametrize("folder", ["SegmentationClass", "SegmentationClassAug"])
def test_voc_every_label_file_histogram(shared_fixtures: Path, folder: str) -> None:
    label_dir = shared_fixtures / "voc" / "VOCdevkit" / "VOC2012" / folder
    files = sorted(label_dir.glob("*.png"))
    assert files
    for path in files:  # palette PNGs and, in the Aug folder, one grayscale PNG
        label = read_label(path)
        assert label.ndim == 2 and label.dtype == np.uint8, path
        assert _hist(label) == VOC[path.stem], path


def test_voc_splits(shared_fixtures: Path) -> None:
    root = shared_fixtures / "voc" / "VOCdevkit" / "VOC2012"
    counts = {s: len(build_dataset("voc", root, s)) for s in ("train", "val", "trainval", "aug", "trainaug")}
    assert counts == {"train": 1, "val": 1, "trainval": 2, "aug": 3, "trainaug": 4}
    ds = build_dataset("voc", shared_fixtures / "voc", "trainaug")  # the folder above VOCdevkit works too
    assert [(img.stem, lab.parent.name) for img, lab in ds.samples] == [
        ("2007_000063", "SegmentationClass"),
        ("2011_000003", "SegmentationClassAug"),
        ("2011_000006", "SegmentationClassAug"),
        ("2011_000025", "SegmentationClassAug"),
    ]
    for i, (image_path, _) in enumerate(ds.samples):
        image, label = ds[i]
        assert image.shape[:2] == label.shape
        assert _hist(label) == VOC[image_path.stem]
    assert ds.num_classes == 21 and ds.class_names[15] == "person"


def test_voc_palette_matches_csv(shared_fixtures: Path) -> None:
    with open(shared_fixtures / "labels" / "voc_palette256.csv") as f:
        rows = [[int(r["color_r"]), int(r["color_g"]), int(r["color_b"])] for r in csv.DictReader(f)]
    assert bit_palette(256) == rows
    assert build_dataset("voc", shared_fixtures / "voc", "val").palette == rows[:21]


def test_voc_unknown_split_lists_available(shared_fixtures: Path) -> None:
    with pytest.raises(DatasetError, match=r"test\.txt not found.*'trainaug'"):
        build_dataset("voc", shared_fixtures / "voc", "test")


# --------------------------------------------------------------------------------------- label decoding


def test_palette_indices_not_colours(tmp_path: Path) -> None:
    indices = np.array([[0, 1, 2, 255], [3, 3, 1, 0]], np.uint8)
    palette = [(7, 7, 7)] * 256  # every entry the same colour: only the indices tell the classes apart
    _write_palette_png(tmp_path / "p.png", indices, palette)
    np.testing.assert_array_equal(read_label(tmp_path / "p.png"), indices)
    # a palette shorter than the indices (21 classes, 255 = void): every index is read as stored, none as 0
    _write_palette_png(tmp_path / "short.png", indices, [(i, i, i) for i in range(21)])
    assert Image.open(tmp_path / "short.png").getpalette() == [i for i in range(21) for _ in range(3)]
    np.testing.assert_array_equal(read_label(tmp_path / "short.png"), indices)


def test_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(UnreadableFileError, match="bad.png"):
        read_label(tmp_path / "bad.png")
    _write_palette_png(tmp_path / "p.png", np.arange(64 * 64).reshape(64, 64) % 251, [(7, 7, 7)] * 256)
    data = (tmp_path / "p.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])  # a palette PNG cut short in its pixel data
    with pytest.raises(UnreadableFileError, match="cut.png"):
        read_label(tmp_path / "cut.png")
    with pytest.raises(UnreadableFileError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")


# ------------------------------------------------------------------------------- ade20k, cocostuff, folder


def _tiny_pair(image: Path, label: Path, values: np.ndarray) -> None:
    image.parent.mkdir(parents=True, exist_ok=True)
    label.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(image), np.full((*values.shape, 3), 128, np.uint8))
    cv2.imwrite(str(label), values.astype(np.uint8))


def test_ade20k_reduces_zero(tmp_path: Path) -> None:
    values = np.array([[0, 1, 150, 2]])
    _tiny_pair(
        tmp_path / "images/validation/ADE_val_1.jpg",
        tmp_path / "annotations/validation/ADE_val_1.png",
        values,
    )
    ds = build_dataset("ade20k", tmp_path, "val")
    assert ds.num_classes == 150 and ds.class_names[0] == "wall" and ds.class_names[149] == "flag"
    np.testing.assert_array_equal(ds[0][1], [[255, 0, 149, 1]])
    values[0, 3] = 151  # not an ADE20K value
    _tiny_pair(
        tmp_path / "images/validation/ADE_val_1.jpg",
        tmp_path / "annotations/validation/ADE_val_1.png",
        values,
    )
    report = check_dataset("ade20k", tmp_path, "val", progress=False)
    assert not report.ok and "151" in report.problems[0] and "ADE_val_1.png" in report.problems[0]


def test_cocostuff_maps_182_ids_to_171_classes(tmp_path: Path) -> None:
    values = np.array([[0, 91, 181, 255, 11]])  # person, banner, wood, unlabelled, unused id (street sign)
    _tiny_pair(tmp_path / "images/train2017/1.jpg", tmp_path / "annotations/train2017/1.png", values)
    ds = build_dataset("cocostuff", tmp_path, "train")
    assert ds.num_classes == 171 and ds.class_names[80] == "banner" and ds.class_names[170] == "wood"
    np.testing.assert_array_equal(ds[0][1], [[0, 80, 170, 255, 255]])
    report = check_dataset("cocostuff", tmp_path, "train", progress=False)
    assert report.problems == [
        "label value(s) 11 (1 px) in "
        f"{tmp_path / 'annotations/train2017/1.png'} are outside the classes (valid: 0..10, 12..24, 26, 27, "
        "30..43, 45..64, 66, 69, 71..81, 83..89, 91..181, 255); "
        "COCO category id 12 has no COCO-Stuff annotations"
    ]
    # converted trainIds files sit beside the stuffthingmaps: read on request, not reported as orphans
    cv2.imwrite(
        str(tmp_path / "annotations/train2017/1_labelTrainIds.png"),
        np.array([[0, 80, 170, 255, 3]], np.uint8),
    )
    assert build_dataset("cocostuff", tmp_path, "train").unpaired == []
    ds = build_dataset("cocostuff", tmp_path, "train", label_type="trainIds")
    np.testing.assert_array_equal(ds[0][1], [[0, 80, 170, 255, 3]])


def test_folder_reader_with_classes_file(tmp_path: Path) -> None:
    (tmp_path / "classes.txt").write_text(
        "# my data\nbackground 0 0 0\ntraffic light 250 170 30\n\ncrack 255 0 0\n"
    )
    values = np.array([[0, 1, 2, 255]])
    _tiny_pair(tmp_path / "images/train/a/1.jpg", tmp_path / "masks/train/a/1.png", values)
    ds = build_dataset("folder", tmp_path, "train")
    assert ds.class_names == ["background", "traffic light", "crack"]
    assert ds.palette == [[0, 0, 0], [250, 170, 30], [255, 0, 0]]
    np.testing.assert_array_equal(ds[0][1], values)
    # a colour-coded mask is mapped through the colours of the classes file
    cv2.imwrite(
        str(tmp_path / "masks/train/a/1.png"), np.array([[[0, 0, 0], [30, 170, 250], [0, 0, 255]]], np.uint8)
    )
    cv2.imwrite(str(tmp_path / "images/train/a/1.jpg"), np.zeros((1, 3, 3), np.uint8))
    np.testing.assert_array_equal(ds[0][1], [[0, 1, 2]])
    cv2.imwrite(
        str(tmp_path / "masks/train/a/1.png"), np.array([[[0, 0, 0], [9, 9, 9], [0, 0, 255]]], np.uint8)
    )
    with pytest.raises(LabelError, match=r"\[9, 9, 9\]"):
        ds[0]


def test_folder_reader_errors(tmp_path: Path) -> None:
    (tmp_path / "classes.txt").write_text("a\nb 1 2 3\n")
    with pytest.raises(DatasetError, match="1 of 2 classes have a colour"):
        build_dataset("folder", tmp_path, "train")
    (tmp_path / "classes.txt").write_text("a\nb\n")
    with pytest.raises(DatasetError, match="images/train"):
        build_dataset("folder", tmp_path, "train")
    _tiny_pair(tmp_path / "images/train/1.png", tmp_path / "masks/train/1.png", np.zeros((2, 2)))
    _tiny_pair(tmp_path / "images/train/2.png", tmp_path / "masks/train/3.png", np.zeros((2, 2)))
    with pytest.raises(DatasetError, match=r"2 unpaired file\(s\) and 1 complete sample"):
        build_dataset("folder", tmp_path, "train")
    ds = build_dataset("folder", tmp_path, "train", strict=False)
    assert len(ds) == 1 and [p.name for p, _ in ds.unpaired] == ["2.png", "3.png"]
    report = check_dataset("folder", tmp_path, "train", progress=False)
    image, mask = tmp_path / "images/train/2.png", tmp_path / "masks/train/2.png"
    assert report.samples == 1 and report.problems == [
        f"unpaired: {image}: image without label (expected {mask})",
        f"unpaired: {tmp_path / 'masks/train/3.png'}: label without image",
    ]


# ------------------------------------------------------------------------------------------- check CLI


def test_check_cli_clean_fixture_json(shared_fixtures: Path) -> None:
    root = shared_fixtures / "cityscapes"
    res = _check(root, "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] and report["samples"] == 1 and report["problems"] == []
    counts = list(report["class_pixels"].values())
    assert {i: c for i, c in enumerate(counts) if c} | {
        255: report["ignored_pixels"]
    } == CITYSCAPES_FROM_LABEL_IDS
    assert report["ignore_fraction"] == pytest.approx(3874 / 32768)


def _corrupt_copy(shared_fixtures: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    root = tmp_path / "cityscapes"
    shutil.copytree(shared_fixtures / "cityscapes", root)
    image = root / "leftImg8bit/val" / f"{FRAME}_leftImg8bit.png"
    label = root / "gtFine/val" / f"{FRAME}_gtFine_labelIds.png"
    return root, image, label


def _check(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _run_cli(*CHECK, "--dataset", "cityscapes", "--root", str(root), "--split", "val", *extra)


def test_check_cli_truncated_png(shared_fixtures: Path, tmp_path: Path) -> None:
    root, _, label = _corrupt_copy(shared_fixtures, tmp_path)
    label.write_bytes(label.read_bytes()[:300])
    res = _check(root)
    assert res.returncode == 1
    assert f"unreadable label: cannot decode label {label}" in res.stdout


def test_check_cli_value_outside_classes(shared_fixtures: Path, tmp_path: Path) -> None:
    root, _, label = _corrupt_copy(shared_fixtures, tmp_path)
    values = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    values[5:10, 5:10] = 77
    cv2.imwrite(str(label), values)
    res = _check(root, "--json")
    assert res.returncode == 1
    (problem,) = json.loads(res.stdout)["problems"]
    assert problem.startswith(f"label value(s) 77 (25 px) in {label} are outside the classes (valid: 0..33)")


def test_check_cli_missing_label_and_size_mismatch(shared_fixtures: Path, tmp_path: Path) -> None:
    root, image, label = _corrupt_copy(shared_fixtures, tmp_path)
    label.unlink()
    res = _check(root)
    assert res.returncode == 1
    assert f"{image}: image without label (expected {label})" in res.stdout
    shutil.copy(shared_fixtures / "cityscapes/gtFine/val" / f"{FRAME}_gtFine_labelIds.png", label)
    cv2.imwrite(str(image), np.zeros((64, 128, 3), np.uint8))
    res = _check(root)
    assert res.returncode == 1 and f"size mismatch: image {image} is (64, 128)" in res.stdout


def test_check_cli_missing_root(tmp_path: Path) -> None:
    res = _check(tmp_path / "nowhere")
    assert res.returncode == 1 and str(tmp_path / "nowhere") in res.stdout


# ------------------------------------------------------------------------------------------------- demo

SPLITS = {"train": 3, "val": 2}
SIZE = (64, 128)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("demo"), SPLITS, SIZE, seed=0, classes="cityscapes")


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_demo_is_deterministic(demo_root: Path, tmp_path: Path) -> None:
    again = _files(generate_demo(tmp_path / "again", SPLITS, SIZE, seed=0))
    assert again == _files(demo_root) and len(again) == 10
    other = _files(generate_demo(tmp_path / "other", SPLITS, SIZE, seed=1))
    assert other.keys() == again.keys()
    assert all(other[k] != again[k] for k in again)
    # a longer split keeps its first frames
    longer = _files(generate_demo(tmp_path / "longer", {"train": 4}, SIZE, seed=0))
    assert all(longer[k] == again[k] for k in again if k.split("/")[1] == "train")


def test_demo_reads_back_through_cityscapes_reader(demo_root: Path) -> None:
    ds = build_dataset("demo", demo_root, "train")
    assert len(ds) == 3 and len(build_dataset("demo", demo_root, "val")) == 2
    assert ds.class_names == build_dataset("cityscapes", demo_root, "train").class_names
    hist = np.zeros(256, np.int64)
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.shape == (*SIZE, 3) and label.shape == SIZE
        hist += np.bincount(ds.read_raw_label(i).ravel(), minlength=256)
        assert set(np.unique(label).tolist()) <= set(range(19)) | {255}
    assert hist[34:].sum() == 0  # only Cityscapes labelIds in the files
    train_ids = np.bincount(ds.raw_to_train, weights=hist, minlength=256)
    share = train_ids / hist.sum()
    assert share[0] > 0.15  # road
    assert share[2] + share[8] > 0.15  # building + vegetation
    assert share[13] + share[14] + share[15] > 0.01  # vehicles
    assert share[255] < 0.2
    assert (train_ids[:19] > 0).sum() >= 8  # many classes in three small frames


def test_demo_scene_has_small_and_thin_classes() -> None:
    rng_counts = np.zeros(256, np.int64)
    for i in range(6):
        _, label = render_scene(np.random.default_rng(i), (128, 256))
        rng_counts += np.bincount(label.ravel(), minlength=256)
    for name_id in (17, 20, 24, 26):  # labelIds: pole, traffic sign, person, car
        assert rng_counts[name_id] > 0, name_id


def test_demo_manifest_and_refusals(demo_root: Path, tmp_path: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in demo_root.rglob("*.png")}
    generate_demo(demo_root, SPLITS, SIZE, seed=0, classes="cityscapes")  # up to date: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in demo_root.rglob("*.png")} == before
    assert json.loads((demo_root / "demo.json").read_text())["splits"] == SPLITS
    (tmp_path / "real" / "gtFine").mkdir(parents=True)  # somebody's Cityscapes copy
    with pytest.raises(FileExistsError, match="demo.json"):
        generate_demo(tmp_path / "real", SPLITS, SIZE)
    with pytest.raises(DatasetError, match="segkd demo-data"):
        build_dataset("demo", tmp_path / "none", "train")


def test_category_level_labels_follow_the_official_categories(tmp_path: Path) -> None:
    # labelIds -> categories by hand: road 7 and sidewalk 8 are flat (0), parking 9 stays ignored as in the
    # 19-class evaluation, building 11 / fence 13 construction (1), pole 17 / sign 20 object (2), vegetation 21
    # nature (3), sky 23 (4), person 24 / rider 25 human (5), car 26 / bicycle 33 vehicle (6), guard rail 14 and
    # the ego vehicle 1 ignored.
    raw = np.array([[7, 8, 9, 11, 13, 17, 20, 21], [23, 24, 25, 26, 33, 14, 1, 0]], np.uint8)
    want = np.array([[0, 0, 255, 1, 1, 2, 2, 3], [4, 5, 5, 6, 6, 255, 255, 255]], np.uint8)
    for split in ("train", "val"):
        write_png(tmp_path / f"leftImg8bit/{split}/x/x_0_0_leftImg8bit.png", np.zeros((2, 8, 3), np.uint8))
        write_png(tmp_path / f"gtFine/{split}/x/x_0_0_gtFine_labelIds.png", raw)
    ds = build_dataset("cityscapes", tmp_path, "val", label_type="categories")
    assert ds.class_names == ["flat", "construction", "object", "nature", "sky", "human", "vehicle"]
    assert ds.num_classes == 7 and len(ds.palette) == 7
    np.testing.assert_array_equal(ds[0][1], want)
    assert build_dataset("cityscapes", tmp_path, "val").num_classes == 19  # the default is unchanged


def test_demo_class_set_comes_from_its_manifest(tmp_path: Path) -> None:
    root = generate_demo(tmp_path / "d", {"val": 1}, (32, 64), seed=0)  # default: the 7 categories
    assert json.loads((root / "demo.json").read_text())["classes"] == "categories"
    cats = build_dataset("demo", root, "val")
    assert cats.num_classes == 7 and cats.class_names[0] == "flat"
    full = build_dataset("demo", root, "val", label_type="labelIds")  # an explicit choice wins
    assert full.num_classes == 19
    # the same frames with the other class set: only the manifest changes, the files stay
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    generate_demo(root, {"val": 1}, (32, 64), seed=0, classes="cityscapes")
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.png")} == before
    assert build_dataset("demo", root, "val").num_classes == 19
    np.testing.assert_array_equal(cats.read_raw_label(0), full.read_raw_label(0))
    with pytest.raises(ValueError, match="classes must be one of"):
        generate_demo(root, {"val": 1}, (32, 64), classes="coarse")


def test_demo_cli_then_check_cli(tmp_path: Path) -> None:
    args = ["--root", str(tmp_path), "--train", "2", "--val", "1", "--size", "32x64", "--seed", "3"]
    res = _run_cli("-m", "segkd.scenes", *args)
    assert res.returncode == 0, res.stderr
    assert len(list((tmp_path / "leftImg8bit/train/demo").glob("*.png"))) == 2 and "(generated)" in res.stdout
    # the generator says whether it reused or replaced what the folder held
    assert "(reused: it already holds exactly these frames" in _run_cli("-m", "segkd.scenes", *args).stdout
    seed4 = [*args[:-1], "4"]
    assert (
        "(regenerated: the earlier frames were replaced (seed changed))"
        in _run_cli("-m", "segkd.scenes", *seed4).stdout
    )
    assert "(reused" in _run_cli("-m", "segkd.scenes", *seed4).stdout
    res = _run_cli(*CHECK, "--dataset", "demo", "--root", str(tmp_path), "--split", "val")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 samples" in res.stdout and "no problems found" in res.stdout


def test_demo_video_has_the_requested_frames_size_and_rate(tmp_path) -> None:
    import cv2

    from segkd.scenes.street import write_demo_video

    path = write_demo_video(tmp_path / "street.mp4", scenes=2, size=(64, 128), fps=8, seconds_per_scene=1.0)
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 16 and frames[0].shape == (64, 128, 3)
    assert cap.get(cv2.CAP_PROP_FPS) == 8
    assert not np.array_equal(frames[0], frames[7])  # the camera pans within a scene
    assert sorted(p.name for p in tmp_path.iterdir()) == ["street.mp4"]
