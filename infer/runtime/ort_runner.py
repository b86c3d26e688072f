"""Run an ONNX file with ONNX Runtime (imported only when such a file is loaded).

Provider choice: the one named, else on ``device="cuda"`` CUDA then CPU, else CPU. ONNX Runtime's TensorRT
provider is opt-in (``provider="TensorrtExecutionProvider"``): it builds an engine when the session starts, which
takes minutes, so it gets an engine and timing cache beside the model (``<model>.ort-trt-cache/``) and a
later start reuses them. ONNX Runtime falls back to CPU without raising when a GPU provider cannot start
(``onnxruntime-gpu`` on a machine without CUDA), so the provider reported is the one the session actually uses,
read back from ``get_providers()``.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from segkd.infer.meta import ModelMeta, guess_layout
from segkd.infer.runtime.base import Runner, RunnerError
from segkd.infer.runtime.gpu import gpu_used_bytes
from segkd.infer.runtime.ort_session import import_ort

__all__ = ["ORT_DTYPES", "OrtRunner", "select_providers"]

_GPU_ORDER = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
# ONNX Runtime's type names of the inputs a segmentation graph takes -> numpy dtype.
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}
_FLOAT_OUTPUTS = {"tensor(float)", "tensor(float16)", "tensor(double)"}


def select_providers(device: str, provider: str | None, available: list[str]) -> list[str]:
    """Provider list to ask ONNX Runtime for, best first, always ending with the CPU fallback.

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        provider: one provider to use (e.g. ``"CUDAExecutionProvider"``), or None to choose by ``device``.
        available: ``onnxruntime.get_available_providers()``.
    """
    if provider is not None:
        if provider not in available:
            raise RunnerError(
                f"ONNX Runtime provider {provider!r} is not in this build; available: {', '.join(available)}"
            )
        # a GPU provider keeps the ones after it as fallbacks (TensorRT leaves unsupported nodes to CUDA)
        after = _GPU_ORDER[_GPU_ORDER.index(provider) + 1 :] if provider in _GPU_ORDER else []
        return list(dict.fromkeys([provider, *(p for p in after if p in available), "CPUExecutionProvider"]))
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device != "cuda":
        raise RunnerError(f"device must be 'cpu' or 'cuda', not {device!r}")
    return [p for p in _GPU_ORDER[1:] if p in available]


def _with_options(providers: list[str], model: Path) -> list[Any]:
    """Providers as ONNX Runtime takes them; TensorRT gets its engine and timing caches beside the model."""
    cache = str(model.with_name(model.name + ".ort-trt-cache"))
    trt = {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": cache,
    }
    return [(p, trt) if p == "TensorrtExecutionProvider" else p for p in providers]


class OrtRunner(Runner):
    """An ``.onnx`` file whose ``metadata_props`` hold a :class:`~segkd.infer.meta.ModelMeta`."""

    format = "onnx"

    @staticmethod
    def import_library() -> None:
        import_ort()

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "cpu",
        provider: str | None = None,
        cuda_lib: str | None = None,
        threads: int | None = None,
    ) -> None:
        ort = import_ort()
        path = Path(path)
        if not path.is_file():
            raise RunnerError(f"ONNX file {path} does not exist")
        providers = select_providers(device, provider, ort.get_available_providers())
        self._gpu_used0 = gpu_used_bytes() if device == "cuda" else None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # a GPU provider that cannot start is reported below, once
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            sess = ort.InferenceSession(str(path), opts, providers=_with_options(providers, path))
        except Exception as e:  # onnxruntime raises its own exception types for corrupted/unsupported graphs
            raise RunnerError(
                f"ONNX Runtime cannot load {path} ({type(e).__name__}: {_first_line(e)}); it is damaged or not an "
                "ONNX file: re-export it with `segkd export CKPT`"
            ) from e
        actual = sess.get_providers()[0]
        if actual != providers[0]:
            warnings.warn(
                f"{path.name}: asked ONNX Runtime for {providers[0]}, it runs on {actual} (is CUDA/TensorRT "
                "installed and a GPU visible?)",
                RuntimeWarning,
                stacklevel=2,
            )
        try:
            meta = ModelMeta.from_props(dict(sess.get_modelmeta().custom_metadata_map))
        except ValueError as e:
            raise RunnerError(f"{path}: {e}") from e
        if actual == "CPUExecutionProvider" and _is_tensorrt_int8(meta):
            warnings.warn(
                f"{path.name} is INT8 in the TensorRT form (s8 symmetric Q/DQ): ONNX Runtime on CPUs runs it no "
                "faster than FP32, often slower; for CPUs export `segkd export CKPT --precision int8 "
                "--target cpu`",
                RuntimeWarning,
                stacklevel=2,
            )
        if actual == "CPUExecutionProvider" and meta.extra.get("precision") == "fp16":
            warnings.warn(
                f"{path.name} is FP16: ONNX Runtime on CPUs has no FP16 convolution and casts around FP32 ones, so it "
                "runs slower than the FP32 file there (1.06-1.40x measured); FP16 is meant for GPUs. For CPUs use "
                "the FP32 file or `segkd export CKPT --precision int8 --target cpu`",
                RuntimeWarning,
                stacklevel=2,
            )
        self.session = sess
        self._ort = ort
        inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
        if inp.type not in ORT_DTYPES:
            raise RunnerError(f"{path.name}: input type {inp.type} is not float32, float16 or uint8")
        self._in_name, self._out_name = inp.name, out.name
        layout, hw = guess_layout(inp.shape, meta.extra)
        super().__init__(
            path,
            meta,
            precision=meta.extra.get("precision") or _guess_precision(path, inp.type),
            provider=actual,
            device="cpu" if actual == "CPUExecutionProvider" else "cuda",
            input_size=tuple(hw) if all(isinstance(d, int) for d in hw) else None,
            fixed_batch=inp.shape[0] if isinstance(inp.shape[0], int) else None,
            input_dtype=ORT_DTYPES[inp.type],
            input_layout=layout,
            outputs_labels=out.type not in _FLOAT_OUTPUTS,
        )

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self._out_name], {self._in_name: x})[0]

    def time_forward(self, x: np.ndarray, *, warmup: int, runs: int) -> np.ndarray:
        """CPU: see :meth:`Runner.time_forward`. GPU: input and output bound to device memory (IO binding).

        ``run_with_iobinding`` returns after the provider has synchronised its stream, so ``perf_counter``
        around it times the GPU work without host<->device copies.
        """
        if self.device == "cpu":
            return super().time_forward(x, warmup=warmup, runs=runs)
        x = self._check_batch(x)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self._in_name, self._ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        binding.bind_output(self._out_name, "cuda", 0)
        for _ in range(warmup):
            self.session.run_with_iobinding(binding)
        times = np.empty(runs, np.float64)
        for i in range(runs):
            t0 = time.perf_counter()
            self.session.run_with_iobinding(binding)
            times[i] = (time.perf_counter() - t0) * 1e3
        return times

    def device_memory(self) -> tuple[int, str] | None:
        """GPU memory in use now minus before loading; ONNX Runtime's arena keeps its peak, so this is the peak."""
        if self.device == "cpu" or self._gpu_used0 is None:
            return None
        used = gpu_used_bytes()
        return (None if used is None else used - self._gpu_used0), "cudaMemGetInfo: used minus before loading"

    def count_params(self) -> int | None:
        from segkd.infer.macs import count_params

        return count_params(self.path)

    def count_macs(self, size: tuple[int, int]) -> int | None:
        from segkd.infer.macs import count_macs

        return count_macs(self.path, size)

    def close(self) -> None:
        self.session = None


def _first_line(e: Exception) -> str:
    return next((line for line in str(e).splitlines() if line.strip()), "no details")[:300]


def _is_tensorrt_int8(meta: ModelMeta) -> bool:
    """An INT8 file not made for CPUs (``extra.target`` other than cpu; files from before targets are s8 Q/DQ)."""
    if meta.extra.get("precision") != "int8":
        return False
    return meta.extra.get("target", "tensorrt") != "cpu"


def _guess_precision(path: Path, input_type: str) -> str:
    """Precision of a file without ``extra.precision``: Q/DQ nodes mean int8, a float16 input fp16."""
    import onnx

    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger"}:
        return "int8"
    return "fp16" if input_type == "tensor(float16)" else "fp32"
