"""The loss registry, the declared parameter spec, the base class every distillation loss derives from, helpers.

Every loss is called as ``loss(student, teacher, target)`` where ``student`` and ``teacher`` are the dicts a
``SegModel`` returns with ``return_features=True`` (at least ``logits`` (N, K, h, w) and ``feat`` (N, C, h, w)) and
``target`` is the label map (N, H, W) with 255 marking ignored pixels. It returns the *weighted* scalar.

A loss declares its constructor options in a class-level ``params`` table of :class:`Param` rows; the tables of
its base classes are inherited (``weight`` and ``source`` from :class:`KDLoss`, the projector options from
``ProjectedLoss``), so a loss lists only what is its own. The table is what configs are validated against: an
unknown key raises naming the closest valid one, a bad value raises naming the rule it breaks.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from segkd.infer.registry import Registry

__all__ = [
    "LOSSES",
    "KDLoss",
    "Param",
    "boolean",
    "optional_int",
    "positive",
    "resize_labels",
    "check_same_shape",
    "cosine",
]

LOSSES: Registry[type[KDLoss]] = Registry("loss")


@dataclass(frozen=True)
class Param:
    """One constructor option of a loss: its default, its meaning, how a config value is converted and checked.

    Attributes:
        default: Value when the config leaves the option out.
        doc: One line for the generated ``Parameters`` section of the loss's docstring.
        convert: Applied to a given value that is not ``None`` (``float``, ``int``, :func:`boolean`, ...).
        choices: The allowed values, when there are few.
        check: Predicate on the converted value; ``rule`` says in words what it demands.
        rule: Completes "<option> must ...", e.g. ``"lie in (0, 1)"``.
        required: ``None`` is refused (the loss cannot be built without a value).
    """

    default: Any
    doc: str
    convert: Callable[[Any], Any] | None = None
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], bool] | None = None
    rule: str = ""
    required: bool = False

    def resolve(self, name: str, value: Any, owner: str) -> Any:
        """Return the converted value, or raise a ValueError that names the option, the value and the rule."""
        if value is None:
            if self.required:
                raise ValueError(f"{owner} needs {name} ({self.doc}); pass {name}=...")
            return None
        if self.convert is not None:
            try:
                value = self.convert(value)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{owner} {name}={value!r} is invalid: {err}") from err
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{owner} {name} must be one of {self.choices}, not {value!r}")
        if self.check is not None and not self.check(value):
            raise ValueError(f"{owner} {name} must {self.rule}, got {value!r}")
        return value


def positive(value: Any) -> float:
    """``float`` that refuses zero, negatives and non-finite numbers (temperatures: a division, a softmax)."""
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"expected a positive number, got {value}")
    return value


def boolean(value: Any) -> bool:
    """Accept only real booleans (``bool("false")`` is True, so strings are refused rather than guessed)."""
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value


def optional_int(value: Any) -> int:
    """``int`` that refuses floats with a fraction (a width of 127.5 is a mistake, not 127)."""
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"expected an integer, got {value}")
    return int(value)


class KDLoss(nn.Module):
    """Base class: validates the options, picks the compared tensors, detaches the teacher, applies the weight.

    Subclasses set ``sources`` (the entries of the model's output dict they may compare, the first one is the
    default), ``default_weight`` (a number, or a dict per source) and ``params`` (their own options, see
    :class:`Param`), build their submodules in ``setup`` and implement ``compute``, which returns the unweighted
    loss. Every option becomes an attribute of the same name. The teacher tensor is detached here, once, so that
    no loss can send gradient into it, and both tensors are cast to float32 so that softmaxes over thousands of
    positions stay exact under mixed precision.
    """

    sources: ClassVar[tuple[str, ...]] = ("logits",)
    default_weight: ClassVar[float | Mapping[str, float]] = 1.0
    term_suffix: ClassVar[bool] = (
        False  # name the criterion's term "<name>_<source>" even for the first source
    )
    params: ClassVar[dict[str, Param]] = {
        "weight": Param(None, "loss weight; None takes the authors' value for the chosen source", float),
        "source": Param(None, "entry of the output dicts compared; None takes the first of `sources`", str),
    }

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__doc__:  # the options' one-line docs, generated so that they cannot drift from the table
            rows = "\n".join(
                f"        {k}: {p.doc} (default {p.default!r})" for k, p in cls.param_spec().items()
            )
            cls.__doc__ = f"{cls.__doc__.rstrip()}\n\n    Parameters:\n{rows}\n"

    @classmethod
    def param_spec(cls) -> dict[str, Param]:
        """Every option of this loss: its own ``params`` and those of its base classes (own ones listed first)."""
        spec: dict[str, Param] = {}
        for klass in cls.__mro__:
            for name, param in vars(klass).get("params", {}).items():
                spec.setdefault(name, param)
        return spec

    def __init__(self, **options: Any) -> None:
        super().__init__()
        owner = loss_name(type(self))
        spec = self.param_spec()
        unknown = sorted(set(options) - set(spec))
        if unknown:
            raise TypeError(_unknown_message(owner, unknown, list(spec)))
        for name, param in spec.items():
            setattr(self, name, param.resolve(name, options.get(name, param.default), owner))
        self._resolve_source_and_weight(owner)
        self.setup()

    @classmethod
    def option_problems(cls, options: Mapping[str, Any]) -> list[str]:
        """What building this loss with ``options`` would refuse, found without building it (at config load).

        Unknown names (with the closest declared one), values a :class:`Param` refuses and a ``source`` the loss
        cannot compare. Options left out are not checked: the trainer supplies the shared ones (channels, classes).
        """
        owner, spec = loss_name(cls), cls.param_spec()
        unknown = sorted(set(options) - set(spec))
        problems = [_unknown_message(owner, unknown, list(spec))] if unknown else []
        for name, value in options.items():
            if name in spec and value is not None:
                try:
                    spec[name].resolve(name, value, owner)
                except ValueError as err:
                    problems.append(str(err))
        source = options.get("source")
        if isinstance(source, str) and source not in cls.sources:
            problems.append(cls._source_message(owner, source))
        return problems

    @classmethod
    def _source_message(cls, owner: str, source: str) -> str:
        return f"{owner} compares {' or '.join(map(repr, cls.sources))}, not {source!r}; set source to one of those"

    def _resolve_source_and_weight(self, owner: str) -> None:
        source = self.sources[0] if self.source is None else self.source
        if source not in self.sources:
            raise ValueError(self._source_message(owner, source))
        self.source = source
        if self.weight is None:
            dw = self.default_weight
            self.weight = float(dw[source] if isinstance(dw, Mapping) else dw)

    def setup(self) -> None:
        """Build submodules (projectors, generators, memory banks) from the resolved options; nothing by default."""

    def compute(self, s: Tensor, t: Tensor, target: Tensor | None) -> Tensor:
        """Return the unweighted loss for student tensor ``s`` and (detached) teacher tensor ``t``."""
        raise NotImplementedError

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], target: Tensor | None = None
    ) -> Tensor:
        s = _pick(student, self.source, "student").float()
        t = _pick(teacher, self.source, "teacher").detach().float()
        if s.ndim == 4 and t.ndim == 4 and s.shape[-2:] != t.shape[-2:]:
            # Mixed output strides (a SegFormer student at 1/4, a DeepLabV3 teacher at 1/8): the teacher's map,
            # which carries no gradient, is resized to the student's, so the student is compared at its own
            # resolution whichever side is finer.
            t = F.interpolate(
                t, size=s.shape[-2:], mode="bilinear", align_corners=False
            )  # (N, C_t, h_s, w_s)
        return self.weight * self.compute(s, t, target)

    def extra_repr(self) -> str:
        shown = {k: getattr(self, k) for k in self.param_spec() if getattr(self, k) is not None}
        return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in shown.items())


def loss_name(cls: type) -> str:
    """The name ``cls`` is registered under (its class name when it is not registered)."""
    return next((name for name in LOSSES.names() if LOSSES.get(name) is cls), cls.__name__)


# Names the papers and other toolkits use for an option these losses call otherwise.
_SYNONYMS = {"temperature": "tau", "temp": "tau", "t": "tau", "loss_weight": "weight", "lambda": "weight"}


def _unknown_message(owner: str, unknown: list[str], valid: list[str]) -> str:
    hints = []
    for key in unknown:
        synonym = _SYNONYMS.get(key.lower())
        close = [synonym] if synonym in valid else difflib.get_close_matches(key, valid, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"loss {owner!r} got unknown parameter(s) {', '.join(hints)}; valid: {sorted(valid)}"


# Sources that name one backbone stage: ``stage4`` is ``outputs["stages"][3]`` (the last stage, before the head).
_STAGES = {f"stage{i + 1}": i for i in range(4)}


def _pick(outputs: Mapping[str, Tensor], key: str, who: str) -> Tensor:
    if key in _STAGES and outputs.get("stages") is not None:
        return outputs["stages"][_STAGES[key]]
    if outputs.get(key) is None:
        have = sorted(k for k, v in outputs.items() if v is not None)
        fix = (
            "use a model with an auxiliary head (student.aux=true) or drop this term"
            if key == "aux"
            else "call the model with return_features=True"
        )
        raise KeyError(f"the {who} outputs hold {have} but this loss needs {key!r}; {fix}")
    return outputs[key]


def resize_labels(target: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-resize a label map (N, H, W) to ``size`` = (h, w), keeping it integer (ignore labels survive)."""
    if target.dim() != 3:
        raise ValueError(f"labels must be (N, H, W), got shape {tuple(target.shape)}")
    if tuple(target.shape[-2:]) == tuple(size):
        return target.long()
    resized = F.interpolate(target[:, None].float(), size=size, mode="nearest")  # (N, 1, h, w)
    return resized[:, 0].long()


def check_same_shape(s: Tensor, t: Tensor, what: str, hint: str = "") -> None:
    """Raise a ValueError naming both shapes when a student and a teacher tensor cannot be compared."""
    if s.shape != t.shape:
        raise ValueError(
            f"{what}: student {tuple(s.shape)} and teacher {tuple(t.shape)} differ{'; ' + hint if hint else ''}"
        )


def cosine(a: Tensor, b: Tensor, dim: int, eps: float = 1e-8) -> Tensor:
    """Cosine similarity along ``dim``: <a, b> / max(||a|| * ||b||, eps) (zero vectors give 0).

    Written out because ``F.cosine_similarity`` runs about twice slower forward + backward on large maps.
    """
    return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim)).clamp_min(eps)
