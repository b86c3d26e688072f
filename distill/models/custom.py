"""Bring your own model: any ``nn.Module`` as a student or teacher, named by its import path.

The module is built from ``import_path`` (``"mypkg.models:build"``, a class or a function) with ``kwargs``; the
outputs of the modules named in ``logits`` and ``features`` (dotted names from ``named_modules()``) are read with
forward hooks, so the user's code stays as it is. In a run's config::

    student:
      name: imported
      options:
        import_path: mypkg.models:build
        kwargs: {num_classes: 19}
        logits: head.classifier          # (N, K, h, w); empty: the module's own output
        features: {feat: head.fuse}      # what feature losses compare (source: feat)

The checkpoint's ``arch`` records the import path and options, so the checkpoint loads and exports wherever that
import path resolves.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import model_family, register_model

__all__ = ["ImportedModel", "imported", "resolve_import"]


def resolve_import(path: str) -> Any:
    """``"pkg.module:attr"`` -> the attribute, with an error that says what to fix."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"import_path must look like 'mypkg.models:build', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"cannot import {module_name!r} for import_path {path!r}: {exc}; is it on PYTHONPATH?"
        ) from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ImportError(f"{module_name!r} has no attribute {attr!r} (import_path {path!r})")
        obj = getattr(obj, part)
    return obj


class ImportedModel(nn.Module):
    """A user's module with the :mod:`segkd.distill.models` output contract, read through forward hooks.

    ``stages`` holds the outputs of any named features other than ``feat`` (in the order given); ``aux`` is None.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        logits: str = "",
        features: Mapping[str, str] | None = None,
        align_corners: bool = False,
        probe_size: tuple[int, int] = (64, 64),
    ) -> None:
        super().__init__()
        self.net = net
        self.align_corners = align_corners
        self._logits_name = logits
        self._feature_names = dict(features or {})
        self._captured: dict[str, Tensor] = {}
        modules = dict(net.named_modules())
        wanted = {"logits": logits} if logits else {}
        wanted.update(self._feature_names)
        for key, name in wanted.items():
            if name not in modules:
                names = ", ".join(n for n in modules if n) or "(none)"
                raise ValueError(
                    f"no module {name!r} (for {key!r}) in {type(net).__name__}; its modules: {names}"
                )
            # a partial of a bound method, not a closure: copy.deepcopy (the exporter's) rebinds it to the copy
            modules[name].register_forward_hook(functools.partial(self._keep, key))
        # feature losses size their projectors from feat_channels: one probe forward reads it
        self.feat_channels = 0
        if "feat" in self._feature_names:
            with torch.no_grad():
                was_training = net.training
                net.eval()
                self.feat_channels = int(
                    self(torch.zeros(1, 3, *probe_size), return_features=True)["feat"].shape[1]
                )
                net.train(was_training)

    def _keep(self, key: str, _module: nn.Module, _args: Any, output: Any) -> None:
        if not isinstance(output, Tensor):
            raise TypeError(f"the module captured as {key!r} returned {type(output).__name__}, not a tensor")
        self._captured[key] = output

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | dict[str, Any]:
        self._captured = {}
        result = self.net(x)
        captured, self._captured = self._captured, {}
        logits = captured.get("logits", result)
        if not isinstance(logits, Tensor) or logits.ndim != 4:
            raise TypeError(
                "the model's logits must be an (N, K, h, w) tensor; name the classifier module in 'logits' "
                f"when the module returns something else (got {type(logits).__name__})"
            )
        out = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        if not return_features:
            return out
        stages = [captured[k] for k in self._feature_names if k != "feat"]
        return {"out": out, "logits": logits, "aux": None, "feat": captured.get("feat"), "stages": stages}


@register_model
@model_family  # a family of one: an option it lacks is refused like any model's
def imported(
    *,
    num_classes: int = 19,
    import_path: str = "",
    kwargs: Mapping[str, Any] | None = None,
    logits: str = "",
    features: Mapping[str, str] | None = None,
    align_corners: bool = False,
    aux: bool = False,
    pretrained: str | None = None,
) -> ImportedModel:
    """A user-defined model built by ``import_path(**kwargs)``; ``num_classes`` is checked against its output."""
    if not import_path:
        raise ValueError("model 'imported' needs options.import_path, e.g. 'mypkg.models:build'")
    if aux:
        raise ValueError("model 'imported' has no auxiliary head: set train.aux_weight: 0")
    if pretrained:
        raise ValueError("model 'imported' takes no pretrained file: load the weights inside your builder")
    net = resolve_import(import_path)(**dict(kwargs or {}))
    if not isinstance(net, nn.Module):
        raise TypeError(f"{import_path} returned {type(net).__name__}, not a torch.nn.Module")
    model = ImportedModel(net, logits=logits, features=features, align_corners=align_corners)
    with torch.no_grad():
        was_training = net.training
        net.eval()
        k = model(torch.zeros(1, 3, 64, 64)).shape[1]
        net.train(was_training)
    if k != num_classes:
        raise ValueError(
            f"{import_path} outputs {k} classes but {num_classes} are expected; set its kwargs to match"
        )
    return model
