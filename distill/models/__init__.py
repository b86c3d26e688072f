"""Segmentation models, one named builder each (``deeplabv3_r18``, ``pspnet_mbv2``, ...).

Contract (what the trainer, the losses and the exporter rely on)::

    model = build_model("deeplabv3_r18", num_classes=19)
    out = model(x)                            # (N, K, H, W) logits at input resolution: what is exported
    d = model(x, return_features=True)        # dict, no hooks needed:
    d["out"]     # (N, K, H, W)   logits at input resolution
    d["logits"]  # (N, K, h, w)   logits at the output stride (1/8 CNNs, 1/4 SegFormer/UPerNet): what KD uses
    d["aux"]     # (N, K, h, w)   auxiliary FCN logits on stage 3, or None
    d["feat"]    # (N, C, h, w)   decoder feature before the classifier (C = model.feat_channels)
    d["stages"]  # 4 backbone stage outputs

The real-time students (``pidnet_s/m/l``, ``ddrnet_23_slim``/``ddrnet_23``, ``bisenetv2``, ``stdc1``/``stdc2``)
keep their official state-dict layout key for key (``segkd convert`` loads the official files, see
``pretrained.OFFICIAL_LAYOUTS``) and add their training-only outputs, computed in train mode only (in eval mode and
in every export the network runs its deployed path and has one output)::

    d["aux_all"]   # every auxiliary logits map (PIDNet's P branch, DDRNet's extra head, BiSeNetV2's four heads,
                   # STDC's two context heads); [] in eval. d["aux"] is the first of them.
    d["boundary"]  # (N, 1, h, w) PIDNet's D-branch boundary map or STDC's detail map; None otherwise

Where things live: ``registry.py`` (``MODELS``, ``BACKBONES``, ``HEADS``, each model's traits), ``backbones.py``
(resnet18/50/101, mobilenetv2), ``heads.py`` (aspp, psp, fcn), ``segmodel.py`` (the model class, its assembly and
the two CNN families: a head on a ResNet, on a MobileNetV2), ``pretrained.py`` (ImageNet and CIRKD key mapping), and
one file per architecture holding its ``@register_model`` builders (``deeplabv3.py``, ``pspnet.py``;
``segformer.py`` and ``upernet.py`` wrap Hugging Face ``transformers`` through ``hf.py``; ``custom.py`` is a user's
module by import path, read with forward hooks). A builder is one line into its family's ``@model_family``
builder, which holds the options; the traits (``hf``, ``transformer``) are given to ``@register_model``. A new
architecture is a new file here: every module of this package is imported below, so its builders register
themselves.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from .registry import (
    BACKBONES,
    HEADS,
    MODELS,
    ModelTraits,
    OptionError,
    model_traits,
    register_backbone,
    register_head,
    register_model,
)
from .segmodel import SegModel

__all__ = [
    "MODELS",
    "BACKBONES",
    "HEADS",
    "STUDENTS",
    "TEACHERS",
    "ModelTraits",
    "SegModel",
    "build_model",
    "model_traits",
    "register_model",
    "register_backbone",
    "register_head",
]


def _import_model_files() -> None:
    """Import every module of this package, so that no file's builders can be left unregistered."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_import_model_files()

STUDENTS = ["deeplabv3_r18", "pspnet_r18", "deeplabv3_mbv2", "pspnet_mbv2"]
TEACHERS = ["deeplabv3_r101", "pspnet_r101"]


def build_model(name: str, *, num_classes: int, pretrained: str | None = None, **kw: Any) -> SegModel:
    """Build a registered model.

    Args:
        name: registry name, e.g. ``deeplabv3_r18``; see ``MODELS.names()``.
        num_classes: output classes.
        pretrained: optional ImageNet backbone file (torchvision or CIRKD deep-stem layout); for SegFormer and
            UPerNet-Swin a Hugging Face model id or folder (``nvidia/mit-b0``, ``openmmlab/upernet-swin-tiny``).
        **kw: the builder's options, e.g. ``width`` (channel multiplier), ``output_stride`` (8/16/32),
            ``deep_stem`` (ResNet), ``aux``; the signature of the model's family builder shows them and their
            defaults.

    Raises:
        KeyError: an unknown name (the message lists the valid ones).
        TypeError: an option the model lacks (the message lists the model's options).
    """
    builder = MODELS.get(name)
    try:
        return builder(num_classes=num_classes, pretrained=pretrained, **kw)
    except OptionError as e:
        raise TypeError(f"model {name!r} has {e}") from None
