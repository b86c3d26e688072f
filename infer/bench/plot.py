"""Latency against mIoU, one labelled point per model, drawn with OpenCV (already a dependency)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segkd.infer.fileio import atomic_path
from segkd.infer.formats import formats

__all__ = ["plot_latency_vs_miou", "plottable"]


def _nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    step = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(step)) if step > 0 else 1.0
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= step) if step > 0 else 1.0
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


_OTHER_COLOR = (90, 90, 90)  # BGR of a row whose format is in no table row


def plottable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with a finite mIoU and latency: the points of the plot."""
    return [r for r in rows if _finite(r.get("miou")) and _finite(r.get("latency_median_ms"))]


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _label_box(
    px: int,
    py: int,
    tw: int,
    th: int,
    frame: tuple[int, int, int, int],
    taken: list[tuple[int, int, int, int]],
) -> tuple[int, int, int, int]:
    """The first free (x0, y0, x1, y1) text box near point (px, py); the least crowded one if none is free."""
    candidates = []
    for dy in (th // 2, -4, th + 10, -th - 2, 2 * th + 16, -2 * th - 8):  # baseline offsets from the point
        for x0 in (px + 11, px - 11 - tw):
            candidates.append((x0, py + dy - th, x0 + tw, py + dy + 3))
    inside = [
        b
        for b in candidates
        if b[0] >= frame[0] and b[1] >= frame[1] and b[2] <= frame[2] and b[3] <= frame[3]
    ]
    for box in inside or candidates:
        if not any(_overlaps(box, t) for t in taken):
            return box
    return min(inside or candidates, key=lambda b: sum(_overlaps(b, t) for t in taken))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def plot_latency_vs_miou(rows: list[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Scatter of median batch-1 latency (x) against mIoU (y), one labelled point per model, drawn with OpenCV.

    OpenCV is already a dependency; a plotting library would be one more install for a single scatter plot.
    """
    pts = plottable(rows)
    colors = {f.name: f.color for f in formats()}  # BGR, from the format table
    width, height, left, right, top, bottom = 960, 640, 90, 170, 50, 70  # legend in the right margin
    img = np.full((height, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, "mIoU vs latency (batch 1, median)", (left, 32), font, 0.7, (0, 0, 0), 2, cv2.LINE_AA)
    xs = [r["latency_median_ms"] for r in pts] or [0.0, 1.0]
    ys = [r["miou"] for r in pts] or [0.0, 1.0]
    x0, x1 = 0.0, max(xs) * 1.15 or 1.0
    y_pad = max((max(ys) - min(ys)) * 0.15, 1.0)
    y0, y1 = max(min(ys) - y_pad, 0.0), min(max(ys) + y_pad, 100.0)

    def to_px(x: float, y: float) -> tuple[int, int]:
        px = left + (x - x0) / (x1 - x0) * (width - left - right)
        py = height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)
        return int(round(px)), int(round(py))

    cv2.rectangle(img, to_px(x0, y1), to_px(x1, y0), (0, 0, 0), 1)
    for tx in _nice_ticks(x0, x1):
        px, py = to_px(tx, y0)
        cv2.line(img, (px, py), (px, py + 6), (0, 0, 0), 1)
        cv2.putText(img, f"{tx:g}", (px - 14, py + 24), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for ty in _nice_ticks(y0, y1):
        px, py = to_px(x0, ty)
        cv2.line(img, (px - 6, py), (px, py), (0, 0, 0), 1)
        cv2.putText(img, f"{ty:g}", (px - 50, py + 5), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "latency (ms)", (width // 2 - 50, height - 20), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "mIoU (%)", (10, top - 8), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    points = [(r, *to_px(r["latency_median_ms"], r["miou"])) for r in pts]
    for r, px, py in points:
        cv2.circle(img, (px, py), 6, colors.get(r.get("format", ""), _OTHER_COLOR), -1, cv2.LINE_AA)
    # Every label goes where its box overlaps no point, no earlier label and nothing outside the axes: the
    # candidates are right/left of its point, level, above and below, then further out.
    dots = [(px - 8, py - 8, px + 8, py + 8) for _, px, py in points]
    frame = (left + 2, top + 2, width - right - 2, height - bottom - 2)
    placed: list[tuple[int, int, int, int]] = []
    for r, px, py in points:
        label = f"{r['model']} ({r.get('precision', '?')})"
        (tw, th), _ = cv2.getTextSize(label, font, 0.42, 1)
        box = _label_box(px, py, tw, th, frame, dots + placed)
        placed.append(box)
        cv2.putText(img, label, (box[0], box[3] - 2), font, 0.42, (40, 40, 40), 1, cv2.LINE_AA)
    present = [f for f in colors if any(r.get("format") == f for r in pts)]
    present += sorted({r.get("format", "?") for r in pts} - set(colors))  # formats outside the table
    for i, fmt in enumerate(present):  # only formats that have a point, outside the axes
        y = top + 20 + 22 * i
        cv2.circle(img, (width - right + 20, y - 4), 6, colors.get(fmt, _OTHER_COLOR), -1, cv2.LINE_AA)
        cv2.putText(img, fmt, (width - right + 34, y), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    path = Path(path)
    with atomic_path(path) as tmp:
        ok, png = cv2.imencode(".png", img)
        assert ok, "PNG encoding failed"
        tmp.write_bytes(png.tobytes())
    return path
