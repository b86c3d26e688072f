"""Evaluate a runner on a dataset: whole-image or sliding-window inference, optional flip and multi-scale.

Whole image: each image runs at its own size (or the runner's fixed size, or ``size``) and the logits are resized
back to it before the argmax. Sliding window (``mode="slide"``): ``crop`` windows every ``stride`` pixels,
averaged where they overlap, as in the usual Cityscapes evaluation. Flip and scales average the softmax
probabilities of every pass. All of it happens on numpy arrays outside the runner, so it is identical for
every model format.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from segkd.infer.metrics import ConfusionMatrix
from segkd.infer.runtime.base import Runner, resize_scores, scores_to_labels

__all__ = ["MODES", "average_windows", "count_batch", "evaluate", "predict_image", "slide_windows"]

MODES = ("whole", "slide")


def slide_windows(
    h: int, w: int, crop: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """Windows ``(y0, y1, x0, x1)`` of at most ``crop`` size every ``stride`` pixels covering an h x w image.

    The last window in each direction is moved back to end at the border, so that no window leaves the image;
    a dimension smaller than the crop gives one window of the image's size.
    """
    (ch, cw), (sh, sw) = crop, stride
    if min(ch, cw, sh, sw) <= 0:
        raise ValueError(f"crop {crop} and stride {stride} must be positive")
    if sh > ch or sw > cw:
        raise ValueError(f"stride {stride} larger than crop {crop} would leave pixels unseen")
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            y1, x1 = min(r * sh + ch, h), min(c * sw + cw, w)
            windows.append((max(y1 - ch, 0), y1, max(x1 - cw, 0), x1))
    return windows


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=0, keepdims=True))  # (K, H, W)
    return e / e.sum(axis=0, keepdims=True)


def _pad_value(runner: Runner) -> tuple[float, float, float]:
    """BGR colour that normalises to zero: padding looks like 'no signal' to the network."""
    mean = [round(v) for v in runner.meta.mean]
    return tuple(mean[::-1] if runner.meta.channel_order == "RGB" else mean)  # type: ignore[return-value]


def average_windows(
    windows: Sequence[tuple[int, int, int, int]],
    run: Callable[[list[tuple[int, int, int, int]]], Sequence[Any]],
    total: Any,
    count: Any,
    batch: int = 1,
) -> Any:
    """Average the scores ``run`` gives for ``windows`` where they overlap: ``total / count``.

    The one sliding-window accumulation, for numpy arrays (deployment) and torch tensors (training) alike:
    ``run(chunk)`` returns one score map per window of ``chunk`` (at most ``batch`` windows), each shaped like
    ``total[..., y0:y1, x0:x1]``; ``count`` broadcasts against ``total`` over the last two axes.
    """
    for i in range(0, len(windows), batch):
        chunk = list(windows[i : i + batch])
        for (y0, y1, x0, x1), scores in zip(chunk, run(chunk)):
            total[..., y0:y1, x0:x1] += scores
            count[..., y0:y1, x0:x1] += 1
    assert count.min() > 0, "windows must cover the image"
    return total / count


def _slide_logits(
    runner: Runner, image: np.ndarray, crop: tuple[int, int], stride: tuple[int, int], batch: int
) -> np.ndarray:
    """(K, H, W) logits of a BGR image from overlapping ``crop`` windows (padded to the crop where smaller)."""
    h, w = image.shape[:2]
    ph, pw = max(crop[0] - h, 0), max(crop[1] - w, 0)
    if ph or pw:  # every window has the crop's size, so fixed-size networks work too
        image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=_pad_value(runner))
    hp, wp = image.shape[:2]

    def run(chunk: list[tuple[int, int, int, int]]) -> list[np.ndarray]:
        logits = runner.predict_logits([image[y0:y1, x0:x1] for y0, y1, x0, x1 in chunk], size=crop)
        return [
            resize_scores(lg, (y1 - y0, x1 - x0), align_corners=runner.meta.align_corners)
            for (y0, y1, x0, x1), lg in zip(chunk, logits)
        ]

    total = np.zeros((runner.meta.num_classes, hp, wp), np.float32)  # (K, H, W)
    count = np.zeros((hp, wp), np.float32)  # (H, W)
    return average_windows(slide_windows(hp, wp, crop, stride), run, total, count, batch)[:, :h, :w]


def predict_image(
    runner: Runner,
    image: np.ndarray,
    *,
    mode: str = "whole",
    size: tuple[int, int] | None = None,
    crop: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    batch: int = 1,
) -> np.ndarray:
    """Label map (H, W) of one BGR image.

    Args:
        runner: any :class:`~segkd.infer.runtime.base.Runner`.
        image: BGR uint8 (H, W, 3).
        mode: ``"whole"`` or ``"slide"``.
        size: whole mode: network resolution (H, W) for every image (default: the image's own, or the
            runner's fixed size).
        crop, stride: slide mode: window size and step (H, W); stride defaults to 2/3 of the crop.
        flip: also run the horizontally flipped image.
        scales: image scale factors; probabilities of all scales (and flips) are averaged.
        batch: windows per network call in slide mode.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    plain = not flip and tuple(scales) == (1.0,)
    if mode == "whole" and plain:  # also works for networks that output labels
        return runner.predict([image], size=size)[0]
    if mode == "slide":
        if crop is None:
            raise ValueError("mode='slide' needs crop=(H, W)")
        stride = stride or (max(1, crop[0] * 2 // 3), max(1, crop[1] * 2 // 3))
    h, w = image.shape[:2]
    probs = np.zeros((runner.meta.num_classes, h, w), np.float32)  # (K, H, W)
    for s in scales:
        scaled = (
            image
            if s == 1.0
            else cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_LINEAR)
        )
        for flipped in (False, True) if flip else (False,):
            img = scaled[:, ::-1] if flipped else scaled
            img = np.ascontiguousarray(img)
            if mode == "slide":
                logits = _slide_logits(runner, img, crop, stride, batch)  # type: ignore[arg-type]
            else:
                net = None if size is None else (round(size[0] * s), round(size[1] * s))
                logits = runner.predict_logits([img], size=net)[0]
            if flipped:
                logits = logits[:, :, ::-1]
            logits = resize_scores(
                np.ascontiguousarray(logits), (h, w), align_corners=runner.meta.align_corners
            )
            probs += _softmax(logits)
    return scores_to_labels(probs, runner.meta.num_classes)


def count_batch(
    runner: Runner,
    images: list[np.ndarray],
    labels: list[np.ndarray],
    cm: ConfusionMatrix,
    **predict_kw: Any,
) -> None:
    """Add the predictions of ``runner`` for ``images`` against ``labels`` to ``cm``.

    The one evaluation step every evaluator shares (the trainer's validation, this module's :func:`evaluate`):
    plain whole-image inference runs the images as one batch, everything else image by image through
    :func:`predict_image`.
    """
    plain = (
        predict_kw.get("mode", "whole") == "whole"
        and not predict_kw.get("flip", False)
        and tuple(predict_kw.get("scales", (1.0,))) == (1.0,)
    )
    if plain:
        preds = runner.predict(images, size=predict_kw.get("size"))
    else:
        preds = [predict_image(runner, image, **predict_kw) for image in images]
    for pred, label in zip(preds, labels):
        cm.update(pred, label)


def evaluate(
    runner: Runner,
    dataset: Any,
    *,
    limit: int | None = None,
    progress: bool = True,
    **predict_kw: Any,
) -> dict[str, Any]:
    """mIoU / mAcc / aAcc (percent) of ``runner`` over ``dataset``.

    Args:
        runner: the model.
        dataset: ``segkd.infer.datasets`` dataset: ``len()``, ``ds[i] -> (bgr, label)``, ``num_classes``,
            ``ignore_index``, ``class_names``.
        limit: evaluate only the first ``limit`` images.
        progress: show a progress bar over the images.
        **predict_kw: :func:`predict_image` options (mode, size, crop, stride, flip, scales, batch).

    Returns:
        ``mIoU``, ``mAcc``, ``aAcc``, per-class ``IoU``, ``images``, ``image_sizes`` (their distinct (H, W)) and
        ``seconds`` (wall time, I/O included).
    """
    if runner.meta.num_classes != dataset.num_classes:
        raise ValueError(
            f"{runner.path.name} predicts {runner.meta.num_classes} classes {runner.meta.class_names[:3]}..., "
            f"the dataset has {dataset.num_classes} {list(dataset.class_names)[:3]}...; evaluate a model "
            "trained on this dataset"
        )
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise ValueError("the dataset split is empty: check --data-root and --split")
    cm = ConfusionMatrix(dataset.num_classes, ignore_index=dataset.ignore_index)
    t0 = time.perf_counter()
    sizes: set[tuple[int, int]] = set()
    for i in tqdm(range(n), desc=f"eval {runner.path.name}", unit="img", leave=False, disable=not progress):
        image, label = dataset[i]
        sizes.add(tuple(image.shape[:2]))
        count_batch(runner, [image], [label], cm, **predict_kw)
    metrics = cm.compute()
    return {
        "mIoU": metrics["mIoU"],
        "mAcc": metrics["mAcc"],
        "aAcc": metrics["aAcc"],
        "IoU": metrics["IoU"],
        "images": n,
        "image_sizes": sorted(sizes),  # the sizes the images came in (one, for most datasets)
        "seconds": time.perf_counter() - t0,
    }
