"""Pascal VOC 2012 segmentation, with the SBD augmented labels.

Layout under the root (``VOCdevkit/VOC2012``; the folders above it are accepted too)::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png        labels of the official lists
    SegmentationClassAug/<id>.png     SBD labels, converted to VOC's format
    ImageSets/Segmentation/<split>.txt

Split ``trainaug`` = ``train.txt`` over SegmentationClass + ``aug.txt`` over SegmentationClassAug (ids of
train or val dropped from the aug list so that nothing of val leaks into training); without ``aug.txt`` it
reads ``trainaug.txt`` over SegmentationClassAug. Split ``aug`` reads ``aug.txt`` over SegmentationClassAug;
every other split reads ``<split>.txt`` over SegmentationClass. Label PNGs store class ids as palette indices
(or grey values): 0 = background is a class, 255 = void.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from segkd.infer.datasets.base import DATASETS, DatasetError, SegDataset, bit_palette

__all__ = ["VOCDataset"]

_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
]  # fmt: skip
_CLASS_DIR, _AUG_DIR = "SegmentationClass", "SegmentationClassAug"


@DATASETS.register("voc")
class VOCDataset(SegDataset):
    """Pascal VOC 2012 (+ SBD aug), 21 classes."""

    name: ClassVar[str] = "voc"
    layout: ClassVar[str] = (
        "<root>/JPEGImages/<id>.jpg, <root>/SegmentationClass[Aug]/<id>.png and "
        "<root>/ImageSets/Segmentation/<split>.txt (root = VOCdevkit/VOC2012)"
    )
    class_names = _CLASSES
    palette = bit_palette(len(_CLASSES))
    raw_to_train = np.where(np.arange(256) < len(_CLASSES), np.arange(256), 255).astype(np.uint8)
    valid_raw = np.isin(np.arange(256), [*range(len(_CLASSES)), 255])

    def _scan(self) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
        self.root = self._find_devkit(self.root)
        lists = self._require_dir(self.root / "ImageSets" / "Segmentation", "split list")
        ids = self._split_ids(lists)
        samples, unpaired = [], []
        for image_id, label_dir in ids.items():
            image = self.root / "JPEGImages" / f"{image_id}.jpg"
            label = self.root / label_dir / f"{image_id}.png"
            missing = [str(p) for p in (image, label) if not p.is_file()]
            if missing:
                unpaired.append((image if image.is_file() else label, f"missing {', '.join(missing)}"))
            else:
                samples.append((image, label))
        return samples, unpaired

    @staticmethod
    def _find_devkit(root: Path) -> Path:
        for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
            if (candidate / "ImageSets" / "Segmentation").is_dir():
                return candidate
        return root

    def _read_list(self, lists: Path, name: str) -> list[str]:
        path = lists / f"{name}.txt"
        if not path.is_file():
            available = sorted(p.stem for p in lists.glob("*.txt"))
            raise DatasetError(
                f"voc split list {path} not found for split {self.split!r}; available: {available}; "
                f"expected {self.layout}"
            )
        return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]

    def _split_ids(self, lists: Path) -> dict[str, str]:
        """Ordered ``{image id: label folder}`` of the split."""
        if self.split == "trainaug" and (lists / "aug.txt").is_file():
            ids = dict.fromkeys(self._read_list(lists, "train"), _CLASS_DIR)
            held_out = set(ids) | set(self._read_list(lists, "val") if (lists / "val.txt").is_file() else [])
            ids.update((i, _AUG_DIR) for i in self._read_list(lists, "aug") if i not in held_out)
            return ids
        label_dir = _AUG_DIR if self.split in ("aug", "trainaug") else _CLASS_DIR
        return dict.fromkeys(self._read_list(lists, self.split), label_dir)

    def invalid_value_hint(self, value: int) -> str:
        return "VOC labels are class ids 0..20 and 255 (void); colour-coded masks must be converted"
