"""Check a dataset before training on it: sample count, pixels per class, ignored pixels, and every problem.

Problems are collected, never raised one at a time: unpaired files, unreadable files, image/label size
mismatches and label values outside the classes, each naming its file.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm import tqdm

from segkd.infer.datasets.base import DatasetError, LabelError, SegDataset, build_dataset, value_ranges
from segkd.infer.datasets.reading import UnreadableFileError

__all__ = ["CheckReport", "check_dataset"]


@dataclass
class CheckReport:
    """What `check_dataset` found; ``ok`` is False when there is any problem."""

    dataset: str
    root: str
    split: str
    samples: int = 0
    class_pixels: dict[str, int] = field(default_factory=dict)
    ignored_pixels: int = 0
    total_pixels: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def ignore_fraction(self) -> float:
        return self.ignored_pixels / self.total_pixels if self.total_pixels else 0.0

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "ignore_fraction": self.ignore_fraction, "ok": self.ok}

    def format(self) -> str:
        """Human-readable table of the report."""
        lines = [
            f"{self.dataset} split {self.split!r} under {self.root}: {self.samples} samples, "
            f"{self.total_pixels} pixels, {100 * self.ignore_fraction:.2f}% ignored"
        ]
        if self.class_pixels:
            width = max(len(n) for n in self.class_pixels)
            lines.append(f"  {'id':>3}  {'class':<{width}}  {'pixels':>12}  {'%':>6}")
            for i, (name, count) in enumerate(self.class_pixels.items()):
                share = 100 * count / self.total_pixels if self.total_pixels else 0.0
                lines.append(f"  {i:>3}  {name:<{width}}  {count:>12}  {share:>6.2f}")
        lines.append(f"problems ({len(self.problems)}):" if self.problems else "no problems found")
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def _check_sample(ds: SegDataset, index: int, problems: list[str]) -> np.ndarray | None:
    """Read sample ``index``; append its problems; return the (256,) histogram of its raw label values."""
    image_path, label_path = ds.samples[index]
    image = raw = None
    try:
        image = ds.read_image(index)
    except UnreadableFileError as e:
        problems.append(f"unreadable image: {e}")
    try:
        raw = ds.read_raw_label(index)
    except (UnreadableFileError, LabelError) as e:
        problems.append(f"unreadable label: {e}")
    if raw is None:
        return None
    if image is not None and image.shape[:2] != raw.shape:
        problems.append(
            f"size mismatch: image {image_path} is {image.shape[:2]}, label {label_path} is {raw.shape}"
        )
    hist = np.bincount(raw.ravel(), minlength=256)
    bad = np.flatnonzero((hist > 0) & ~ds.valid_raw)
    if bad.size:
        hint = ds.invalid_value_hint(int(bad[0]))
        problems.append(
            f"label value(s) {value_ranges(bad)} ({int(hist[bad].sum())} px) in {label_path} are outside the "
            f"classes (valid: {value_ranges(np.flatnonzero(ds.valid_raw))})" + (f"; {hint}" if hint else "")
        )
    return hist


def check_dataset(
    name: str, root: str | os.PathLike[str], split: str, *, progress: bool = True, **options: object
) -> CheckReport:
    """Read every sample of ``build_dataset(name, root, split, **options)`` and report what is wrong.

    Args:
        progress: show a progress bar on stderr.
        options: reader options, e.g. ``label_type="trainIds"`` or ``classes="my/classes.txt"``.
    """
    report = CheckReport(dataset=name, root=str(root), split=split)
    try:
        ds = build_dataset(name, root, split, strict=False, **options)
    except (DatasetError, TypeError) as e:
        report.problems.append(str(e))
        return report
    report.samples = len(ds)
    report.problems += [f"unpaired: {path}: {why}" for path, why in ds.unpaired]
    raw_hist = np.zeros(256, np.int64)
    for i in tqdm(range(len(ds)), desc=f"check {name}/{split}", unit="img", disable=not progress):
        hist = _check_sample(ds, i, report.problems)
        if hist is not None:
            raw_hist += hist
    train_hist = np.bincount(ds.raw_to_train, weights=raw_hist, minlength=256).astype(np.int64)  # (256,)
    report.class_pixels = {n: int(c) for n, c in zip(ds.class_names, train_hist[: ds.num_classes])}
    report.ignored_pixels = int(train_hist[ds.num_classes :].sum())
    report.total_pixels = int(raw_hist.sum())
    return report
