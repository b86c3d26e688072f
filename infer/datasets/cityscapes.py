"""Cityscapes (fine annotations), and the generated demo data that uses the same layout.

Layout under the root::

    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png        (label_type="labelIds", default)
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   (label_type="trainIds")

labelIds (0..33) are mapped to the 19 evaluation classes by the official table below; every other label
becomes 255 (ignore).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np

from infer.datasets.base import DATASETS, DatasetError, SegDataset, pair_by_stem, train_id_table, value_ranges

__all__ = ["LABELS", "LABEL_ID", "CityscapesDataset", "CityscapesLabel", "DemoDataset"]


class CityscapesLabel(NamedTuple):
    name: str
    id: int
    train_id: int
    category: str
    ignore_in_eval: bool
    color: tuple[int, int, int]


# The official Cityscapes label definitions (cityscapesScripts, helpers/labels.py).
LABELS: tuple[CityscapesLabel, ...] = tuple(
    CityscapesLabel(*row)
    for row in (
        ("unlabeled", 0, 255, "void", True, (0, 0, 0)),
        ("ego vehicle", 1, 255, "void", True, (0, 0, 0)),
        ("rectification border", 2, 255, "void", True, (0, 0, 0)),
        ("out of roi", 3, 255, "void", True, (0, 0, 0)),
        ("static", 4, 255, "void", True, (0, 0, 0)),
        ("dynamic", 5, 255, "void", True, (111, 74, 0)),
        ("ground", 6, 255, "void", True, (81, 0, 81)),
        ("road", 7, 0, "flat", False, (128, 64, 128)),
        ("sidewalk", 8, 1, "flat", False, (244, 35, 232)),
        ("parking", 9, 255, "flat", True, (250, 170, 160)),
        ("rail track", 10, 255, "flat", True, (230, 150, 140)),
        ("building", 11, 2, "construction", False, (70, 70, 70)),
        ("wall", 12, 3, "construction", False, (102, 102, 156)),
        ("fence", 13, 4, "construction", False, (190, 153, 153)),
        ("guard rail", 14, 255, "construction", True, (180, 165, 180)),
        ("bridge", 15, 255, "construction", True, (150, 100, 100)),
        ("tunnel", 16, 255, "construction", True, (150, 120, 90)),
        ("pole", 17, 5, "object", False, (153, 153, 153)),
        ("polegroup", 18, 255, "object", True, (153, 153, 153)),
        ("traffic light", 19, 6, "object", False, (250, 170, 30)),
        ("traffic sign", 20, 7, "object", False, (220, 220, 0)),
        ("vegetation", 21, 8, "nature", False, (107, 142, 35)),
        ("terrain", 22, 9, "nature", False, (152, 251, 152)),
        ("sky", 23, 10, "sky", False, (70, 130, 180)),
        ("person", 24, 11, "human", False, (220, 20, 60)),
        ("rider", 25, 12, "human", False, (255, 0, 0)),
        ("car", 26, 13, "vehicle", False, (0, 0, 142)),
        ("truck", 27, 14, "vehicle", False, (0, 0, 70)),
        ("bus", 28, 15, "vehicle", False, (0, 60, 100)),
        ("caravan", 29, 255, "vehicle", True, (0, 0, 90)),
        ("trailer", 30, 255, "vehicle", True, (0, 0, 110)),
        ("train", 31, 16, "vehicle", False, (0, 80, 100)),
        ("motorcycle", 32, 17, "vehicle", False, (0, 0, 230)),
        ("bicycle", 33, 18, "vehicle", False, (119, 11, 32)),
        ("license plate", -1, -1, "vehicle", True, (0, 0, 142)),
    )
)
# Label id by name, for code that draws Cityscapes labels (the demo generator).
LABEL_ID: dict[str, int] = {lab.name: lab.id for lab in LABELS if lab.id >= 0}

_TRAIN = sorted((lab for lab in LABELS if 0 <= lab.train_id < 255), key=lambda lab: lab.train_id)
_NUM_IDS = 34  # labelIds 0..33 can appear in the files


def _label_id_table() -> np.ndarray:
    lut = np.full(256, 255, np.uint8)
    for lab in LABELS:
        if lab.id >= 0:
            lut[lab.id] = lab.train_id
    return lut


def _mask(values: list[int]) -> np.ndarray:
    valid = np.zeros(256, bool)
    valid[values] = True
    return valid


# label_type -> (file suffix, raw->train table, valid raw values)
_LABEL_TYPES: dict[str, tuple[str, np.ndarray, np.ndarray]] = {
    "labelIds": ("_gtFine_labelIds.png", _label_id_table(), _mask(list(range(_NUM_IDS)))),
    "trainIds": (
        "_gtFine_labelTrainIds.png",
        train_id_table(len(_TRAIN)),
        _mask([*range(len(_TRAIN)), 255]),
    ),
}


@DATASETS.register("cityscapes")
class CityscapesDataset(SegDataset):
    """Cityscapes fine annotations, 19 classes.

    Example:
        >>> ds = CityscapesDataset("data/cityscapes", "val")   # labelIds mapped by the official table
        >>> ds = CityscapesDataset("data/cityscapes", "val", label_type="trainIds")
    """

    name: ClassVar[str] = "cityscapes"
    layout: ClassVar[str] = (
        "<root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png and "
        "<root>/gtFine/<split>/<city>/*_gtFine_labelIds.png (or *_gtFine_labelTrainIds.png)"
    )
    class_names = [lab.name for lab in _TRAIN]
    palette = [list(lab.color) for lab in _TRAIN]

    def __init__(
        self, root: str | os.PathLike[str], split: str, *, label_type: str = "labelIds", **kwargs: object
    ) -> None:
        """See `SegDataset`; ``label_type`` is ``"labelIds"`` (mapped by the table) or ``"trainIds"``."""
        if label_type not in _LABEL_TYPES:
            raise DatasetError(f"label_type must be one of {sorted(_LABEL_TYPES)}, got {label_type!r}")
        self.label_type = label_type
        self._suffix, self.raw_to_train, self.valid_raw = _LABEL_TYPES[label_type]
        super().__init__(root, split, **kwargs)  # type: ignore[arg-type]

    def _scan(self) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
        image_dir = self._require_dir(self.root / "leftImg8bit" / self.split, "image")
        label_dir = self._require_dir(self.root / "gtFine" / self.split, "label")
        suffix = self._suffix

        def label_name(stem: str) -> str:
            return stem.removesuffix("_leftImg8bit") + suffix

        return pair_by_stem(image_dir, label_dir, label_name, label_glob=f"*{suffix}")

    def invalid_value_hint(self, value: int) -> str:
        if self.label_type == "trainIds":
            return (
                f"trainIds are {value_ranges(np.flatnonzero(self.valid_raw))}; "
                "did you point at labelIds (label_type='labelIds')?"
            )
        return f"Cityscapes labelIds are 0..{_NUM_IDS - 1}"


@DATASETS.register("demo")
class DemoDataset(CityscapesDataset):
    """The generated street scenes of `infer.datasets.demo`, read through the Cityscapes reader."""

    name: ClassVar[str] = "demo"

    def __init__(self, root: str | os.PathLike[str], split: str, **kwargs: object) -> None:
        if not Path(root).expanduser().is_dir():
            raise DatasetError(
                f"demo data not found at {root}; generate it with "
                f"`python -m infer.datasets.demo --root {root} --train 200 --val 50`"
            )
        super().__init__(root, split, **kwargs)  # type: ignore[arg-type]
