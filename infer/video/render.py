"""The picture of one frame: class colours over it (or alone, or beside it), a legend and the timing overlay."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from segkd.infer.meta import ModelMeta, colorize

__all__ = ["VIEWS", "draw_legend", "draw_stats", "legend_entries", "overlay", "render"]


def overlay(frame: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    """``round((1 - alpha) * frame + alpha * color)`` per pixel, both BGR uint8 (H, W, 3)."""
    return cv2.addWeighted(frame, 1.0 - alpha, color, alpha, 0.0)


def _view_overlay(frame: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    return overlay(frame, color, alpha)


def _view_mask(frame: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    return color


def _view_side(frame: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    return np.hstack([frame, color])  # (H, 2W, 3): input left, segmentation right


VIEWS: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "overlay": _view_overlay,
    "mask": _view_mask,
    "side": _view_side,
}


def render(
    view: str, frame: np.ndarray, labels: np.ndarray, meta: ModelMeta, alpha: float = 0.5
) -> np.ndarray:
    """The picture of one frame: ``overlay`` blends the palette colours over the frame by ``alpha``,
    ``mask`` shows the colours alone, ``side`` puts the frame and the colours side by side (twice as wide)."""
    assert labels.shape == frame.shape[:2], (labels.shape, frame.shape)
    if labels.dtype == np.uint8:  # one OpenCV table lookup: ~5x faster than colorize's clip + cast per pixel
        lut = _colour_table(tuple(map(tuple, meta.palette)), meta.ignore_index)  # (256, 1, 3) BGR
        color = cv2.LUT(cv2.merge([labels, labels, labels]), lut)  # (H, W, 3)
    else:
        color = colorize(labels, meta.palette, meta.ignore_index)
    return VIEWS[view](frame, color, alpha)


@functools.lru_cache(maxsize=8)
def _colour_table(palette: tuple[tuple[int, ...], ...], ignore_index: int) -> np.ndarray:
    """The BGR colour of every uint8 label, (256, 1, 3) as ``cv2.LUT`` takes it; built once per palette."""
    lut = colorize(np.arange(256, dtype=np.uint8), [list(c) for c in palette], ignore_index)  # (256, 3)
    return lut.reshape(256, 1, 3)


def legend_entries(labels: np.ndarray, num_classes: int, max_items: int | None = None) -> list[int]:
    """Class ids present in ``labels``, largest area first (ties by id); at most ``max_items``."""
    if labels.dtype == np.uint8:  # OpenCV's histogram: ~4x faster than bincount, which widens every label
        counts = cv2.calcHist([labels], [0], None, [256], [0, 256]).ravel().astype(np.int64)[:num_classes]
    else:
        counts = np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]
    present = np.flatnonzero(counts)
    order = present[np.lexsort((present, -counts[present]))]
    return order[:max_items].tolist() if max_items is not None else order.tolist()


def _font_scale(height: int) -> float:
    return float(np.clip(height / 720.0, 0.4, 1.0))


def _line_height(scale: float) -> int:
    return int(round(36 * scale))


def _shade(img: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> None:
    """Darken a box in place (halve it) so white text stays readable on any background."""
    roi = img[max(y0, 0) : y1, max(x0, 0) : x1]
    np.right_shift(roi, 1, out=roi)


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float) -> None:
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def draw_legend(img: np.ndarray, classes: Sequence[int], meta: ModelMeta) -> None:
    """Draw a swatch and name per class id in ``classes`` (largest area first) in the top-right corner of ``img``
    (in place), in class-id order.

    Classes that do not fit the height are summarised as ``+N more``.
    """
    if not classes:
        return
    h, w = img.shape[:2]
    scale = _font_scale(h)
    line = _line_height(scale)
    fit = max((h - 8) // line, 1)
    # The largest classes win the room; shown in class-id order, so that rows do not swap from frame to frame.
    shown = sorted(classes) if len(classes) <= fit else sorted(classes[: fit - 1])
    names = [meta.class_names[c] for c in shown] + (
        [f"+{len(classes) - len(shown)} more"] if len(shown) < len(classes) else []
    )
    text_w = max(cv2.getTextSize(n, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for n in names)
    sw = line - 6  # swatch side
    x0 = w - (text_w + sw + 16)
    _shade(img, x0, 0, w, len(names) * line + 6)
    for i, name in enumerate(names):
        y = 4 + i * line
        if i < len(shown):
            r, g, b = meta.palette[shown[i]]
            cv2.rectangle(
                img, (x0 + 4, y + 2), (x0 + 4 + sw, y + 2 + sw), (int(b), int(g), int(r)), cv2.FILLED
            )
            # a light frame: dark classes (construction 70,70,70; vehicle 0,0,142) stay visible on the dark box
            cv2.rectangle(img, (x0 + 4, y + 2), (x0 + 4 + sw, y + 2 + sw), (200, 200, 200), 1)
        _text(img, name, (x0 + sw + 10, y + sw), scale)


# Frames lower than this get the one-line stats panel.
COMPACT_BELOW = 480


def draw_stats(img: np.ndarray, fps: float, stage_ms: dict[str, float]) -> None:
    """Draw the frame rate and the per-stage milliseconds in the top-left corner of ``img`` (in place)."""
    scale = _font_scale(img.shape[0])
    if img.shape[0] < COMPACT_BELOW:  # one line on a small frame: six would cover a third of a 256-px video
        ms = stage_ms.get("inference")
        lines = [f"{fps:.1f} FPS" + (f", inference {ms:.1f} ms" if ms is not None else "")]
    else:
        lines = [f"{fps:5.1f} FPS"] + [f"{name:<11} {ms:5.1f} ms" for name, ms in stage_ms.items()]
    line = _line_height(scale)
    width = max(cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for s in lines)
    _shade(img, 0, 0, width + 12, len(lines) * line + 8)
    for i, s in enumerate(lines):
        _text(img, s, (6, (i + 1) * line), scale)
