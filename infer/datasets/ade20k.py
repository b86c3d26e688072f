"""ADE20K scene parsing (ADEChallengeData2016), 150 classes.

Layout under the root (``ADEChallengeData2016``)::

    images/{training,validation}/ADE_*.jpg
    annotations/{training,validation}/ADE_*.png

Stored value 0 ("other") is ignored and 1..150 become classes 0..149. Splits ``train``/``val`` name the
``training``/``validation`` folders. ADE20K has no official colour per class; the palette is `bit_palette`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from segkd.infer.datasets.base import DATASETS, SegDataset, bit_palette, pair_by_stem

__all__ = ["ADE20KDataset"]

# objectInfo150 of the scene-parsing benchmark, first name of each class.
_CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
]  # fmt: skip
assert len(_CLASSES) == 150
_SPLIT_DIRS = {"train": "training", "val": "validation"}


def _reduce_zero() -> np.ndarray:
    lut = np.full(256, 255, np.uint8)
    lut[1 : len(_CLASSES) + 1] = np.arange(len(_CLASSES))  # 0 = "other" -> ignore
    return lut


@DATASETS.register("ade20k")
class ADE20KDataset(SegDataset):
    """ADE20K (SceneParsing 150)."""

    name: ClassVar[str] = "ade20k"
    layout: ClassVar[str] = (
        "<root>/images/{training,validation}/*.jpg and <root>/annotations/{training,validation}/*.png "
        "(root = ADEChallengeData2016; split train or val)"
    )
    class_names = _CLASSES
    palette = bit_palette(len(_CLASSES))
    raw_to_train = _reduce_zero()
    valid_raw = np.arange(256) <= len(_CLASSES)

    def _scan(self) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
        folder = _SPLIT_DIRS.get(self.split, self.split)
        image_dir = self._require_dir(self.root / "images" / folder, "image")
        label_dir = self._require_dir(self.root / "annotations" / folder, "label")
        return pair_by_stem(image_dir, label_dir, lambda stem: f"{stem}.png")

    def invalid_value_hint(self, value: int) -> str:
        return "ADE20K annotations hold 0 (other, ignored) and 1..150"
