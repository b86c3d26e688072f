"""Runners: one contract for .pth / .onnx / .engine, identical pre- and post-processing, clear errors."""

from __future__ import annotations

import json
import sys
import time
import types
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from segkd.infer.evaluate import predict_image, slide_windows
from segkd.infer.meta import ModelMeta
from segkd.infer.runtime import RUNTIMES, Runner, RunnerError, load_runner
from segkd.infer.runtime.base import resize_scores, scores_to_labels
from segkd.infer.runtime.ort_runner import select_providers

REPO = Path(__file__).resolve().parents[1]
K = 19
SIZE = (64, 128)


def _meta(**extra: str) -> ModelMeta:
    return ModelMeta(
        arch={"name": "deeplabv3_mbv2", "num_classes": K, "width": 0.25},
        class_names=[f"class{i}" for i in range(K)],
        palette=[[i * 10, 255 - i * 10, i] for i in range(K)],
        input_size=list(SIZE),
        extra=dict(extra),
    )


def export_tiny_onnx(
    model, meta: ModelMeta, path: Path, *, dynamic=True, fuse=False, labels=False, half=False
):
    """A test ONNX file as the exporter writes it: the model (+ optional fused input / argmax) + metadata."""
    import onnx
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model.half() if half else model
            self.register_buffer("mean", torch.tensor(meta.mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(meta.std).view(1, 3, 1, 1))

        def forward(self, x):
            if fuse:  # raw BGR uint8 NHWC -> normalised RGB NCHW inside the graph
                x = x.permute(0, 3, 1, 2).float().flip(1)
                x = (x - self.mean) / self.std
            y = self.net(x)
            return y.argmax(1).to(torch.uint8) if labels else y

    if fuse:
        x = torch.zeros(1, *SIZE, 3, dtype=torch.uint8)
    else:
        x = torch.zeros(1, 3, *SIZE, dtype=torch.float16 if half else torch.float32)
    axes = {0: "batch", 1: "height", 2: "width"} if fuse else {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrapped().eval(),
            (x,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": axes} if dynamic else None,
        )
    proto = onnx.load(str(path))
    extra = {"precision": "fp16" if half else "fp32", "output": "labels" if labels else "logits"}
    extra.update({"fused_preprocess": "true", "input_layout": "NHWC"} if fuse else {})
    meta = ModelMeta.from_dict({**meta.to_dict(), "extra": {**meta.extra, **extra}})
    for k, v in meta.to_props().items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))
    return path


def calibrate_bn(model, meta: ModelMeta, images: list[np.ndarray]) -> None:
    """Set BatchNorm statistics from real images: a random network then predicts varied, not constant, maps."""
    import torch

    from segkd.infer.meta import preprocess

    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for im in images:
            model(torch.from_numpy(preprocess([im, np.ascontiguousarray(im[:, ::-1])], meta)))
    model.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, images) -> dict[str, Path]:
    """A tiny checkpoint and ONNX variants of it (dynamic, static, fused uint8 input, labels output, fp16)."""
    torch = pytest.importorskip("torch")
    from segkd.distill.checkpoint import save_checkpoint
    from segkd.distill.models import build_model

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny")
    model = build_model("deeplabv3_mbv2", num_classes=K, width=0.25)
    meta = _meta()
    calibrate_bn(model, meta, images + _crops(images[1]))
    files = {"pth": save_checkpoint(d / "tiny.pth", model, meta)}
    files["onnx"] = export_tiny_onnx(model, meta, d / "tiny.onnx")
    files["static"] = export_tiny_onnx(model, meta, d / "tiny_static.onnx", dynamic=False)
    files["fused"] = export_tiny_onnx(model, meta, d / "tiny_fused.onnx", fuse=True)
    files["labels"] = export_tiny_onnx(model, meta, d / "tiny_labels.onnx", labels=True)
    import copy

    files["fp16"] = export_tiny_onnx(copy.deepcopy(model), meta, d / "tiny.fp16.onnx", half=True)
    return files


@pytest.fixture(scope="module")
def images(shared_fixtures: Path) -> list[np.ndarray]:
    """Street-like test images of two sizes, from the real Cityscapes fixture (the tests skip without it: on
    random noise the model's predictions are too unstable for the agreement checks below)."""
    fixture = shared_fixtures / "cityscapes/leftImg8bit/val/frankfurt"
    found = sorted(fixture.glob("*.png"))
    if not found:
        pytest.skip(f"no Cityscapes fixture images under {fixture}")
    base = cv2.imread(str(found[0]))
    return [base[:70, :100].copy(), cv2.resize(base, (128, 64))]


def _crops(image: np.ndarray) -> list[np.ndarray]:
    """Nine half-size crops of ``image`` at its size: BatchNorm statistics from a few dozen deep-layer pixels per
    channel give near-zero variances that amplify FP16 rounding tenfold; these give enough pixels."""
    h, w = image.shape[:2]
    return [
        cv2.resize(image[y : y + h // 2, x : x + w // 2], (w, h))
        for y in (0, h // 4, h // 2)
        for x in (0, w // 4, w // 2)
    ]


def _agree(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


# ------------------------------------------------------------------------------------------- contract
def test_registry_maps_suffixes_and_rejects_unknown(tmp_path):
    assert {".pth", ".onnx", ".engine"} <= set(RUNTIMES.names())
    with pytest.raises(KeyError, match="Did you mean '.onnx'"):
        load_runner(tmp_path / "model.onx")
    with pytest.raises(ValueError, match="device"):
        load_runner(tmp_path / "model.onnx", device="gpu")


def test_pytorch_and_onnx_give_same_labels_and_logits(tiny, images):
    with load_runner(tiny["pth"]) as pt, load_runner(tiny["onnx"]) as ox:
        assert (pt.format, pt.precision, pt.provider, pt.input_size) == ("pytorch", "fp32", "torch-cpu", None)
        assert (ox.format, ox.precision, ox.provider, ox.input_size) == (
            "onnx",
            "fp32",
            "CPUExecutionProvider",
            None,
        )
        assert ox.meta.class_names == pt.meta.class_names
        a, b = pt.predict(images), ox.predict(images)
        for im, la, lb in zip(images, a, b):
            assert la.shape == lb.shape == im.shape[:2] and la.dtype == lb.dtype == np.uint8
            assert _agree(la, lb) > 0.999
        assert len(np.unique(a[1])) > 1, "test model should not predict one class everywhere"
        la, lb = pt.predict_logits(images[1:]), ox.predict_logits(images[1:])
        assert la.shape == lb.shape == (1, K, *SIZE) and la.dtype == np.float32
        np.testing.assert_allclose(la, lb, atol=1e-3, rtol=1e-4)


def test_fused_preprocess_labels_and_fp16_variants_agree(tiny, images):
    with load_runner(tiny["onnx"]) as ref:
        want = ref.predict(images)
    with load_runner(tiny["fused"]) as r:
        assert r.fused_preprocess and r.input_dtype == np.uint8 and r.input_layout == "NHWC"
        assert r.make_input(images[1:]).shape == (1, *SIZE, 3)
        for w, got in zip(want, r.predict(images)):
            assert _agree(w, got) > 0.999
    with load_runner(tiny["labels"]) as r:
        assert r.outputs_labels
        for w, got in zip(want, r.predict(images)):
            assert got.dtype == np.uint8 and got.shape == w.shape
        assert _agree(want[1], r.predict(images[1:])[0]) > 0.999  # same size: no resize difference
        with pytest.raises(RunnerError, match="argmax"):
            r.predict_logits(images)
    with load_runner(tiny["fp16"]) as r:
        assert r.precision == "fp16" and r.input_dtype == np.float16
        assert r.make_input(images[1:]).dtype == np.float16
        for w, got in zip(want, r.predict(images)):
            assert _agree(w, got) > 0.9  # a random network with calibrated BatchNorm is fp16-sensitive
        with load_runner(tiny["onnx"]) as ref:
            want_logits = ref.predict_logits(images[1:])
        got_logits = r.predict_logits(images[1:])
        assert got_logits.dtype == np.float32
        np.testing.assert_allclose(got_logits, want_logits, atol=0.1 * np.abs(want_logits).max())


def test_static_onnx_resizes_and_splits_batches(tiny, images):
    with load_runner(tiny["static"]) as r, load_runner(tiny["onnx"]) as ref:
        assert r.input_size == SIZE and r.fixed_batch == 1
        labels = r.predict(images * 2)  # 4 images, one 70x100 resized to 64x128 and back
        assert [x.shape for x in labels] == [im.shape[:2] for im in images * 2]
        want = ref.predict(images[1:])[0]
        assert np.array_equal(labels[1], want) and np.array_equal(labels[3], want)
        assert r.predict_logits(images).shape == (2, K, *SIZE)
        with pytest.raises(RunnerError, match="accepts only 64x128"):
            r.predict(images, size=(32, 64))
        with pytest.raises(RunnerError, match="batch 1"):
            r.time_forward(r.make_input(images), warmup=0, runs=1)


def test_time_forward_and_counts(tiny, images):
    with load_runner(tiny["onnx"]) as ox, load_runner(tiny["pth"]) as pt:
        x = ox.make_input(images[1:] * 2)
        times = ox.time_forward(x, warmup=1, runs=3)
        assert times.shape == (3,) and (times > 0).all()
        assert ox.count_macs(SIZE) == pt.count_macs(SIZE) > 0
        assert abs(ox.count_params() / pt.count_params() - 1) < 0.05  # BatchNorm folded in ONNX
        assert ox.device_memory() is None and pt.device_memory() is None


def test_cuda_request_reports_the_provider_that_runs(tiny):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = load_runner(tiny["onnx"], device="cuda")
    assert r.provider == r.session.get_providers()[0]
    if r.provider == "CPUExecutionProvider":  # onnxruntime-gpu without a GPU falls back silently: we warn
        assert r.device == "cpu"
        assert any("runs on CPUExecutionProvider" in str(w.message) for w in caught)
    r.close()


def test_select_providers():
    avail = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert (
        select_providers("cuda", None, avail) == avail[1:]
    )  # TensorRT is opt-in: engine builds take minutes
    assert select_providers("cuda", "TensorrtExecutionProvider", avail) == avail
    assert select_providers("cuda", None, avail[1:]) == avail[1:]
    assert select_providers("cpu", None, avail) == ["CPUExecutionProvider"]
    assert select_providers("cpu", "CUDAExecutionProvider", avail) == avail[1:]
    with pytest.raises(RunnerError, match="not in this build"):
        select_providers("cpu", "OpenVINOExecutionProvider", avail)


def test_bad_files_raise_runner_errors(tiny, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(tiny["onnx"].read_bytes()[:500])
    with pytest.raises(RunnerError, match="cannot load"):
        load_runner(bad)
    bad_pth = tmp_path / "bad.pth"
    bad_pth.write_bytes(b"not a checkpoint")
    with pytest.raises(RunnerError, match="bad.pth"):
        load_runner(bad_pth)
    import onnx

    bare = onnx.load(str(tiny["onnx"]))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(RunnerError, match="metadata lacks"):
        load_runner(tmp_path / "bare.onnx")
    with load_runner(tiny["onnx"]) as r:
        with pytest.raises(ValueError, match="BGR uint8"):
            r.predict([np.zeros((8, 8, 3), np.float32)])
        with pytest.raises(TypeError, match="list"):
            r.predict(np.zeros((8, 8, 3), np.uint8))


# ------------------------------------------------------------------------------------------- shared pipeline
class PointwiseRunner(Runner):
    """A 1x1 'network' in numpy: every pixel's logits depend on that pixel only, so slide == whole == flip."""

    format = "numpy"

    def __init__(self, meta: ModelMeta, *, input_size=None, fixed_batch=None, labels=False) -> None:
        super().__init__(
            "pointwise.npy",
            meta,
            precision="fp32",
            provider="numpy",
            device="cpu",
            input_size=input_size,
            fixed_batch=fixed_batch,
            outputs_labels=labels,
        )
        self.weight = np.random.default_rng(1).normal(size=(meta.num_classes, 3)).astype(np.float32)
        self.calls: list[tuple[int, ...]] = []

    def _run(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(x.shape)
        logits = np.einsum("kc,nchw->nkhw", self.weight, x)  # (N, K, H, W)
        return logits.argmax(1).astype(np.int64) if self.outputs_labels else logits


def test_resize_scores_is_half_pixel_bilinear():
    s = np.array([[[0.0, 1.0]]], np.float32)  # (1, 1, 2)
    np.testing.assert_allclose(resize_scores(s, (1, 4))[0, 0], [0, 0.25, 0.75, 1], atol=1e-6)
    many = np.random.default_rng(0).normal(size=(300, 3, 4)).astype(np.float32)  # > OpenCV's channel limit
    out = resize_scores(many, (6, 8))
    assert out.shape == (300, 6, 8)
    np.testing.assert_allclose(out[299], resize_scores(many[299:], (6, 8))[0], atol=1e-6)  # SIMD rounding
    assert scores_to_labels(np.zeros((300, 2, 2)), 300).dtype == np.int32


def test_slide_windows_hand_computed():
    assert slide_windows(10, 10, (4, 4), (3, 3))[:3] == [(0, 4, 0, 4), (0, 4, 3, 7), (0, 4, 6, 10)]
    assert len(slide_windows(10, 10, (4, 4), (3, 3))) == 9
    assert slide_windows(5, 3, (4, 4), (3, 3)) == [(0, 4, 0, 3), (1, 5, 0, 3)]
    assert slide_windows(4, 4, (4, 4), (2, 2)) == [(0, 4, 0, 4)]
    with pytest.raises(ValueError, match="unseen"):
        slide_windows(10, 10, (4, 4), (5, 2))


def test_slide_flip_and_fixed_batch_match_whole_image_on_a_pointwise_model(images):
    runner = PointwiseRunner(_meta())
    image = images[0]  # 70x100
    whole = runner.predict([image])[0]
    assert len(np.unique(whole)) > 1
    slide = predict_image(runner, image, mode="slide", crop=(32, 48), stride=(20, 30), batch=3)
    assert np.array_equal(slide, whole)
    assert max(s[0] for s in runner.calls) == 3  # windows were batched
    assert np.array_equal(predict_image(runner, image, flip=True), whole)
    big_crop = predict_image(runner, image, mode="slide", crop=(96, 128), stride=(64, 64))  # padded image
    assert big_crop.shape == image.shape[:2] and np.array_equal(big_crop, whole)
    fixed = PointwiseRunner(_meta(), input_size=(32, 48), fixed_batch=2)
    assert np.array_equal(predict_image(fixed, image, mode="slide", crop=(32, 48), stride=(20, 30)), whole)
    assert {s[0] for s in fixed.calls} == {2}  # every call padded to the fixed batch
    labels_out = PointwiseRunner(_meta(), labels=True)
    assert np.array_equal(labels_out.predict([image])[0], whole)
    with pytest.raises(RunnerError, match="argmax"):
        predict_image(labels_out, image, flip=True)


def test_multi_scale_averages_probabilities(images):
    runner = PointwiseRunner(_meta())
    image = images[1]
    one = predict_image(runner, image)
    ms = predict_image(runner, image, scales=(0.5, 1.0, 1.5), flip=True)
    assert ms.shape == one.shape and _agree(ms, one) > 0.9  # a pointwise model barely changes with scale
    assert {s[2:] for s in runner.calls} >= {(32, 64), (64, 128), (96, 192)}


# ------------------------------------------------------------------------------------------- TensorRT
class _FakeCuda:
    """Host memory standing in for device memory, to run TrtRunner's buffer logic without a GPU."""

    name = "fake"
    stream_handle = 7

    def __init__(self) -> None:
        self.mem: dict[int, np.ndarray] = {}
        self.freed: list[int] = []

    def malloc(self, nbytes: int) -> int:
        ptr = 4096 * (len(self.mem) + len(self.freed) + 1)
        self.mem[ptr] = np.zeros(nbytes, np.uint8)
        return ptr

    def free(self, ptr: int) -> None:
        self.freed.append(ptr)
        del self.mem[ptr]

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        self.mem[ptr][: host.nbytes] = np.frombuffer(np.ascontiguousarray(host).tobytes(), np.uint8)

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        host.reshape(-1).view(np.uint8)[:] = self.mem[ptr][: host.nbytes]

    def synchronize(self) -> None:
        pass

    def event(self) -> list[float]:
        return [0.0]

    def record(self, event: list[float]) -> None:
        event[0] = time.perf_counter()

    def elapsed_ms(self, start: list[float], end: list[float]) -> float:
        return (end[0] - start[0]) * 1e3

    def device(self) -> tuple[str, str]:
        return "Fake GPU", "9.0"

    def close(self) -> None:
        pass


def _fake_tensorrt(cuda: _FakeCuda) -> types.ModuleType:
    """The slice of the TensorRT 10/11 Python API the runner uses; the 'engine' runs an ONNX file."""
    import onnxruntime as ort

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99.0"
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = np.dtype

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    class Context:
        def __init__(self, engine) -> None:
            self.engine, self.shapes, self.addr = engine, {}, {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            n, _, h, w = self.shapes["input"]
            return (n, K, h, w)

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def execute_async_v3(self, stream):
            shape = self.shapes["input"]
            x = cuda.mem[self.addr["input"]][: int(np.prod(shape)) * 4].view(np.float32).reshape(shape)
            y = self.engine.session.run(None, {"input": x})[0]
            cuda.mem[self.addr["output"]][: y.nbytes] = y.reshape(-1).view(np.uint8)
            return True

    class Engine:
        num_io_tensors = 2
        device_memory_size_v2 = 1000

        def __init__(self, blob: bytes) -> None:
            spec = json.loads(blob)
            self.session = ort.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])
            self.input_shape = tuple(spec["shape"])

        def get_tensor_name(self, i):
            return ["input", "output"][i]

        def get_tensor_mode(self, name):
            return "in" if name == "input" else "out"

        def get_tensor_shape(self, name):
            return self.input_shape if name == "input" else (-1, K, -1, -1)

        def get_tensor_dtype(self, name):
            return np.float32

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, blob):
            try:
                return Engine(blob)
            except ValueError:
                return None

    trt.Logger, trt.Runtime = Logger, Runtime
    return trt


def _fake_engine(tmp: Path, onnx_file: Path, *, trt_version="10.99.0", gpu="Fake GPU", shape=(-1, 3, -1, -1)):
    engine = tmp / "tiny.engine"
    engine.write_text(json.dumps({"onnx": str(onnx_file), "shape": list(shape)}))
    record = {  # as segkd.export.trt_build.build_engine writes it
        "format": "segkd-engine",
        "engine": engine.name,
        "meta": _meta(precision="fp32").to_dict(),
        "params": "1234",
        "build": {
            "tensorrt_version": trt_version,
            "gpu_name": gpu,
            "compute_capability": "9.0",
            "onnx": str(onnx_file),
        },
    }
    (tmp / "tiny.engine.json").write_text(json.dumps(record))
    return engine


@pytest.fixture()
def fake_trt(monkeypatch):
    import segkd.infer.runtime.trt_runner as trt_runner

    cuda = _FakeCuda()
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(cuda))
    monkeypatch.setitem(trt_runner.CUDA_LIBS, "fake", lambda: cuda)
    return cuda


def test_tensorrt_runner_buffers_and_outputs_match_onnx(tiny, images, tmp_path, fake_trt):
    engine = _fake_engine(tmp_path, tiny["onnx"])
    with load_runner(tiny["onnx"]) as ref:
        want = ref.predict(images)
    r = load_runner(engine, device="cuda", cuda_lib="fake")
    assert (r.format, r.precision, r.provider, r.input_size) == ("tensorrt", "fp32", "TensorRT 10.99.0", None)
    for w, got in zip(want, r.predict(images)):
        assert np.array_equal(w, got)
    freed = len(fake_trt.freed)
    r.predict(images[1:] * 3)  # a larger batch grows both buffers, the same batch again reuses them
    assert len(fake_trt.freed) == freed + 2 and len(fake_trt.mem) == 2
    r.predict(images[1:] * 3)
    assert len(fake_trt.freed) == freed + 2
    times = r.time_forward(r.make_input(images[1:]), warmup=1, runs=2)
    assert times.shape == (2,) and (times > 0).all()
    assert r.device_memory()[0] > 1000
    with load_runner(tiny["onnx"]) as ref:  # counted on the source ONNX the sidecar names
        assert (r.count_macs(SIZE), r.count_params()) == (ref.count_macs(SIZE), ref.count_params())
    r.close()
    assert not fake_trt.mem


def test_tensorrt_runner_refuses_foreign_engines_and_missing_pieces(tiny, tmp_path, fake_trt, monkeypatch):
    engine = _fake_engine(tmp_path, tiny["onnx"], trt_version="10.3.0", gpu="Other GPU")
    with pytest.raises(RunnerError, match=r"TensorRT 10\.3\.0.*Other GPU.*rebuild"):
        load_runner(engine, device="cuda", cuda_lib="fake")
    with pytest.raises(RunnerError, match="GPU only"):
        load_runner(engine, device="cpu")
    (tmp_path / "tiny.engine.json").unlink()
    with pytest.raises(RunnerError, match="sidecar"):
        load_runner(engine, device="cuda", cuda_lib="fake")
    engine = _fake_engine(tmp_path, tiny["onnx"])
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not installed
    with pytest.raises(RunnerError, match="pip install tensorrt"):
        load_runner(engine, device="cuda", cuda_lib="fake")


# ------------------------------------------------------------------------------------------- format table
def test_format_table_has_the_shipped_rows_and_the_entry_point_row():
    from segkd.distill.runner import PYTORCH, TorchRunner
    from segkd.export.formats import PRECISIONS
    from segkd.infer.formats import Format, format_for_path, formats, get_format, register_format

    assert [f.name for f in formats()][:2] == ["onnx", "tensorrt"]  # built in; then the installed rows
    assert get_format("pytorch") is PYTORCH and format_for_path("a/B.PTH").load_runner() is TorchRunner
    for name in ("onnx", "tensorrt"):
        assert get_format(name).precisions == tuple(PRECISIONS)  # what the exporter writes, the runtime runs
    assert get_format("onnx").load_runner().format == "onnx"
    clash = Format("other", (".onnx",), TorchRunner, "", "", ("fp32",), (0, 0, 0), "")
    with pytest.raises(KeyError, match="already 'onnx'"):
        register_format(clash)
    with pytest.raises(KeyError, match="Did you mean '.onnx'"):
        format_for_path("x.onx")
