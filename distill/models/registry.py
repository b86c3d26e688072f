"""The three registries of the model zoo: whole models, backbones and decode heads.

A model file registers its parts and its builders here::

    @register_backbone
    def resnet18(*, width=1.0, ...) -> ResNet: ...

    @register_head("aspp")
    class ASPPHead(nn.Module): ...

    @register_model
    def deeplabv3_r18(*, num_classes=19, ...) -> SegModel: ...

Each registry raises on a duplicate name and answers an unknown one with the valid names and the closest match.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from segkd.infer.registry import Registry

__all__ = ["MODELS", "BACKBONES", "HEADS", "register_model", "register_backbone", "register_head"]

F = TypeVar("F", bound=Callable)

MODELS: Registry = Registry("model")
BACKBONES: Registry = Registry("backbone")
HEADS: Registry = Registry("head")


def register_model(fn: F) -> F:
    """Register a model builder under its function name (``deeplabv3_r18``): what ``build_model`` calls."""
    return MODELS.register()(fn)


def register_backbone(fn: F) -> F:
    """Register a backbone builder under its function name (``resnet18``)."""
    return BACKBONES.register()(fn)


def register_head(name: str) -> Callable[[F], F]:
    """Register a decode head class under ``name`` (``aspp``, ``psp``, ``fcn``)."""
    return HEADS.register(name)
