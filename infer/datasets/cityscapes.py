"""Cityscapes (fine annotations), and the generated demo data that uses the same layout.

Layout under the root::

    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png        (label_type="labelIds", default)
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   (label_type="trainIds")

labelIds (0..33) are mapped to the 19 evaluation classes by the official table below; every other label
becomes 255 (ignore). ``label_type="categories"`` reads the same labelIds files and evaluates the 7 official
categories instead (flat, construction, object, nature, sky, human, vehicle: each of the 19 classes counts as
its category; the labels ignored in the 19-class evaluation stay ignored), the coarse level of the Cityscapes
benchmark.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np

from segkd.infer.datasets.base import (
    DATASETS,
    DatasetError,
    SegDataset,
    pair_by_stem,
    train_id_table,
    value_ranges,
)

__all__ = [
    "CATEGORIES",
    "DEMO_CLASS_SETS",
    "LABELS",
    "LABEL_ID",
    "CityscapesDataset",
    "CityscapesLabel",
    "DemoDataset",
]


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

# The 7 evaluated categories, in cityscapesScripts' categoryId order, each drawn in the colour of its most
# common class.
CATEGORIES: tuple[str, ...] = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
_CATEGORY_COLOR = {"flat": (128, 64, 128), "construction": (70, 70, 70), "object": (220, 220, 0),
                   "nature": (107, 142, 35), "sky": (70, 130, 180), "human": (220, 20, 60),
                   "vehicle": (0, 0, 142)}  # fmt: skip


def _label_id_table() -> np.ndarray:
    lut = np.full(256, 255, np.uint8)
    for lab in LABELS:
        if lab.id >= 0:
            lut[lab.id] = lab.train_id
    return lut


def _category_table() -> np.ndarray:
    lut = np.full(256, 255, np.uint8)
    for lab in LABELS:
        if lab.id >= 0 and 0 <= lab.train_id < 255:
            lut[lab.id] = CATEGORIES.index(lab.category)
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
    "categories": ("_gtFine_labelIds.png", _category_table(), _mask(list(range(_NUM_IDS)))),
}


@DATASETS.register("cityscapes")
class CityscapesDataset(SegDataset):
    """Cityscapes fine annotations, 19 classes (or the 7 categories with ``label_type="categories"``).

    Example:
        >>> ds = CityscapesDataset("data/cityscapes", "val")   # labelIds mapped by the official table
        >>> ds = CityscapesDataset("data/cityscapes", "val", label_type="trainIds")
        >>> ds = CityscapesDataset("data/cityscapes", "val", label_type="categories")  # 7 classes
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
        """See `SegDataset`; ``label_type``: ``"labelIds"`` (mapped by the table), ``"trainIds"`` or
        ``"categories"`` (labelIds files, the 7 categories evaluated)."""
        if label_type not in _LABEL_TYPES:
            raise DatasetError(f"label_type must be one of {sorted(_LABEL_TYPES)}, got {label_type!r}")
        self.label_type = label_type
        if label_type == "categories":
            self.class_names = list(CATEGORIES)
            self.palette = [list(_CATEGORY_COLOR[c]) for c in CATEGORIES]
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
    """The generated street scenes of `segkd.scenes` (`segkd demo-data`), read through the Cityscapes reader.

    The class set is the one the generator recorded in ``<root>/demo.json`` (``"classes"``: ``categories``, the
    7 Cityscapes categories, or ``cityscapes``, the 19 classes); an explicit ``label_type`` overrides it.
    """

    name: ClassVar[str] = "demo"

    def __init__(
        self, root: str | os.PathLike[str], split: str, *, label_type: str | None = None, **kwargs: object
    ) -> None:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise DatasetError(
                f"demo data not found at {root}; generate it with "
                f"`segkd demo-data --root {root} --train 200 --val 50`"
            )
        if label_type is None:
            label_type = DEMO_CLASS_SETS.get(_demo_classes(path), "labelIds")
        super().__init__(root, split, label_type=label_type, **kwargs)  # type: ignore[arg-type]


# The demo generator's class sets (recorded in demo.json) -> label_type; a manifest without one is "cityscapes".
DEMO_CLASS_SETS = {"categories": "categories", "cityscapes": "labelIds"}


def _demo_classes(root: Path) -> str:
    """The class set recorded by the generator in ``root/demo.json`` ("cityscapes" when it records none)."""
    try:
        return str(json.loads((root / "demo.json").read_text()).get("classes", "cityscapes"))
    except (OSError, ValueError, AttributeError):
        return "cityscapes"
