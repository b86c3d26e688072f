"""The export tables: formats (:data:`EXPORT_FORMATS`: one row per format, its command, options, exporter and
quantizer) and precisions (:data:`PRECISIONS`); they drive the commands' parsers, file names and checks.

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
    "EXPORT_FORMATS",
    "EXTRA_KEYS",
    "ExportFormat",
    "LABEL_DTYPES",
    "OUTPUTS",
    "PRECISIONS",
    "CALIB_METHODS",
    "INT8_TARGETS",
    "Precision",
    "default_onnx_path",
    "get_precision",
    "register_export_format",
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
    "float_layers": "int8 with --max-drop only: the nodes kept in float, comma-separated, most damaging first",
    "max_drop": "int8 with --max-drop only: the mIoU drop (points) the file was kept within",
    "quantized_by": "int8 of a quantization-aware trained checkpoint: qad (ranges from its run, no calibration)",
    "qad_source": "int8 of a QAD checkpoint: file name of the float checkpoint its run started from",
    "qad_source_sha256": "int8 of a QAD checkpoint: SHA-256 of that float checkpoint",
    "calibration": "int8 of a QAD checkpoint: how its ranges were calibrated (once, at the start of the run)",
    "fp32_ops": "fp16 of a transformer only: op types kept in float32, with counts (LayerNormalization:19,...)",
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


# ------------------------------------------------------------------------------------------------ formats
@dataclass(frozen=True)
class ExportFormat:
    """One row of the export table: what a format's command offers, how it exports and quantizes, what it needs.

    Attributes:
        name: the format (``onnx``), as in the runtime's format table (:mod:`segkd.infer.formats`).
        command: its ``segkd`` subcommand (``export``); ``script``: the same command as a file of the checkout.
        suffix: the file's suffix; ``companions``: suffixes of files written beside it (an IR's ``.bin``).
        exporter: ``"module:function"`` taking (checkpoint, :class:`~segkd.export.options.ExportOptions`, log)
            and returning an :class:`~segkd.export.pipeline.ExportResult` of a verified file.
        quantizer: what makes its INT8 file, in words.
        requires: modules that must import for it to run; a benchmark of every format skips it otherwise.
        install: how to install them.
        options: the :class:`~segkd.export.options.ExportOptions` fields it honours: its command offers these and
            refuses the others, naming the formats that take them.
        description: one line for ``--help``.
    """

    name: str
    command: str
    script: str
    suffix: str
    exporter: str
    quantizer: str
    requires: tuple[str, ...]
    install: str
    options: frozenset[str]
    description: str
    companions: tuple[str, ...] = ()

    def default_path(
        self, checkpoint: str | os.PathLike[str], precision: str, target: str = "tensorrt"
    ) -> Path:
        """``runs/x/best.pth`` -> ``runs/x/best<precision infix><suffix>`` (see :func:`default_onnx_path`)."""
        return default_onnx_path(checkpoint, precision, target).with_suffix(self.suffix)


# What every graph export honours: the graph's shape, output and exporter, calibration and verification images.
_GRAPH = frozenset({"height", "width", "batch", "dynamic", "opset", "exporter", "slim"})
_IMAGES = frozenset(
    {"calib_dataset", "calib_root", "calib_split", "calib_images", "calib_count", "verify", "verify_split",
     "verify_count"}
)  # fmt: skip
_ORT = frozenset(
    {
        "argmax",
        "label_dtype",
        "fuse_preprocess",
        "calib_method",
        "calib_percentile",
        "calib_group_mb",
        "force",
    }
)

EXPORT_FORMATS: dict[str, ExportFormat] = {}


def register_export_format(fmt: ExportFormat) -> ExportFormat:
    """Add a row to :data:`EXPORT_FORMATS` (a new format is one exporter and this row); returns it."""
    if fmt.name in EXPORT_FORMATS:
        raise ValueError(f"export format {fmt.name!r} is already registered")
    EXPORT_FORMATS[fmt.name] = fmt
    return fmt


for _fmt in (
    ExportFormat(
        "onnx", "export", "export/to_onnx.py", ".onnx", "segkd.export.pipeline:export_checkpoint",
        "ONNX Runtime static quantization (Q/DQ; --target tensorrt or cpu)", ("onnxruntime",),
        "pip install onnxruntime-gpu (or onnxruntime)", _GRAPH | _IMAGES | _ORT | {"target", "max_drop"},
        "verified ONNX (FP32 / FP16 / INT8 Q/DQ)",
    ),
    ExportFormat(
        "openvino", "openvino", "export/to_openvino.py", ".xml", "segkd.export.openvino_export:export_openvino",
        "NNCF post-training quantization (accuracy-aware past 1.0 mIoU lost)", ("openvino", "nncf"),
        "pip install -e .[openvino]", _GRAPH | _IMAGES, "verified OpenVINO IR (FP32 / FP16 / INT8 with NNCF)",
        companions=(".bin",),
    ),
    ExportFormat(
        "tensorrt", "trt", "export/to_trt.py", ".engine", "segkd.export.engine:export_engine",
        "the TensorRT-form INT8 ONNX file (s8 Q/DQ), built strongly typed", ("tensorrt",),
        "pip install -e .[trt] on a machine with an NVIDIA GPU", _GRAPH | _IMAGES | _ORT,
        "strongly typed TensorRT engine (+ JSON sidecar), verified on the GPU",
    ),
):  # fmt: skip
    register_export_format(_fmt)
