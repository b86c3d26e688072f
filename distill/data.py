"""Training and evaluation data: augmentation in the loader workers, deterministic samplers.

Samples come from ``segkd.infer.datasets.build_dataset`` as (BGR uint8 image, uint8 label, 255 = ignore). The loaders
yield uint8 image tensors (N, 3, H, W) in BGR order and uint8 labels (N, H, W); each model normalises its own
input on the device from its metadata (:func:`normalize`), so a teacher and a student that expect different
normalisations read the same batch, and only bytes cross to the GPU.

Reproducibility: the training sampler draws a fixed, seeded sequence of indices for the whole run, and every draw
``i`` augments with a random generator seeded by ``(seed, i)``. The augmentation of a draw therefore does not
depend on the worker that loads it, on the number of workers or on where a resumed run restarted.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from segkd.infer.datasets import SegDataset

__all__ = [
    "BadDataError",
    "EvalSet",
    "RunSampler",
    "ShardSampler",
    "TrainSet",
    "augment",
    "build_eval_loader",
    "build_train_loader",
    "normalize",
]


class BadDataError(ValueError):
    """Too many training samples failed to decode during the run.

    Raised in a loader worker, it reaches the trainer re-built from the worker's report (its message followed
    by the worker's traceback): only the message is kept, so that the user reads one line.
    """

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:
            message = message.rstrip().splitlines()[-1].split("BadDataError: ", 1)[-1]
        super().__init__(message)


def augment(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    crop_size: Sequence[int],
    scale_range: Sequence[float] = (0.5, 2.0),
    flip: bool = True,
    ignore_index: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """Random rescale, pad-and-crop to ``crop_size`` (H, W) and horizontal flip of one sample.

    The image is resized bilinearly and the label by nearest neighbour; where the rescaled image is smaller than
    the crop it is padded with zeros and its label with ``ignore_index`` (padding never counts as a class).
    """
    ch, cw = int(crop_size[0]), int(crop_size[1])
    scale = rng.uniform(scale_range[0], scale_range[1])
    h, w = label.shape
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (nw, nh), interpolation=cv2.INTER_NEAREST)
    ph, pw = max(ch - nh, 0), max(cw - nw, 0)
    if ph or pw:
        image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        label = cv2.copyMakeBorder(label, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=ignore_index)
    y = int(rng.integers(0, image.shape[0] - ch + 1))
    x = int(rng.integers(0, image.shape[1] - cw + 1))
    image, label = image[y : y + ch, x : x + cw], label[y : y + ch, x : x + cw]
    if flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return image, label


def _to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[Tensor, Tensor]:
    img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (3, H, W) uint8 BGR
    return img, torch.from_numpy(np.ascontiguousarray(label))  # (H, W) uint8


class TrainSet(Dataset):
    """Augmented view of a dataset, indexed by draw number: draw ``i`` is sample ``i % len(base)``.

    Args:
        base: the dataset reader.
        crop_size, scale_range, flip: augmentation (see :func:`augment`).
        seed: with the draw number, seeds the augmentation of each draw.
        max_bad_files: samples that may fail to decode (each is replaced by the next readable one, with a
            warning) before :class:`BadDataError` stops the run with their list. Counted per loader process.
    """

    def __init__(
        self,
        base: SegDataset,
        crop_size: Sequence[int],
        scale_range: Sequence[float] = (0.5, 2.0),
        flip: bool = True,
        seed: int = 0,
        max_bad_files: int = 10,
    ) -> None:
        self.base = base
        self.max_bad_files = max_bad_files
        self.bad: dict[int, str] = {}  # sample index -> why it failed
        self.crop_size = tuple(crop_size)
        self.scale_range = tuple(scale_range)
        self.flip = flip
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, draw: int) -> tuple[Tensor, Tensor]:
        image, label = self._read(draw % len(self.base))
        rng = np.random.default_rng([self.seed, draw])
        image, label = augment(
            image, label, rng, self.crop_size, self.scale_range, self.flip, self.base.ignore_index
        )
        return _to_tensors(image, label)

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index``, or the next readable one when it fails to decode (counted, warned once)."""
        from segkd.infer.datasets import LabelError, UnreadableFileError

        n = len(self.base)
        for step in range(n):
            i = (index + step) % n
            if i in self.bad:
                continue
            try:
                return self.base[i]
            except (UnreadableFileError, LabelError) as e:
                self.bad[i] = str(e).splitlines()[0]
                print(
                    f"WARNING: skipped a training sample that fails to decode: {self.bad[i]}", file=sys.stderr
                )
                if len(self.bad) > self.max_bad_files:
                    listing = "; ".join(self.bad.values())
                    raise BadDataError(
                        f"{len(self.bad)} training samples failed to decode (data.max_bad_files="
                        f"{self.max_bad_files}): {listing}; fix or remove them (segkd check)"
                    ) from None
        raise BadDataError(f"no training sample of {self.base.root} can be read")


class EvalSet(Dataset):
    """Un-augmented samples of a dataset (the first ``limit`` only, when given)."""

    def __init__(self, base: SegDataset, limit: int | None = None) -> None:
        self.base = base
        self.size = len(base) if limit is None else min(limit, len(base))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return _to_tensors(*self.base[index])


class RunSampler(Sampler[int]):
    """The draws of a whole run: ``total`` indices, one seeded permutation of the dataset after another.

    Epoch ``e`` contributes ``e * n + perm_e[j]`` (``perm_e`` seeded by ``(seed, e)``), so every draw number is
    unique and :class:`TrainSet` maps it back to sample ``perm_e[j]``. Being finite and fixed, the sequence can
    be skipped into on resume and split across processes by Accelerate.
    """

    def __init__(self, num_samples: int, total: int, seed: int = 0) -> None:
        assert num_samples > 0 and total >= 0
        self.num_samples, self.total, self.seed = num_samples, total, seed

    def __iter__(self) -> Iterator[int]:
        n = self.num_samples
        for epoch in range(math.ceil(self.total / n)):
            perm = np.random.default_rng([self.seed, epoch]).permutation(n)
            for j in range(min(n, self.total - epoch * n)):
                yield epoch * n + int(perm[j])

    def __len__(self) -> int:
        return self.total


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of ``n``: every sample goes to exactly one process, none twice.

    Evaluation uses it instead of a padded distributed sampler so that summing the per-process confusion
    matrices counts each image exactly once, whatever ``n``.
    """

    def __init__(self, n: int, rank: int = 0, world: int = 1) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _worker_init(_: int) -> None:
    cv2.setNumThreads(0)  # workers are the parallelism; OpenCV's own threads would oversubscribe the cores


def build_train_loader(
    dataset: TrainSet, *, batch_size: int, total_batches: int, num_workers: int, seed: int
) -> DataLoader:
    """DataLoader over ``total_batches`` batches of the run (before Accelerate shards it across processes).

    It carries its own torch generator so that creating its iterator never consumes the global random state
    (which a resumed run restores and dropout uses).
    """
    sampler = RunSampler(len(dataset), total_batches * batch_size, seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        worker_init_fn=_worker_init if num_workers else None,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=torch.cuda.is_available(),
    )


def build_eval_loader(
    dataset: EvalSet, *, batch_size: int, num_workers: int, rank: int = 0, world: int = 1
) -> DataLoader:
    """DataLoader over this process's share of ``dataset`` (see :class:`ShardSampler`)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), rank, world),
        num_workers=num_workers,
        worker_init_fn=_worker_init if num_workers else None,
        generator=torch.Generator().manual_seed(0),
        pin_memory=torch.cuda.is_available(),
    )


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float], channel_order: str) -> Tensor:
    """uint8 BGR (N, 3, H, W) -> float32 normalised input in ``channel_order`` (as ``segkd.infer.meta.preprocess``)."""
    x = images.float()
    if channel_order == "RGB":
        x = x.flip(1)  # BGR -> RGB
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s
