"""The dataset contract every reader follows, and the registry that names the readers.

A reader finds its (image, label) file pairs from a root folder and a split, and maps the values stored in the
label files ("raw" values: Cityscapes labelIds, ADE20K 0..150, ...) to training ids 0..K-1 with one 256-entry
lookup table; 255 means ignore. Torch-free: the deploy runtime and `check` use it without torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from segkd.infer.datasets.reading import read_image, read_label
from segkd.infer.registry import Registry

__all__ = [
    "DATASETS",
    "IMAGE_SUFFIXES",
    "DatasetError",
    "LabelError",
    "SegDataset",
    "bit_palette",
    "build_dataset",
    "pair_by_stem",
    "train_id_table",
    "value_ranges",
]

DATASETS: Registry[type[SegDataset]] = Registry("dataset")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

Transform = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class DatasetError(ValueError):
    """A dataset root, split or file layout that does not match what the reader expects."""


class LabelError(ValueError):
    """A label file whose content cannot be turned into class ids."""


def bit_palette(n: int) -> list[list[int]]:
    """The Pascal VOC colour map: spread the bits of each index over R, G and B, high bits first.

    Gives distinct, well-separated colours for any ``n <= 256``; VOC uses it, and so do the readers here that
    have no palette of their own.
    """
    palette = []
    for i in range(n):
        rgb, c = [0, 0, 0], i
        for shift in range(7, -1, -1):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << shift
            c >>= 3
        palette.append(rgb)
    return palette


def value_ranges(values: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 255]`` -> ``"0..2, 5, 255"`` for messages."""
    parts: list[str] = []
    vals = sorted(set(int(v) for v in values))
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{vals[i]}..{vals[j]}")
        else:
            parts += [str(v) for v in vals[i : j + 1]]
        i = j + 1
    return ", ".join(parts)


def pair_by_stem(
    image_dir: Path, label_dir: Path, label_name: Callable[[str], str], label_glob: str = "*.png"
) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """Pair the images under ``image_dir`` with labels under ``label_dir`` by relative path.

    Args:
        image_dir, label_dir: folders searched recursively.
        label_name: maps an image's relative path without suffix to its label's relative path.
        label_glob: pattern of the files in ``label_dir`` that are labels (to report labels without image).

    Returns:
        (samples, unpaired): sorted (image, label) pairs and the files that have no partner, with a reason.
    """
    images = sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    labels = {p for p in label_dir.rglob(label_glob) if p.is_file()} if label_dir.is_dir() else set()
    samples, unpaired = [], []
    for img in images:
        stem = img.relative_to(image_dir).with_suffix("").as_posix()
        label = label_dir / label_name(stem)
        if label in labels:
            samples.append((img, label))
            labels.discard(label)
        else:
            unpaired.append((img, f"image without label (expected {label})"))
    unpaired += [(lab, "label without image") for lab in sorted(labels)]
    return samples, unpaired


def train_id_table(num_classes: int) -> np.ndarray:
    """``raw_to_train`` for files that already hold training ids: identity, every value >= ``num_classes`` ignored."""
    values = np.arange(256)
    return np.where(values < num_classes, values, 255).astype(np.uint8)


class SegDataset:
    """Base class of the readers: ``ds[i] -> (BGR uint8 (H, W, 3), label uint8 (H, W))``, 255 = ignore.

    Subclasses set ``name``, ``layout`` (the expected folders, quoted in errors), ``class_names``, ``palette``
    and ``raw_to_train`` (a 256-entry table from stored label values to training ids; 255 for values that are
    ignored or invalid), list the values their files may hold in ``valid_raw``, and implement ``_scan``.

    Attributes:
        samples: sorted (image_path, label_path) pairs.
        unpaired: files without a partner and why (non-empty only with ``strict=False``).
    """

    name: ClassVar[str] = ""
    layout: ClassVar[str] = ""
    class_names: list[str]
    palette: list[list[int]]
    raw_to_train: np.ndarray
    valid_raw: np.ndarray
    ignore_index: int = 255

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        *,
        strict: bool = True,
        transform: Transform | None = None,
    ) -> None:
        """Find the samples of ``split`` under ``root``.

        Args:
            root: dataset root folder (see the reader's ``layout``).
            split: split name, e.g. ``"train"`` or ``"val"``.
            strict: raise when some files have no partner (image without label or label without image);
                with ``strict=False`` they are left out and listed in ``unpaired``.
            transform: optional ``(image, label) -> (image, label)`` applied by ``__getitem__``.

        Raises:
            DatasetError: missing root or split folder, no samples, or (strict) unpaired files.
        """
        self.root = Path(root).expanduser()
        self.split = split
        self.transform = transform
        if not self.root.is_dir():
            raise DatasetError(f"{self.name} root {self.root} is not a folder; expected {self.layout}")
        samples, unpaired = self._scan()
        if unpaired and (strict or not samples):
            listing = "\n  ".join(f"{p}: {why}" for p, why in unpaired[:20])
            more = f"\n  ... and {len(unpaired) - 20} more" if len(unpaired) > 20 else ""
            raise DatasetError(
                f"{len(unpaired)} unpaired file(s) and {len(samples)} complete sample(s) in {self.name} split "
                f"{split!r}:\n  {listing}{more}\nFix or remove them (segkd check lists every "
                "problem)."
            )
        if not samples:
            raise DatasetError(
                f"no {self.name} samples for split {split!r} under {self.root}; expected {self.layout}"
            )
        self.samples: list[tuple[Path, Path]] = samples
        self.unpaired: list[tuple[Path, str]] = unpaired
        assert self.raw_to_train.shape == (256,) and self.valid_raw.shape == (256,)
        assert len(self.palette) == len(self.class_names)

    def _scan(self) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
        """Return (samples, unpaired) of ``self.split`` under ``self.root``; DatasetError for a bad layout."""
        raise NotImplementedError

    def _require_dir(self, path: Path, what: str) -> Path:
        if not path.is_dir():
            raise DatasetError(
                f"{self.name} {what} folder {path} not found for split {self.split!r}; expected {self.layout}"
            )
        return path

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.read_image(index), self.read_label(index)
        if image.shape[:2] != label.shape:
            raise LabelError(
                f"image {self.samples[index][0]} is {image.shape[:2]} but its label "
                f"{self.samples[index][1]} is {label.shape}"
            )
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image, label

    def read_image(self, index: int) -> np.ndarray:
        """BGR uint8 (H, W, 3) image of sample ``index``."""
        return read_image(self.samples[index][0])

    def read_raw_label(self, index: int) -> np.ndarray:
        """(H, W) uint8 values as stored in the label file of sample ``index`` (before ``raw_to_train``)."""
        path = self.samples[index][1]
        return self._to_raw(read_label(path), path)

    def read_label(self, index: int) -> np.ndarray:
        """(H, W) uint8 training ids of sample ``index``; 255 = ignore (also values outside the classes)."""
        return self.raw_to_train[self.read_raw_label(index)]

    def _to_raw(self, label: np.ndarray, path: Path) -> np.ndarray:
        """Turn a decoded label file into (H, W) uint8 raw values; readers of colour masks override this."""
        if label.ndim != 2:
            raise LabelError(
                f"label {path} is a {label.shape[2]}-channel colour image; {self.name} expects "
                f"single-channel class values (grayscale or palette PNG)"
            )
        if label.dtype != np.uint8:
            if label.size and int(label.max()) > 255:
                raise LabelError(
                    f"label {path} holds value {int(label.max())}; class values must be below 256"
                )
            label = label.astype(np.uint8)
        return label

    def invalid_value_hint(self, value: int) -> str:
        """Extra advice when a label file holds ``value``, which is not one of ``valid_raw``."""
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, samples={len(self)})"


def build_dataset(name: str, root: str | os.PathLike[str], split: str, **kwargs: object) -> SegDataset:
    """Build the reader registered as ``name`` (``DATASETS.names()``) for ``split`` under ``root``.

    Example:
        >>> ds = build_dataset("cityscapes", "data/cityscapes", "val")
        >>> image, label = ds[0]
    """
    return DATASETS.get(name)(root, split, **kwargs)
