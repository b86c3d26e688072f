"""The one table of export precisions and output kinds: it drives the CLI choices, file names and checks.

| precision | file                 | graph          | input (unfused)   | output logits | verification gate                |
|-----------|----------------------|----------------|-------------------|---------------|----------------------------------|
| fp32      | ``<ckpt>.onnx``      | float32        | float32 NCHW      | float32       | argmax agreement >= 99.9 %       |
| fp16      | ``<ckpt>.fp16.onnx`` | float16        | float16 NCHW      | float16       | agreement >= 99.0 %, mIoU within |
|           |                      |                |                   |               | 0.1 point (labelled data)        |
| int8      | ``<ckpt>.int8.onnx`` | Q/DQ INT8      | float32 NCHW      | float32       | mIoU within 1.0 point (labelled  |
|           |                      | (float32 I/O)  |                   |               | data), agreement >= 90 % always  |

INT8 comes in one form per target (:data:`INT8_TARGETS`, ``--target``): ``tensorrt`` (``<ckpt>.int8.onnx``, s8
symmetric Q/DQ, what TensorRT builds from) and ``cpu`` (``<ckpt>.int8-cpu.onnx``, u8 activations and s8
per-channel weights, the form ONNX Runtime's x86 integer kernels are fast on). The target is recorded in
``extra.target``.

With ``--fuse-preprocess`` every precision takes raw BGR uint8 NHWC frames instead. The metadata keys written
into ``metadata_props`` (as ``extra.<key>``, beside `ModelMeta.to_props`) are listed in :data:`EXTRA_KEYS`.
Torch-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "EXTRA_KEYS",
    "LABEL_DTYPES",
    "OUTPUTS",
    "PRECISIONS",
    "CALIB_METHODS",
    "INT8_TARGETS",
    "Precision",
    "default_onnx_path",
    "get_precision",
]


@dataclass(frozen=True)
class Precision:
    """How one precision is exported, named and verified.

    Attributes:
        name: CLI value (``fp32``, ``fp16``, ``int8``).
        suffix: infix of the derived file name (``best.fp16.onnx``).
        dtype: float dtype the network and its normalised input run in (``float32`` or ``float16``).
        calibrated: quantized after export with calibration images.
        min_agreement: argmax pixel agreement (percent) with PyTorch below which verification fails (for int8 a
            floor against a broken calibration: its real gate is the mIoU).
        max_miou_drop: mIoU loss (points) against PyTorch on labelled data beyond which verification fails, or
            None when agreement alone decides.
        description: one line for ``--help``.
    """

    name: str
    suffix: str
    dtype: str
    calibrated: bool
    min_agreement: float
    max_miou_drop: float | None
    description: str


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", "", "float32", False, 99.9, None, "float32 graph"),
        # FP16 gate from the demo-trained students: 99.96-99.98 % agreement, mIoU within 0.01 (docs/quantization.md)
        Precision("fp16", ".fp16", "float16", False, 99.0, 0.1, "float16 graph, float16 input/output"),
        Precision(
            "int8", ".int8", "float32", True, 90.0, 1.0, "INT8 Q/DQ graph calibrated with ONNX Runtime"
        ),
    )
}

# --target choices (INT8 only) -> (file name infix, what the form is for). The tensorrt row is the default.
INT8_TARGETS: dict[str, tuple[str, str]] = {
    "tensorrt": (".int8", "s8 symmetric Q/DQ on Conv inputs: what TensorRT builds an INT8 engine from"),
    "cpu": (".int8-cpu", "u8 activations, s8 per-channel weights: ONNX Runtime on x86 CPUs"),
}

# What the graph returns: name -> metadata value of ``extra.output``.
OUTPUTS = {"logits": "(N, K, H, W) scores at input resolution", "labels": "(N, H, W) argmax label map"}

# --label-dtype choices -> largest class count they hold.
LABEL_DTYPES = {"uint8": 256, "int32": 2**31 - 1}

# --calib-method choices -> onnxruntime.quantization.CalibrationMethod member name.
CALIB_METHODS = {"entropy": "Entropy", "minmax": "MinMax", "percentile": "Percentile"}

# Keys this exporter adds to ModelMeta.extra (ONNX metadata_props ``extra.<key>``, engine sidecar ``meta.extra``).
EXTRA_KEYS = {
    "precision": "fp32 | fp16 | int8",
    "target": "tensorrt | cpu: the hardware the INT8 form is for (int8 only)",
    "output": "logits | labels",
    "label_dtype": "uint8 | int32 (labels output only)",
    "fused_preprocess": "true: input is raw BGR uint8 NHWC, normalised inside the graph; false: normalised NCHW",
    "input_layout": "NCHW | NHWC",
    "input_dtype": "float32 | float16 | uint8",
    "dynamic": "comma-separated dynamic input axes (batch,height,width) or empty",
    "source": "file name of the checkpoint",
    "source_sha256": "SHA-256 of the checkpoint file",
    "toolkit_version": "segkd version that exported",
    "exporter": "dynamo | torchscript",
    "opset": "ONNX opset of the default domain",
    "params": "number of weights of the PyTorch model",
    "train_input_size": "training crop HxW recorded in the checkpoint (input_size is the export size)",
    "verification": "JSON summary of the ONNX Runtime vs PyTorch check (absent with --no-verify)",
}


def get_precision(name: str) -> Precision:
    """Look a precision up, raising a ValueError that lists the valid ones."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


def default_onnx_path(source: str | os.PathLike[str], precision: str, target: str = "tensorrt") -> Path:
    """``runs/x/best.pth`` -> ``runs/x/best.onnx`` / ``best.fp16.onnx`` / ``best.int8.onnx`` / ``best.int8-cpu.onnx``.

    The INT8 name depends on ``target`` so that the two forms never overwrite each other.
    """
    source = Path(source)
    suffix = get_precision(precision).suffix
    if get_precision(precision).calibrated:
        if target not in INT8_TARGETS:
            raise ValueError(f"unknown INT8 target {target!r}; choose one of {', '.join(INT8_TARGETS)}")
        suffix = INT8_TARGETS[target][0]
    return source.with_name(source.stem + suffix + ".onnx")
