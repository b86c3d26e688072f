"""The three registries of the model zoo: whole models, backbones and decode heads.

A model file registers its parts and its builders here::

    @register_backbone
    def resnet18(*, width=1.0, ...) -> ResNet: ...

    @register_head("aspp")
    class ASPPHead(nn.Module): ...

    @model_family
    def _segformer(variant, *, num_classes=19, depths=None, ...) -> HFSegModel: ...   # the options, once

    @register_model(hf=True, transformer=True)
    def segformer_b0(**kw) -> HFSegModel:
        return _segformer("b0", **kw)

A model's traits (:class:`ModelTraits`) are given where it registers and read with :func:`model_traits`: what the
converter, the set-up checks and the exporters decide by. Each registry raises on a duplicate name and answers an
unknown one with the valid names and the closest match.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from segkd.infer.registry import Registry

__all__ = [
    "MODELS",
    "BACKBONES",
    "HEADS",
    "ModelTraits",
    "OptionError",
    "model_family",
    "model_traits",
    "register_model",
    "register_backbone",
    "register_head",
]

F = TypeVar("F", bound=Callable)

MODELS: Registry = Registry("model")
BACKBONES: Registry = Registry("backbone")
HEADS: Registry = Registry("head")


@dataclass(frozen=True)
class ModelTraits:
    """What a model is, beyond its builder: given once, at ``@register_model``.

    Attributes:
        hf: a Hugging Face ``transformers`` network (weights in its layout, converted with ``convert_hf_checkpoint``;
            ``pretrained`` is a model id or a folder of one).
        transformer: attention and LayerNorm layers: OpenVINO's INT8 takes NNCF's transformer scheme.
    """

    hf: bool = False
    transformer: bool = False


_TRAITS: dict[
    str, ModelTraits
] = {}  # model name -> traits; read through model_traits, which asks MODELS first


@overload
def register_model(fn: F, /) -> F: ...
@overload
def register_model(*, hf: bool = False, transformer: bool = False) -> Callable[[F], F]: ...
def register_model(
    fn: F | None = None, /, *, hf: bool = False, transformer: bool = False
) -> F | Callable[[F], F]:
    """Register a model builder under its function name (``deeplabv3_r18``): what ``build_model`` calls.

    Bare (``@register_model``) for a CNN; with its traits (``@register_model(hf=True, transformer=True)``) for a
    model that has them.
    """

    def register(builder: F) -> F:
        MODELS.register()(builder)
        _TRAITS[builder.__name__] = ModelTraits(hf=hf, transformer=transformer)
        return builder

    return register if fn is None else register(fn)


def model_traits(name: str) -> ModelTraits:
    """The traits ``name`` was registered with; an unknown name raises KeyError naming the valid ones."""
    MODELS.get(name)
    return _TRAITS[name]


class OptionError(TypeError):
    """Options a model builder does not take; ``build_model`` names the model in its message."""

    def __init__(self, unknown: list[str], valid: list[str]) -> None:
        super().__init__(f"no option {', '.join(map(repr, unknown))}; its options: {', '.join(valid)}")
        self.unknown, self.valid = unknown, valid


def model_family(fn: F) -> F:
    """Make ``fn`` a family's builder: its keyword-only parameters, each with a default, are the options every
    member takes (``fn(variant, *, num_classes=19, ..., pretrained=None)``); a call with another option raises
    :class:`OptionError` listing them, before anything is built."""
    params = inspect.signature(fn).parameters.values()
    options = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert all(p.default is not inspect.Parameter.empty for p in params if p.name in options), fn.__name__
    assert {"num_classes", "pretrained"} <= set(options), fn.__name__  # what build_model passes
    shown = [k for k in options if k not in ("num_classes", "pretrained")]

    @functools.wraps(fn)
    def build(*args: Any, **kw: Any) -> Any:
        unknown = sorted(k for k in kw if k not in options)
        if unknown:
            raise OptionError(unknown, shown)
        return fn(*args, **kw)

    return build  # type: ignore[return-value]


def register_backbone(fn: F) -> F:
    """Register a backbone builder under its function name (``resnet18``)."""
    return BACKBONES.register()(fn)


def register_head(name: str) -> Callable[[F], F]:
    """Register a decode head class under ``name`` (``aspp``, ``psp``, ``fcn``)."""
    return HEADS.register(name)
