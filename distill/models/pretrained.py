"""Load foreign weight files by key mapping, with a report of what did not fit.

Supported layouts (pure key-mapping functions, state dict in, state dict out):
- ImageNet backbones: torchvision ResNet (``conv1``, ``layer1`` ..., ``fc``) and CIRKD's deep-stem ResNet files
  (``conv1/conv2/conv3`` stem); torchvision MobileNetV2 (nested ``features.N.conv.0.0``) and flat layouts.
- CIRKD v1 segmentation checkpoints (``pretrained.*``, ``head.aspp.*``/``head.psp.*``, ``auxlayer.*``), e.g. its
  released DeepLabV3-ResNet101 Cityscapes teacher.

Hugging Face SegFormer / UPerNet-Swin weights need no mapping here: the library's ``from_pretrained`` reads them and
maps its own older layouts (see ``segkd.distill.models.hf``). Turning a foreign file into a self-describing
checkpoint (``segkd convert``) is :mod:`segkd.distill.convert`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "LoadReport",
    "WeightsError",
    "read_state_dict",
    "map_cirkd_segmentation",
    "map_imagenet_backbone",
    "load_mapped",
    "load_backbone_weights",
    "short_keys",
]


class WeightsError(ValueError):
    """A weight file that does not fit the model."""


@dataclass
class LoadReport:
    """What happened when a foreign state dict was loaded."""

    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # keys deliberately dropped (classifier, last conv)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"loaded {self.loaded} tensors"]
        if self.ignored:
            lines.append(f"ignored {len(self.ignored)} (not part of this model): {short_keys(self.ignored)}")
        if self.missing:
            lines.append(f"missing {len(self.missing)} (kept at initialisation): {short_keys(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected {len(self.unexpected)}: {short_keys(self.unexpected)}")
        for k, got, want in self.mismatched[:10]:
            lines.append(f"mis-shaped {k}: file {list(got)} vs model {list(want)}")
        if len(self.mismatched) > 10:
            lines.append(f"... and {len(self.mismatched) - 10} more mis-shaped tensors")
        return "\n".join(lines)


def short_keys(keys: list[str], n: int = 6) -> str:
    """The first ``n`` keys and how many more, for a message."""
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weight file (weights only) and unwrap ``state_dict``/``model`` containers and DDP ``module.``."""
    from segkd.distill.checkpoint import load_failure

    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"weight file {path} is a folder; pass the weight file in it")
    if not path.is_file():
        raise WeightsError(f"weight file {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # never torch's advice to turn the weights-only guard off: that could run code
        raise WeightsError(f"cannot read {path} as a weights-only torch file: {load_failure(path, e)}") from e
    for key in ("state_dict", "model", "net"):
        if isinstance(blob, dict) and isinstance(blob.get(key), dict):
            blob = blob[key]
    if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise WeightsError(f"{path} holds no state dict (top-level type {type(blob).__name__})")
    return {k.removeprefix("module."): v for k, v in blob.items()}


# --- CIRKD v1 segmentation layout -> ours ------------------------------------------------------------------------
_CIRKD_RULES: list[tuple[str, str]] = [
    (r"^pretrained\.net\.features\.", "backbone.features."),
    (r"^pretrained\.", "backbone."),
    (r"^head\.aspp\.b0\.(\d)\.", r"head.branches.0.\1."),
    (r"^head\.aspp\.b([123])\.block\.(\d)\.", r"head.branches.\1.\2."),
    (r"^head\.aspp\.b4\.gap\.1\.", "head.pool.conv.0."),
    (r"^head\.aspp\.b4\.gap\.2\.", "head.pool.conv.1."),
    (r"^head\.aspp\.project\.", "head.project."),
    (r"^head\.psp\.conv([1-4])\.", lambda m: f"head.stages.{int(m.group(1)) - 1}.conv."),  # type: ignore[list-item]
    (r"^head\.block\.4\.", "head.classifier."),
    (r"^head\.block\.", "head.bottleneck."),
    (r"^auxlayer\.block\.4\.", "aux_head.classifier."),
    (r"^auxlayer\.block\.", "aux_head.bottleneck."),
]


def _apply_rules(key: str, rules: list[tuple[str, str | Callable]]) -> str:
    for pat, repl in rules:
        new, n = re.subn(pat, repl, key, count=1)
        if n:
            return new
    return key


def map_cirkd_segmentation(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a CIRKD v1 segmentation state dict to this toolkit's model layout."""
    return {_apply_rules(k, _CIRKD_RULES): v for k, v in sd.items()}


# --- ImageNet backbones -------------------------------------------------------------------------------------------
def _tv_mbv2_key(key: str) -> str | None:
    """torchvision MobileNetV2 (nested Conv2dNormActivation) -> flat ``conv`` indices; None = not in the backbone."""
    m = re.match(r"^features\.(\d+)\.(.*)$", key)
    if not m:
        return None  # classifier.*
    idx, rest = int(m.group(1)), m.group(2)
    if idx == 0:
        return f"features.0.{rest}"
    if idx >= 18:
        return None  # the last 1x1 conv (1280 ch) is not part of the segmentation backbone
    sub = re.match(r"^conv\.(\d+)\.(?:(\d+)\.)?(.*)$", rest)
    if not sub:
        return f"features.{idx}.{rest}"
    a, b, tail = int(sub.group(1)), sub.group(2), sub.group(3)
    if idx == 1:  # expand ratio 1: [dw(0.0, 0.1), pw(1), bn(2)] -> [0, 1, 3, 4]
        flat = {(0, "0"): 0, (0, "1"): 1, (1, None): 3, (2, None): 4}
    else:  # [pw(0.0, 0.1), dw(1.0, 1.1), pw(2), bn(3)] -> [0, 1, 3, 4, 6, 7]
        flat = {(0, "0"): 0, (0, "1"): 1, (1, "0"): 3, (1, "1"): 4, (2, None): 6, (3, None): 7}
    return f"features.{idx}.conv.{flat[(a, b)]}.{tail}"


def map_imagenet_backbone(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map an ImageNet classification file to backbone keys; returns (mapped, ignored keys)."""
    sd = {re.sub(r"^(net|backbone|pretrained)\.", "", k): v for k, v in sd.items()}
    nested_mbv2 = any(re.match(r"^features\.\d+\.conv\.\d+\.\d+\.", k) for k in sd)
    out, ignored = {}, []
    for k, v in sd.items():
        if k.startswith(("fc.", "classifier.", "last_linear.")):
            ignored.append(k)
            continue
        new = _tv_mbv2_key(k) if nested_mbv2 else k
        if new is None or re.match(r"^features\.(1[89]|[2-9]\d)\.", new):
            ignored.append(k)
            continue
        out[new] = v
    return out, ignored


def load_mapped(model: nn.Module, sd: dict[str, torch.Tensor], *, strict: bool = True) -> LoadReport:
    """Copy ``sd`` into ``model`` key by key; with ``strict`` any missing/unexpected/mis-shaped key raises."""
    own = model.state_dict()
    report = LoadReport()
    fitting = {}
    for k, v in sd.items():
        if k not in own:
            report.unexpected.append(k)
        elif own[k].shape != v.shape:
            report.mismatched.append((k, tuple(v.shape), tuple(own[k].shape)))
        else:
            fitting[k] = v
    report.missing = [k for k in own if k not in sd]
    report.loaded = len(fitting)
    if strict and not report.ok:
        raise WeightsError(f"weights do not fit {type(model).__name__}:\n{report}")
    model.load_state_dict(fitting, strict=False)
    return report


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> LoadReport:
    """Load an ImageNet file into a backbone; missing BN counters are tolerated, anything else raises."""
    mapped, ignored = map_imagenet_backbone(read_state_dict(path))
    report = load_mapped(backbone, mapped, strict=False)
    report.ignored = ignored
    # Older files lack num_batches_tracked: harmless. Anything else is a wrong file for this backbone.
    report.missing = [k for k in report.missing if not k.endswith("num_batches_tracked")]
    if not report.ok:
        raise WeightsError(
            f"{path} does not fit this backbone (a deep-stem model needs a deep-stem file such as CIRKD's "
            f"resnet18-imagenet.pth; build with deep_stem=False for torchvision's):\n{report}"
        )
    return report


# --- official real-time layouts ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class OfficialLayout:
    """How the official public code's checkpoints of an architecture become this toolkit's model.

    The real-time models keep their official state-dict layout, key for key, so that the official ImageNet and
    Cityscapes files load as they are; ``map_keys`` only removes what the official training wrapped around them.

    Attributes:
        source: the official repository and file the layout is read from (``XuJiacong/PIDNet models/pidnet.py``).
        mean, std, channel_order: the official normalisation (recorded in the converted checkpoint's metadata).
        align_corners: the official full-size upsampling of the logits.
        map_keys: official key -> this model's key (after :func:`strip_training_wrappers`); identity by default.
    """

    source: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str = "RGB"
    align_corners: bool = False
    map_keys: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] = dict


OFFICIAL_LAYOUTS: dict[str, OfficialLayout] = {}

# Prefixes the official trainers save around the network (PIDNet/DDRNet's FullModel, DataParallel).
_WRAPPERS = ("module.", "model.")
_NOT_WEIGHTS = ("loss.", "criterion.", "sem_loss.", "bd_loss.")  # PIDNet's FullModel: sem_loss, bd_loss


def register_official_layout(layout: OfficialLayout, *archs: str) -> OfficialLayout:
    """Declare that ``archs`` keep ``layout``'s official state dict (called by each architecture's file)."""
    for arch in archs:
        OFFICIAL_LAYOUTS[arch] = layout
    return layout


def strip_training_wrappers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the ``module.``/``model.`` prefixes and the criterion's buffers an official trainer saves."""
    out = {}
    for key, value in sd.items():
        while key.startswith(_WRAPPERS):
            key = key.split(".", 1)[1]
        if not key.startswith(_NOT_WEIGHTS):
            out[key] = value
    return out
