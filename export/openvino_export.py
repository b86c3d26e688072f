"""Checkpoint -> verified OpenVINO IR (``.xml`` + ``.bin``) at FP32, FP16 or INT8 (NNCF post-training quantization).

    result = export_openvino("runs/x/best.pth", ExportOptions(precision="int8", calib_images="frames/"))

The network goes through the project's own float32 ONNX export (same graph, same fixes), then
``openvino.convert_model``. FP16 stores the weights in half precision (``compress_to_fp16``); INT8 is NNCF's
post-training quantization on the same calibration images as the ONNX INT8 path, with the PSP pooling matrices
(the only MatMuls of the CNNs) kept in float, as in the ONNX path, and NNCF's transformer scheme for SegFormer and
UPerNet-Swin; where labelled verification images show plain INT8 losing more than 1.0 mIoU, NNCF's accuracy-aware
quantization reverts the costliest layers to float. The IR carries the model's metadata in ``rt_info`` under
``segkd`` and is verified against PyTorch (OpenVINO computing in f32) with the same gates as ONNX before the
two files are renamed into place, ``.bin`` first, so a reader never pairs a new ``.xml`` with an old ``.bin``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from segkd.distill.models import MODELS, model_traits
from segkd.distill.qat import read_spec
from segkd.export.calib import Sample, network_input
from segkd.export.formats import get_precision
from segkd.export.onnx_export import ExportError
from segkd.export.pipeline import (
    ExportOptions,
    ExportResult,
    calibration_samples,
    export_model,
    verification_samples,
)
from segkd.export.verify import VerificationError, VerifyReport, torch_reference, verify
from segkd.infer.fileio import check_writable, sha256_file, work_dir_beside
from segkd.infer.meta import ModelMeta
from segkd.infer.runtime.ov_runner import META_KEY, WEIGHTS_KEY, OvRunner

__all__ = ["default_openvino_path", "export_openvino", "verify_openvino"]

# Op types NNCF must leave in float: the PSP pooling matrices are exact averages whose int8 rounding only loses.
_FLOAT_OP_TYPES = ["MatMul"]


def default_openvino_path(checkpoint: str | os.PathLike[str], precision: str) -> Path:
    """``best.pth`` -> ``best.xml`` (fp32), ``best.fp16.xml``, ``best.int8.xml``."""
    source = Path(checkpoint)
    return source.with_name(source.stem + get_precision(precision).suffix + ".xml")


def _import() -> tuple[Any, Any]:
    try:
        import openvino
    except ImportError as e:
        raise ExportError("OpenVINO export needs OpenVINO: pip install -e .[openvino]") from e
    return openvino, None


# mIoU points plain INT8 may lose on labelled verification images before NNCF's accuracy control takes over.
MAX_INT8_DROP = 1.0


def _is_transformer(meta: ModelMeta) -> bool:
    """Registered with ``transformer=True`` (attention, LayerNorm); an unregistered architecture is not."""
    name = meta.arch.get("name")
    return name in MODELS and model_traits(name).transformer


def _nncf_options(meta: ModelMeta) -> dict[str, Any]:
    """CNNs keep their MatMuls (the PSP pooling matrices) in float; transformers get NNCF's transformer scheme,
    which quantizes the Linear layers and keeps Softmax, LayerNorm and GELU in float."""
    import nncf

    if _is_transformer(meta):
        return {"model_type": nncf.ModelType.TRANSFORMER}
    return {"ignored_scope": nncf.IgnoredScope(types=_FLOAT_OP_TYPES, validate=False)}


def _miou_fn(meta: ModelMeta) -> Callable[[Any, Any], float]:
    """NNCF validation function: mIoU (0..1) of a compiled model over (input, label) items."""
    from segkd.infer.metrics import ConfusionMatrix

    def validate(compiled: Any, items: Any) -> float:
        cm = ConfusionMatrix(meta.num_classes, meta.ignore_index)
        for x, label in items:
            cm.update(np.asarray(compiled(x)[0]).argmax(1)[0], label)
        return float(cm.compute()["mIoU"]) / 100.0

    return validate


def _quantize(
    ov_model: Any,
    calib: Sequence[Sample],
    meta: ModelMeta,
    fused: bool,
    log: Callable,
    checks: Sequence[Sample] = (),
) -> Any:
    """NNCF post-training INT8 of an ``openvino.Model`` on ``calib`` (statistics accumulate image by image).

    With labelled ``checks``, the INT8 model's mIoU is compared with the float model's on them; when it loses
    more than :data:`MAX_INT8_DROP` points, NNCF's accuracy-aware quantization reverts the layers that cost the
    most back to float until the loss is within that bound (mixed precision).
    """
    try:
        import nncf
    except ImportError as e:
        raise ExportError("OpenVINO INT8 needs NNCF: pip install -e .[openvino]") from e

    def transform(sample: Sample) -> np.ndarray:
        return network_input([sample.image], meta, fused=fused, dtype="float32")  # (1, 3, H, W)

    log(f"calibrating OpenVINO INT8 (NNCF) on {len(calib)} images")
    options = _nncf_options(meta)
    quantized = nncf.quantize(
        ov_model, nncf.Dataset(list(calib), transform), subset_size=len(calib), **options
    )
    if not checks or any(s.label is None for s in checks):
        return quantized
    import openvino as ov

    core = ov.Core()
    items = [(transform(s), s.label) for s in checks]
    validate = _miou_fn(meta)
    base = validate(core.compile_model(ov_model, "CPU"), items)
    plain = validate(core.compile_model(quantized, "CPU"), items)
    drop = 100.0 * (base - plain)
    if drop <= MAX_INT8_DROP:
        log(
            f"OpenVINO INT8 mIoU {100 * plain:.2f} vs float {100 * base:.2f} on {len(checks)} labelled images"
        )
        return quantized
    log(
        f"OpenVINO INT8 loses {drop:.2f} mIoU (> {MAX_INT8_DROP}) on {len(checks)} labelled images: "
        "accuracy-aware quantization (NNCF) keeps the costliest layers in float"
    )
    return nncf.quantize_with_accuracy_control(
        ov_model,
        nncf.Dataset(list(calib), transform),
        nncf.Dataset(items),
        validate,
        max_drop=max(MAX_INT8_DROP, 0.0) / 100.0,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(calib),
        **options,
    )


def verify_openvino(
    path: Path,
    model: nn.Module,
    meta: ModelMeta,
    samples: Sequence[Sample],
    *,
    precision: str,
    source: str,
    reference_name: str = "PyTorch",
) -> VerifyReport:
    """:func:`~segkd.export.verify.verify` of an IR on OpenVINO (f32 inference) against the PyTorch model."""
    with OvRunner(path, provider="f32") as runner:
        reference = torch_reference(model, meta, reference_name)
        return verify(runner, reference, meta, samples, precision=precision, source=source)


def _record_weights(ov: Any, xml: Path, signed: Path) -> Path:
    """The IR saved again with its ``.bin``'s SHA-256 in ``rt_info``, so that a runner pairing it with another
    model's ``.bin`` refuses it instead of running (or crashing on) foreign weights. Saving an unchanged model
    writes the same ``.bin`` byte for byte; that is checked."""
    digest = sha256_file(xml.with_suffix(".bin"))
    model = ov.Core().read_model(str(xml))
    model.set_rt_info(digest, [WEIGHTS_KEY, "bin_sha256"])
    ov.save_model(model, str(signed), compress_to_fp16=False)
    if sha256_file(signed.with_suffix(".bin")) != digest:
        raise ExportError(f"OpenVINO rewrote the weights of {xml.name} when saving it again; export again")
    return signed


def _save(ov: Any, ov_model: Any, meta: ModelMeta, xml: Path, fp16: bool) -> None:
    for key, value in meta.to_props().items():
        ov_model.set_rt_info(value, [META_KEY, key])
    ov.save_model(ov_model, str(xml), compress_to_fp16=fp16)


# The FP32 ONNX graph every precision converts from, per checkpoint file and graph options, for this process:
# `--precision fp32 fp16 int8` exports the network from PyTorch once, not three times.
_GRAPHS: dict[tuple, tuple[Path, ExportResult]] = {}
_GRAPH_DIR: tempfile.TemporaryDirectory | None = None


def _fp32_graph(
    model: nn.Module,
    meta: ModelMeta,
    checkpoint: Any,
    opts: ExportOptions,
    tmp: Path,
    log: Callable[[str], None],
) -> ExportResult:
    """The FP32 graph of ``checkpoint`` for ``opts``, copied into ``tmp``: exported once per process."""
    global _GRAPH_DIR
    src = Path(checkpoint).resolve()
    stat = src.stat()
    key = (str(src), stat.st_mtime_ns, stat.st_size, tuple(sorted(dataclasses.asdict(opts).items())))
    if key not in _GRAPHS:
        if _GRAPH_DIR is None:
            _GRAPH_DIR = tempfile.TemporaryDirectory(prefix="segkd-openvino-graphs-")  # removed at exit
        cached = Path(_GRAPH_DIR.name) / f"{len(_GRAPHS)}.onnx"
        _GRAPHS[key] = (cached, export_model(model, meta, cached, opts, source=checkpoint, log=log))
    else:
        log("converting the FP32 graph already exported for the previous precision")
    cached, result = _GRAPHS[key]
    shutil.copyfile(cached, tmp / "graph.onnx")
    return dataclasses.replace(result, path=tmp / "graph.onnx")


def export_openvino(
    checkpoint: str | os.PathLike[str], opts: ExportOptions, log: Callable[[str], None] = print
) -> ExportResult:
    """Export a checkpoint to a verified OpenVINO IR; the path defaults to :func:`default_openvino_path`.

    Raises:
        ExportError: bad options, missing OpenVINO/NNCF, or the conversion failed.
        VerificationError: the IR disagrees with PyTorch beyond the precision's gate (nothing written).
    """
    from segkd.distill.load import load_model

    ov, _ = _import()
    t0 = time.perf_counter()
    if opts.fuse_preprocess or opts.argmax:
        raise ExportError(
            "OpenVINO export takes normalised NCHW input and gives logits: drop --fuse-preprocess/--argmax"
        )
    model, meta = load_model(checkpoint)
    model = model.float().eval()
    prec, size = get_precision(opts.precision), opts.size(meta)
    out = Path(opts.out) if opts.out else default_openvino_path(checkpoint, prec.name)
    if out.suffix != ".xml":
        raise ExportError(
            f"OpenVINO IR path {out} must end in .xml (its weights go to {out.with_suffix('.bin').name})"
        )
    qad = prec.calibrated and read_spec(meta) is not None  # quantization-aware trained: its own Q/DQ ranges
    calib = calibration_samples(opts, meta, size) if prec.calibrated and not qad else []
    checks, check_source = verification_samples(opts, meta, size, log) if opts.verify else ([], "")
    check_writable(out, "OpenVINO output")
    out.parent.mkdir(parents=True, exist_ok=True)
    with work_dir_beside(out, "openvino") as tmp:
        if qad:  # OpenVINO reads the Q/DQ graph of the run's ranges as its INT8 model (no NNCF calibration)
            onnx_opts = dataclasses.replace(opts, precision="int8", target=read_spec(meta).target, verify=False,
                                            out=None)  # fmt: skip
            graph = export_model(model, meta, Path(tmp) / "int8.onnx", onnx_opts, source=checkpoint, log=log)
        else:
            onnx_opts = dataclasses.replace(opts, precision="fp32", verify=False, out=None)
            graph = _fp32_graph(model, meta, checkpoint, onnx_opts, Path(tmp), log)
        source = graph.path
        if qad:  # s8 activations that cannot be negative as u8: OpenVINO mis-pads s8 ones (segkd.export.qad)
            from segkd.export.qad import unsigned_nonnegative

            source = Path(tmp) / "int8-openvino.onnx"
            unsigned_nonnegative(graph.path, source)
        ov_model = ov.convert_model(str(source))
        if prec.calibrated and not qad:
            ov_model = _quantize(ov_model, calib, meta, opts.fuse_preprocess, log, checks)
        extra = {
            **graph.meta.extra,
            "precision": prec.name,
            "format": "openvino",
            "openvino": ov.get_version(),
        }
        export_meta = dataclasses.replace(graph.meta, extra=extra)
        staged = Path(tmp) / out.name
        _save(ov, ov_model, export_meta, staged, prec.name == "fp16")
        report = None
        if opts.verify:
            from segkd.export.qad import verification_reference

            # a QAD IR computes what its run trained: the fake-quantized model
            reference, name = verification_reference(model, read_spec(meta) if qad else None)
            report = verify_openvino(staged, reference, meta, checks, precision=prec.name, source=check_source,
                                     reference_name=name)  # fmt: skip
            if not report.passed:
                raise VerificationError(report)
            staged_model = ov.Core().read_model(str(staged))
            export_meta.extra["verification"] = report.to_json()
            final = Path(tmp) / "final" / out.name
            _save(
                ov, staged_model, export_meta, final, False
            )  # weights are already in their stored precision
            staged = final
        staged = _record_weights(ov, staged, Path(tmp) / "signed" / out.name)
        os.replace(staged.with_suffix(".bin"), out.with_suffix(".bin"))
        os.replace(staged, out)
    return ExportResult(out, export_meta, report, graph.exporter, time.perf_counter() - t0)
