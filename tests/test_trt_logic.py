"""TensorRT engine building without a GPU: shapes, the builder's call sequence (stand-in `trt`), sidecar, version
and GPU checks. The real build runs only where `tensorrt` imports and a GPU is visible."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

from segkd.export.cli import _shape_export_args
from segkd.export.trt_build import (
    BuildOptions,
    EngineBuildError,
    EngineCompatError,
    ShapeProfile,
    build_engine,
    check_engine_compat,
    fit_profile,
    gpu_info,
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


def test_build_call_sequence_tensorrt10(tmp_path: Path) -> None:
    onnx_path = _onnx(tmp_path / "m.fp16.onnx")
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"OLD-CACHE")
    trt = _fake_trt()
    opts = BuildOptions(parse_shapes("1x3x256x512:1x3x512x1024:2x3x1024x2048"), 2.0, str(cache), True, False)
    record = build_engine(onnx_path, None, opts, trt=trt, gpu=GPU, log=lambda _: None)

    assert trt.calls == [
        ("Builder",),
        ("create_network", 1 << 1),  # STRONGLY_TYPED, nothing else
        ("parse_from_file", str(onnx_path)),
        ("set_memory_pool_limit", "WORKSPACE", 2 * 2**30),
        ("set_flag", "VERSION_COMPATIBLE"),  # the only builder flag: no FP16/INT8/TF32 precision flags
        ("set_shape", "input", (1, 3, 256, 512), (1, 3, 512, 1024), (2, 3, 1024, 2048)),
        ("add_optimization_profile",),
        ("create_timing_cache", b"OLD-CACHE"),
        ("set_timing_cache", False),
        ("build_serialized_network",),
    ]
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
def test_real_tensorrt_build(tmp_path: Path) -> None:
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("tensorrt is not installed (pip install -e .[trt] on a machine with an NVIDIA GPU)")
    if gpu_info() == (None, None):
        pytest.skip("tensorrt imports but no GPU is visible")
    import numpy as np
    from onnx import numpy_helper

    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2, "height", "width"])
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["logits"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = ModelMeta(
        arch={"name": "tiny", "num_classes": 2}, class_names=["a", "b"], palette=[[0, 0, 0], [1, 1, 1]]
    )
    for k, v in meta.to_props().items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(tmp_path / "tiny.onnx"))
    opts = BuildOptions(parse_shapes("1x3x32x32:1x3x64x64:2x3x64x64"), 1.0, str(tmp_path / "cache"))
    record = build_engine(tmp_path / "tiny.onnx", None, opts)
    assert (tmp_path / "tiny.engine").stat().st_size > 0 and (tmp_path / "cache").stat().st_size > 0
    assert check_engine_compat(tmp_path / "tiny.engine") == record
    assert ShapeProfile(*(tuple(record["build"]["shapes"][k]) for k in ("min", "opt", "max"))) == opts.shapes
