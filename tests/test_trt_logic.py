"""TensorRT engine building without a GPU: shapes, what the builder is told (stand-in `trt`), sidecar, version
and GPU checks. The real engines (marked `gpu`: built through `export/to_trt.py`'s code path, run by the TensorRT
runner, compared with ONNX Runtime) run only where CUDA and `tensorrt` import; elsewhere they skip with the reason."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from segkd.export.cli import _shape_export_args
from segkd.export.trt_build import (
    BuildOptions,
    EngineBuildError,
    EngineCompatError,
    build_engine,
    check_engine_compat,
    fit_profile,
    parse_shapes,
    read_sidecar,
    rebuild_command,
    sidecar_path,
)
from segkd.infer.meta import ModelMeta

GPU = ("NVIDIA H100 80GB HBM3", "9.0")


# --------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("1x3x512x1024", ((1, 3, 512, 1024),) * 3),
        ("1x3x256x512:2x3x512x1024:4x3x1024x2048", ((1, 3, 256, 512), (2, 3, 512, 1024), (4, 3, 1024, 2048))),
        ("1X512X1024X3", ((1, 512, 1024, 3),) * 3),
    ],
)
def test_parse_shapes(text: str, want: tuple) -> None:
    p = parse_shapes(text)
    assert (p.min, p.opt, p.max) == want
    assert parse_shapes(str(p)) == p


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("1x3x512", None),  # a valid rank-3 shape: rank is checked against the graph, not here
        ("1x3x512x1024:1x3x512x1024", "one shape or MIN:OPT:MAX"),
        ("1x3xax1024", "dimensions joined by 'x'"),
        ("0x3x512x1024", "below 1"),
        ("1x3x512x1024:1x3x512:1x3x512x1024", "different ranks"),
        ("2x3x512x1024:1x3x512x1024:4x3x512x1024", "min <= opt <= max"),
    ],
)
def test_parse_shapes_errors(text: str, error: str | None) -> None:
    if error is None:
        assert parse_shapes(text).static
        return
    with pytest.raises(ValueError, match=error):
        parse_shapes(text)


def test_fit_profile_against_graph_dims() -> None:
    fit_profile(parse_shapes("1x3x64x64:2x3x128x128:4x3x256x256"), (-1, 3, -1, -1))
    with pytest.raises(ValueError, match="dimension 1 .* fixed to 3"):
        fit_profile(parse_shapes("1x4x64x64"), (-1, 3, -1, -1))
    with pytest.raises(ValueError, match="rank 3"):
        fit_profile(parse_shapes("1x64x64"), (-1, 3, -1, -1))
    with pytest.raises(ValueError, match="dimension 0"):
        fit_profile(parse_shapes("1x3x64x64:2x3x64x64:2x3x64x64"), (1, 3, 64, 64))


@pytest.mark.parametrize(
    ("shapes", "fused", "want"),
    [
        ("1x3x512x1024", False, (512, 1024, 1, "none")),
        ("1x3x512x1024:4x3x512x1024:8x3x512x1024", False, (512, 1024, 4, "batch")),
        ("1x3x256x512:1x3x512x1024:1x3x1024x2048", False, (512, 1024, 1, "all")),
        ("1x480x640x3:2x480x640x3:2x720x1280x3", True, (480, 640, 2, "all")),
    ],
)
def test_engine_shapes_drive_the_onnx_export(shapes: str, fused: bool, want: tuple) -> None:
    args = argparse.Namespace(fuse_preprocess=fused, height=None, width=None, batch=1, dynamic="none")
    _shape_export_args(args, parse_shapes(shapes))
    assert (args.height, args.width, args.batch, args.dynamic) == want


# --------------------------------------------------------------------------------------------- stand-in TensorRT
def _fake_trt(
    version: str = "10.13.0.35",
    *,
    input_shape: tuple[int, ...] = (-1, 3, -1, -1),
    strongly_typed_flag: bool = True,
    parse_errors: tuple[str, ...] = (),
    plan: bytes | None = b"SERIALIZED-PLAN",
) -> SimpleNamespace:
    """A `tensorrt` module stand-in that records every builder call in ``trt.calls``.

    It has no ``BuilderFlag.FP16/INT8``: touching a precision flag raises AttributeError, as on TensorRT 11.
    """
    calls: list[tuple[Any, ...]] = []

    class Tensor:
        def __init__(self, name: str, shape: tuple[int, ...], dtype: str) -> None:
            self.name, self.shape, self.dtype = name, shape, dtype

    class Network:
        num_inputs = num_outputs = 1

        def get_input(self, i: int) -> Tensor:
            return Tensor("input", input_shape, "DataType.HALF")

        def get_output(self, i: int) -> Tensor:
            return Tensor("logits", (input_shape[0], 19, *input_shape[2:]), "DataType.HALF")

    class Profile:
        def set_shape(self, *a: Any) -> None:
            calls.append(("set_shape", *a))

    class Cache:
        def serialize(self) -> bytes:
            return b"TIMING-CACHE"

    class Config:
        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            calls.append(("set_memory_pool_limit", pool, size))

        def set_flag(self, flag: str) -> None:
            calls.append(("set_flag", flag))

        def __setattr__(self, name: str, value: Any) -> None:
            calls.append(("config." + name, value))

        def add_optimization_profile(self, profile: Profile) -> None:
            calls.append(("add_optimization_profile",))

        def create_timing_cache(self, data: bytes) -> Cache:
            calls.append(("create_timing_cache", bytes(data)))
            return Cache()

        def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> None:
            calls.append(("set_timing_cache", ignore_mismatch))

        def get_timing_cache(self) -> Cache:
            return Cache()

    class Builder:
        def __init__(self, logger: Any) -> None:
            calls.append(("Builder",))

        def create_network(self, flags: int) -> Network:
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            calls.append(("build_serialized_network",))
            return plan

    class OnnxParser:
        num_errors = len(parse_errors)

        def __init__(self, network: Network, logger: Any) -> None:
            pass

        def parse_from_file(self, path: str) -> bool:
            calls.append(("parse_from_file", path))
            return not parse_errors

        def get_error(self, i: int) -> str:
            return parse_errors[i]

    class Logger:
        WARNING = "WARNING"

        def __init__(self, level: str) -> None:
            pass

    trt = SimpleNamespace(
        __version__=version,
        calls=calls,
        Logger=Logger,
        Builder=Builder,
        OnnxParser=OnnxParser,
        BuilderFlag=SimpleNamespace(VERSION_COMPATIBLE="VERSION_COMPATIBLE"),
        MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"),
        HardwareCompatibilityLevel=SimpleNamespace(AMPERE_PLUS="AMPERE_PLUS"),
    )
    if strongly_typed_flag:
        trt.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
    return trt


def _onnx(path: Path, precision: str = "fp16") -> Path:
    """A one-node graph carrying toolkit metadata (the builder only reads the file's metadata itself)."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT16, ["batch", 3, "height", "width"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT16, ["batch", 3, "height", "width"])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g", [x], [y])
    )
    meta = ModelMeta(
        arch={"name": "deeplabv3_r18", "num_classes": 2},
        class_names=["road", "car"],
        palette=[[128, 64, 128], [0, 0, 142]],
        input_size=[512, 1024],
        extra={"precision": precision, "params": "123"},
    )
    for k, v in meta.to_props().items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def test_build_settings_and_sidecar_tensorrt10(tmp_path: Path) -> None:
    """What the builder is told (the order of the calls is the real-engine test's to prove), and the sidecar."""
    onnx_path = _onnx(tmp_path / "m.fp16.onnx")
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"OLD-CACHE")
    trt = _fake_trt()
    opts = BuildOptions(parse_shapes("1x3x256x512:1x3x512x1024:2x3x1024x2048"), 2.0, str(cache), True, False)
    record = build_engine(onnx_path, None, opts, trt=trt, gpu=GPU, log=lambda _: None)

    def made(name: str) -> list[tuple]:
        return [c for c in trt.calls if c[0] == name]

    assert made("create_network") == [("create_network", 1 << 1)]  # STRONGLY_TYPED, nothing else
    # the only builder flag: no FP16/INT8/TF32 precision flags (precision comes from the graph)
    assert made("set_flag") == [("set_flag", "VERSION_COMPATIBLE")]
    assert ("set_memory_pool_limit", "WORKSPACE", 2 * 2**30) in trt.calls
    assert ("set_shape", "input", (1, 3, 256, 512), (1, 3, 512, 1024), (2, 3, 1024, 2048)) in trt.calls
    assert ("create_timing_cache", b"OLD-CACHE") in trt.calls and ("set_timing_cache", False) in trt.calls
    engine = tmp_path / "m.fp16.engine"
    assert engine.read_bytes() == b"SERIALIZED-PLAN" and cache.read_bytes() == b"TIMING-CACHE"
    side = json.loads(sidecar_path(engine).read_text())
    assert side == json.loads(json.dumps(record))
    assert side["meta"]["class_names"] == ["road", "car"] and side["meta"]["extra"]["precision"] == "fp16"
    assert side["params"] == "123" and side["inputs"][0] == {
        "name": "input",
        "shape": [-1, 3, -1, -1],
        "dtype": "half",
    }
    b = side["build"]
    assert (b["tensorrt_version"], b["gpu_name"], b["compute_capability"]) == ("10.13.0.35", *GPU)
    assert b["shapes"] == {
        "input": "input",
        "min": [1, 3, 256, 512],
        "opt": [1, 3, 512, 1024],
        "max": [2, 3, 1024, 2048],
    }
    assert b["workspace_gb"] == 2.0 and b["version_compatible"] and not b["hardware_compatible"]
    assert b["engine_host_code_allowed"]  # a version-compatible plan embeds its lean runtime
    assert b["strongly_typed"] and b["onnx"] == str(onnx_path) and len(b["onnx_sha256"]) == 64
    assert b["build_time_s"] >= 0 and b["created"]


def test_tensorrt11_has_no_strongly_typed_flag_and_same_path(tmp_path: Path) -> None:
    trt = _fake_trt("11.4.0.106", strongly_typed_flag=False, input_shape=(1, 3, 512, 1024))
    opts = BuildOptions(hardware_compatible=True)
    build_engine(
        _onnx(tmp_path / "m.onnx"), tmp_path / "out.engine", opts, trt=trt, gpu=GPU, log=lambda _: None
    )
    assert ("create_network", 0) in trt.calls
    assert ("config.hardware_compatibility_level", "AMPERE_PLUS") in trt.calls
    assert not [c for c in trt.calls if c[0] in ("set_shape", "set_flag")]  # static input: no profile
    assert ("create_timing_cache", b"") in trt.calls  # an empty cache when none is given
    assert (tmp_path / "out.engine").is_file() and (tmp_path / "out.engine.json").is_file()


@pytest.mark.parametrize(
    ("trt_kw", "opts", "error"),
    [
        (
            {"parse_errors": ("node 3: unsupported op Foo",)},
            BuildOptions(parse_shapes("1x3x64x64")),
            "unsupported op Foo",
        ),
        ({"plan": None}, BuildOptions(parse_shapes("1x3x64x64")), "could not build"),
        ({}, BuildOptions(), "give its range with --shapes"),
        ({"input_shape": (1, 3, 512, 1024)}, BuildOptions(parse_shapes("1x3x256x256")), "fixed to 512"),
        ({"version": "8.6.1"}, BuildOptions(parse_shapes("1x3x64x64")), "too old"),
    ],
)
def test_build_failures_leave_no_engine(tmp_path: Path, trt_kw: dict, opts: BuildOptions, error: str) -> None:
    with pytest.raises(EngineBuildError, match=error):
        build_engine(
            _onnx(tmp_path / "m.onnx"), None, opts, trt=_fake_trt(**trt_kw), gpu=GPU, log=lambda _: None
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# --------------------------------------------------------------------------------------------- loading checks
def _record(**build: Any) -> dict[str, Any]:
    base = {
        "tensorrt_version": "10.13.0.35",
        "gpu_name": GPU[0],
        "compute_capability": GPU[1],
        "onnx": "runs/best.fp16.onnx",
        "shapes": {
            "input": "input",
            "min": [1, 3, 512, 1024],
            "opt": [1, 3, 512, 1024],
            "max": [1, 3, 512, 1024],
        },
        "workspace_gb": 4.0,
        "version_compatible": False,
        "hardware_compatible": False,
    }
    return {"format": "segkd-engine", "engine": "best.fp16.engine", "build": {**base, **build}}


@pytest.mark.parametrize(
    ("build", "runtime", "ok"),
    [
        ({}, ("10.13.0.35", *GPU), True),
        ({}, ("10.13.2.6", *GPU), False),
        ({}, ("10.13.0.35", "NVIDIA A100-SXM4-80GB", "8.0"), False),
        ({}, ("10.13.0.35", "nvidia h100 80gb hbm3", None), True),  # names compare case-insensitively
        ({"version_compatible": True}, ("10.14.1.48", *GPU), True),
        ({"version_compatible": True}, ("11.4.0.106", *GPU), True),  # 10 -> 11 is a supported pair
        ({"version_compatible": True}, ("10.8.0.43", *GPU), False),  # older runtime
        ({"version_compatible": True, "tensorrt_version": "8.6.1.6"}, ("11.4.0.106", *GPU), False),
        ({"hardware_compatible": True}, ("10.13.0.35", "NVIDIA GeForce RTX 4090", "8.9"), True),
        ({"hardware_compatible": True}, ("10.13.0.35", "Tesla T4", "7.5"), False),
        ({"gpu_name": None, "compute_capability": None}, ("10.13.0.35", "Tesla T4", "7.5"), True),  # unknown
    ],
)
def test_engine_compat(build: dict, runtime: tuple, ok: bool) -> None:
    record = _record(**build)
    if ok:
        assert check_engine_compat(record, *runtime) is record
        return
    with pytest.raises(EngineCompatError, match="rebuild it on this machine with `segkd trt") as e:
        check_engine_compat(record, *runtime)
    assert "runs/best.fp16.onnx --shapes 1x3x512x1024 --workspace 4" in str(e.value)


def test_rebuild_command_keeps_the_build_options() -> None:
    rec = _record(version_compatible=True, hardware_compatible=True)
    rec["build"]["shapes"] = {
        "input": "input",
        "min": [1, 3, 64, 64],
        "opt": [2, 3, 64, 64],
        "max": [4, 3, 64, 64],
    }
    assert rebuild_command(rec) == (
        "segkd trt runs/best.fp16.onnx --shapes 1x3x64x64:2x3x64x64:4x3x64x64 --workspace 4 "
        "--version-compatible --hardware-compatible"
    )


def test_sidecar_is_read_beside_the_engine(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    with pytest.raises(EngineCompatError, match="no sidecar m.engine.json"):
        check_engine_compat(engine, "10.13.0.35", *GPU)
    build_engine(
        _onnx(tmp_path / "m.onnx"), engine, BuildOptions(parse_shapes("1x3x64x64")), trt=_fake_trt(), gpu=GPU
    )
    assert read_sidecar(engine) == read_sidecar(sidecar_path(engine))
    assert check_engine_compat(engine, "10.13.0.35", *GPU)["engine"] == "m.engine"
    with pytest.raises(EngineCompatError, match="built with TensorRT 10.13.0.35 and this is TensorRT 10.14"):
        check_engine_compat(engine, "10.14.1.48", *GPU)
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(EngineCompatError, match="not valid JSON"):
        check_engine_compat(engine, "10.13.0.35", *GPU)


def test_deploy_runtime_reads_the_sidecar(tmp_path: Path) -> None:
    """The engine runner takes its metadata from the sidecar written here."""
    trt_runner = pytest.importorskip("segkd.infer.runtime.trt_runner")
    engine = tmp_path / "m.engine"
    build_engine(
        _onnx(tmp_path / "m.onnx"), engine, BuildOptions(parse_shapes("1x3x64x64")), trt=_fake_trt(), gpu=GPU
    )
    meta, record = trt_runner.read_engine_record(engine)
    assert meta.class_names == ["road", "car"] and record["build"]["tensorrt_version"] == "10.13.0.35"


# --------------------------------------------------------------------------------------------- real TensorRT
# A tiny student through `export/to_trt.py`'s code path (checkpoint -> verified ONNX -> strongly typed engine),
# run by the deploy runtime's TensorRT runner and compared with ONNX Runtime on the very ONNX file it was built
# from, under the export gates (`segkd.export.formats.PRECISIONS`). Skipped with the reason without a GPU.
REAL_SHAPES = "1x3x64x128:2x3x64x128:2x3x64x128"  # dynamic batch 1..2 at the demo frames' 64x128
# max |TensorRT - ONNX Runtime| logits over the range of the logits: the FP16 bound of the exporter's own check
# at other sizes (segkd.export.pipeline); INT8 kernels requantize differently, so only the gates judge them.
REAL_MAX_DIFF = {"fp16": 2e-2}


def _real_trt_problem() -> str | None:
    """Why a real engine cannot be built and run here (no CUDA, no tensorrt, no buffer library), or None."""
    import torch

    from segkd.infer.runtime.gpu import import_cudart

    if not torch.cuda.is_available():
        return f"no CUDA device visible to torch {torch.__version__}"
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed (pip install -e .[trt] on a machine with an NVIDIA GPU)"
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # the bindings wheel without its libraries fails with ImportError or OSError
        return f"tensorrt does not import: {type(e).__name__}: {e}"
    if import_cudart() is None and importlib.util.find_spec("pycuda") is None:
        return "TensorRT buffers need cuda-python (pip install cuda-python) or pycuda"
    return None


@pytest.fixture(scope="module")
def real_trt() -> str:
    """The runner's CUDA buffer library; skips the test when no real TensorRT engine can run here."""
    if (problem := _real_trt_problem()) is not None:
        pytest.skip(problem)
    from segkd.infer.runtime.gpu import import_cudart

    return "cuda-python" if import_cudart() is not None else "pycuda"


@pytest.fixture(scope="module")
def real_student(real_trt: str, tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 19-class DeepLabV3-R18 at a quarter width, saved at the demo frames' size."""
    import torch

    from segkd.distill.checkpoint import save_checkpoint
    from segkd.distill.models import build_model

    torch.manual_seed(0)
    arch = {"name": "deeplabv3_r18", "num_classes": 19, "width": 0.25}
    palette = [[i * 13 % 256, i * 29 % 256, i * 47 % 256] for i in range(19)]
    meta = ModelMeta(
        arch=arch, class_names=[f"c{i}" for i in range(19)], palette=palette, input_size=[64, 128]
    )
    folder = tmp_path_factory.mktemp("real-trt")
    return save_checkpoint(folder / "student.pth", build_model(**arch).eval(), meta)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_real_engine_matches_onnxruntime(
    real_trt: str, real_student: Path, tiny_demo: Path, tmp_path: Path, precision: str
) -> None:
    import shutil
    import warnings

    from segkd.export.calib import dataset_samples
    from segkd.export.cli import trt_main
    from segkd.export.formats import default_onnx_path, get_precision
    from segkd.export.verify import runner_reference, verify
    from segkd.infer.runtime import RunnerError, load_runner

    ckpt = Path(shutil.copy(real_student, tmp_path / "student.pth"))
    engine, cache = tmp_path / f"student.{precision}.engine", tmp_path / "trt.cache"
    calib = ["--calib-dataset", "demo", "--calib-root", str(tiny_demo), "--calib-count", "4",
             "--calib-method", "minmax", "--verify-count", "2"]  # fmt: skip
    code = trt_main([str(ckpt), "--precision", precision, "--shapes", REAL_SHAPES, "--exporter", "torchscript",
                     "--timing-cache", str(cache), "--out", str(engine), *calib])  # fmt: skip
    assert code == 0 and engine.stat().st_size > 0 and cache.stat().st_size > 0
    onnx_path = default_onnx_path(ckpt, precision)
    record = check_engine_compat(engine)  # built here, so this GPU and TensorRT accept it
    assert record["meta"]["extra"]["precision"] == precision and record["build"]["onnx"] == str(onnx_path)
    assert record["build"]["shapes"]["max"] == [2, 3, 64, 128]

    samples = dataset_samples("demo", tiny_demo, "val", 2, (64, 128), 19)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "FP16/INT8 Q/DQ is slow on a CPU": a reference here
        ort = load_runner(onnx_path, device="cpu")
    with load_runner(engine, device="cuda", cuda_lib=real_trt) as trt, ort:
        assert trt.format == "tensorrt" and trt.precision == precision
        # strongly typed: the engine's input dtype is the ONNX file's
        assert trt.input_dtype == ("float16" if precision == "fp16" else "float32")
        report = verify(trt, runner_reference(ort), trt.meta, samples, precision=precision, source="demo val")
        assert report.passed and report.agreement >= get_precision(precision).min_agreement, report.summary()
        if precision in REAL_MAX_DIFF:
            scale = float(np.abs(ort.predict_logits([s.image for s in samples])).max())
            assert report.max_abs_diff <= REAL_MAX_DIFF[precision] * scale, report.summary()
        # both images in one batch, at the profile's largest batch, agree as one by one
        images = [s.image for s in samples]
        both = trt.forward(trt.make_input(images))  # (2, 19, 64, 128)
        assert both.shape == (2, 19, 64, 128)
        agree = (both.argmax(1) == ort.forward(ort.make_input(images)).argmax(1)).mean()
        assert 100 * agree >= get_precision(precision).min_agreement
        times = trt.time_forward(trt.make_input(images[:1]), warmup=1, runs=3)
        assert times.shape == (3,) and (times > 0).all()
        with pytest.raises(RunnerError, match="does not accept input shape"):
            trt.forward(trt.make_input(images * 2))  # batch 4: outside the profile
