"""Dataset readers (numpy + OpenCV, no torch): ``build_dataset(name, root, split)[i] -> (BGR image, label)``.

The registry `DATASETS` is the one list of names (`dataset_names()` for help texts); ``demo`` reads the
generated Cityscapes-layout scenes of `scenes`. Labels are uint8 training ids with 255 = ignore. Check a dataset with
``segkd check --dataset NAME --root DIR --split SPLIT``.
"""

# Importing the reader modules registers them.
from segkd.infer.datasets import ade20k, cityscapes, cocostuff, folder, voc  # noqa: E402, F401, I001
from segkd.infer.datasets.base import (
    DATASETS,
    DatasetError,
    LabelError,
    SegDataset,
    bit_palette,
    build_dataset,
)
from segkd.infer.datasets.reading import UnreadableFileError, read_image, read_label

__all__ = [
    "DATASETS",
    "dataset_info",
    "DatasetError",
    "LabelError",
    "SegDataset",
    "UnreadableFileError",
    "bit_palette",
    "build_dataset",
    "dataset_names",
    "read_image",
    "read_label",
]


def dataset_names() -> str:
    """``"ade20k, cityscapes, ..."``: the registered names, for help texts."""
    return ", ".join(DATASETS.names())


def dataset_info(name: str) -> tuple[list[str], list[list[int]]]:
    """Class names and RGB palette of a registered dataset with a fixed class list (not ``folder``)."""
    cls = DATASETS.get(name)
    names = getattr(cls, "class_names", None)
    if not isinstance(names, list):
        raise KeyError(
            f"dataset {name!r} has no fixed class list; its classes come from the data (classes file)"
        )
    return list(names), [list(c) for c in cls.palette]
