"""Run a serialized TensorRT engine (``.engine``/``.plan``) with its JSON sidecar.

TensorRT 10 and 11 share the API used here (``deserialize_cuda_engine``, named I/O tensors, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``). Device buffers come from cuda-python (default) or pycuda
(``cuda_lib="pycuda"``); all three libraries are imported only when an engine is loaded.

An engine only runs on the TensorRT version and GPU model that built it (unless built version/hardware
compatible), so the sidecar's record of both is checked (`segkd.infer.runtime.engine_record.check_engine_compat`)
before deserializing, and a mismatch asks for a rebuild. A version-compatible engine embeds its lean runtime:
the runner allows that host code (``runtime.engine_host_code_allowed``) only when the sidecar says the engine
was built so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segkd.infer.meta import ModelMeta, guess_layout
from segkd.infer.runtime.base import Runner, RunnerError
from segkd.infer.runtime.engine_record import (
    EngineCompatError,
    check_engine_compat,
    host_code_allowed,
    read_sidecar,
)
from segkd.infer.runtime.gpu import TensorRTUnavailable, device_info, import_cudart, import_tensorrt

__all__ = ["CUDA_LIBS", "TrtRunner", "read_engine_record"]


def _import_trt() -> Any:
    try:
        return import_tensorrt()
    except TensorRTUnavailable as e:
        raise RunnerError(
            "running a TensorRT engine needs TensorRT: pip install tensorrt-cu12 (or -cu13) from NVIDIA's index "
            "on a machine with an NVIDIA driver"
        ) from e


class _CudaPython:
    """Device memory, a stream and events through cuda-python's runtime bindings."""

    name = "cuda-python"

    def __init__(self) -> None:
        cudart = import_cudart()
        if cudart is None:
            raise RunnerError(
                "TensorRT buffers need cuda-python: pip install cuda-python (or pass --cuda-lib pycuda)"
            )
        self.rt = cudart
        self.stream = self._call(cudart.cudaStreamCreate())

    def _call(self, result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise RunnerError(f"CUDA error {self.rt.cudaGetErrorName(err)[1].decode()} (is a GPU visible?)")
        return rest[0] if len(rest) == 1 else rest

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def malloc(self, nbytes: int) -> int:
        return int(self._call(self.rt.cudaMalloc(nbytes)))

    def free(self, ptr: int) -> None:
        self._call(self.rt.cudaFree(ptr))

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self.rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, self.stream))

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self.rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, self.stream))

    def synchronize(self) -> None:
        self._call(self.rt.cudaStreamSynchronize(self.stream))

    def event(self) -> Any:
        return self._call(self.rt.cudaEventCreate())

    def record(self, event: Any) -> None:
        self._call(self.rt.cudaEventRecord(event, self.stream))

    def elapsed_ms(self, start: Any, end: Any) -> float:
        self._call(self.rt.cudaEventSynchronize(end))
        return float(self._call(self.rt.cudaEventElapsedTime(start, end)))

    def device(self) -> tuple[str, str]:
        """(name, compute capability "major.minor") of the current GPU."""
        found = device_info(self.rt, self._call(self.rt.cudaGetDevice()))
        if found is None:
            raise RunnerError("CUDA cannot describe the current GPU (is a GPU visible?)")
        return found

    def close(self) -> None:
        self._call(self.rt.cudaStreamDestroy(self.stream))


class _PyCuda:
    """The same operations through pycuda (which creates its own context via ``pycuda.autoinit``)."""

    name = "pycuda"

    def __init__(self) -> None:
        try:
            import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
            import pycuda.driver as drv
        except ImportError as e:
            raise RunnerError(
                "--cuda-lib pycuda needs pycuda (pip install pycuda; builds from source against the CUDA "
                "toolkit), or use the default cuda-python"
            ) from e
        self.drv = drv
        self.stream = drv.Stream()
        self._allocs: dict[int, Any] = {}

    @property
    def stream_handle(self) -> int:
        return int(self.stream.handle)

    def malloc(self, nbytes: int) -> int:
        alloc = self.drv.mem_alloc(nbytes)
        self._allocs[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        self._allocs.pop(ptr).free()

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        self.drv.memcpy_htod_async(ptr, host, self.stream)

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        self.drv.memcpy_dtoh_async(host, ptr, self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def event(self) -> Any:
        return self.drv.Event()

    def record(self, event: Any) -> None:
        event.record(self.stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(start.time_till(end))

    def device(self) -> tuple[str, str]:
        dev = self.drv.Context.get_device()
        major, minor = dev.compute_capability()
        return dev.name(), f"{major}.{minor}"

    def close(self) -> None:
        pass


# --cuda-lib choices
CUDA_LIBS = {"cuda-python": _CudaPython, "pycuda": _PyCuda}


def read_engine_record(engine: Path) -> tuple[ModelMeta, dict[str, Any]]:
    """(model metadata, sidecar record) of an engine, from the JSON that ``export/to_trt.py`` writes beside it."""
    try:
        record = read_sidecar(engine)
        return ModelMeta.from_dict(record["meta"]), record
    except (EngineCompatError, KeyError, TypeError, ValueError) as e:
        raise RunnerError(
            str(e) if isinstance(e, EngineCompatError) else f"{engine}: unreadable sidecar ({e})"
        ) from e


class TrtRunner(Runner):
    """A TensorRT engine; input/output live in device buffers that grow to the largest batch seen."""

    format = "tensorrt"

    @staticmethod
    def import_library() -> None:
        _import_trt()

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "cuda",
        provider: str | None = None,
        cuda_lib: str = "cuda-python",
        threads: int | None = None,
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise RunnerError(f"engine {path} does not exist")
        if device != "cuda":
            raise RunnerError(f"{path.name} is a TensorRT engine: it runs on a GPU only (pass --device cuda)")
        if cuda_lib not in CUDA_LIBS:
            raise RunnerError(f"unknown cuda_lib {cuda_lib!r}; choose one of {', '.join(CUDA_LIBS)}")
        meta, self.record = read_engine_record(path)
        trt = _import_trt()
        self.cuda = CUDA_LIBS[cuda_lib]()
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._check_compat(trt)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if host_code_allowed(self.record):  # a version-compatible plan runs its own embedded lean runtime
            self._runtime.engine_host_code_allowed = True
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RunnerError(f"TensorRT could not deserialize {path} (corrupted file, or built elsewhere)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._inputs = [n for n in names if is_input[n]]
        self._outputs = [n for n in names if not is_input[n]]
        if len(self._inputs) != 1 or not self._outputs:
            raise RunnerError(f"{path.name}: expected one input and an output, got inputs {self._inputs}")
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        shape = tuple(self.engine.get_tensor_shape(self._inputs[0]))
        layout, hw = guess_layout(shape, meta.extra)
        super().__init__(
            path,
            meta,
            precision=meta.extra.get("precision", "unknown"),
            provider=f"TensorRT {trt.__version__}",
            device="cuda",
            input_size=tuple(hw) if min(hw) > 0 else None,
            fixed_batch=shape[0] if shape[0] > 0 else None,
            input_dtype=self._dtypes[self._inputs[0]],
            input_layout=layout,
            outputs_labels=self._dtypes[self._outputs[0]].kind != "f",
        )

    def _check_compat(self, trt: Any) -> None:
        """Refuse an engine from another TensorRT version or GPU model (the message names the rebuild command)."""
        name, cc = self.cuda.device()
        try:
            check_engine_compat(self.record, str(trt.__version__), name, cc)
        except EngineCompatError as e:
            raise RunnerError(str(e)) from e

    def _bind(self, x: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Set the input shape, (re)allocate buffers, set addresses; returns (host output, device ptr) pairs."""
        name = self._inputs[0]
        if not self.context.set_input_shape(name, x.shape):
            shapes = self.record.get("build", {}).get("shapes") or {}
            built = f"min {shapes.get('min')}, max {shapes.get('max')}" if shapes else "see its sidecar"
            raise RunnerError(
                f"{self.path.name} does not accept input shape {tuple(x.shape)} (built for {built}); pass a size "
                "inside its profile, or rebuild it with `segkd trt ... --shapes MIN:OPT:MAX`"
            )
        outs = []
        for n in (name, *self._outputs):
            shape = x.shape if n == name else tuple(self.context.get_tensor_shape(n))
            nbytes = int(np.prod(shape)) * self._dtypes[n].itemsize
            ptr, size = self._buffers.get(n, (0, 0))
            if size < nbytes:
                if ptr:
                    self.cuda.free(ptr)
                ptr, size = self.cuda.malloc(nbytes), nbytes
                self._buffers[n] = (ptr, size)
            self.context.set_tensor_address(n, ptr)
            if n != name:
                outs.append((np.empty(shape, self._dtypes[n]), ptr))
        return outs

    def _run(self, x: np.ndarray) -> np.ndarray:
        outs = self._bind(x)
        self.cuda.to_device(self._buffers[self._inputs[0]][0], x)
        if not self.context.execute_async_v3(self.cuda.stream_handle):
            raise RunnerError(f"TensorRT failed to run {self.path.name}")
        host, ptr = outs[0]
        self.cuda.to_host(host, ptr)
        self.cuda.synchronize()
        return host

    def time_forward(self, x: np.ndarray, *, warmup: int, runs: int) -> np.ndarray:
        """Input copied to the GPU once; each timed run is ``execute_async_v3`` between two CUDA events."""
        x = self._check_batch(x)
        self._bind(x)
        self.cuda.to_device(self._buffers[self._inputs[0]][0], x)
        handle = self.cuda.stream_handle
        for _ in range(warmup):
            self.context.execute_async_v3(handle)
        self.cuda.synchronize()
        events = [(self.cuda.event(), self.cuda.event()) for _ in range(runs)]
        for start, end in events:
            self.cuda.record(start)
            self.context.execute_async_v3(handle)
            self.cuda.record(end)
        self.cuda.synchronize()
        return np.array([self.cuda.elapsed_ms(s, e) for s, e in events], np.float64)

    def device_memory(self) -> tuple[int, str] | None:
        engine = self.engine
        activations = getattr(engine, "device_memory_size_v2", None) or engine.device_memory_size
        weights = self.path.stat().st_size  # the deserialized engine holds about its file size in weights
        buffers = sum(size for _, size in self._buffers.values())
        return int(activations + weights + buffers), "engine activations + engine file + I/O buffers"

    def _source_onnx(self) -> Path | None:
        """The ONNX file the engine was built from: as recorded, else beside the engine with the same stem."""
        recorded = self.record.get("build", {}).get("onnx")
        for candidate in (Path(recorded) if recorded else None, self.path.with_suffix(".onnx")):
            if candidate is not None and candidate.is_file():
                return candidate
        return None

    def count_params(self) -> int | None:
        """Weights of the source ONNX when it is at hand, else the PyTorch count the exporter recorded."""
        source = self._source_onnx()
        if source is not None:
            from segkd.infer.macs import count_params

            return count_params(source)
        value = self.record.get("params") or self.meta.extra.get("params")
        return int(value) if value else None

    def count_macs(self, size: tuple[int, int]) -> int | None:
        """Counted on the source ONNX graph (an engine's fused layers do not tell), None without it."""
        source = self._source_onnx()
        if source is None:
            return None
        from segkd.infer.macs import count_macs

        return count_macs(source, size)

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self.cuda.free(ptr)
        self._buffers.clear()
        self.context = self.engine = None
        if getattr(self, "cuda", None) is not None:
            self.cuda.close()
