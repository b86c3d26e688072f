"""Checkpoint -> verified ONNX file: option checks, export, quantization, verification, atomic write.

    result = export_checkpoint("runs/x/best.pth", ExportOptions(precision="int8", calib_images="frames/"))
    result.path, result.report.summary()

Nothing is written at the output path unless every step succeeded (verification included, unless disabled):
a failed or interrupted export leaves the previous file, or none, in place.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from segkd.distill.qat import QUANT_KEY, QuantizationError, read_spec
from segkd.export.calib import CalibrationReader, Sample, dataset_samples, folder_samples, synthetic_samples
from segkd.export.formats import (
    CALIB_METHODS,
    INT8_TARGETS,
    LABEL_DTYPES,
    PRECISIONS,
    default_onnx_path,
    get_precision,
)
from segkd.export.fp16 import to_mixed_fp16
from segkd.export.onnx_export import (
    DYNAMIC_CHOICES,
    EXPORTERS,
    ExportError,
    check_dynamic_sizes,
    read_metadata,
    resolve_exporter,
    size_multiple,
    torch_to_onnx,
    write_metadata,
)
from segkd.export.options import ExportOptions
from segkd.export.qad import qad_extra, quantize_qad, verification_reference
from segkd.export.quantize import calibrate_ranges, pre_process, quantize_int8
from segkd.export.verify import VerificationError, VerifyReport, verify_onnx
from segkd.infer import __version__
from segkd.infer.fileio import atomic_path, check_writable, sha256_file, work_dir
from segkd.infer.meta import ModelMeta

__all__ = [
    "ExportOptions",
    "ExportResult",
    "calibration_samples",
    "check_options",
    "export_checkpoint",
    "export_model",
    "refuse_other_options",
]

_MIN_SIDE = 32  # below this the stride-8 backbones leave a feature map of 1-2 pixels
_MAX_SIDE = 16384  # TensorRT's and most kernels' limit per spatial dimension; larger is a typo
_MAX_BATCH = 1024
# Said after a successful export of the precision: what the file is (and is not) for.
_NOTES = {
    "fp16": (
        "note: ONNX Runtime on CPUs runs FP16 slower than FP32 (x86 has no FP16 convolution kernels, so it casts "
        "around FP32 ones); this file is meant for GPUs (TensorRT, ONNX Runtime CUDA). For CPUs use fp32 or "
        "--precision int8 --target cpu"
    ),
}
# Relative logits tolerance of the dynamic-shape check, per float dtype of the graph.
_DYNAMIC_RTOL = {"float32": 1e-3, "float16": 2e-2}


@dataclass
class ExportResult:
    path: Path
    meta: ModelMeta
    report: VerifyReport | None
    exporter: str
    seconds: float


def check_options(opts: ExportOptions, meta: ModelMeta, model: nn.Module | None = None) -> None:
    """Raise one ExportError listing every problem with ``opts`` for this model (nothing is exported yet)."""
    problems = []

    def choice(value: str, valid: object, what: str) -> None:
        if value not in valid:  # type: ignore[operator]
            problems.append(f"{what} {value!r} is not one of {', '.join(valid)}")  # type: ignore[arg-type]

    choice(opts.precision, PRECISIONS, "precision")
    choice(opts.dynamic, DYNAMIC_CHOICES, "--dynamic")
    choice(opts.label_dtype, LABEL_DTYPES, "--label-dtype")
    choice(opts.calib_method, CALIB_METHODS, "--calib-method")
    choice(opts.target, INT8_TARGETS, "--target")
    choice(opts.exporter, EXPORTERS, "--exporter")
    supported = getattr(model, "export_precisions", None)
    if supported is not None and opts.precision not in supported:
        problems.append(
            f"{meta.arch.get('name')} does not support {opts.precision} export (it does {supported})"
        )
    if opts.argmax and opts.label_dtype in LABEL_DTYPES and meta.num_classes > LABEL_DTYPES[opts.label_dtype]:
        problems.append(f"{meta.num_classes} classes do not fit --label-dtype {opts.label_dtype}; use int32")
    h, w = opts.size(meta)
    if min(h, w) < _MIN_SIDE:
        problems.append(f"export size {h}x{w} is too small (height and width must be >= {_MIN_SIDE})")
    m = size_multiple(model) if model is not None else 1
    if h % m or w % m:
        problems.append(
            f"{meta.arch.get('name')} takes heights and widths that are multiples of {m}, not {h}x{w} "
            f"(e.g. --height {-(-h // m) * m} --width {-(-w // m) * m})"
        )
    if max(h, w) > _MAX_SIDE:
        problems.append(f"export size {h}x{w} is too large (height and width must be <= {_MAX_SIDE})")
    if opts.batch < 1 or opts.calib_count < 1 or opts.verify_count < 1:
        problems.append("--batch, --calib-count and --verify-count must be >= 1")
    if not opts.calib_group_mb > 0:
        problems.append(f"--calib-group-mb must be > 0, got {opts.calib_group_mb}")
    if opts.batch > _MAX_BATCH:
        problems.append(f"--batch {opts.batch} is too large (at most {_MAX_BATCH})")
    if opts.calib_dataset and opts.calib_images:
        problems.append("give --calib-dataset (with --calib-root) or --calib-images, not both")
    if bool(opts.calib_dataset) != bool(opts.calib_root):
        problems.append("--calib-dataset and --calib-root go together (dataset name and its root folder)")
    problems += _qad_problems(opts, meta)
    if (
        opts.precision == "int8"
        and not (opts.calib_dataset or opts.calib_images)
        and QUANT_KEY not in meta.extra
    ):
        problems.append(
            "int8 needs calibration images: --calib-dataset NAME --calib-root DIR, or --calib-images DIR "
            "(a few dozen frames like those the model will see)"
        )
    problems += _max_drop_problems(opts)
    if opts.exporter in EXPORTERS:
        exporter = resolve_exporter(opts.exporter)
        low, high = (18, 23) if exporter == "dynamo" else (13, 20)
        if not low <= opts.opset <= high:
            problems.append(
                f"--opset {opts.opset} is outside {low}..{high}, what the {exporter} exporter writes"
            )
    if problems:
        raise ExportError("cannot export:\n  - " + "\n  - ".join(problems))


def _qad_problems(opts: ExportOptions, meta: ModelMeta) -> list[str]:
    """A quantization-aware trained checkpoint exports INT8 in the form it was trained for, with its own ranges."""
    spec = read_spec(meta)
    if spec is None or opts.precision != "int8":
        return []
    problems = []
    if opts.target != spec.target:
        problems.append(
            f"this checkpoint was quantization-aware trained for --target {spec.target}, not {opts.target}; export "
            f"--target {spec.target}, or train the {opts.target} form with quantize.target={opts.target} from its "
            f"float checkpoint ({Path(spec.source).name})"
        )
    if opts.max_drop is not None:
        problems.append("--max-drop is for post-training INT8; a quantization-aware trained checkpoint keeps its "
                        "trained ranges: drop --max-drop")  # fmt: skip
    return problems


def _max_drop_problems(opts: ExportOptions) -> list[str]:
    """What is wrong with ``--max-drop`` in ``opts`` (it needs int8, labelled images and the verification)."""
    if opts.max_drop is None:
        return []
    gate, problems = get_precision("int8").max_miou_drop, []
    if opts.precision != "int8":
        problems.append(f"--max-drop applies to --precision int8 only (it keeps INT8 layers in float), not "
                        f"{opts.precision}; export int8 on its own with it")  # fmt: skip
    if not 0 <= opts.max_drop <= gate:
        problems.append(f"--max-drop {opts.max_drop:g} is outside 0..{gate:g} mIoU points (every int8 file must "
                        f"also pass the int8 gate of {gate:g})")  # fmt: skip
    if not opts.calib_dataset:
        problems.append("--max-drop measures mIoU, which needs labelled images: --calib-dataset NAME --calib-root "
                        "DIR (--calib-images has no labels)")  # fmt: skip
    if not opts.verify:
        problems.append("--max-drop measures mIoU on the verification images; drop --no-verify")
    return problems


def calibration_samples(opts: ExportOptions, meta: ModelMeta, size: tuple[int, int]) -> list[Sample]:
    """The INT8 calibration images the options name, at the export size (every INT8 path uses these)."""
    if opts.calib_dataset:
        return dataset_samples(
            opts.calib_dataset, opts.calib_root, opts.calib_split, opts.calib_count, size, meta.num_classes
        )
    return folder_samples(opts.calib_images, opts.calib_count, size)


def verification_samples(
    opts: ExportOptions, meta: ModelMeta, size: tuple[int, int], log: Callable[[str], None]
) -> tuple[list[Sample], str]:
    """Labelled images from the dataset's verification split, else the image folder, else synthetic images."""
    if opts.calib_dataset:
        from segkd.infer.datasets import DatasetError

        split = opts.verify_split
        try:
            got = dataset_samples(
                opts.calib_dataset, opts.calib_root, split, opts.verify_count, size, meta.num_classes
            )
        except DatasetError as e:
            log(
                f"verification split {split!r} unusable ({str(e).splitlines()[0]}); verifying on {opts.calib_split!r}"
            )
            split = opts.calib_split
            got = dataset_samples(
                opts.calib_dataset, opts.calib_root, split, opts.verify_count, size, meta.num_classes
            )
        return got, f"{opts.calib_dataset}:{split}"
    if opts.calib_images:
        return folder_samples(opts.calib_images, opts.verify_count, size), f"folder {opts.calib_images}"
    return synthetic_samples(opts.verify_count, size), "synthetic images"


def _export_meta(
    meta: ModelMeta,
    opts: ExportOptions,
    model: nn.Module,
    exporter: str,
    source: Path | None,
    report: VerifyReport | None,
) -> ModelMeta:
    """The checkpoint's metadata plus what this export is (see `segkd.export.formats.EXTRA_KEYS`)."""
    prec = get_precision(opts.precision)
    extra = {k: v for k, v in meta.extra.items() if k != QUANT_KEY}  # the run's ranges stay in the checkpoint
    extra.update(
        precision=prec.name,
        output="labels" if opts.argmax else "logits",
        fused_preprocess=str(opts.fuse_preprocess).lower(),
        input_layout="NHWC" if opts.fuse_preprocess else "NCHW",
        input_dtype="uint8" if opts.fuse_preprocess else prec.dtype,
        dynamic=",".join(DYNAMIC_CHOICES[opts.dynamic]),
        toolkit_version=__version__,
        exporter=exporter,
        opset=str(opts.opset),
        params=str(sum(p.numel() for p in model.parameters())),
        train_input_size="x".join(str(v) for v in meta.input_size),
    )
    if opts.argmax:
        extra["label_dtype"] = opts.label_dtype
    if prec.calibrated:
        extra["target"] = opts.target
    if source is not None:
        extra.update(source=source.name, source_sha256=sha256_file(source))
    if report is not None:
        extra["verification"] = report.to_json()
    return dataclasses.replace(meta, input_size=list(opts.size(meta)), extra=extra)


def _is_transformer(meta: ModelMeta) -> bool:
    """Registered with ``transformer=True``: its FP16 file is the mixed one (`segkd.export.fp16`)."""
    from segkd.distill.models import MODELS, model_traits

    name = meta.arch.get("name")
    return name in MODELS and model_traits(name).transformer


def _identity(precision: str, target: str | None, size: str, dynamic: str, output: str, fused: str) -> dict:
    """What makes two exports of one checkpoint different files (and what names them apart)."""
    return {"precision": precision, "INT8 target": target or "-", "input size": size, "dynamic axes": dynamic or "none",
            "output": output, "fused preprocessing": fused}  # fmt: skip


def _planned_identity(opts: ExportOptions, meta: ModelMeta) -> dict:
    prec = get_precision(opts.precision)
    return _identity(
        prec.name, opts.target if prec.calibrated else None, "x".join(map(str, opts.size(meta))),
        ",".join(DYNAMIC_CHOICES[opts.dynamic]), "labels" if opts.argmax else "logits",
        str(opts.fuse_preprocess).lower(),
    )  # fmt: skip


def refuse_other_options(out: Path, opts: ExportOptions, meta: ModelMeta) -> None:
    """Stop before an export replaces ``out`` when ``out`` was exported with other options (``--force`` lets it).

    Raises:
        ExportError: names each option that differs, and the two ways on (another ``--out``, or ``--force``).
    """
    if opts.force or not out.is_file():
        return
    try:
        old = read_metadata(out)
    except ValueError:
        return  # not one of ours (or damaged): check_writable already let it be replaced
    e = old.extra
    before = _identity(e.get("precision", "?"), e.get("target"), "x".join(map(str, old.input_size)),
                       e.get("dynamic", ""), e.get("output", "?"), e.get("fused_preprocess", "false"))  # fmt: skip
    wanted = _planned_identity(opts, meta)
    diff = [f"{k} {before[k]} -> {wanted[k]}" for k in wanted if before[k] != wanted[k]]
    if diff:
        raise ExportError(
            f"{out} already holds an export with other options ({'; '.join(diff)}); not replacing it. "
            f"Name this one with --out (e.g. {out.with_name(out.stem + '.' + _tag(wanted) + '.onnx')}) to keep "
            "both, or pass --force to replace it"
        )


def _tag(identity: dict) -> str:
    parts = [identity["input size"]]
    if identity["dynamic axes"] != "none":
        parts.append("dynamic")
    if identity["fused preprocessing"] == "true":
        parts.append("fused")
    if identity["output"] == "labels":
        parts.append("argmax")
    return "-".join(parts)


def _int8_within_drop(
    graph: Path, dst: Path, reader: CalibrationReader, opts: ExportOptions, meta: ModelMeta, model: nn.Module,
    exporter: str, checks: list[Sample], check_source: str, log: Callable[[str], None],
) -> ModelMeta:  # fmt: skip
    """INT8 of ``graph`` with its most damaging layers in float until within ``--max-drop`` mIoU of PyTorch on the
    verification images (`segkd.export.sensitivity`); returns ``meta`` recording the kept layers.

    Raises:
        ExportError: the drop cannot be met; the message has the numbers reached.
    """
    from segkd.export.sensitivity import RANK_IMAGES, quantize_within

    def verified(path: Path) -> VerifyReport:  # the verification the written file gets, run on a candidate
        staged = path.with_name(path.stem + "-staged.onnx")
        write_metadata(path, staged, _export_meta(meta, opts, model, exporter, None, None))
        return verify_onnx(staged, model, meta, checks, precision="int8", source=check_source)

    pre = dst.with_name("pre.onnx")
    pre_process(graph, pre, log)
    ranges = calibrate_ranges(pre, reader, method=opts.calib_method, target=opts.target,
                              percentile=opts.calib_percentile, group_mb=opts.calib_group_mb, log=log)  # fmt: skip
    reader.rewind()
    inputs = [feed for _, feed in zip(range(RANK_IMAGES), iter(reader.get_next, None), strict=False)]
    result = quantize_within(pre, dst, ranges, evaluate=lambda p: verified(p).miou_exported,
                             reference=verified(graph).miou_torch, max_drop=opts.max_drop, inputs=inputs,
                             target=opts.target, log=log)  # fmt: skip
    if not result.met:
        raise ExportError(
            f"cannot keep INT8 within --max-drop {opts.max_drop:g}: {result.reason}; best reached "
            f"{result.summary()}. Nothing was written. Allow a larger --max-drop, calibrate on more or other images "
            "(--calib-count, --calib-method), or fine-tune with quantization-aware distillation (a `quantize:` section "
            "in the training config, e.g. configs/demo/qad.yaml)"
        )
    kept = {"float_layers": ",".join(result.kept), "max_drop": f"{opts.max_drop:g}"}
    return dataclasses.replace(meta, extra={**meta.extra, **kept})


def export_model(
    model: nn.Module,
    meta: ModelMeta,
    out: str | os.PathLike[str],
    opts: ExportOptions,
    *,
    source: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Export an in-memory float32 model to a verified ONNX file at ``out``.

    Raises:
        ExportError: bad options, or the exporter failed.
        segkd.export.calib.CalibrationError / segkd.infer.datasets.DatasetError: unusable calibration images.
        VerificationError: the file disagrees with PyTorch beyond the precision's threshold.
    """
    t0 = time.perf_counter()
    model = copy.deepcopy(model).float().eval()  # the caller's model keeps its dtype, mode and device
    check_options(opts, meta, model)
    prec, size, out = get_precision(opts.precision), opts.size(meta), check_writable(out, "ONNX output")
    refuse_other_options(out, opts, meta)
    # Read the images first: a bad calibration folder fails before minutes of export.
    spec = read_spec(meta) if prec.calibrated else None  # a QAD checkpoint brings its ranges
    calib = calibration_samples(opts, meta, size) if prec.calibrated and spec is None else []
    checks, check_source = verification_samples(opts, meta, size, log) if opts.verify else ([], "")
    static_batch = 1 if "batch" in DYNAMIC_CHOICES[opts.dynamic] else opts.batch
    with work_dir("export") as tmp:
        graph = tmp / "graph.onnx"
        common = {"fuse_preprocess": opts.fuse_preprocess, "dynamic": opts.dynamic}
        mixed = prec.dtype == "float16" and _is_transformer(meta)  # FP16 that keeps LayerNorm/Softmax in fp32
        exporter = torch_to_onnx(
            model, meta, graph, size=size, batch=opts.batch, dtype="float32" if mixed else prec.dtype,
            argmax=opts.argmax, label_dtype=opts.label_dtype, opset=opts.opset, exporter=opts.exporter,
            slim=opts.slim, log=log, **common,
        )  # fmt: skip
        if mixed:
            kept = to_mixed_fp16(graph, graph)
            log(f"float16 graph with {kept} kept in float32 (LayerNorm, softmax, attention logits)")
            meta = dataclasses.replace(meta, extra={**meta.extra, "fp32_ops": kept})
        if opts.dynamic != "none":
            check_dynamic_sizes(graph, model, meta, size=size, rtol=_DYNAMIC_RTOL[prec.dtype], **common)
        if spec is not None:
            quantized = tmp / "int8.onnx"
            try:
                quantize_qad(graph, quantized, spec, model, size, log)
            except QuantizationError as e:
                raise ExportError(f"cannot export: {e}") from None
            meta = dataclasses.replace(meta, extra={**meta.extra, **qad_extra(spec)})
            graph = quantized
        elif prec.calibrated:
            log(
                f"calibrating INT8 for {opts.target} ({opts.calib_method}) on {len(calib)} images "
                f"{size[0]}x{size[1]}"
            )
            reader = CalibrationReader(calib, meta, "input", batch=static_batch, fused=opts.fuse_preprocess)
            quantized = tmp / "int8.onnx"
            if opts.max_drop is None:
                quantize_int8(graph, quantized, reader, method=opts.calib_method, target=opts.target,
                              percentile=opts.calib_percentile, group_mb=opts.calib_group_mb, log=log)  # fmt: skip
            else:
                meta = _int8_within_drop(graph, quantized, reader, opts, meta, model, exporter, checks,
                                         check_source, log)  # fmt: skip
            graph = quantized
        report = None
        if (
            opts.verify
        ):  # the runner reads the file's own metadata (input form, output), as a deployment would
            staged = tmp / "staged.onnx"
            write_metadata(graph, staged, _export_meta(meta, opts, model, exporter, None, None))
            reference, name = verification_reference(model, spec)  # for QAD: the model its run trained
            report = verify_onnx(staged, reference, meta, checks, precision=prec.name, source=check_source,
                                 reference_name=name)  # fmt: skip
            if not report.passed:
                raise VerificationError(report)
        export_meta = _export_meta(meta, opts, model, exporter, Path(source) if source else None, report)
        with atomic_path(out) as dst:
            write_metadata(graph, dst, export_meta)
    if prec.name in _NOTES:
        log(_NOTES[prec.name])
    return ExportResult(out, export_meta, report, exporter, time.perf_counter() - t0)


def export_checkpoint(
    checkpoint: str | os.PathLike[str], opts: ExportOptions, log: Callable[[str], None] = print
) -> ExportResult:
    """Load a self-describing checkpoint and export it (see `export_model`); the output path defaults to
    ``<checkpoint stem><precision suffix>.onnx`` beside it.

    Raises:
        segkd.distill.checkpoint.CheckpointError: missing file or not a checkpoint of this toolkit.
    """
    from segkd.distill.load import load_model

    out = opts.out or default_onnx_path(
        checkpoint,
        opts.precision if opts.precision in PRECISIONS else "fp32",
        opts.target if opts.target in INT8_TARGETS else "tensorrt",
    )
    check_writable(out, "ONNX output")  # before the minutes of loading, exporting and verifying
    model, meta = load_model(checkpoint)
    return export_model(model, meta, out, opts, source=checkpoint, log=log)
