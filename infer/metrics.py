"""Segmentation metrics from a confusion matrix: mIoU, mAcc, aAcc and per-class IoU, in percent. Torch-free.

The matrix is a plain int64 ndarray, so a trainer running several processes sums it with one all-reduce (or
`ConfusionMatrix.merge`) and computes the metrics once from the total.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["ConfusionMatrix", "format_metrics"]


class ConfusionMatrix:
    """Counts of (label, prediction) pairs over the pixels whose label is not ``ignore_index``.

    ``matrix[i, j]`` is the number of pixels of class ``i`` predicted as class ``j`` (rows = ground truth).

    Example:
        >>> cm = ConfusionMatrix(19)
        >>> cm.update(pred, label)            # (H, W) or (N, H, W) integer arrays
        >>> cm.compute()["mIoU"]
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, pred: np.ndarray, label: np.ndarray) -> None:
        """Add a prediction/label pair (same shape, integer class ids; ``label == ignore_index`` is skipped).

        Raises:
            ValueError: shape mismatch, or a label or prediction outside 0..num_classes-1 (labels other than
                ``ignore_index``).
        """
        pred, label = np.asarray(pred), np.asarray(label)
        if pred.shape != label.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
        keep = label != self.ignore_index
        p, t = pred[keep].astype(np.int64), label[keep].astype(np.int64)  # (P,) pixels that count
        k = self.num_classes
        for what, v in (("label", t), ("prediction", p)):
            if v.size and (v.min() < 0 or v.max() >= k):
                bad = np.unique(v[(v < 0) | (v >= k)])[:5].tolist()
                raise ValueError(f"{what} values {bad} outside 0..{k - 1} (ignore_index={self.ignore_index})")
        self.matrix += np.bincount(t * k + p, minlength=k * k).reshape(k, k)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts to this matrix (e.g. from another process); returns self."""
        if other.matrix.shape != self.matrix.shape:
            raise ValueError(
                f"cannot merge a {other.num_classes}-class matrix into a {self.num_classes}-class one"
            )
        self.matrix += other.matrix
        return self

    def reset(self) -> None:
        self.matrix[:] = 0

    def compute(self) -> dict[str, float | list[float]]:
        """Metrics in percent.

        Returns:
            ``mIoU``: mean IoU over the classes present in the labels or the predictions (a class absent from
            both has IoU nan and is left out of the mean); ``mAcc``: mean per-class recall over the classes
            present in the labels; ``aAcc``: pixel accuracy; ``IoU`` and ``Acc``: per-class lists (nan where
            undefined). All nan when nothing was counted.
        """
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)  # (K,)
        gt, pr = m.sum(1), m.sum(0)  # (K,) pixels labelled / predicted as each class
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = 100 * tp / (gt + pr - tp)
            acc = 100 * tp / gt
            a_acc = 100 * tp.sum() / m.sum()
        return {
            "mIoU": _nanmean(iou),
            "mAcc": _nanmean(acc),
            "aAcc": float(a_acc),
            "IoU": iou.tolist(),
            "Acc": acc.tolist(),
        }


def _nanmean(values: np.ndarray) -> float:
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else float("nan")


def format_metrics(metrics: dict[str, float | list[float]], class_names: Sequence[str]) -> str:
    """Table of per-class IoU/Acc followed by the summary line, for logs."""
    width = max([len(n) for n in class_names] + [5])
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}"]
    for name, iou, acc in zip(class_names, metrics["IoU"], metrics["Acc"]):  # type: ignore[arg-type]
        lines.append(f"{name:<{width}}  {iou:>6.2f}  {acc:>6.2f}")
    lines.append(f"mIoU {metrics['mIoU']:.2f}  mAcc {metrics['mAcc']:.2f}  aAcc {metrics['aAcc']:.2f}")
    return "\n".join(lines)
