"""Camera demo: rendering by hand-computed numbers, the live reader, and `infer/run_camera.py` end to end on a real
video (headless) with a tiny ONNX model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from segkd.infer.meta import ModelMeta, colorize
from segkd.infer.video import (
    DemoOptions,
    FileReader,
    LatestFrameReader,
    SourceInfo,
    StageTimer,
    StreamStopped,
    draw_legend,
    legend_entries,
    open_source,
    overlay,
    render,
    run_demo,
)
from segkd.infer.video.loop import _Stages

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "infer" / "run_camera.py"
NET_HW = (64, 128)  # the tiny model's input: frames are resized to it, labels come back at frame size
# Rows below the stats box (top left) and the legend (top right), where the picture is the model's alone.
CLEAN_ROWS = slice(120, None)


def _meta() -> ModelMeta:
    return ModelMeta(
        arch={"name": "colour_argmax", "num_classes": 4},
        class_names=["reddish", "greenish", "bluish", "dark"],
        palette=[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]],
        mean=[0.0, 0.0, 0.0],
        std=[255.0, 255.0, 255.0],
        channel_order="RGB",
        input_size=list(NET_HW),
    )


def _colour_model(path: Path, dynamic: bool = False) -> Path:
    """An ONNX network that labels each pixel by its strongest RGB channel, or 'dark' below 0.3: a 1x1 Conv.

    Fixed to ``NET_HW`` inputs, or any height and width with ``dynamic``.
    """
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.zeros((4, 3, 1, 1), np.float32)
    w[0, 0] = w[1, 1] = w[2, 2] = 1.0  # (K, 3, 1, 1): class k = channel k of the RGB input in 0..1
    b = np.array([0.0, 0.0, 0.0, 0.3], np.float32)
    hw = ["height", "width"] if dynamic else list(NET_HW)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["logits"])],
        "colour_argmax",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, *hw])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, *hw])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    # IR 8 pairs with opset 17; the newest onnx writes an IR newer than ONNX Runtime reads by default.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, _meta().to_props())
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _colour_model(tmp_path_factory.mktemp("model") / "colour.onnx")


@pytest.fixture(scope="module")
def dynamic_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _colour_model(tmp_path_factory.mktemp("model") / "colour_dynamic.onnx", dynamic=True)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, bikes: Path) -> Path:
    """DeepLabV3-MobileNetV2 at width 0.25, randomly initialised, its BatchNorm statistics measured on nine
    frames of the video so that it gives varied labels rather than one class everywhere."""
    torch = pytest.importorskip("torch")
    from segkd.distill.checkpoint import save_checkpoint
    from segkd.distill.models import build_model
    from segkd.infer.meta import preprocess

    torch.manual_seed(0)
    meta = _meta()
    meta.arch = {"name": "deeplabv3_mbv2", "num_classes": 4, "width": 0.25}
    meta.mean, meta.std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    model = build_model("deeplabv3_mbv2", num_classes=4, width=0.25)
    frames = [cv2.resize(f, NET_HW[::-1]) for f in _read_video(bikes)[0][::31]]
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batch below
    with torch.no_grad():
        model.train()(torch.from_numpy(preprocess(frames, meta)))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth", model.eval(), meta)


@pytest.fixture(scope="module")
def exported_model(tiny_checkpoint: Path) -> Path:
    """The checkpoint through `export/to_onnx.py` as a camera wants it: raw BGR frames in, labels out."""
    out = tiny_checkpoint.with_name("tiny_labels.onnx")
    cmd = [sys.executable, str(REPO / "export" / "to_onnx.py"), str(tiny_checkpoint), "--out", str(out)]
    r = subprocess.run(
        [*cmd, "--argmax", "--fuse-preprocess", "--exporter", "torchscript"],  # the fast exporter
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"),
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return out


@pytest.fixture(scope="module")
def bikes(shared_fixtures: Path) -> Path:
    path = shared_fixtures / "video" / "bikes.mp4"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


def _run(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ if env is None else env, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(SCRIPT), *map(str, args), "--threads", "1"]  # shared 2-core machines
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _read_video(path: Path, limit: int | None = None) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while limit is None or len(frames) < limit:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames, fps


def _predict(model: Path, frames: list[np.ndarray]) -> list[np.ndarray]:
    from segkd.infer.runtime import load_runner

    runner = load_runner(model, threads=1)
    try:
        return [runner.predict([f])[0] for f in frames]
    finally:
        runner.close()


# --------------------------------------------------------------------------------------------- rendering


def test_overlay_blends_by_alpha_exactly() -> None:
    frame = np.full((2, 3, 3), 40, np.uint8)
    color = np.full((2, 3, 3), 200, np.uint8)
    assert (overlay(frame, color, 0.0) == 40).all()
    assert (overlay(frame, color, 1.0) == 200).all()
    assert (overlay(frame, color, 0.5) == 120).all()  # (40 + 200) / 2
    assert (overlay(frame, color, 0.25) == 80).all()  # 0.75 * 40 + 0.25 * 200


def test_render_views_use_the_palette() -> None:
    meta = _meta()
    frame = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[0, 1], [2, 3]], np.uint8)
    mask = render("mask", frame, labels, meta)
    bgr = np.array([[[0, 0, 255], [0, 255, 0]], [[255, 0, 0], [0, 255, 255]]], np.uint8)  # palette RGB -> BGR
    np.testing.assert_array_equal(mask, bgr)
    # overlay at 0.5: 100 blended with 0 -> 50, with 255 -> 177.5 -> 178
    np.testing.assert_array_equal(render("overlay", frame, labels, meta, 0.5), np.where(bgr == 255, 178, 50))
    side = render("side", frame, labels, meta)
    assert side.shape == (2, 4, 3)
    np.testing.assert_array_equal(side[:, :2], frame)
    np.testing.assert_array_equal(side[:, 2:], bgr)


def test_legend_lists_only_classes_in_view() -> None:
    meta = _meta()
    labels = np.full((200, 300), 2, np.uint8)
    labels[:10, :10] = 0  # class 0 small, class 2 large; 1 and 3 absent
    assert legend_entries(labels, meta.num_classes) == [2, 0]
    assert legend_entries(labels, meta.num_classes, max_items=1) == [2]
    img = np.zeros((200, 300, 3), np.uint8)
    draw_legend(img, legend_entries(labels, meta.num_classes), meta)
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert (0, 0, 255) in colours and (255, 0, 0) in colours  # swatches of 'reddish' and 'bluish' (BGR)
    assert (0, 255, 0) not in colours and (0, 255, 255) not in colours  # no 'greenish' or 'dark'
    assert img[:, :150].max() == 0  # drawn in the top-right corner only


def test_stage_timer_summary_in_milliseconds() -> None:
    timer = StageTimer(("decode", "inference"))
    for s in (0.001, 0.003, 0.002):
        timer.add("decode", s)
    summary = timer.summary_ms()
    assert summary["decode"]["mean"] == pytest.approx(2.0)
    assert summary["decode"]["median"] == pytest.approx(2.0)
    assert summary["decode"]["p90"] == pytest.approx(2.8)  # linear interpolation between 2 and 3
    assert summary["inference"]["mean"] == 0.0


# --------------------------------------------------------------------------------------------- live reader


class _FakeCamera:
    """A capture that delivers ``n`` numbered 1x1 frames, one per ``period`` seconds, then fails (or hangs)."""

    def __init__(self, n: int, period: float, hang: bool = False) -> None:
        self.n, self.period, self.hang, self.i = n, period, hang, 0
        self.released = threading.Event()

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.i >= self.n:
            if self.hang:
                self.released.wait(10)
            return False, None
        time.sleep(self.period)
        self.i += 1
        return True, np.full((1, 1, 3), self.i - 1, np.uint8)

    def release(self) -> None:
        self.released.set()


def test_live_reader_keeps_only_the_newest_frame() -> None:
    cam = _FakeCamera(n=120, period=0.001)
    reader = LatestFrameReader(cam, SourceInfo("fake", "camera", 1, 1, 30.0))
    got, gaps = [], []
    with pytest.raises(StreamStopped, match="camera 'fake' stopped after 120 frames"):
        while True:
            got.append(int(reader.read()[0, 0, 0]))
            if cam.i + 3 <= cam.n:  # a model slower than the camera: three new frames per frame processed
                wanted = cam.i + 3
                while cam.i < wanted:
                    time.sleep(0.001)
                gaps.append(len(got) - 1)
    reader.close()
    assert got == sorted(set(got))  # in order, never the same frame twice
    assert all(got[i + 1] - got[i] >= 2 for i in gaps)  # the frames in between were skipped
    assert got[-1] == 119  # the last frame is still shown before the stream is declared stopped
    assert reader.dropped == 120 - len(got)
    assert cam.released.is_set()


def test_live_reader_reports_a_stalled_source() -> None:
    cam = _FakeCamera(n=1, period=0.0, hang=True)
    reader = LatestFrameReader(cam, SourceInfo("rtsp://cam/1", "stream", 1, 1, 30.0))
    assert reader.read()[0, 0, 0] == 0
    reader.stall_s = 0.3
    with pytest.raises(StreamStopped, match=r"stream 'rtsp://cam/1' stopped .*no new frame for 0.3 s"):
        reader.read()
    cam.release()
    reader.close()


# --------------------------------------------------------------------------------------------- sources


def _placeholder(folder: Path) -> Path:
    """A model file that exists (checked before the source); the source's error comes before it is read."""
    path = folder / "model.onnx"
    path.write_bytes(b"placeholder")
    return path


def test_missing_file_exits_2_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    r = _run(_placeholder(tmp_path), "--source", missing, "--headless")
    assert r.returncode == 2, r.stderr
    assert f"video file '{missing}' not found" in r.stderr and "camera index such as 0" in r.stderr
    assert "Traceback" not in r.stderr


def test_undecodable_file_and_dead_stream_exit_2(tmp_path: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video")
    model = _placeholder(tmp_path)
    r = _run(model, "--source", fake, "--headless")
    assert r.returncode == 2 and f"cannot open file '{fake}'" in r.stderr and "ffplay" in r.stderr
    r = _run(model, "--source", "rtsp://127.0.0.1:9/none", "--headless")
    assert r.returncode == 2 and "cannot open stream 'rtsp://127.0.0.1:9/none'" in r.stderr
    assert "check the URL" in r.stderr
    r = _run(model, "--source", 99, "--headless")  # no machine has a hundredth camera
    assert r.returncode == 2 and "cannot open camera '99'" in r.stderr and "--source 1" in r.stderr


def test_window_without_display_exits_2(bikes: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    r = _run(_placeholder(tmp_path), "--source", bikes, env=env)
    assert r.returncode == 2 and "--headless" in r.stderr


def test_file_source_reads_every_frame_in_order(bikes: Path) -> None:
    reader = open_source(str(bikes))
    assert isinstance(reader, FileReader)
    assert (reader.info.kind, reader.info.width, reader.info.height, reader.info.fps) == (
        "file",
        640,
        272,
        25.0,
    )
    first = reader.read()
    count = 1
    while reader.read() is not None:
        count += 1
    reader.close()
    expected, _ = _read_video(bikes, limit=1)
    np.testing.assert_array_equal(first, expected[0])
    assert count == 250


# --------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_whole_video_headless_save(tmp_path: Path, exported_model: Path, bikes: Path) -> None:
    out, summary_path = tmp_path / "out.mp4", tmp_path / "summary.json"
    r = _run(exported_model, "--source", bikes, "--headless", "--save", out, "--json-summary", summary_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads(summary_path.read_text())
    assert (summary["frames"], summary["saved_frames"], summary["stop"]) == (250, 250, "end of file")
    assert list(summary["stages_ms"]) == ["decode", "preprocess", "inference", "postprocess", "render"]
    assert "FPS mean" in r.stdout and "inference" in r.stdout
    frames, fps = _read_video(out)
    src, _ = _read_video(bikes)
    assert len(frames) == 250 and fps == 25.0 and frames[0].shape == (272, 640, 3)
    assert not list(tmp_path.glob(".*partial*"))
    # Where the model labels pixels, the output is the palette blended at alpha 0.5 (up to MPEG-4 coding),
    # clearly not the input.
    picked = [0, 125, 249]
    for i, labels in zip(picked, _predict(exported_model, [src[i] for i in picked])):
        assert len(np.unique(labels[CLEAN_ROWS])) >= 2
        expected = render("overlay", src[i], labels, _meta(), 0.5).astype(np.int16)
        got = frames[i].astype(np.int16)
        error = np.abs(got - expected)[CLEAN_ROWS]
        assert np.median(error) <= 4 and error.mean() < 10  # MPEG-4 blurs the sharp class edges a little
        assert np.abs(got - src[i].astype(np.int16))[CLEAN_ROWS].mean() > 40


@pytest.mark.parametrize(("view", "width"), [("mask", 640), ("side", 1280)])
def test_max_frames_stops_early(tmp_path: Path, tiny_model: Path, bikes: Path, view: str, width: int) -> None:
    out = tmp_path / "out.mp4"
    r = _run(tiny_model, "--source", bikes, "--headless", "--save", out, "--max-frames", 7, "--view", view)
    assert r.returncode == 0, r.stderr
    assert "7 processed" in r.stdout and "stopped: max-frames" in r.stdout
    frames, fps = _read_video(out)
    assert len(frames) == 7 and fps == 25.0 and frames[0].shape == (272, width, 3)
    src, _ = _read_video(bikes, limit=7)
    colour = colorize(_predict(tiny_model, src[6:7])[0], _meta().palette).astype(np.int16)
    right = frames[6][:, width - 640 :].astype(np.int16)
    assert np.abs(right - colour)[CLEAN_ROWS].mean() < 6.0


def test_stopped_stream_exits_2_and_keeps_the_video(tmp_path: Path, tiny_model: Path, bikes: Path) -> None:
    # A file:// URL goes through the live path: read on a thread, newest frame only, and its end is a stop.
    out = tmp_path / "live.mp4"
    r = _run(tiny_model, "--source", bikes.resolve().as_uri(), "--headless", "--save", out)
    assert r.returncode == 2
    assert f"stream '{bikes.resolve().as_uri()}' stopped after" in r.stderr and "stream stopped" in r.stdout
    frames, fps = _read_video(out)
    assert 0 < len(frames) <= 250 and fps == 25.0


def test_postprocess_exact_or_fast(tiny_model: Path, bikes: Path) -> None:
    from segkd.infer.runtime import load_runner

    frame = _read_video(bikes, limit=1)[0][0]
    runner = load_runner(tiny_model, threads=1)
    exact, fast = _Stages(runner), _Stages(runner, fast=True)
    out = exact.infer(exact.preprocess(frame))
    np.testing.assert_array_equal(exact.postprocess(out, (272, 640)), runner.predict([frame])[0])
    small = runner.predict_logits([frame])[0].argmax(0).astype(np.uint8)  # (64, 128)
    np.testing.assert_array_equal(
        fast.postprocess(out, (272, 640)), cv2.resize(small, (640, 272), interpolation=0)
    )
    runner.close()


@pytest.mark.parametrize("size", [None, NET_HW])  # labels upsampled to the frame, or at network size
def test_postprocess_paths_equal_numpy_argmax_on_video_frames(
    tiny_model: Path, dynamic_model: Path, bikes: Path, size: tuple[int, int] | None
) -> None:
    from segkd.infer.runtime import load_runner
    from segkd.infer.runtime.base import resize_scores

    frames = [cv2.resize(f, NET_HW[::-1]) if size else f for f in _read_video(bikes, limit=4)[0]]
    runner = load_runner(dynamic_model if size else tiny_model, threads=1)
    exact, fast = _Stages(runner, size), _Stages(runner, size, fast=True)
    for frame in frames:
        hw = frame.shape[:2]
        out = exact.infer(exact.preprocess(frame))  # (1, K, 64, 128)
        reference = resize_scores(out[0], hw).argmax(0)  # numpy's argmax, first maximum on ties
        np.testing.assert_array_equal(exact.postprocess(out, hw), reference)
        small = cv2.resize(out[0].argmax(0).astype(np.uint8), hw[::-1], interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(fast.postprocess(out, hw), small)
        if size:  # at network size there is nothing to upsample: both paths are the argmax alone
            np.testing.assert_array_equal(fast.postprocess(out, hw), exact.postprocess(out, hw))
    runner.close()


@pytest.mark.parametrize("k", [1, 2, 19, 255, 300])
def test_channel_argmax_equals_numpy_with_ties_infinities_and_nan(k: int) -> None:
    from segkd.infer.runtime.base import scores_to_labels

    rng = np.random.default_rng(k)
    scores = rng.standard_normal((k, 9, 11)).astype(np.float32)
    scores[:, 0, :] = 0.5  # every class tied: the first wins
    scores[:, 1, 0], scores[-1, 1, 1] = -np.inf, np.inf
    np.testing.assert_array_equal(scores_to_labels(scores, k), scores.argmax(0))
    assert scores_to_labels(scores, k).dtype == (np.uint8 if k <= 255 else np.int32)
    scores[k // 2, 2, 2] = np.nan  # numpy picks the NaN; so must the label map
    np.testing.assert_array_equal(scores_to_labels(scores, k), scores.argmax(0))


def test_cached_colour_table_and_histogram_equal_the_reference() -> None:
    meta = _meta()
    labels = np.random.default_rng(0).integers(0, 5, (40, 60)).astype(np.uint8)
    labels[0, :3] = 255  # ignored: black
    frame = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    wide = labels.astype(np.int32)  # takes colorize and bincount, the reference paths
    for view in ("overlay", "mask", "side"):
        np.testing.assert_array_equal(render(view, frame, labels, meta), render(view, frame, wide, meta))
    np.testing.assert_array_equal(render("mask", frame, labels, meta), colorize(labels, meta.palette))
    assert legend_entries(labels, meta.num_classes) == legend_entries(wide, meta.num_classes)


def test_stage_times_add_up_to_the_run(tmp_path: Path, tiny_model: Path, bikes: Path) -> None:
    from segkd.infer.runtime import load_runner
    from segkd.infer.video import STAGES

    runner = load_runner(tiny_model, threads=1)
    opts = DemoOptions(headless=True, max_frames=6, save=tmp_path / "out.mp4")
    summary = run_demo(runner, open_source(str(bikes)), opts)
    runner.close()
    assert STAGES == ("decode", "preprocess", "inference", "postprocess", "render")
    assert list(summary.stages_ms) == list(STAGES)
    assert all(v["median"] > 0 and v["mean"] > 0 for v in summary.stages_ms.values()), summary.stages_ms
    busy_ms = summary.frames * sum(v["mean"] for v in summary.stages_ms.values())  # every frame, every stage
    assert busy_ms <= 1e3 * summary.seconds + 1.0  # the stages are parts of the run, none counted twice
    assert json.loads(summary.to_json())["stages_ms"] == summary.stages_ms
    text = summary.format()
    assert all(f"\n{s} " in text for s in STAGES), text


def test_size_runs_a_dynamic_model_and_is_refused_by_a_fixed_one(
    tmp_path: Path, tiny_model: Path, dynamic_model: Path, bikes: Path
) -> None:
    args = ("--source", bikes, "--headless", "--max-frames", 3, "--size", "32x64", "--fast-postprocess")
    r = _run(dynamic_model, *args)
    assert r.returncode == 0 and "3 processed" in r.stdout, r.stderr
    r = _run(tiny_model, *args)
    assert r.returncode == 2 and "the model takes 64x128 inputs only" in r.stderr


def test_unloadable_model_exits_2(tmp_path: Path, bikes: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x00not onnx")
    r = _run(bad, "--source", bikes, "--headless")
    assert r.returncode == 2 and f"cannot load model {bad}" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "model.h5").write_bytes(b"keras")
    r = _run(tmp_path / "model.h5", "--source", bikes, "--headless")
    assert r.returncode == 2 and "model file suffix" in r.stderr


@pytest.mark.slow
def test_checkpoint_runs_through_the_demo(tmp_path: Path, tiny_checkpoint: Path, bikes: Path) -> None:
    summary_path = tmp_path / "summary.json"
    args = (
        "--headless",
        "--max-frames",
        5,
        "--size",
        "64x128",
        "--threads",
        1,
        "--json-summary",
        summary_path,
    )
    r = _run(tiny_checkpoint, "--source", bikes, *args)
    assert r.returncode == 0, r.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["frames"] == 5 and "pytorch" in summary["model"]
    assert summary["stages_ms"]["inference"]["mean"] > 0


class _InterruptingRunner:
    """Runs the colour model and raises KeyboardInterrupt (as Ctrl-C does) on frame ``at``; or ``error``."""

    def __init__(self, model: Path, at: int, error: type[BaseException] = KeyboardInterrupt) -> None:
        from segkd.infer.runtime import load_runner

        self.inner, self.at, self.error, self.calls = load_runner(model, threads=1), at, error, 0
        self.meta = self.inner.meta

    def predict(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        if self.calls == self.at:
            raise self.error()
        return self.inner.predict(frames)


def test_ctrl_c_finishes_the_video(tmp_path: Path, tiny_model: Path, bikes: Path) -> None:
    out = tmp_path / "out.mp4"
    runner = _InterruptingRunner(tiny_model, at=6)
    summary = run_demo(runner, open_source(str(bikes)), DemoOptions(save=out, headless=True))
    assert (summary.frames, summary.saved_frames, summary.stop) == (5, 5, "interrupted (Ctrl-C)")
    frames, fps = _read_video(out)
    assert len(frames) == 5 and fps == 25.0


def test_sigint_exits_130_with_a_playable_video(tmp_path: Path, dynamic_model: Path, bikes: Path) -> None:
    out, summary_path = tmp_path / "out.mp4", tmp_path / "summary.json"
    # A large network input keeps every frame slow (~50 ms), so the signal lands mid-video.
    args = (
        "--source",
        bikes,
        "--headless",
        "--save",
        out,
        "--size",
        "1088x2560",
        "--json-summary",
        summary_path,
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(SCRIPT), str(dynamic_model), *map(str, args), "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.partial.mp4")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # the hidden file appears with the first frame written
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    summary = json.loads(summary_path.read_text())
    assert summary["stop"] == "interrupted (Ctrl-C)" and 0 < summary["saved_frames"] < 250
    assert (
        summary["frames"] == summary["saved_frames"]
    )  # the frame in progress was finished, then the loop ended
    frames, fps = _read_video(out)
    assert len(frames) == summary["saved_frames"] and fps == 25.0
    assert "interrupted (Ctrl-C)" in stdout


def test_crash_leaves_no_partial_video(tmp_path: Path, tiny_model: Path, bikes: Path) -> None:
    out = tmp_path / "out.mp4"
    runner = _InterruptingRunner(tiny_model, at=3, error=MemoryError)
    with pytest.raises(MemoryError):
        run_demo(runner, open_source(str(bikes)), DemoOptions(save=out, headless=True))
    assert list(tmp_path.iterdir()) == []


class _FakeWindow:
    """Stands in for OpenCV's window: records the frames shown and answers waitKey from a script."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, keys: list[str | None]) -> None:
        self.keys, self.shown, self.destroyed, self.sizes = list(keys), [], False, []
        monkeypatch.setenv("DISPLAY", ":99")
        monkeypatch.setattr(cv2, "namedWindow", lambda *a: None)
        monkeypatch.setattr(cv2, "resizeWindow", lambda name, w, h: self.sizes.append((w, h)))
        monkeypatch.setattr(cv2, "imshow", lambda name, img: self.shown.append(img.copy()))
        monkeypatch.setattr(cv2, "waitKey", self._wait)
        monkeypatch.setattr(cv2, "getWindowProperty", lambda *a: 1.0)
        monkeypatch.setattr(cv2, "destroyAllWindows", lambda: setattr(self, "destroyed", True))

    def _wait(self, ms: int) -> int:
        key = self.keys.pop(0) if self.keys else None
        return -1 if key is None else ord(key)


def test_keys_snapshot_pause_and_quit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model: Path, bikes: Path
) -> None:
    from segkd.infer.runtime import load_runner

    # frame 1: s; frame 2: space, then (paused) nothing, s, space; frame 3: nothing; frame 4: q
    window = _FakeWindow(monkeypatch, ["s", " ", None, "s", " ", None, "q"])
    opts = DemoOptions(snapshot_dir=tmp_path / "snaps", save=tmp_path / "out.mp4")
    summary = run_demo(load_runner(tiny_model, threads=1), open_source(str(bikes)), opts)
    h, w = window.shown[0].shape[:2]
    assert window.sizes == [(w, h)]  # opened once, at the frame's own size (it fits any screen)
    assert (summary.frames, summary.stop, summary.saved_frames) == (4, "quit key", 4)
    assert len(window.shown) == 4 and window.destroyed and window.keys == []
    assert len(summary.snapshots) == 2
    for path, shown in zip(summary.snapshots, (window.shown[0], window.shown[1])):
        np.testing.assert_array_equal(cv2.imread(path), shown)  # PNG: the frame as shown, lossless


def test_window_opens_at_frame_size_and_shrinks_only_to_fit_the_screen() -> None:
    from segkd.infer.video.output import window_size

    assert window_size((640, 272), (1920, 1080)) == (640, 272)  # never enlarged, never shrunk when it fits
    assert window_size((4000, 1000), (1920, 1080)) == (1728, 432)  # 90 % of the screen width, aspect kept


def test_legend_rows_keep_class_order_whatever_the_areas(tmp_path) -> None:
    from segkd.infer.meta import ModelMeta
    from segkd.infer.video.render import draw_legend

    meta = ModelMeta(
        arch={"name": "x", "num_classes": 3},
        class_names=["road", "car", "sky"],
        palette=[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
        input_size=[64, 64],
        extra={},
    )

    def swatch_colors(classes):
        img = np.zeros((200, 300, 3), np.uint8)
        draw_legend(img, classes, meta)
        column = img[:, 300 - 1 - 150 :, :]  # the legend sits top-right
        seen = []
        for row in column.reshape(-1, 3):
            c = tuple(int(v) for v in row)
            if c in {(0, 0, 255), (0, 255, 0), (255, 0, 0)} and c not in seen:
                seen.append(c)
        return seen

    # largest-area-first input in two different orders -> the same rows, in class-id order (BGR swatches)
    assert swatch_colors([2, 0, 1]) == swatch_colors([1, 2, 0]) == [(0, 0, 255), (0, 255, 0), (255, 0, 0)]

    # every class fits: three rows and no "+0 more" row below them
    def panel_bottom(classes):  # the legend's shaded panel darkens a white image
        img = np.full((200, 300, 3), 255, np.uint8)
        draw_legend(img, classes, meta)
        return np.flatnonzero((img[:, -2] < 250).any(axis=1)).max()

    assert panel_bottom([2, 0, 1]) == panel_bottom([0, 1, 2]) > panel_bottom([0, 1])


def test_video_sink_names_its_codec_and_the_file_plays(tmp_path) -> None:
    from segkd.infer.video.output import CODECS, VideoSink

    sink = VideoSink(tmp_path / "v.mp4", 10.0)
    for _ in range(3):
        sink.write(np.zeros((48, 64, 3), np.uint8))
    sink.close()
    assert sink.codec in CODECS
    cap = cv2.VideoCapture(str(tmp_path / "v.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    cap.release()


def test_small_frames_get_a_one_line_stats_panel_and_dark_swatches_a_light_frame() -> None:
    from segkd.infer.video.render import COMPACT_BELOW, draw_legend, draw_stats

    stages = {"decode": 1.0, "preprocess": 2.0, "inference": 4.0, "postprocess": 1.0, "render": 1.0}
    small = np.full((256, 512, 3), 200, np.uint8)
    draw_stats(small, 25.0, stages)
    shaded_rows = int((small[:, 0] < 200).any(axis=1).sum())
    big = np.full((COMPACT_BELOW, 512, 3), 200, np.uint8)
    draw_stats(big, 25.0, stages)
    assert shaded_rows < 40 < int((big[:, 0] < 200).any(axis=1).sum())  # one line, not six
    meta = ModelMeta(arch={"name": "x", "num_classes": 2}, class_names=["construction", "vehicle"],
                     palette=[[70, 70, 70], [0, 0, 142]])  # fmt: skip
    canvas = np.zeros((256, 512, 3), np.uint8)
    draw_legend(canvas, [0, 1], meta)
    assert (canvas == 200).all(axis=2).sum() > 40  # the light frames around the dark swatches


def test_the_stats_and_legend_can_be_left_out(tmp_path: Path) -> None:
    from segkd.infer.run_camera import _parse

    args = _parse(["m.onnx", "--no-stats", "--no-legend"])
    assert (args.stats, args.legend) == (False, False)
    assert _parse(["m.onnx"]).stats and _parse(["m.onnx"]).legend


def test_a_missing_model_is_reported_before_the_display_and_the_camera(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from segkd.infer.run_camera import main

    # camera 7 does not exist and no display is set: the model is what the user must hear about first
    assert main([str(tmp_path / "nope.onnx"), "--source", "7"]) == 2
    assert capsys.readouterr().err.strip() == f"error: model {tmp_path / 'nope.onnx'} does not exist"
    assert main([str(tmp_path), "--source", "7"]) == 2
    assert "is a folder; pass a model file in it" in capsys.readouterr().err
