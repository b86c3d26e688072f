"""Run a training checkpoint (``.pth``) with PyTorch behind the deploy runtime's `Runner` contract.

The training side provides this runner and registers it in the runtime's format table through the
``segkd.formats`` entry point (pyproject.toml), so that ``load_runner("best.pth")``, the benchmark and the camera
demo take checkpoints while `infer` never imports `distill`. Torch is imported only when a checkpoint is loaded:
the row itself imports without it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from segkd.infer.formats import Format
from segkd.infer.runtime.base import Runner, RunnerError

__all__ = ["PYTORCH", "TorchRunner", "torch_macs_and_params"]


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise RunnerError(
            "running a .pth checkpoint needs PyTorch: pip install torch (or export to ONNX)"
        ) from e
    return torch


def torch_macs_and_params(model: Any, size: tuple[int, int], device: str = "cpu") -> tuple[int, int]:
    """(multiply-accumulates, parameters used) of one forward pass of ``model`` at batch 1 and ``size``.

    MACs are ``torch.utils.flop_counter.FlopCounterMode``'s FLOPs / 2 restricted to convolutions and matrix
    products (the ops the ONNX count in :mod:`segkd.infer.macs` covers). Parameters are those the forward pass reads
    (an auxiliary head that only training uses is left out), seen through a ``TorchFunctionMode``, no hooks.
    """
    torch = _import_torch()
    from torch.overrides import TorchFunctionMode
    from torch.utils.flop_counter import FlopCounterMode

    class _SeenTensors(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.ids: set[int] = set()

        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            for a in (*args, *(kwargs or {}).values()):
                if isinstance(a, torch.Tensor):
                    self.ids.add(id(a))
            return func(*args, **(kwargs or {}))

    x = torch.zeros(1, 3, *size, device=device)
    seen = _SeenTensors()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter, seen:
        model(x)
    flops = sum(
        v for op, v in counter.get_flop_counts()["Global"].items() if "conv" in str(op) or "mm" in str(op)
    )
    params = sum(p.numel() for p in model.parameters() if id(p) in seen.ids)
    return int(flops) // 2, int(params)


_PRECISIONS = (None, "fp32", "bf16")


class TorchRunner(Runner):
    """A ``.pth`` written by ``segkd.distill.checkpoint.save_checkpoint``, run on CPU or CUDA.

    ``provider`` picks the precision: None or ``"fp32"`` (default), ``"bf16"`` (autocast to bfloat16: matrix
    products and convolutions in bf16, the rest in FP32; on a CPU without native bf16 PyTorch emulates it).
    """

    format = "pytorch"

    @staticmethod
    def import_library() -> None:
        _import_torch()
        import segkd.distill.checkpoint  # noqa: F401
        import segkd.distill.models  # noqa: F401

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "cpu",
        provider: str | None = None,
        cuda_lib: str | None = None,
        threads: int | None = None,
    ) -> None:
        torch = _import_torch()
        from segkd.distill.checkpoint import CheckpointError
        from segkd.distill.load import load_model

        if provider not in _PRECISIONS:
            raise RunnerError(
                f"a .pth runs with precision {' or '.join(p for p in _PRECISIONS if p)}, not {provider!r}"
            )
        self._autocast = provider == "bf16"
        if device == "cuda" and not torch.cuda.is_available():
            raise RunnerError("--device cuda asked for, but this PyTorch sees no CUDA GPU")
        if threads:
            torch.set_num_threads(threads)
        if device == "cuda":  # peak memory counts the weights too, as the CPU RSS delta does
            torch.cuda.reset_peak_memory_stats()
            self._mem_base = torch.cuda.memory_allocated()
        try:
            model, meta = load_model(path, device)
        except (CheckpointError, KeyError, RuntimeError) as e:
            raise RunnerError(f"cannot load {path}: {e}") from e
        self._torch = torch
        self._device = torch.device(device)
        self.model = model
        self._counts: dict[tuple[int, int], tuple[int, int]] = {}
        super().__init__(
            path,
            meta,
            precision="bf16" if self._autocast else "fp32",
            provider=f"torch-{device}" + ("-autocast" if self._autocast else ""),
            device=device,
            input_size=None,
        )

    def _context(self) -> Any:
        """Inference mode, with bf16 autocast when asked for."""
        torch = self._torch
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self._autocast:
            stack.enter_context(torch.autocast(self._device.type, dtype=torch.bfloat16))
        return stack

    def _run(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with self._context():
            out = self.model(torch.from_numpy(x).to(self._device))
            if isinstance(out, dict):
                out = out["out"]
            return out.float().cpu().numpy()

    def time_forward(self, x: np.ndarray, *, warmup: int, runs: int) -> np.ndarray:
        """CPU: see :meth:`Runner.time_forward`. CUDA: input already on the GPU, CUDA events around the call."""
        if self.device != "cuda":
            return super().time_forward(x, warmup=warmup, runs=runs)
        torch = self._torch
        xt = torch.from_numpy(self._check_batch(x)).to(self._device)
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(runs)
        ]
        with self._context():
            for _ in range(warmup):
                self.model(xt)
            torch.cuda.synchronize()
            for start, end in events:
                start.record()
                self.model(xt)
                end.record()
            torch.cuda.synchronize()
        return np.array([s.elapsed_time(e) for s, e in events], np.float64)

    def device_memory(self) -> tuple[int, str] | None:
        if self.device != "cuda":
            return None
        return self._torch.cuda.max_memory_allocated() - self._mem_base, "torch.cuda.max_memory_allocated"

    def _count(self, size: tuple[int, int]) -> tuple[int, int]:
        if size not in self._counts:
            self._counts[size] = torch_macs_and_params(self.model, size, str(self._device))
        return self._counts[size]

    def count_macs(self, size: tuple[int, int]) -> int | None:
        return self._count(tuple(size))[0]

    def count_params(self) -> int | None:
        # the parameters a forward pass reads do not depend on its size: reuse any count, else a small one
        return self._count(next(iter(self._counts), (64, 64)))[1]

    def close(self) -> None:
        self.model = None


# The row of the runtime's format table (see `segkd.infer.formats`), found through the `segkd.formats` entry point.
PYTORCH = Format(
    name="pytorch",
    suffixes=(".pth", ".pt"),
    runner=TorchRunner,
    exporter="python distill/train.py CONFIG",
    gpu_timing="device tensors, CUDA events",
    precisions=("fp32", "bf16"),
    color=(180, 119, 31),
    description="training checkpoint, run with PyTorch",
)
