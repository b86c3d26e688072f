"""Prove an exported file faithful: its runner (ONNX Runtime, OpenVINO, TensorRT) against a reference (the PyTorch
float32 model, or the ONNX file an engine was built from) on the same images.

Measured: max and mean absolute logits difference, argmax pixel agreement, and with labelled images the mIoU of
both. The gates come from `segkd.export.formats.PRECISIONS`: FP32 agreement >= 99.9 %, FP16 >= 99.0 % and mIoU within 0.1 point, INT8 mIoU
within 1.0 point of PyTorch (plus an agreement floor of 90 % that also holds without labels).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from segkd.export.calib import Sample
from segkd.export.formats import get_precision
from segkd.infer.meta import ModelMeta, preprocess
from segkd.infer.runtime.base import Runner

__all__ = [
    "VerificationError",
    "VerifyReport",
    "apply_gates",
    "runner_reference",
    "torch_reference",
    "verify",
    "verify_onnx",
]


class VerificationError(RuntimeError):
    """An export whose outputs disagree with PyTorch beyond its precision's threshold."""

    def __init__(self, report: VerifyReport) -> None:
        super().__init__(
            f"{report.precision} export failed verification: {'; '.join(report.failures)} ({report.summary()}); "
            "nothing was written (pass --no-verify to write it anyway)"
        )
        self.report = report


@dataclass
class VerifyReport:
    """Outcome of one verification run (percentages in 0..100)."""

    precision: str
    source: str
    images: int
    size: list[int]
    agreement: float
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    miou_torch: float | None = None  # the reference's mIoU (PyTorch, or the file an engine was built from)
    miou_exported: float | None = None  # the exported file's own mIoU, whatever its format
    non_finite: int = 0  # NaN/inf values in the exported file's outputs or the reference's
    format: str = "onnx"  # the runner's format: onnx, openvino, tensorrt, ...
    reference: str = "PyTorch"  # what the file was compared with
    gate: str = ""
    passed: bool = True
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs."""
        parts = [f"{self.images} images {self.size[0]}x{self.size[1]} ({self.source})"]
        if self.max_abs_diff is not None:
            parts.append(f"max |diff| {self.max_abs_diff:.3g}, mean {self.mean_abs_diff:.3g}")
        parts.append(f"argmax agreement {self.agreement:.3f}%")
        if self.miou_torch is not None:
            parts.append(f"mIoU {self.reference} {self.miou_torch:.2f} / exported {self.miou_exported:.2f}")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        """Compact JSON without the per-failure text (for ``metadata_props``)."""
        d = {k: v for k, v in self.to_dict().items() if k != "failures"}
        return json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in d.items()})


def apply_gates(report: VerifyReport) -> VerifyReport:
    """Fill ``gate``, ``failures`` and ``passed`` from the precision's thresholds."""
    p = get_precision(report.precision)
    report.gate = f"argmax agreement >= {p.min_agreement}%; finite outputs"
    failures = []
    if report.non_finite:  # NaN argmaxes agree with NaN argmaxes: agreement alone would pass a broken model
        failures.append(
            f"{report.non_finite} output values are NaN or inf (in the ONNX file or in PyTorch itself: "
            "a diverged or corrupted model, or an FP16 overflow)"
        )
    if report.agreement < p.min_agreement:
        failures.append(f"argmax agreement {report.agreement:.3f}% < {p.min_agreement}%")
    if p.max_miou_drop is not None:
        if report.miou_torch is None or np.isnan(report.miou_torch):
            report.gate += f"; mIoU within {p.max_miou_drop} point not checked (no labelled images)"
        else:
            report.gate += f"; mIoU within {p.max_miou_drop} point of {report.reference}"
            drop = report.miou_torch - report.miou_exported
            if not drop <= p.max_miou_drop:  # also catches nan
                failures.append(
                    f"mIoU {report.miou_exported:.2f} is {drop:.2f} points below {report.reference}'s"
                )
    report.failures, report.passed = failures, not failures
    return report


Reference = Callable[[list[np.ndarray]], np.ndarray]


def torch_reference(model: nn.Module, meta: ModelMeta, name: str = "PyTorch") -> Reference:
    """The float32 PyTorch model as a reference: BGR images -> (N, K, H, W) logits, always normalised NCHW.
    ``name`` is how reports call it."""
    model = model.float().eval()

    def run(images: list[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(preprocess(images, meta))).numpy()

    run.name = name  # type: ignore[attr-defined]
    return run


def runner_reference(runner: Runner) -> Reference:
    """Another exported file as the reference (an engine against the ONNX file it was built from)."""

    def run(images: list[np.ndarray]) -> np.ndarray:
        return runner.predict_logits(images)

    run.name = runner.path.name  # type: ignore[attr-defined]
    return run


def verify(
    runner: Runner,
    reference: Reference,
    meta: ModelMeta,
    samples: Sequence[Sample],
    *,
    precision: str,
    source: str,
) -> VerifyReport:
    """Run ``samples`` through an exported file (any runner: ONNX Runtime, OpenVINO, a TensorRT engine) and the
    reference; return the report gated by ``precision``'s thresholds.

    The runner feeds the file as its metadata says (float32/float16 NCHW normalised, or uint8 NHWC raw) and
    returns logits or, for a graph ending in an argmax, labels. The reference always gives float32 logits of the
    same images, so every precision and format is compared against the same answer.
    """
    from segkd.infer.metrics import ConfusionMatrix

    assert samples, "verification needs at least one image"
    labelled = all(s.label is not None for s in samples)
    cms = {k: ConfusionMatrix(meta.num_classes, meta.ignore_index) for k in ("reference", "exported")}
    agree = pixels = n_values = non_finite = 0
    max_diff = sum_diff = 0.0
    logits_out = not runner.outputs_labels
    step = runner.fixed_batch or 1
    for i in range(0, len(samples), step):
        group = samples[i : i + step]
        images = [s.image for s in group]
        out = runner.forward(runner.make_input(images))  # (n, K, H, W) logits or (n, H, W) labels
        ref = reference(images)  # (n, K, H, W) float32
        ref_labels = ref.argmax(1)
        non_finite += int((~np.isfinite(ref)).sum())
        if logits_out:
            out = out.astype(np.float32)
            non_finite += int((~np.isfinite(out)).sum())
            diff = np.abs(out - ref)
            max_diff = max(max_diff, float(diff.max()))
            sum_diff += float(diff.sum(dtype=np.float64))
            n_values += diff.size
            labels = out.argmax(1)
        else:
            labels = out.astype(np.int64)
        agree += int((labels == ref_labels).sum())
        pixels += ref_labels.size
        if labelled:
            for s, r, o in zip(group, ref_labels, labels, strict=True):
                cms["reference"].update(r, s.label)
                cms["exported"].update(o, s.label)
    report = VerifyReport(
        precision=precision,
        source=source,
        images=len(samples),
        size=list(samples[0].image.shape[:2]),
        agreement=100.0 * agree / pixels,
        max_abs_diff=max_diff if logits_out else None,
        mean_abs_diff=sum_diff / n_values if logits_out else None,
        miou_torch=cms["reference"].compute()["mIoU"] if labelled else None,
        miou_exported=cms["exported"].compute()["mIoU"] if labelled else None,
        non_finite=non_finite,
        format=runner.format,
        reference=getattr(reference, "name", "PyTorch"),
    )
    return apply_gates(report)


def verify_onnx(
    path: str | os.PathLike[str],
    model: nn.Module,
    meta: ModelMeta,
    samples: Sequence[Sample],
    *,
    precision: str,
    source: str,
    reference_name: str = "PyTorch",
) -> VerifyReport:
    """:func:`verify` of an ONNX file on ONNX Runtime's CPU provider against the PyTorch model."""
    from segkd.infer.runtime.ort_runner import OrtRunner

    with (
        warnings.catch_warnings()
    ):  # "FP16/TensorRT-form INT8 is slow on CPU" is for deployments, not for checks
        warnings.simplefilter("ignore", RuntimeWarning)
        runner = OrtRunner(path, device="cpu")
    with runner:
        reference = torch_reference(model, meta, reference_name)
        return verify(runner, reference, meta, samples, precision=precision, source=source)
