"""Prove an exported ONNX file faithful: ONNX Runtime (CPU) against the PyTorch float32 model on the same images.

Measured: max and mean absolute logits difference, argmax pixel agreement, and with labelled images the mIoU of
both. The gates come from `segkd.export.formats.PRECISIONS`: FP32 agreement >= 99.9 %, FP16 >= 99.0 % and mIoU within 0.1 point, INT8 mIoU
within 1.0 point of PyTorch (plus an agreement floor of 90 % that also holds without labels).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from segkd.export.calib import Sample, batches, network_input
from segkd.export.formats import get_precision
from segkd.infer.meta import ModelMeta, preprocess
from segkd.infer.runtime.ort_runner import ORT_DTYPES
from segkd.infer.runtime.ort_session import cpu_session

__all__ = ["VerificationError", "VerifyReport", "apply_gates", "verify_onnx"]


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
    miou_torch: float | None = None
    miou_onnx: float | None = None
    non_finite: int = 0  # NaN/inf values in the ONNX outputs or the PyTorch reference
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
            parts.append(f"mIoU PyTorch {self.miou_torch:.2f} / exported {self.miou_onnx:.2f}")
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
            report.gate += f"; mIoU within {p.max_miou_drop} point of PyTorch"
            drop = report.miou_torch - report.miou_onnx
            if not drop <= p.max_miou_drop:  # also catches nan
                failures.append(f"mIoU {report.miou_onnx:.2f} is {drop:.2f} points below PyTorch's")
    report.failures, report.passed = failures, not failures
    return report


def verify_onnx(
    path: str | os.PathLike[str],
    model: nn.Module,
    meta: ModelMeta,
    samples: Sequence[Sample],
    *,
    precision: str,
    source: str,
) -> VerifyReport:
    """Run ``samples`` through the ONNX file and the PyTorch model; return the gated report.

    The graph's input dtype and layout say how to feed it (float32/float16 NCHW normalised, or uint8 NHWC raw);
    its output dtype says whether it returns logits or labels. PyTorch always runs in float32 on the normalised
    images, so every precision is compared against the same reference.
    """
    from segkd.infer.metrics import ConfusionMatrix

    assert samples, "verification needs at least one image"
    sess = cpu_session(path)
    inp = sess.get_inputs()[0]
    in_dtype = np.dtype(ORT_DTYPES[inp.type]).name
    batch = inp.shape[0] if isinstance(inp.shape[0], int) else 1
    labelled = all(s.label is not None for s in samples)
    cms = (
        {k: ConfusionMatrix(meta.num_classes, meta.ignore_index) for k in ("torch", "onnx")}
        if labelled
        else {}
    )
    agree = pixels = 0
    max_diff, sum_diff, n_values, logits_out, non_finite = 0.0, 0.0, 0, True, 0
    model = model.float().eval()
    seen = 0
    for group in batches(samples, batch):
        real = min(batch, len(samples) - seen)  # the padded tail of the last group is not counted
        seen += real
        images = [s.image for s in group]
        x = network_input(
            images, meta, fused=in_dtype == "uint8", dtype=in_dtype if in_dtype != "uint8" else "float32"
        )
        out = sess.run(None, {inp.name: x})[0][:real]
        with torch.no_grad():
            ref = model(torch.from_numpy(preprocess(images, meta))).numpy()[:real]  # (n, K, H, W)
        ref_labels = ref.argmax(1)
        logits_out = out.dtype.kind == "f"
        non_finite += int((~np.isfinite(ref)).sum()) + (int((~np.isfinite(out)).sum()) if logits_out else 0)
        if logits_out:
            diff = np.abs(out.astype(np.float32) - ref)
            max_diff = max(max_diff, float(diff.max()))
            sum_diff += float(diff.sum(dtype=np.float64))
            n_values += diff.size
            labels = out.argmax(1)
        else:
            labels = out.astype(np.int64)
        agree += int((labels == ref_labels).sum())
        pixels += ref_labels.size
        for s, r, o in zip(group[:real], ref_labels, labels):
            if labelled:
                cms["torch"].update(r, s.label)
                cms["onnx"].update(o, s.label)
    report = VerifyReport(
        precision=precision,
        source=source,
        images=len(samples),
        size=list(samples[0].image.shape[:2]),
        agreement=100.0 * agree / pixels,
        max_abs_diff=max_diff if logits_out else None,
        mean_abs_diff=sum_diff / n_values if logits_out else None,
        miou_torch=cms["torch"].compute()["mIoU"] if labelled else None,
        miou_onnx=cms["onnx"].compute()["mIoU"] if labelled else None,
        non_finite=non_finite,
    )
    return apply_gates(report)
