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

from torch import Tensor, nn

from .hf import HFSegModel, load_pretrained, require_transformers, unloaded, unused
from .registry import register_model

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


def _segformer(
    variant: str,
    *,
    num_classes: int,
    depths: Sequence[int] | None,
    decoder_hidden_size: int | None,
    drop_path_rate: float,
    align_corners: bool,
    pretrained: str | None,
) -> HFSegModel:
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
    from .pretrained import WeightsError

    encoder = [k for k in not_loaded if k.startswith("segformer.")]
    if encoder:
        raise WeightsError(
            f"{source} does not fit {arch}'s encoder: {len(encoder)} weights are missing, extra or shaped "
            f"differently (e.g. {', '.join(encoder[:3])}); use the matching size "
            f"(nvidia/mit-{arch.rsplit('_', 1)[1]} for {arch}) or another segformer_b*"
        )


def _builder(variant: str, doc: str):
    def build(
        *,
        num_classes: int = 19,
        depths: Sequence[int] | None = None,
        decoder_hidden_size: int | None = None,
        drop_path_rate: float = 0.1,
        align_corners: bool = False,
        pretrained: str | None = None,
    ) -> HFSegModel:
        return _segformer(
            variant,
            num_classes=num_classes,
            depths=depths,
            decoder_hidden_size=decoder_hidden_size,
            drop_path_rate=drop_path_rate,
            align_corners=align_corners,
            pretrained=pretrained,
        )

    build.__name__ = build.__qualname__ = f"segformer_{variant}"
    build.__doc__ = doc
    return register_model(build)


segformer_b0 = _builder("b0", "SegFormer-B0 (3.8M parameters at 150 classes), the edge-GPU student.")
segformer_b1 = _builder("b1", "SegFormer-B1 (13.7M parameters at 150 classes).")
segformer_b2 = _builder("b2", "SegFormer-B2 (27.5M parameters at 150 classes).")
segformer_b3 = _builder("b3", "SegFormer-B3 (47.3M parameters at 150 classes).")
segformer_b4 = _builder("b4", "SegFormer-B4 (64.1M parameters at 150 classes).")
segformer_b5 = _builder("b5", "SegFormer-B5 (84.7M parameters at 150 classes).")
