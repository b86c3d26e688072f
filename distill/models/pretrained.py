"""Load foreign weight files by key mapping, with a report of what did not fit.

Supported layouts:
- ImageNet backbones: torchvision ResNet (``conv1``, ``layer1`` ..., ``fc``) and CIRKD's deep-stem ResNet files
  (``conv1/conv2/conv3`` stem); torchvision MobileNetV2 (nested ``features.N.conv.0.0``) and flat layouts.
- CIRKD v1 segmentation checkpoints (``pretrained.*``, ``head.aspp.*``/``head.psp.*``, ``auxlayer.*``), e.g. its
  released DeepLabV3-ResNet101 Cityscapes teacher.

- Hugging Face SegFormer / UPerNet-Swin models, by model id or from a local folder of one (read by the library's
  ``from_pretrained``: safetensors or weights-only files, older key layouts mapped): see ``segkd.distill.models.hf``.

Convert a CIRKD checkpoint, or a public Hugging Face model, into a self-describing one::

    segkd convert deeplabv3_resnet101_citys_best_model.pth --arch deeplabv3_r101 \
        --dataset cityscapes --out teacher_r101_citys.pth
    segkd convert openmmlab/upernet-swin-base --arch upernet_swin_b --dataset ade20k \
        --crop 512x512 --out teacher_upernet_swin_b_ade.pth

An ImageNet encoder (``nvidia/mit-b0``, ``microsoft/swin-tiny-patch4-window7-224``) is not converted: it is a
student's starting point, given as ``student.pretrained`` in the training config.
"""

from __future__ import annotations

import argparse
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segkd.infer.cliargs import parse_hw

__all__ = [
    "LoadReport",
    "WeightsError",
    "read_state_dict",
    "map_cirkd_segmentation",
    "map_imagenet_backbone",
    "load_mapped",
    "load_backbone_weights",
    "convert_cirkd_checkpoint",
    "convert_hf_checkpoint",
    "CIRKD_ARCHS",
    "HF_ARCH_PREFIXES",
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
            lines.append(f"ignored {len(self.ignored)} (not part of this model): {_short(self.ignored)}")
        if self.missing:
            lines.append(f"missing {len(self.missing)} (kept at initialisation): {_short(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected {len(self.unexpected)}: {_short(self.unexpected)}")
        for k, got, want in self.mismatched[:10]:
            lines.append(f"mis-shaped {k}: file {list(got)} vs model {list(want)}")
        if len(self.mismatched) > 10:
            lines.append(f"... and {len(self.mismatched) - 10} more mis-shaped tensors")
        return "\n".join(lines)


def _short(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weight file (weights only) and unwrap ``state_dict``/``model`` containers and DDP ``module.``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weight file {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(
            f"cannot read {path} as a weights-only torch file: {str(e).splitlines()[0][:200]}"
        ) from e
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


# CIRKD's five v1 models and their names here: the architectures a CIRKD v1 file can claim.
CIRKD_ARCHS = {
    "deeplabv3_resnet101": "deeplabv3_r101",
    "deeplabv3_resnet18": "deeplabv3_r18",
    "psp_resnet18": "pspnet_r18",
    "deeplab_mobile_mbv2": "deeplabv3_mbv2",
    "psp_mobile_mbv2": "pspnet_mbv2",
}
_CIRKD_PREFIXES = ("pretrained.", "head.", "auxlayer.")  # backbone, decode head, auxiliary head


@functools.lru_cache(maxsize=16)
def _layout_shapes(arch: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a model's state dict, built on the meta device (no memory, no initialisation cost)."""
    from segkd.distill.models import build_model

    with torch.device("meta"):
        model = build_model(arch, num_classes=num_classes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _fitting_archs(mapped: dict[str, torch.Tensor], num_classes: int) -> list[str]:
    """The CIRKD-layout architectures whose state dict has exactly the keys and shapes of ``mapped``."""
    shapes = {k: tuple(v.shape) for k, v in mapped.items()}
    return [a for a in CIRKD_ARCHS.values() if _layout_shapes(a, num_classes) == shapes]


def _misfit(src: str | Path, arch: str, dataset: str, num_classes: int, sd: dict, report: LoadReport) -> str:
    """Why a CIRKD file does not fit the architecture it is converted as, and what to pass instead."""
    head = f"{src} does not fit --arch {arch} with --dataset {dataset} ({num_classes} classes)"
    if not any(k.startswith("pretrained.") for k in sd):  # every CIRKD v1 model keeps its backbone there
        return (
            f"{head}: its keys ({_short(sorted(sd), 3)}) are not CIRKD's v1 layout "
            f"({', '.join(p + '*' for p in _CIRKD_PREFIXES)}); only CIRKD v1 segmentation checkpoints convert"
        )
    mapped = map_cirkd_segmentation(sd)
    cls = mapped.get("head.classifier.weight")
    file_classes = int(cls.shape[0]) if cls is not None and cls.ndim == 4 else num_classes
    fits = _fitting_archs(mapped, file_classes)
    if fits:
        fix = f"it is a {fits[0]}" + (f" with {file_classes} classes" if file_classes != num_classes else "")
        fix += f": pass --arch {fits[0]}"
        if file_classes != num_classes:
            fix += f" and a --dataset with {file_classes} classes"
    elif file_classes != num_classes:
        fix = f"it predicts {file_classes} classes: pass a --dataset with {file_classes} classes"
    else:
        fix = (
            "it matches none of the CIRKD-layout models at their default width "
            f"({', '.join(CIRKD_ARCHS.values())}): another width, backbone or a modified head"
        )
    return f"{head}; {fix}.\n{report}"


def convert_cirkd_checkpoint(
    src: str | Path, arch: str, dataset: str, out: str | Path, *, crop: tuple[int, int] = (512, 1024)
) -> LoadReport:
    """Turn a CIRKD v1 segmentation checkpoint into a self-describing checkpoint of this toolkit.

    The weights must fit ``arch`` exactly (every key, every shape, the dataset's class count); otherwise a
    :class:`WeightsError` names the file, the mismatch and the architecture the file does fit, and nothing is
    written. The model is recorded with CIRKD's final upsampling (bilinear, ``align_corners=True``), so that
    every runner and export reproduces CIRKD's full-size output.
    """
    from segkd.distill.checkpoint import save_checkpoint
    from segkd.distill.models import build_model
    from segkd.infer.datasets import dataset_info
    from segkd.infer.meta import CIRKD_BGR, ModelMeta

    class_names, palette = dataset_info(dataset)
    spec = {"name": arch, "num_classes": len(class_names), "align_corners": True}  # CIRKD's upsampling
    model = build_model(**spec)
    sd = read_state_dict(src)
    report = load_mapped(model, map_cirkd_segmentation(sd), strict=False)
    if not report.ok:
        raise WeightsError(_misfit(src, arch, dataset, len(class_names), sd, report))
    mean, std, order = CIRKD_BGR
    meta = ModelMeta(
        arch=spec,
        class_names=list(class_names),
        palette=[list(c) for c in palette],
        mean=list(mean),
        std=list(std),
        channel_order=order,
        input_size=list(crop),
    )
    save_checkpoint(out, model, meta, {"converted_from": str(src), "source_layout": "cirkd-v1"})
    return report


# Registered models whose weights come in the Hugging Face layout (segkd.distill.models.hf).
HF_ARCH_PREFIXES = ("segformer_", "upernet_swin_")


def _file_classes(src: str) -> int | None:
    """The class count a Hugging Face model's own config.json declares (None when it cannot be read)."""
    try:
        from transformers import AutoConfig

        return len(AutoConfig.from_pretrained(src).id2label)
    except Exception:  # only used to word an error better
        return None


def convert_hf_checkpoint(
    src: str | Path,
    arch: str,
    dataset: str,
    out: str | Path,
    *,
    crop: tuple[int, int] = (512, 1024),
    arch_kwargs: dict[str, Any] | None = None,
) -> list[str]:
    """Turn a whole Hugging Face SegFormer / UPerNet-Swin model into a self-describing checkpoint.

    ``src`` is a model id (``openmmlab/upernet-swin-tiny``, ``nvidia/segformer-b0-finetuned-ade-512-512``) or a
    local folder of one. Every weight must load, the classifier included (the dataset's class count); otherwise
    a :class:`WeightsError` says what is missing and nothing is written. Normalisation is the ImageNet mean/std on
    RGB, what these models' image processors apply. Returns the names of the weights that did not come from the
    file (none but BatchNorm counters).
    """
    from segkd.distill.checkpoint import save_checkpoint
    from segkd.distill.models import build_model
    from segkd.infer.datasets import dataset_info
    from segkd.infer.meta import ModelMeta

    if not arch.startswith(HF_ARCH_PREFIXES):
        raise WeightsError(
            f"--arch {arch} is not a Hugging Face model family ({', '.join(HF_ARCH_PREFIXES)}*)"
        )
    class_names, palette = dataset_info(dataset)
    spec = {"name": arch, "num_classes": len(class_names), **(arch_kwargs or {})}
    model = build_model(**spec, pretrained=str(src))
    gaps = [k for k in model.not_pretrained if not k.endswith("num_batches_tracked")]
    if gaps:
        file_classes = _file_classes(str(src))
        only_classifiers = all(
            ".classifier." in f".{k}" for k in gaps
        )  # the heads loaded, the class count differs
        if only_classifiers and file_classes is not None and file_classes != len(class_names):
            fix = f"its classifier predicts {file_classes} classes: pass a --dataset with {file_classes} classes"
        else:
            fix = (
                "an ImageNet encoder is a student's starting point (set student.pretrained to it in the training "
                "config), not a model to convert"
            )
        raise WeightsError(
            f"{src} is not a whole {arch} for --dataset {dataset} ({len(class_names)} classes): {len(gaps)} "
            f"weights did not load from it (e.g. {_short(gaps, 3)}); {fix}"
        )
    meta = ModelMeta(
        arch=spec, class_names=list(class_names), palette=[list(c) for c in palette], input_size=list(crop)
    )
    save_checkpoint(out, model, meta, {"converted_from": str(src), "source_layout": "huggingface"})
    return list(model.not_pretrained)


def _model_arg(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Convert a CIRKD v1 segmentation checkpoint (e.g. its DeepLabV3-R101 Cityscapes teacher), or a "
        "Hugging Face SegFormer / UPerNet-Swin model (id or local folder), into a self-describing checkpoint."
    )
    p.add_argument(
        "src", help="CIRKD .pth file; or a Hugging Face model id / folder for segformer_* and upernet_swin_*"
    )
    p.add_argument(
        "--arch", required=True, help="model name, e.g. deeplabv3_r101, upernet_swin_b, segformer_b0"
    )
    p.add_argument("--dataset", default="cityscapes", help="dataset whose classes the model predicts")
    p.add_argument("--out", required=True, help="output .pth")
    p.add_argument("--crop", default="512x1024", help="training crop HxW recorded in the metadata")
    p.add_argument(
        "--model-arg", action="append", type=_model_arg, default=[], metavar="KEY=VALUE",
        help="builder option of a Hugging Face family, e.g. window_size=12 (repeatable)",
    )  # fmt: skip
    a = p.parse_args(argv)
    h, w = parse_hw(a.crop)
    try:
        if a.arch.startswith(HF_ARCH_PREFIXES):
            convert_hf_checkpoint(a.src, a.arch, a.dataset, a.out, crop=(h, w), arch_kwargs=dict(a.model_arg))
            print(f"loaded every weight of {a.arch} from {a.src}")
        else:
            if a.model_arg:
                p.error("--model-arg is for the Hugging Face families (segformer_*, upernet_swin_*)")
            print(convert_cirkd_checkpoint(a.src, a.arch, a.dataset, a.out, crop=(h, w)))
    except (WeightsError, KeyError, ImportError) as e:
        print(f"error: {e}")
        return 1
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
