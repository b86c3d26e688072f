"""UPerNet on a Swin-T/S/B backbone, from Hugging Face ``transformers`` (the mmsegmentation recipe's layout).

Sizes as published (Swin paper, 512x512 ADE20K, with the auxiliary head): Swin-T 60M, Swin-S 81M, Swin-B 121M
parameters at 150 classes. The logits are at 1/4 of the input; ``aux`` is the FCN head on stage 3 (1/16).
``depths`` shrinks a model for tests and quick runs; ``window_size`` is Swin's attention window (7 for the
ImageNet-1k 224 models, 12 for the 384 ones).

``pretrained``: a Hugging Face model id or a local folder of one: an ImageNet Swin
(``microsoft/swin-tiny-patch4-window7-224``: the UPerNet heads start from scratch) or a whole UPerNet
(``openmmlab/upernet-swin-tiny``: the heads load too when the class count matches). The backbone must fit
entirely.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from .hf import HFSegModel, load_pretrained, pretrained_model_type, require_transformers, unloaded, unused
from .pretrained import WeightsError
from .registry import model_family, register_model

__all__ = ["upernet_swin_t", "upernet_swin_s", "upernet_swin_b"]

# variant -> (embedding width, depths per stage, attention heads per stage), as in the Swin paper
_VARIANTS: dict[str, tuple[int, list[int], list[int]]] = {
    "t": (96, [2, 2, 6, 2], [3, 6, 12, 24]),
    "s": (96, [2, 2, 18, 2], [3, 6, 12, 24]),
    "b": (128, [2, 2, 18, 2], [4, 8, 16, 32]),
}


def _encode(net: nn.Module, x: Tensor) -> Sequence[Tensor]:
    return net.backbone(x).feature_maps


@model_family
def _upernet_swin(
    variant: str,
    *,
    num_classes: int = 19,
    depths: Sequence[int] | None = None,
    head_channels: int = 512,
    window_size: int = 7,
    aux: bool = True,
    drop_path_rate: float = 0.3,
    align_corners: bool = False,
    pretrained: str | None = None,
) -> HFSegModel:
    """UPerNet on Swin-``variant`` (``t``, ``s``, ``b``); ``depths`` defaults to the paper's."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    embed_dim, default_depths, heads = _VARIANTS[variant]
    depths = list(depths) if depths is not None else default_depths
    if len(depths) != 4 or min(depths) < 1:
        raise ValueError(f"upernet_swin_{variant}: depths must be 4 positive integers, got {depths}")
    transformers = require_transformers()
    backbone = transformers.SwinConfig(
        embed_dim=embed_dim,
        depths=depths,
        num_heads=heads,
        window_size=window_size,
        drop_path_rate=drop_path_rate,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = transformers.UperNetConfig(
        backbone_config=backbone,
        hidden_size=head_channels,
        num_labels=num_classes,
        use_auxiliary_head=aux,
        auxiliary_in_channels=embed_dim * 4,  # stage 3
    )
    cls = transformers.UperNetForSemanticSegmentation
    not_pretrained = None
    if not pretrained:
        net = cls(config)
    elif pretrained_model_type(str(pretrained)) == "swin":  # an ImageNet Swin: the backbone only
        net = cls(config)
        backbone, info = load_pretrained(transformers.SwinBackbone, str(pretrained), config.backbone_config)
        net.backbone = backbone
        heads = sorted(k for k, _ in net.named_parameters() if not k.startswith("backbone."))
        not_pretrained = sorted(heads + [f"backbone.{k}" for k in unloaded(info)])
        extra = [f"backbone.{k}" for k in unused(info) if not k.startswith("classifier.")]  # ImageNet head
    else:
        net, info = load_pretrained(cls, str(pretrained), config)
        not_pretrained, extra = unloaded(info), unused(info)
    if not_pretrained is not None:
        _require_backbone(f"upernet_swin_{variant}", str(pretrained), not_pretrained + extra)
    model = HFSegModel(
        net,
        _encode,
        net.decode_head,
        net.auxiliary_head,
        feat_channels=head_channels,
        align_corners=align_corners,
    )
    if not_pretrained is not None:
        model.not_pretrained = not_pretrained
    return model


def _require_backbone(arch: str, source: str, not_loaded: list[str]) -> None:
    """Refuse weights that leave part of the Swin backbone at random or hold more of it (another size/window)."""
    backbone = [k for k in not_loaded if k.startswith("backbone.") and ".hidden_states_norms." not in f".{k}"]
    if backbone:
        raise WeightsError(
            f"{source} does not fit {arch}'s Swin backbone: {len(backbone)} weights are missing, extra or shaped "
            f"differently (e.g. {', '.join(backbone[:3])}); use the matching Swin size, and window_size= the "
            "file's window (12 for the 384x384 ImageNet-22k models)"
        )


@register_model(hf=True, transformer=True)
def upernet_swin_t(**kw: Any) -> HFSegModel:
    """UPerNet-Swin-T (60M parameters at 150 classes), seed 003's student."""
    return _upernet_swin("t", **kw)


@register_model(hf=True, transformer=True)
def upernet_swin_s(**kw: Any) -> HFSegModel:
    """UPerNet-Swin-S (81M parameters at 150 classes)."""
    return _upernet_swin("s", **kw)


@register_model(hf=True, transformer=True)
def upernet_swin_b(**kw: Any) -> HFSegModel:
    """UPerNet-Swin-B (121M parameters at 150 classes), seed 003's teacher."""
    return _upernet_swin("b", **kw)
