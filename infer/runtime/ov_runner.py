"""Run an OpenVINO IR (``.xml`` + ``.bin``) on the CPU with OpenVINO (imported only when such a file is loaded).

The model's :class:`~segkd.infer.meta.ModelMeta` travels inside the IR as ``rt_info`` under ``segkd`` (the same
key/value strings as an ONNX file's ``metadata_props``). ``provider`` selects OpenVINO's inference precision hint:
``"f32"`` computes in float32, ``"bf16"`` in bfloat16 where the CPU has it (AMX, AVX-512 BF16), None leaves
OpenVINO's default (bf16 on AMX CPUs, f32 elsewhere); the hint that ran is reported in :attr:`provider`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segkd.infer.meta import ModelMeta
from segkd.infer.runtime.base import Runner, RunnerError

__all__ = ["META_KEY", "WEIGHTS_KEY", "OvRunner", "PRECISION_HINTS", "read_ov_meta"]

META_KEY = "segkd"  # rt_info section holding the ModelMeta properties
WEIGHTS_KEY = "segkd_weights"  # rt_info section holding bin_sha256, the SHA-256 of the IR's own .bin
PRECISION_HINTS = ("f32", "bf16")
_OV_DTYPES = {"f32": np.float32, "f16": np.float16, "u8": np.uint8}


def _import_ov() -> Any:
    try:
        import openvino
    except ImportError as e:
        raise RunnerError("running an OpenVINO .xml file needs OpenVINO: pip install -e .[openvino]") from e
    return openvino


def _conv_macs(op: Any) -> int:
    w = list(
        op.input(1).get_shape()
    )  # Convolution (Cout, Cin, kh, kw); GroupConvolution (G, Cout/G, Cin/G, kh, kw)
    return int(np.prod(list(op.output(0).get_shape()))) * int(np.prod(w[-3:]))


def _matmul_macs(op: Any) -> int:
    a = list(op.input(0).get_shape())
    k = a[-2] if op.get_transpose_a() else a[-1]  # the contracted dimension
    return int(np.prod(list(op.output(0).get_shape()))) * int(k)


_MACS = {"Convolution": _conv_macs, "GroupConvolution": _conv_macs, "MatMul": _matmul_macs}


def read_ov_meta(model: Any, path: Path) -> ModelMeta:
    """The :class:`ModelMeta` stored in an ``openvino.Model``'s rt_info (RunnerError when absent or invalid)."""
    if not model.has_rt_info([META_KEY]):
        raise RunnerError(
            f"{path} holds no segkd metadata (rt_info '{META_KEY}'); export it with `python export/to_openvino.py`"
        )
    props = {str(k): v.astype(str) for k, v in model.get_rt_info()[META_KEY].items()}
    try:
        return ModelMeta.from_props(props)
    except ValueError as e:
        raise RunnerError(f"{path}: {e}") from e


def _recorded_bin_sha256(xml: Path) -> str | None:
    """The ``.bin`` SHA-256 the IR records (``rt_info/segkd_weights/bin_sha256``), read from the XML alone (the
    weights are not read); None for an IR exported before it was recorded."""
    import xml.etree.ElementTree as ET

    try:
        rt_info = ET.parse(xml).getroot().find("rt_info")
    except ET.ParseError as e:
        raise RunnerError(f"{xml} is not an OpenVINO IR (XML error: {e}); re-export it") from e
    node = rt_info.find(f"{WEIGHTS_KEY}/bin_sha256") if rt_info is not None else None
    return node.get("value") if node is not None else None


def _check_files(xml: Path) -> None:
    """Both files exist, and the ``.bin`` is the one exported with this ``.xml``."""
    from segkd.infer.fileio import sha256_file

    weights = xml.with_suffix(".bin")
    if xml.is_dir() or weights.is_dir():
        raise RunnerError(f"{xml if xml.is_dir() else weights} is a folder, not an OpenVINO IR file")
    if not xml.is_file():
        raise RunnerError(f"OpenVINO IR {xml} does not exist")
    if not weights.is_file():
        raise RunnerError(
            f"OpenVINO IR {xml} is here but its weights {weights.name} are missing: copy the .bin exported with it "
            "beside it (an IR is two files)"
        )
    recorded = _recorded_bin_sha256(xml)
    if recorded is not None and sha256_file(weights) != recorded:
        raise RunnerError(
            f"{weights} is not the weights file exported with {xml.name} (its SHA-256 differs from the one the IR "
            "records): it belongs to another model. Put the .bin exported with this .xml beside it, or re-export"
        )


class OvRunner(Runner):
    """An OpenVINO IR written by ``export/to_openvino.py``."""

    format = "openvino"

    @staticmethod
    def import_library() -> None:
        _import_ov()

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "cpu",
        provider: str | None = None,
        cuda_lib: str | None = None,
        threads: int | None = None,
    ) -> None:
        ov = _import_ov()
        path = Path(path)
        if device != "cpu":
            raise RunnerError(f"{path.name}: the OpenVINO runner runs on the CPU only; use --device cpu")
        if provider is not None and provider not in PRECISION_HINTS:
            raise RunnerError(
                f"OpenVINO precision hint {provider!r} is unknown; choose one of {', '.join(PRECISION_HINTS)}"
            )
        _check_files(path)
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own for broken IRs
            raise RunnerError(
                f"OpenVINO cannot read {path} ({type(e).__name__}: {str(e).splitlines()[0][:300]}); "
                "re-export it with `python export/to_openvino.py`"
            ) from e
        meta = read_ov_meta(model, path)
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if provider is not None:
            config["INFERENCE_PRECISION_HINT"] = provider
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._model = model  # the IR as read: count_macs reshapes a copy of it
        self.compiled = core.compile_model(model, "CPU", config)
        self._request = self.compiled.create_infer_request()
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # "f32" / "bf16"
        inp, out = self.compiled.input(0), self.compiled.output(0)
        shape = inp.get_partial_shape()
        dims = [d.get_length() if d.is_static else None for d in shape]
        in_type = inp.get_element_type().get_type_name()
        layout = meta.extra.get("input_layout", "NCHW")
        hw = dims[1:3] if layout == "NHWC" else dims[2:4]
        super().__init__(
            path,
            meta,
            precision=meta.extra.get("precision", "fp32"),
            provider=f"OpenVINO {ov.get_version().split('-')[0]} CPU {hint}",
            device="cpu",
            input_size=tuple(hw) if all(d is not None for d in hw) else None,
            fixed_batch=dims[0],
            input_dtype=_OV_DTYPES.get(in_type, np.float32),
            input_layout=layout,
            outputs_labels=out.get_element_type().get_type_name() not in ("f32", "f16"),
        )

    def _run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._request.infer({0: x})[self.compiled.output(0)])

    def count_params(self) -> int | None:
        """The exporter's count of the network's weights (``extra.params``); the IR's constants mix in shapes."""
        params = self.meta.extra.get("params")
        return int(params) if params else None

    def count_macs(self, size: tuple[int, int]) -> int | None:
        """MACs at ``size`` (batch 1) of the IR's convolutions and matrix products (the rule of :mod:`segkd.infer.macs`)."""
        model = self._model
        if self.input_size is not None and tuple(size) != self.input_size:
            raise ValueError(
                f"{self.path.name} is fixed to {self.input_size[0]}x{self.input_size[1]}: its MACs at "
                f"{size[0]}x{size[1]} are not defined (re-export it at that size, or with dynamic height/width)"
            )
        if self.input_size is None:  # a dynamic IR: fix the input shape on a copy to read every op's shape
            model = model.clone()
            model.reshape({0: [1, *size, 3] if self.input_layout == "NHWC" else [1, 3, *size]})
        return sum(
            _MACS[op.get_type_name()](op) for op in model.get_ordered_ops() if op.get_type_name() in _MACS
        )

    def close(self) -> None:
        self._request = None
        self.compiled = None
        self._model = None
