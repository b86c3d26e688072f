"""What a deployed model needs to know about itself: classes, palette, normalisation, input size.

The same record travels inside a training checkpoint (`.pth`), in ONNX `metadata_props` and in a TensorRT
engine's JSON sidecar, so that every runner pre- and post-processes identically. Torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

__all__ = ["HW_AXES", "ModelMeta", "IMAGENET_RGB", "CIRKD_BGR", "colorize", "guess_layout", "preprocess"]

# (mean, std, channel order) on the 0..255 scale.
IMAGENET_RGB = ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375], "RGB")
# CIRKD's released weights: BGR minus mean, no std division.
CIRKD_BGR = ([104.008, 116.669, 122.679], [1.0, 1.0, 1.0], "BGR")


@dataclass
class ModelMeta:
    """Self-description of a segmentation model.

    Attributes:
        arch: model registry name and its keyword arguments, e.g. ``{"name": "deeplabv3_r18", "num_classes": 19}``.
        class_names: one name per output channel.
        palette: one RGB triple per class.
        mean, std: per-channel normalisation on the 0..255 scale, in ``channel_order``.
        channel_order: ``"RGB"`` or ``"BGR"``: the order the network expects.
        input_size: (H, W) the model was trained/exported at (training crop for checkpoints).
        ignore_index: label value that marks unlabelled pixels.
        extra: free-form string fields (precision, source hash, toolkit version, ...).
    """

    arch: dict[str, Any]
    class_names: list[str]
    palette: list[list[int]]
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_RGB[0]))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_RGB[1]))
    channel_order: str = "RGB"
    input_size: list[int] = field(default_factory=lambda: [512, 1024])
    ignore_index: int = 255
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if self.channel_order not in ("RGB", "BGR"):
            problems.append(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if len(self.palette) != len(self.class_names):
            problems.append(f"{len(self.palette)} palette colours for {len(self.class_names)} classes")
        declared = self.arch.get("num_classes")
        if isinstance(declared, int) and declared != len(self.class_names):
            # the weights predict arch.num_classes channels: names for more or fewer would mislabel every output
            problems.append(
                f"{len(self.class_names)} class names for a model of {declared} classes (arch.num_classes)"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            problems.append("mean and std need 3 values each")
        if problems:
            raise ValueError("invalid model metadata: " + "; ".join(problems))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def align_corners(self) -> bool:
        """The model's bilinear upsampling of logits (``arch.align_corners``); False for models that predate it."""
        return bool(self.arch.get("align_corners", False))

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (safe for ``torch.load(weights_only=True)`` and JSON)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMeta:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_props(self) -> dict[str, str]:
        """String key/value pairs for ONNX ``metadata_props``."""
        props = {k: json.dumps(v) for k, v in asdict(self).items() if k != "extra"}
        props.update({f"extra.{k}": str(v) for k, v in self.extra.items()})
        return props

    @classmethod
    def from_props(cls, props: dict[str, str]) -> ModelMeta:
        known = {f.name for f in fields(cls)} - {"extra"}
        missing = sorted(k for k in ("arch", "class_names", "palette") if k not in props)
        if missing:
            raise ValueError(
                f"model metadata lacks {missing}; was the file written by this toolkit's exporter?"
            )
        kw: dict[str, Any] = {k: json.loads(v) for k, v in props.items() if k in known}
        kw["extra"] = {k[6:]: v for k, v in props.items() if k.startswith("extra.")}
        return cls(**kw)


# Input layout -> the axes of height and width.
HW_AXES = {"NCHW": (2, 3), "NHWC": (1, 2)}


def guess_layout(shape: Sequence[Any], extra: dict[str, str] | None = None) -> tuple[str, tuple[Any, ...]]:
    """(layout, (height, width) dims) of a 4-D image input.

    The layout the exporter recorded (``extra.input_layout``) wins; a file without it is NHWC when its last axis
    is 3 and its second is not (a fused-preprocessing graph takes raw HxWx3 frames), NCHW otherwise.
    """
    layout = (extra or {}).get("input_layout") or ("NHWC" if shape[-1] == 3 and shape[1] != 3 else "NCHW")
    return layout, tuple(shape[i] for i in HW_AXES[layout])


def preprocess(images_bgr: list[np.ndarray], meta: ModelMeta) -> np.ndarray:
    """BGR uint8 HxWx3 images (same size) -> normalised float32 NCHW batch in the model's channel order."""
    x = np.stack(images_bgr).astype(np.float32)  # (N, H, W, 3) BGR
    if meta.channel_order == "RGB":
        x = x[..., ::-1]
    x = (x - np.asarray(meta.mean, np.float32)) / np.asarray(meta.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # (N, 3, H, W)


def colorize(labels: np.ndarray, palette: list[list[int]], ignore_index: int = 255) -> np.ndarray:
    """Label map (H, W) -> BGR uint8 image (H, W, 3); ignored/unknown labels are black."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)[:, ::-1]  # RGB -> BGR
    if ignore_index < 256:
        lut[ignore_index] = 0
    return lut[np.clip(labels, 0, 255).astype(np.uint8)]
