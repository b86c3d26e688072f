"""COCO-Stuff 164k, 171 classes (80 things + 91 stuff).

Layout under the root::

    images/{train2017,val2017}/*.jpg
    annotations/{train2017,val2017}/*.png                 stuffthingmaps (label_type="stuffthingmaps")
    annotations/{train2017,val2017}/*_labelTrainIds.png   reduced to 0..170 (label_type="trainIds")

The stuffthingmaps store COCO category id - 1 (0..181) and 255 for unlabelled pixels; the 11 COCO ids that
were never annotated are dropped, giving 171 contiguous classes. Splits ``train``/``val`` name the 2017
folders. COCO-Stuff has no official colour per class; the palette is `bit_palette`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import numpy as np

from segkd.infer.datasets.base import (
    DATASETS,
    DatasetError,
    SegDataset,
    bit_palette,
    pair_by_stem,
    train_id_table,
)

__all__ = ["COCOStuffDataset"]

# Index = stored value (COCO category id - 1); None = id without annotations in COCO-Stuff.
_STORED_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", None, "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", None, "backpack", "umbrella", None, None, "handbag", "tie",
    "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", None, "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", None, "dining table", None, None, "toilet", None, "tv",
    "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", None, "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush", None,
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard",
    "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain",
    "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile",
    "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel",
    "ground-other", "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain",
    "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform",
    "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea",
    "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw", "structural-other",
    "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete",
    "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops",
    "window-blind", "window-other", "wood",
]  # fmt: skip
assert len(_STORED_NAMES) == 182
_USED = [v for v, n in enumerate(_STORED_NAMES) if n is not None]
_CLASSES = [_STORED_NAMES[v] for v in _USED]
assert len(_CLASSES) == 171
_SPLIT_DIRS = {"train": "train2017", "val": "val2017"}
_TRAIN_IDS_SUFFIX = "_labelTrainIds.png"


def _stuffthing_table() -> np.ndarray:
    lut = np.full(256, 255, np.uint8)
    lut[_USED] = np.arange(len(_USED))
    return lut


# label_type -> (raw->train table, valid raw values)
_LABEL_TYPES: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "stuffthingmaps": (_stuffthing_table(), np.isin(np.arange(256), [*_USED, 255])),
    # files of training ids: values past the 171 classes are ignored, as every reader maps unknown values
    "trainIds": (train_id_table(len(_CLASSES)), np.isin(np.arange(256), [*range(len(_CLASSES)), 255])),
}


@DATASETS.register("cocostuff")
class COCOStuffDataset(SegDataset):
    """COCO-Stuff 164k."""

    name: ClassVar[str] = "cocostuff"
    layout: ClassVar[str] = (
        "<root>/images/{train2017,val2017}/*.jpg and <root>/annotations/{train2017,val2017}/*.png "
        "(stuffthingmaps; *_labelTrainIds.png with label_type='trainIds'); split train or val"
    )
    class_names = _CLASSES
    palette = bit_palette(len(_CLASSES))

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        *,
        label_type: str = "stuffthingmaps",
        **kwargs: object,
    ) -> None:
        """See `SegDataset`; ``label_type``: ``"stuffthingmaps"`` (raw 0..181) or ``"trainIds"`` (0..170)."""
        if label_type not in _LABEL_TYPES:
            raise DatasetError(f"label_type must be one of {sorted(_LABEL_TYPES)}, got {label_type!r}")
        self.label_type = label_type
        self.raw_to_train, self.valid_raw = _LABEL_TYPES[label_type]
        super().__init__(root, split, **kwargs)  # type: ignore[arg-type]

    def _scan(self) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
        folder = _SPLIT_DIRS.get(self.split, self.split)
        image_dir = self._require_dir(self.root / "images" / folder, "image")
        label_dir = self._require_dir(self.root / "annotations" / folder, "label")
        if self.label_type == "trainIds":
            return pair_by_stem(
                image_dir, label_dir, lambda s: s + _TRAIN_IDS_SUFFIX, f"*{_TRAIN_IDS_SUFFIX}"
            )
        samples, unpaired = pair_by_stem(image_dir, label_dir, lambda s: f"{s}.png")
        # Converted *_labelTrainIds.png files may sit beside the stuffthingmaps: they are not orphans.
        unpaired = [(p, why) for p, why in unpaired if not p.name.endswith(_TRAIN_IDS_SUFFIX)]
        return samples, unpaired

    def invalid_value_hint(self, value: int) -> str:
        if self.label_type == "trainIds":
            return "trainIds are 0..170 and 255"
        if value < len(_STORED_NAMES):
            return f"COCO category id {value + 1} has no COCO-Stuff annotations"
        return "stuffthingmaps hold COCO category id - 1 (0..181) and 255"
