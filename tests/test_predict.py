"""`segkd predict`: sources, palette label PNGs read back, class areas, unreadable files, videos; the `segkd` front."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from segkd.distill.checkpoint import save_checkpoint
from segkd.distill.models import build_model
from segkd.infer.datasets.reading import read_label, write_palette_png
from segkd.infer.meta import ModelMeta
from segkd.infer.predict import SourceError, collect_sources
from segkd.infer.runtime import load_runner

REPO = Path(__file__).resolve().parents[1]
K = 5
PALETTE = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30], [200, 100, 50]]


def _segkd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "segkd", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model("deeplabv3_mbv2", num_classes=K, width=0.25)
    meta = ModelMeta(
        arch={"name": "deeplabv3_mbv2", "num_classes": K, "width": 0.25},
        class_names=[f"c{i}" for i in range(K)],
        palette=PALETTE,
        input_size=[64, 96],
        extra={},
    )
    return save_checkpoint(tmp_path_factory.mktemp("predict") / "tiny.pth", model, meta)


def _images(folder: Path, n: int, hw: tuple[int, int] = (48, 80)) -> list[Path]:
    rng = np.random.default_rng(3)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), rng.integers(0, 256, (*hw, 3), dtype=np.uint8))
        paths.append(p)
    return paths


def test_palette_png_reads_back_as_ids_and_shows_the_colours(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [3, 4, 255]], np.uint8)
    write_palette_png(tmp_path / "l.png", labels, PALETTE)
    np.testing.assert_array_equal(read_label(tmp_path / "l.png"), labels)
    color = cv2.imread(
        str(tmp_path / "l.png"), cv2.IMREAD_COLOR
    )  # what a viewer shows: palette colours (BGR)
    assert color[0, 0].tolist() == [0, 0, 255] and color[0, 1].tolist() == [0, 255, 0]
    assert color[1, 1].tolist() == [50, 100, 200] and color[1, 2].tolist() == [0, 0, 0]


def test_sources_keep_subfolder_names_apart_and_bad_sources_raise(tmp_path: Path) -> None:
    _images(tmp_path / "d" / "a", 1)
    _images(tmp_path / "d" / "b", 1)
    (tmp_path / "d" / "notes.txt").write_text("not an image")
    single = _images(tmp_path / "e", 1)[0]
    items = collect_sources([str(tmp_path / "d"), str(single), str(tmp_path / "e" / "*.png")])
    assert [i.name for i in items] == ["a/img0", "b/img0", "img0", "img0-2"]
    with pytest.raises(SourceError, match="no such file"):
        collect_sources([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no images"):
        collect_sources([str(tmp_path / "empty")])


@pytest.mark.slow
def test_predict_folder_writes_views_labels_and_areas_and_skips_a_broken_file(
    ckpt: Path, tmp_path: Path
) -> None:
    paths = _images(tmp_path / "in", 3)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    r = _segkd(
        "predict",
        str(ckpt),
        str(tmp_path / "in"),
        "--out",
        str(out),
        "--save-labels",
        "--batch",
        "2",
        cwd=tmp_path,
    )
    assert r.returncode == 1, r.stderr  # one file failed, the others were processed
    assert "broken.png" in r.stderr and "segmented 3 of 4" in r.stdout
    runner = load_runner(ckpt)
    expected = runner.predict([cv2.imread(str(p)) for p in paths])
    areas = json.loads((out / "areas.json").read_text())
    rows = {row["item"]: row for row in csv.DictReader((out / "areas.csv").open())}
    for p, want in zip(paths, expected):
        np.testing.assert_array_equal(read_label(out / "labels" / f"{p.stem}.png"), want)
        view = cv2.imread(str(out / f"{p.stem}.png"))
        assert view.shape == (*want.shape, 3)
        counts = np.bincount(want.ravel(), minlength=K) / want.size
        got = areas[p.stem]
        assert sum(got.values()) == pytest.approx(1.0, abs=1e-5)
        for c in range(K):
            assert got.get(f"c{c}", 0.0) == pytest.approx(counts[c], abs=1e-6)
            assert float(rows[p.stem][f"c{c}"]) == pytest.approx(counts[c], abs=1e-6)


@pytest.mark.slow
def test_predict_video_writes_every_frame(ckpt: Path, tmp_path: Path) -> None:
    src = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (80, 48))
    rng = np.random.default_rng(0)
    for _ in range(4):
        writer.write(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
    writer.release()
    r = _segkd("predict", str(ckpt), str(src), "--out", str(tmp_path / "o"), "--view", "side", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "video clip: 100%" in r.stderr and "4/4" in r.stderr  # a progress bar over the frames
    cap = cv2.VideoCapture(str(tmp_path / "o" / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 160
    cap.release()
    assert sum(json.loads((tmp_path / "o" / "areas.json").read_text())["clip"].values()) == pytest.approx(1.0)


def test_segkd_front_reports_unknown_subcommands_and_bad_output(ckpt: Path, tmp_path: Path) -> None:
    r = _segkd("predcit", cwd=tmp_path)
    assert r.returncode == 2 and "did you mean 'predict'" in r.stderr
    (tmp_path / "file").write_text("x")
    _images(tmp_path / "in", 1)
    r = _segkd("predict", str(ckpt), str(tmp_path / "in"), "--out", str(tmp_path / "file"), cwd=tmp_path)
    assert r.returncode == 2 and "is a file" in r.stderr.splitlines()[-1]
    r = _segkd("check", "--help", cwd=tmp_path)  # `segkd check` is the dataset checker's `check` subcommand
    assert r.returncode == 0 and "dataset" in r.stdout


def test_segkd_check_runs_without_naming_its_subcommand(tmp_path: Path) -> None:
    from segkd.infer.datasets.__main__ import main as check_main

    with pytest.raises(SystemExit) as e:  # argparse: --dataset is required, the usage names `check`
        check_main(["--root", str(tmp_path)])
    assert e.value.code == 2
    (tmp_path / "leftImg8bit" / "val").mkdir(parents=True)
    assert (
        check_main(["--dataset", "cityscapes", "--root", str(tmp_path), "--split", "val"]) == 1
    )  # no samples
    assert check_main(["check", "--dataset", "cityscapes", "--root", str(tmp_path), "--split", "val"]) == 1


@pytest.mark.slow
def test_sigterm_keeps_the_finished_images_and_writes_their_areas(ckpt: Path, tmp_path: Path) -> None:
    import signal
    import time

    _images(tmp_path / "many", 600)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "segkd", "predict", str(ckpt), str(tmp_path / "many"), "--out", str(out),
         "--batch", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.png"))) < 5:
        assert time.monotonic() < deadline and proc.poll() is None, "predict never started writing"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "terminated (SIGTERM)" in err.strip().splitlines()[-1]
    with open(out / "areas.csv") as f:
        rows = list(csv.DictReader(f))
    written = {p.stem for p in out.glob("*.png")}
    # The image being written when the signal came may have its picture without its row; no row lacks its picture.
    assert {r["item"] for r in rows} <= written and 5 <= len(rows) < 600 and len(written) - len(rows) <= 1


def test_a_second_predict_into_the_same_folder_is_refused(ckpt: Path, tmp_path: Path) -> None:
    from segkd.infer.fileio import lock_folder, unlock_folder

    _images(tmp_path / "in", 1)
    out = tmp_path / "out"
    lock, _ = lock_folder(out)  # a live `segkd predict` writing there
    try:
        res = _segkd("predict", str(ckpt), str(tmp_path / "in"), "--out", str(out), cwd=tmp_path)
    finally:
        unlock_folder(out, lock)
    assert res.returncode == 2 and "is being written by process" in res.stderr.strip().splitlines()[-1]
    assert not list(out.glob("*.png"))
    res = _segkd("predict", str(ckpt), str(tmp_path / "in"), "--out", str(out), cwd=tmp_path)
    assert res.returncode == 0 and len(list(out.glob("*.png"))) == 1


def test_an_image_far_larger_than_the_training_size_is_bounded_and_said(ckpt: Path, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from segkd.infer.predict import MAX_AREA_FACTOR, bounded_size

    dynamic = SimpleNamespace(input_size=None, meta=SimpleNamespace(input_size=[64, 96]))
    limit = MAX_AREA_FACTOR * 64 * 96
    assert bounded_size(dynamic, (64, 96 * MAX_AREA_FACTOR), None) is None  # at the limit: its own size
    h, w = bounded_size(dynamic, (400, 800), None)
    assert h * w <= limit and h % 32 == w % 32 == 0 and abs(w / h - 2) < 0.35
    assert bounded_size(dynamic, (400, 800), (64, 96)) is None  # --size is the user's choice
    assert bounded_size(SimpleNamespace(input_size=(64, 96), meta=dynamic.meta), (4000, 4000), None) is None
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "big.png"), np.zeros((400, 800, 3), np.uint8))
    res = _segkd("predict", str(ckpt), str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--save-labels",
                 cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"segmenting at {h}x{w} and resizing the labels back" in res.stdout + res.stderr
    assert read_label(tmp_path / "o" / "labels" / "big.png").shape == (400, 800)


def test_an_unreadable_input_is_reported_once_and_a_folder_is_not_a_video(ckpt: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.png").write_bytes(b"")
    res = _segkd("predict", str(ckpt), str(tmp_path / "in"), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert res.returncode == 1
    assert (res.stdout + res.stderr).count("empty.png") == 1, res.stdout + res.stderr
    res = _segkd("camera", str(ckpt), "--source", str(tmp_path / "in"), "--headless", cwd=tmp_path)
    assert res.returncode == 2 and "is a folder, not a video file" in res.stderr


def test_views_carry_the_legend_of_the_classes_they_show(ckpt: Path, tmp_path: Path) -> None:
    _images(tmp_path / "in", 1, hw=(96, 160))
    res = _segkd("predict", str(ckpt), str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--view", "mask",
                 "--save-labels", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    view = cv2.imread(str(tmp_path / "o" / "img0.png"))
    labels = read_label(tmp_path / "o" / "labels" / "img0.png")
    top_right = view[:30, -60:]
    assert (top_right == 200).all(axis=2).any()  # a swatch frame of the legend
    assert (
        view[-10:, :10] == np.array(PALETTE[labels[-1, 0]])[::-1]
    ).all()  # the mask itself is untouched there
