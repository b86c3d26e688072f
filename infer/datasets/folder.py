"""Your own data: a folder of images, a folder of masks and a classes file.

Layout under the root::

    images/<split>/**/<name>.{jpg,png,...}
    masks/<split>/**/<name>.png       class index per pixel (grayscale or palette PNG), 255 = ignore;
                                      or colour-coded (RGB) when the classes file gives colours
    classes.txt                       one class per line, in index order

A line of ``classes.txt`` is a name, optionally followed by its colour as three integers 0..255
(``traffic light 250 170 30``); give colours on every line or on none. Blank lines and ``#`` comments are
skipped. Without colours the palette is `bit_palette`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import ClassVar

import numpy as np

from segkd.infer.datasets.base import (
    DATASETS,
    DatasetError,
    LabelError,
    SegDataset,
    bit_palette,
    pair_by_stem,
)

__all__ = ["FolderDataset", "read_classes"]

_COLOR_AT_END = re.compile(r"^(.*?)[\s,]+(\d{1,3})[\s,]+(\d{1,3})[\s,]+(\d{1,3})\s*$")


def read_classes(path: str | os.PathLike[str]) -> tuple[list[str], list[list[int]] | None]:
    """Parse a classes file into (names, RGB colours or None).

    Raises:
        DatasetError: missing file, no classes, more than 255 classes, mixed or out-of-range colours.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"classes file {path} not found; write one class name per line (optionally 'name R G B')"
        )
    names, colors, problems = [], [], []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = _COLOR_AT_END.match(line)
        if m and m.group(1).strip():
            rgb = [int(v) for v in m.group(2, 3, 4)]
            if max(rgb) > 255:
                problems.append(f"line {lineno}: colour {rgb} out of 0..255")
            names.append(m.group(1).strip())
            colors.append(rgb)
        else:
            names.append(line)
    if colors and len(colors) != len(names):
        problems.append(
            f"{len(colors)} of {len(names)} classes have a colour; give one on every line or none"
        )
    shared: dict[tuple[int, ...], list[str]] = {}
    for name, rgb in zip(names, colors):
        shared.setdefault(tuple(rgb), []).append(name)
    for rgb, owners in shared.items():
        if len(owners) > 1:  # a mask pixel of that colour could not say which class it is
            problems.append(f"classes {', '.join(owners)} share the colour {list(rgb)}; give each its own")
    if not names:
        problems.append("no class names")
    if len(names) > 255:
        problems.append(f"{len(names)} classes; at most 255 fit beside the ignore value 255")
    if problems:
        raise DatasetError(f"invalid classes file {path}: " + "; ".join(problems))
    return names, colors or None


@DATASETS.register("folder")
class FolderDataset(SegDataset):
    """Image folder + mask folder + classes file.

    Example:
        >>> ds = FolderDataset("data/mine", "train")   # data/mine/{images,masks}/train, data/mine/classes.txt
    """

    name: ClassVar[str] = "folder"
    layout: ClassVar[str] = (
        "<root>/images/<split>/*.{jpg,png,...}, <root>/masks/<split>/*.png (same relative names) and "
        "<root>/classes.txt (one class name per line, optionally followed by 'R G B')"
    )

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        *,
        classes: str | os.PathLike[str] | None = None,
        images: str = "images",
        masks: str = "masks",
        **kwargs: object,
    ) -> None:
        """See `SegDataset`.

        Args:
            classes: classes file (default ``<root>/classes.txt``).
            images, masks: names of the image and mask folders under the root.
        """
        self._dirs = (images, masks)
        if Path(root).expanduser().is_dir():
            names, colors = read_classes(classes or Path(root).expanduser() / "classes.txt")
        else:
            names, colors = ["?"], None  # the base class reports the missing root
        self.class_names = names
        self.palette = colors or bit_palette(len(names))
        self._has_colors = colors is not None
        self.raw_to_train = np.where(np.arange(256) < len(names), np.arange(256), 255).astype(np.uint8)
        self.valid_raw = np.isin(np.arange(256), [*range(len(names)), 255])
        super().__init__(root, split, **kwargs)  # type: ignore[arg-type]

    def _scan(self) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
        image_dir = self._require_dir(self.root / self._dirs[0] / self.split, "image")
        mask_dir = self._require_dir(self.root / self._dirs[1] / self.split, "mask")
        return pair_by_stem(image_dir, mask_dir, lambda stem: f"{stem}.png")

    def _to_raw(self, label: np.ndarray, path: Path) -> np.ndarray:
        if label.ndim == 3 and self._has_colors:
            return self._colors_to_index(label, path)
        return super()._to_raw(label, path)

    def _colors_to_index(self, bgr: np.ndarray, path: Path) -> np.ndarray:
        """Colour-coded mask (H, W, 3) BGR -> class indices; every colour must be one of the classes file."""
        code = (
            (bgr[..., 2].astype(np.int32) << 16) | (bgr[..., 1].astype(np.int32) << 8) | bgr[..., 0]
        )  # (H, W)
        palette = np.asarray(self.palette, np.int32)
        keys = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]  # (K,)
        order = np.argsort(keys)
        pos = np.clip(np.searchsorted(keys[order], code), 0, len(keys) - 1)
        known = keys[order][pos] == code
        if not known.all():
            unknown = [[int(c) >> 16, (int(c) >> 8) & 255, int(c) & 255] for c in np.unique(code[~known])]
            raise LabelError(
                f"mask {path} holds RGB colours {unknown[:5]}{' ...' if len(unknown) > 5 else ''} that are "
                f"not in the classes file; add them or store class indices instead"
            )
        return order[pos].astype(np.uint8)
