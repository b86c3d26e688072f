"""Foreign weights -> a self-describing checkpoint: CIRKD v1 segmentation files and Hugging Face models.

    segkd convert deeplabv3_resnet101_citys_best_model.pth --arch deeplabv3_r101 \
        --dataset cityscapes --out teacher_r101_citys.pth
    segkd convert openmmlab/upernet-swin-base --arch upernet_swin_b --dataset ade20k \
        --crop 512x512 --out teacher_upernet_swin_b_ade.pth

A CIRKD file's keys are mapped by :mod:`segkd.distill.models.pretrained`; a Hugging Face model (an ``hf`` model of
the registry) is read by the library's ``from_pretrained``. An ImageNet encoder (``nvidia/mit-b0``,
``microsoft/swin-tiny-patch4-window7-224``) is not converted: it is a student's starting point, given as
``student.pretrained`` in the training config.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

import torch

from segkd.distill.checkpoint import save_checkpoint
from segkd.distill.models import MODELS, build_model, model_traits
from segkd.distill.models.pretrained import (
    OFFICIAL_LAYOUTS,
    LoadReport,
    WeightsError,
    load_mapped,
    map_cirkd_segmentation,
    read_state_dict,
    short_keys,
    strip_training_wrappers,
)
from segkd.infer.cliargs import parse_hw
from segkd.infer.datasets import dataset_info
from segkd.infer.meta import CIRKD_BGR, ModelMeta

__all__ = [
    "CIRKD_ARCHS",
    "convert_cirkd_checkpoint",
    "convert_hf_checkpoint",
    "convert_official_checkpoint",
    "main",
]


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
            f"{head}: its keys ({short_keys(sorted(sd), 3)}) are not CIRKD's v1 layout "
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


def _official_misfit(
    src: str | Path,
    arch: str,
    dataset: str,
    num_classes: int,
    mapped: dict[str, torch.Tensor],
    report: LoadReport,
) -> str:
    """Why an official file does not fit ``arch``: another variant of the family, another class count, or neither."""
    head = f"{src} does not fit --arch {arch} with --dataset {dataset} ({num_classes} classes)"
    shapes = {k: tuple(v.shape) for k, v in mapped.items()}
    want = _layout_shapes(arch, num_classes)
    # The class count: the output channels of the tensors whose shape differs only there.
    counts = {got[0] for k, got in shapes.items() if k in want and got != want[k] and got[1:] == want[k][1:]}
    file_classes = counts.pop() if len(counts) == 1 else num_classes
    fits = [a for a in OFFICIAL_LAYOUTS if _layout_shapes(a, file_classes) == shapes]
    if fits:
        fix = f"it is {fits[0]}" + (f" with {file_classes} classes" if file_classes != num_classes else "")
        fix += f": pass --arch {fits[0]}" + (
            f" and a --dataset with {file_classes} classes" if file_classes != num_classes else ""
        )
    elif file_classes != num_classes:
        fix = f"it predicts {file_classes} classes: pass a --dataset with {file_classes} classes"
    else:
        fix = f"its keys are not the layout of {OFFICIAL_LAYOUTS[arch].source}"
    return f"{head}; {fix}.\n{report}"


def convert_official_checkpoint(
    src: str | Path, arch: str, dataset: str, out: str | Path, *, crop: tuple[int, int] = (1024, 1024)
) -> LoadReport:
    """Turn an official checkpoint of a real-time model (PIDNet, DDRNet, BiSeNetV2, STDC) into a checkpoint here.

    The file must hold every weight of ``arch`` in the official layout (auxiliary heads included), with the
    dataset's class count; otherwise a :class:`WeightsError` names the file, the mismatch and the variant the file
    does fit, and nothing is written. The official normalisation and full-size upsampling are recorded.
    """
    layout = OFFICIAL_LAYOUTS[arch]
    class_names, palette = dataset_info(dataset)
    spec = {"name": arch, "num_classes": len(class_names), "align_corners": layout.align_corners}
    model = build_model(**spec)
    mapped = layout.map_keys(strip_training_wrappers(read_state_dict(src)))
    report = load_mapped(model, mapped, strict=False)
    if not report.ok:
        raise WeightsError(_official_misfit(src, arch, dataset, len(class_names), mapped, report))
    meta = ModelMeta(
        arch=spec,
        class_names=list(class_names),
        palette=[list(c) for c in palette],
        mean=list(layout.mean),
        std=list(layout.std),
        channel_order=layout.channel_order,
        input_size=list(crop),
    )
    save_checkpoint(out, model, meta, {"converted_from": str(src), "source_layout": layout.source})
    return report


def _is_hf(arch: str) -> bool:
    """A registered model whose weights come in the Hugging Face layout (``segkd.distill.models.hf``)."""
    return arch in MODELS and model_traits(arch).hf


def _hf_models() -> str:
    return ", ".join(n for n in MODELS.names() if model_traits(n).hf)


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
    if not _is_hf(arch):
        raise WeightsError(f"--arch {arch} is not a Hugging Face model; those are: {_hf_models()}")
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
            f"weights did not load from it (e.g. {short_keys(gaps, 3)}); {fix}"
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
        description="Convert a CIRKD v1 segmentation checkpoint (e.g. its DeepLabV3-R101 Cityscapes teacher), an "
        "official checkpoint of a real-time model (PIDNet, DDRNet, BiSeNetV2, STDC), or a Hugging Face SegFormer / "
        "UPerNet-Swin model (id or local folder), into a self-describing checkpoint."
    )
    p.add_argument(
        "src",
        help="CIRKD .pth file; or a Hugging Face model id / folder for a SegFormer or UPerNet-Swin --arch",
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
        if _is_hf(a.arch):
            convert_hf_checkpoint(a.src, a.arch, a.dataset, a.out, crop=(h, w), arch_kwargs=dict(a.model_arg))
            print(f"loaded every weight of {a.arch} from {a.src}")
        else:
            if a.model_arg:
                p.error(f"--model-arg is for the Hugging Face models ({_hf_models()})")
            convert = convert_official_checkpoint if a.arch in OFFICIAL_LAYOUTS else convert_cirkd_checkpoint
            print(convert(a.src, a.arch, a.dataset, a.out, crop=(h, w)))
    except (WeightsError, KeyError, ImportError) as e:
        print(f"error: {e}")
        return 1
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
