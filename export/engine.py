"""Checkpoint -> verified TensorRT engine: the ONNX of the precision, the strongly typed build, then the engine
itself run on the GPU against a reference (the ONNX file alone was all that used to be checked).

    result = export_engine("runs/x/best.pth", ExportOptions(precision="fp16"))

The reference is the PyTorch model when the engine is built from a checkpoint, and the ONNX file on ONNX
Runtime's CPU provider when it is built from an ONNX file. An engine that fails its precision's gate is deleted
with its sidecar.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from segkd.export.options import ExportOptions
from segkd.export.verify import VerificationError, VerifyReport, runner_reference, torch_reference, verify

__all__ = ["export_engine", "verify_engine"]


def verify_engine(
    engine: str | os.PathLike[str],
    source: str | os.PathLike[str],
    opts: ExportOptions,
    log: Callable[[str], None] = print,
) -> VerifyReport:
    """Run the engine on the verification images of ``opts`` against ``source`` (a checkpoint or an ONNX file).

    Raises:
        VerificationError: the engine disagrees beyond its precision's gate (the engine and sidecar are removed).
    """
    from segkd.export.pipeline import verification_samples
    from segkd.infer.runtime.trt_runner import TrtRunner

    engine, source = Path(engine), Path(source)
    with TrtRunner(engine) as runner:
        meta = runner.meta
        size = runner.input_size or tuple(int(v) for v in meta.input_size)
        samples, where = verification_samples(opts, meta, size, log)
        precision = meta.extra.get("precision", "fp32")
        if source.suffix.lower() == ".onnx":
            from segkd.infer.runtime.ort_runner import OrtRunner

            with (
                warnings.catch_warnings()
            ):  # the CPU reference of an FP16/INT8 graph is slow, and that is fine
                warnings.simplefilter("ignore", RuntimeWarning)
                reference_runner = OrtRunner(source, device="cpu")
            with reference_runner:
                report = verify(
                    runner,
                    runner_reference(reference_runner),
                    meta,
                    samples,
                    precision=precision,
                    source=where,
                )
        else:
            from segkd.distill.load import load_model

            model, _ = load_model(source)
            report = verify(
                runner, torch_reference(model, meta), meta, samples, precision=precision, source=where
            )
    if not report.passed:
        for path in (engine, Path(f"{engine}.json")):
            path.unlink(missing_ok=True)
        raise VerificationError(report)
    return report


def export_engine(
    checkpoint: str | os.PathLike[str], opts: ExportOptions, log: Callable[[str], None] = print
):  # noqa: ANN201
    """The TensorRT row's exporter: the verified ONNX (TensorRT form), an engine fixed at its size, verified.

    Returns an :class:`~segkd.export.pipeline.ExportResult` of the engine. ``opts.out`` names the engine.
    """
    import dataclasses

    from segkd.export.pipeline import ExportResult, export_checkpoint
    from segkd.export.trt_build import BuildOptions, build_engine

    t0 = time.perf_counter()
    onnx_opts = dataclasses.replace(opts, out=None, target="tensorrt")
    graph = export_checkpoint(checkpoint, onnx_opts, log=log)
    record = build_engine(graph.path, opts.out, BuildOptions(), log=log)
    engine = Path(record["engine"])
    report = verify_engine(engine, checkpoint, opts, log) if opts.verify else None
    return ExportResult(engine, graph.meta, report, graph.exporter, time.perf_counter() - t0)
