"""Hugging Face ``transformers`` segmentation models behind the project's output contract.

``transformers`` is an optional extra (``pip install segkd[transformers]``): it is imported inside the builders of
``segformer.py`` and ``upernet.py`` only, so the CNN models never need it. It was chosen over hand-written attention
or mmsegmentation because it is maintained, imports without torchvision or mmcv, and loads the public checkpoints
(``nvidia/mit-b0``, ``openmmlab/upernet-swin-tiny``) by their usual names.

The wrapped network is kept whole (``self.net``), so its state dict keeps the Hugging Face layout under ``net.``
(the layout of ``transformers`` 5, which renamed SegFormer's and Swin's modules: hence the version floor); the
decoder feature is read by a forward pre-hook on the decode head's classifier, which leaves the library's forward
untouched.

Public weights (``nvidia/mit-b0``, ``nvidia/segformer-b0-finetuned-ade-512-512``, ``microsoft/swin-tiny-patch4-
window7-224``, ``openmmlab/upernet-swin-tiny``, or a local folder holding such a download) load through the library's
own ``from_pretrained``, which reads safetensors (or a weights-only ``.bin``) and maps the older published key
layouts onto today's: see :func:`load_pretrained`.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "HFSegModel",
    "LoadInfo",
    "load_pretrained",
    "pretrained_model_type",
    "require_transformers",
    "unloaded",
    "unused",
]


def require_transformers() -> Any:
    """Import ``transformers`` or say how to install it."""
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(
            "the SegFormer and UPerNet-Swin models need Hugging Face transformers: "
            "pip install 'segkd[transformers]' (or pip install 'transformers>=5.24')"
        ) from exc
    if int(transformers.__version__.split(".")[0]) < 5:
        raise ImportError(
            f"transformers {transformers.__version__} is too old: the SegFormer and UPerNet-Swin checkpoints hold "
            "the module layout of transformers 5; pip install -U 'transformers>=5.24'"
        )
    return transformers


LoadInfo = dict[str, list]  # transformers' loading info: missing_keys, unexpected_keys, mismatched_keys


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence the library's notices and progress bars while loading: the caller reports what did not load."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _offline_hint(source: str) -> str:
    return (
        f"download it where there is internet (`hf download {source} --local-dir DIR`, or "
        f"huggingface_hub.snapshot_download) and pass the folder DIR instead"
    )


def pretrained_model_type(source: str) -> str:
    """``model_type`` of a Hugging Face model id or local folder (from its ``config.json``), e.g. ``swin``."""
    from segkd.distill.models.pretrained import WeightsError

    transformers = require_transformers()
    try:
        with _quiet_transformers():
            return str(transformers.AutoConfig.from_pretrained(source).model_type)
    except (OSError, ValueError) as e:
        where = "folder" if Path(source).expanduser().exists() else "Hugging Face model id (or local folder)"
        raise WeightsError(
            f"cannot read the configuration of pretrained {where} {source!r} ({str(e).splitlines()[0][:160]}); "
            + (
                "a local folder needs the config.json of the download"
                if where == "folder"
                else _offline_hint(source)
            )
        ) from e


def load_pretrained(cls: Any, source: str, config: Any) -> tuple[nn.Module, LoadInfo]:
    """``cls.from_pretrained(source)`` built with ``config`` (the architecture asked for, not the file's).

    Weights whose shape differs from ``config``'s (another class count, another window size) are left at their
    initialisation and listed under ``mismatched_keys``; the caller decides which gaps are acceptable.

    Raises:
        WeightsError: ``source`` cannot be read or downloaded (the message says how to fetch it by hand).
    """
    from segkd.distill.models.pretrained import WeightsError

    try:
        with _quiet_transformers():
            net, info = cls.from_pretrained(
                source, config=config, ignore_mismatched_sizes=True, output_loading_info=True
            )
    except pickle.UnpicklingError as e:  # a pytorch_model.bin with Python objects: torch refused to run them
        raise WeightsError(
            f"cannot load pretrained weights {source!r}: its pytorch_model.bin holds Python objects besides tensors, "
            "and loading those could run code; use a copy saved as model.safetensors (save_pretrained does so)"
        ) from e
    except (OSError, ValueError) as e:
        raise WeightsError(
            f"cannot load pretrained weights {source!r} ({str(e).splitlines()[0][:160]}); "
            + ("the folder needs config.json and model.safetensors (or pytorch_model.bin)"
               if Path(source).expanduser().is_dir() else _offline_hint(source))
        ) from e  # fmt: skip
    return net, info


def unloaded(info: LoadInfo, prefix: str = "") -> list[str]:
    """The weights under ``prefix`` that ``from_pretrained`` did not fill (missing or mis-shaped)."""
    names = list(info.get("missing_keys", [])) + [m[0] for m in info.get("mismatched_keys", [])]
    return sorted(k for k in names if k.startswith(prefix))


def unused(info: LoadInfo, prefix: str = "") -> list[str]:
    """The file's weights under ``prefix`` that fit nowhere (e.g. the blocks of a deeper model)."""
    return sorted(k for k in info.get("unexpected_keys", []) if k.startswith(prefix))


class HFSegModel(nn.Module):
    """A ``transformers`` segmentation network with the :mod:`segkd.distill.models` output contract.

    Args:
        net: the ``...ForSemanticSegmentation`` module.
        encode: ``net, x -> 4 stage outputs (NCHW)``.
        head: the decode head, called on the stages; it must own a ``classifier`` (its input is ``feat``).
        aux_head: optional auxiliary head called on the stages (UPerNet's FCN head on stage 3).
        feat_channels: channels of ``feat``.
        align_corners: the final bilinear upsampling of the logits to the input size.
    """

    def __init__(
        self,
        net: nn.Module,
        encode: Callable[[nn.Module, Tensor], Sequence[Tensor]],
        head: nn.Module,
        aux_head: nn.Module | None,
        *,
        feat_channels: int,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.net = net
        self._encode = encode
        self._head = [head]  # a list: the head is already registered inside ``net``
        self._aux_head = [aux_head]
        self.feat_channels = feat_channels
        self.align_corners = align_corners
        self._feat: Tensor | None = None
        # Parameters of ``net`` the pretrained weights did not fill (all of them without pretrained weights).
        self.not_pretrained: list[str] = sorted(k for k, _ in net.named_parameters())
        head.classifier.register_forward_pre_hook(self._keep_feat)

    def _keep_feat(self, _module: nn.Module, args: tuple[Tensor, ...]) -> None:
        self._feat = args[0]

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | dict[str, Any]:
        stages = list(self._encode(self.net, x))  # 4 x (N, C_i, H/2^(i+2), W/2^(i+2))
        logits = self._head[0](stages)  # (N, K, H/4, W/4)
        feat, self._feat = self._feat, None  # (N, C, H/4, W/4)
        out = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        if not return_features:
            return out
        aux_head = self._aux_head[0]
        aux = aux_head(stages) if aux_head is not None else None
        return {"out": out, "logits": logits, "aux": aux, "feat": feat, "stages": stages}
