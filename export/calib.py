"""Images for INT8 calibration and for verification: a dataset split, a folder of images, or synthetic scenes.

Every sample is resized to the export size, so the calibration ranges and the verification numbers are those of
the resolution the file will run at. `network_input` turns BGR frames into exactly what the exported graph takes
(normalised float NCHW, or raw uint8 NHWC when preprocessing is fused). Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from segkd.infer.datasets.base import IMAGE_SUFFIXES
from segkd.infer.meta import ModelMeta, preprocess

__all__ = [
    "CalibrationError",
    "CalibrationReader",
    "Sample",
    "batches",
    "dataset_samples",
    "folder_samples",
    "network_input",
    "synthetic_samples",
]


class CalibrationError(ValueError):
    """Calibration or verification images that cannot be used (missing folder, no images, wrong classes)."""


@dataclass
class Sample:
    """One image at the export size, with its label when the source has one."""

    image: np.ndarray  # (H, W, 3) BGR uint8
    label: np.ndarray | None  # (H, W) uint8 training ids, 255 = ignore
    name: str


def _spread(n: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(n)`` (all of them when count >= n)."""
    if count >= n:
        return list(range(n))
    return np.linspace(0, n - 1, count).round().astype(int).tolist()


def _resize(image: np.ndarray, label: np.ndarray | None, size: tuple[int, int]) -> tuple[np.ndarray, ...]:
    h, w = size
    if image.shape[:2] != (h, w):
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    if label is not None and label.shape != (h, w):
        label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
    return image, label


def dataset_samples(
    name: str,
    root: str | os.PathLike[str],
    split: str,
    count: int,
    size: tuple[int, int],
    num_classes: int | None = None,
) -> list[Sample]:
    """``count`` labelled samples spread over a dataset split, resized to ``size`` (H, W).

    Raises:
        CalibrationError: unknown dataset name, or its class count differs from the model's ``num_classes``.
        segkd.infer.datasets.DatasetError: missing root/split (raised by the reader, with the expected layout).
    """
    from segkd.infer.datasets import DATASETS, build_dataset

    try:
        DATASETS.get(name)
    except KeyError as e:  # the registry's message lists the valid names and the closest one
        raise CalibrationError(e.args[0]) from None
    ds = build_dataset(name, root, split)
    if num_classes is not None and ds.num_classes != num_classes:
        raise CalibrationError(
            f"dataset {name!r} has {ds.num_classes} classes but the model predicts {num_classes}; "
            "calibrate and verify on the dataset the model was trained for"
        )
    out = []
    for i in _spread(len(ds), count):
        image, label = ds[i]
        out.append(Sample(*_resize(image, label, size), name=str(ds.samples[i][0])))
    return out


def folder_samples(folder: str | os.PathLike[str], count: int, size: tuple[int, int]) -> list[Sample]:
    """``count`` unlabelled images spread over a folder (searched recursively), resized to ``size``.

    Raises:
        CalibrationError: the folder does not exist or holds no image files.
    """
    from segkd.infer.datasets.reading import read_image

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CalibrationError(f"calibration folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise CalibrationError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}; point --calib-images at a folder of "
            "frames like those the model will see"
        )
    return [
        Sample(*_resize(read_image(files[i]), None, size), name=str(files[i]))
        for i in _spread(len(files), count)
    ]


def synthetic_samples(count: int, size: tuple[int, int], seed: int = 0) -> list[Sample]:
    """Smooth random colour fields with a few sharp-edged blobs: a stand-in when no images are given."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for i in range(count):
        coarse = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
        image = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        for _ in range(4):
            cx, cy, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(2, max(3, h // 3)))
            cv2.circle(image, (cx, cy), r, tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
        out.append(Sample(image, None, name=f"synthetic-{i}"))
    return out


def network_input(
    images_bgr: Sequence[np.ndarray], meta: ModelMeta, *, fused: bool, dtype: str
) -> np.ndarray:
    """BGR uint8 frames (same size) -> the exported graph's input batch.

    Args:
        images_bgr: (H, W, 3) uint8 frames.
        meta: normalisation and channel order.
        fused: the graph normalises itself: raw (N, H, W, 3) uint8 BGR.
        dtype: float dtype of a normalised input (``float32`` or ``float16``).
    """
    if fused:
        return np.ascontiguousarray(np.stack(images_bgr))  # (N, H, W, 3) uint8
    return preprocess(list(images_bgr), meta).astype(dtype)  # (N, 3, H, W)


def batches(samples: Sequence[Sample], batch: int) -> Iterator[list[Sample]]:
    """Groups of exactly ``batch`` samples; the last group is filled up by repeating its last sample."""
    for i in range(0, len(samples), batch):
        group = list(samples[i : i + batch])
        yield group + [group[-1]] * (batch - len(group))


class CalibrationReader:
    """ONNX Runtime calibration data reader (``get_next() -> {input name: batch}`` until None)."""

    def __init__(
        self, samples: Sequence[Sample], meta: ModelMeta, input_name: str, *, batch: int, fused: bool
    ) -> None:
        # Batches are built when asked for: the float inputs of all images are never held at once.
        self._groups = list(batches(samples, batch))
        self._meta, self._fused = meta, fused
        self._name = input_name
        self._it = iter(self._groups)

    def get_next(self) -> dict[str, np.ndarray] | None:
        group = next(self._it, None)
        if group is None:
            return None
        x = network_input([s.image for s in group], self._meta, fused=self._fused, dtype="float32")
        return {self._name: x}

    def rewind(self) -> None:
        self._it = iter(self._groups)

    def __len__(self) -> int:
        return len(self._groups)
