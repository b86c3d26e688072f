"""SegFormer (Mix Transformer encoder MiT-B0 ... B5 + all-MLP decoder), from Hugging Face ``transformers``.

Sizes follow the SegFormer paper (Xie et al., 2021): B0 3.8M parameters at 150 classes, B1 13.7M, B2 27.5M, B3
47.3M, B4 64.1M, B5 84.7M. The logits are at 1/4 of the input (the CNNs' are at 1/8); ``aux`` is None.
``depths`` and ``decoder_hidden_size`` shrink a model for tests and quick runs.

``pretrained``: a Hugging Face model id or a local folder of one: an ImageNet MiT encoder (``nvidia/mit-b0`` ...
``nvidia/mit-b5``: the decoder starts from scratch) or a whole SegFormer (``nvidia/segformer-b0-finetuned-ade-512-
512``: the decoder loads too when its class count matches). The encoder must fit entirely.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from .hf import HFSegModel, load_pretrained, require_transformers, unloaded, unused
from .pretrained import WeightsError
from .registry import model_family, register_model

__all__ = ["segformer_b0", "segformer_b1", "segformer_b2", "segformer_b3", "segformer_b4", "segformer_b5"]

# variant -> (hidden sizes per stage, depths per stage, decoder width), as in the paper and nvidia/mit-b*
_VARIANTS: dict[str, tuple[list[int], list[int], int]] = {
    "b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256),
    "b1": ([64, 128, 320, 512], [2, 2, 2, 2], 256),
    "b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768),
    "b3": ([64, 128, 320, 512], [3, 4, 18, 3], 768),
    "b4": ([64, 128, 320, 512], [3, 8, 27, 3], 768),
    "b5": ([64, 128, 320, 512], [3, 6, 40, 3], 768),
}


def _encode(net: nn.Module, x: Tensor) -> Sequence[Tensor]:
    return net.segformer(x, output_hidden_states=True, return_dict=True).hidden_states


@model_family
def _segformer(
    variant: str,
    *,
    num_classes: int = 19,
    depths: Sequence[int] | None = None,
    decoder_hidden_size: int | None = None,
    drop_path_rate: float = 0.1,
    align_corners: bool = False,
    pretrained: str | None = None,
) -> HFSegModel:
    """SegFormer-``variant`` (``b0`` ... ``b5``); ``depths`` and ``decoder_hidden_size`` default to the paper's."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    hidden_sizes, default_depths, default_decoder = _VARIANTS[variant]
    depths = list(depths) if depths is not None else default_depths
    if len(depths) != 4 or min(depths) < 1:
        raise ValueError(f"segformer_{variant}: depths must be 4 positive integers, got {depths}")
    transformers = require_transformers()
    config = transformers.SegformerConfig(
        hidden_sizes=hidden_sizes,
        depths=depths,
        decoder_hidden_size=decoder_hidden_size or default_decoder,
        num_labels=num_classes,
        drop_path_rate=drop_path_rate,
    )
    cls = transformers.SegformerForSemanticSegmentation
    not_pretrained = None
    if pretrained:
        net, info = load_pretrained(cls, str(pretrained), config)
        not_pretrained = unloaded(info)
        _require_encoder(f"segformer_{variant}", str(pretrained), not_pretrained + unused(info))
    else:
        net = cls(config)
    model = HFSegModel(
        net,
        _encode,
        net.decode_head,
        None,
        feat_channels=config.decoder_hidden_size,
        align_corners=align_corners,
    )
    if not_pretrained is not None:
        model.not_pretrained = not_pretrained
    return model


def _require_encoder(arch: str, source: str, not_loaded: list[str]) -> None:
    """Refuse weights that leave part of the encoder at random or hold more of it: another MiT size."""
    encoder = [k for k in not_loaded if k.startswith("segformer.")]
    if encoder:
        raise WeightsError(
            f"{source} does not fit {arch}'s encoder: {len(encoder)} weights are missing, extra or shaped "
            f"differently (e.g. {', '.join(encoder[:3])}); use the matching size "
            f"(nvidia/mit-{arch.rsplit('_', 1)[1]} for {arch}) or another segformer_b*"
        )


@register_model(hf=True, transformer=True)
def segformer_b0(**kw: Any) -> HFSegModel:
    """SegFormer-B0 (3.8M parameters at 150 classes), the edge-GPU student."""
    return _segformer("b0", **kw)


@register_model(hf=True, transformer=True)
def segformer_b1(**kw: Any) -> HFSegModel:
    """SegFormer-B1 (13.7M parameters at 150 classes)."""
    return _segformer("b1", **kw)


@register_model(hf=True, transformer=True)
def segformer_b2(**kw: Any) -> HFSegModel:
    """SegFormer-B2 (27.5M parameters at 150 classes)."""
    return _segformer("b2", **kw)


@register_model(hf=True, transformer=True)
def segformer_b3(**kw: Any) -> HFSegModel:
    """SegFormer-B3 (47.3M parameters at 150 classes)."""
    return _segformer("b3", **kw)


@register_model(hf=True, transformer=True)
def segformer_b4(**kw: Any) -> HFSegModel:
    """SegFormer-B4 (64.1M parameters at 150 classes)."""
    return _segformer("b4", **kw)


@register_model(hf=True, transformer=True)
def segformer_b5(**kw: Any) -> HFSegModel:
    """SegFormer-B5 (84.7M parameters at 150 classes)."""
    return _segformer("b5", **kw)
