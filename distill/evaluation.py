"""Validation during and after training, through the deployment's own evaluation path.

The trained model is wrapped as a runner (:class:`ModuleRunner`), so that the trainer, ``segkd.infer.evaluate`` and
export verification share one pipeline: the same pre-processing from the model's metadata, the same
sliding-window averaging (:func:`segkd.infer.evaluate.average_windows`), the same confusion matrix
(:class:`segkd.infer.metrics.ConfusionMatrix`, which rejects labels outside the classes). Each process counts the images
its :class:`segkd.distill.data.ShardSampler` gives it; one all-reduce sums the matrices.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from segkd.distill.config import Config
from segkd.infer.evaluate import average_windows, count_batch, slide_windows
from segkd.infer.meta import ModelMeta
from segkd.infer.metrics import ConfusionMatrix
from segkd.infer.runtime.base import Runner

__all__ = ["ModuleRunner", "evaluate", "evaluate_checkpoint", "sliding_window_logits"]


class ModuleRunner(Runner):
    """A model in memory (on any device, under the trainer's autocast) behind the :class:`Runner` interface.

    Args:
        model: module returning (N, K, H, W) logits at input resolution.
        meta: its metadata (normalisation, classes).
        device: where it runs.
        autocast: context-manager factory for the forward (``accelerator.autocast``), or None.
        labels: return label maps from the network call (argmax on the device, only uint8 crosses to the host);
            for plain whole-image evaluation. Sliding windows need logits (``labels=False``).
    """

    format = "pytorch"

    def __init__(
        self,
        model: nn.Module,
        meta: ModelMeta,
        device: torch.device,
        *,
        autocast: Callable[[], Any] | None = None,
        labels: bool = False,
        name: str = "model",
    ) -> None:
        self.model, self._device, self._autocast = model, device, autocast
        super().__init__(
            name, meta, precision="fp32", provider=f"torch-{device.type}", device=device.type,
            input_size=None, outputs_labels=labels,
        )  # fmt: skip

    def _run(self, x: np.ndarray) -> np.ndarray:
        ctx = (
            self._autocast()
            if self._autocast is not None
            else torch.autocast(self._device.type, enabled=False)
        )
        with torch.inference_mode(), ctx:
            out = self.model(torch.from_numpy(x).to(self._device))
            if isinstance(out, dict):
                out = out["out"]
            if self.outputs_labels:
                return (
                    out.argmax(1)
                    .to(torch.uint8 if self.meta.num_classes <= 255 else torch.int32)
                    .cpu()
                    .numpy()
                )
            return out.float().cpu().numpy()


def sliding_window_logits(
    model: Callable[[Tensor], Tensor], x: Tensor, num_classes: int, crop: list[int], stride: list[int]
) -> Tensor:
    """Average the logits of overlapping ``crop`` windows (H, W), ``stride`` apart, covering ``x``.

    The windows are :func:`segkd.infer.evaluate.slide_windows`'s (the last of a row or column shifted back to end at
    the border, at most the image's size) and the averaging is :func:`segkd.infer.evaluate.average_windows`, on
    tensors. Returns (N, K, H, W) float32.
    """
    n, _, h, w = x.shape
    windows = slide_windows(h, w, tuple(crop), tuple(stride))

    def run(chunk: list[tuple[int, int, int, int]]) -> list[Tensor]:
        return [model(x[:, :, y0:y1, x0:x1]).float() for y0, y1, x0, x1 in chunk]

    logits = x.new_zeros((n, num_classes, h, w), dtype=torch.float32)  # (N, K, H, W)
    count = x.new_zeros((1, 1, h, w), dtype=torch.float32)
    return average_windows(windows, run, logits, count)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    accelerator: Any,
    meta: ModelMeta,
    *,
    mode: str = "whole",
    crop_size: list[int] | None = None,
    stride: list[int] | None = None,
) -> dict[str, Any]:
    """mIoU / mAcc / aAcc / per-class IoU of ``model`` on this process's share of ``loader``, summed over processes.

    ``loader`` yields uint8 BGR (N, 3, H, W) images and (N, H, W) labels (:func:`segkd.distill.data.build_eval_loader`).
    The result equals a single-process evaluation of the same data and of the exported model's runner.
    """
    was_training = model.training
    model.eval()
    runner = ModuleRunner(
        model, meta, accelerator.device, autocast=accelerator.autocast, labels=mode == "whole"
    )
    kw: dict[str, Any] = {"mode": mode}
    if mode == "slide":
        assert crop_size is not None
        kw.update(crop=tuple(crop_size), stride=tuple(stride) if stride else None)
    cm = ConfusionMatrix(meta.num_classes, meta.ignore_index)
    for images, labels in loader:
        bgr = list(images.permute(0, 2, 3, 1).numpy())  # (H, W, 3) uint8 each, as cv2 reads them
        count_batch(runner, bgr, list(labels.numpy()), cm, **kw)
    model.train(was_training)
    counts = torch.from_numpy(cm.matrix).to(accelerator.device)
    cm.matrix = accelerator.reduce(counts, reduction="sum").cpu().numpy().astype(np.int64)
    return cm.compute()


def evaluate_checkpoint(path: str, cfg: Config) -> dict[str, Any]:
    """Evaluate a checkpoint on ``cfg``'s validation split (over all launched processes); returns the metrics."""
    from segkd.distill.build import make_accelerator
    from segkd.distill.checks import check_classes, check_data, load_datasets
    from segkd.distill.config import ConfigError
    from segkd.distill.data import EvalSet, build_eval_loader
    from segkd.distill.load import load_model
    from segkd.distill.run_dir import raise_on_all

    accelerator = make_accelerator(cfg, Path(cfg.train.output_dir))
    if (
        cfg.data.check
    ):  # an unreadable image fails here, on every process, not in the middle of the evaluation
        error = None
        if accelerator.is_main_process:
            try:
                check_data(cfg, splits=(cfg.data.val_split,))
            except ConfigError as e:
                error = e
        raise_on_all(accelerator, error)
    _, val_set = load_datasets(cfg)
    model, meta = load_model(path, accelerator.device)
    check_classes(val_set, meta, None, role=f"checkpoint {Path(path).name}")
    loader = build_eval_loader(
        EvalSet(val_set, cfg.eval.limit),
        batch_size=cfg.eval.batch_size,
        num_workers=min(cfg.data.num_workers, 2),
        rank=accelerator.process_index,
        world=accelerator.num_processes,
    )
    metrics = evaluate(
        model,
        loader,
        accelerator,
        meta,
        mode=cfg.eval.mode,
        crop_size=cfg.eval.crop_size or cfg.data.crop_size,
        stride=cfg.eval.stride,
    )
    per_class = dict(
        zip(meta.class_names, metrics.get("IoU", []), strict=False)
    )  # IoU by name, for the reader
    return {
        **metrics,
        "class_IoU": per_class,
        "num_processes": accelerator.num_processes,
        "process_index": accelerator.process_index,
    }
