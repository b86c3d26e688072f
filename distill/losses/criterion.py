"""Several distillation losses combined from a config: one named, weighted term per entry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from .base import LOSSES, KDLoss

__all__ = ["KDCriterion", "build_loss", "build_losses", "loss_params", "spec_problems"]

PREFIX = "kd/"


def build_loss(name: str, **params: Any) -> KDLoss:
    """Build the loss registered as ``name`` with ``params``.

    An unknown name raises a KeyError naming the closest registered one; an unknown parameter a TypeError naming
    the closest declared one and listing them all; a bad value a ValueError naming the rule it breaks.
    """
    return LOSSES.get(name)(**params)


def loss_params(name: str) -> list[str]:
    """Names of the parameters the loss ``name`` declares (its own, then those it inherits)."""
    return list(LOSSES.get(name).param_spec())


def spec_problems(specs: Sequence[Any]) -> list[str]:
    """Every problem of the loss entries that needs no model, one line each: the config loader reports them
    with the rest of the config, before any data is read.

    Checks each entry's loss name, its parameter names and values (:meth:`KDLoss.option_problems`) and that the
    terms' names are unique; what depends on the models (channel counts, strides) is checked when they exist.
    """
    problems, keys = [], set()
    for i, spec in enumerate(specs):
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
            continue  # the config's own check names these
        where = f"losses.{i} ({spec['name']})"
        try:
            cls = LOSSES.get(spec["name"])
        except KeyError as err:
            problems.append(f"losses.{i}: {err.args[0]}")
            continue
        options = {k: v for k, v in spec.items() if k not in ("name", "key")}
        problems += [f"{where}: {p}" for p in cls.option_problems(options)]
        if not isinstance(spec.get("source", ""), str):
            continue
        key = _term_key(spec)
        if key in keys:
            problems.append(f"{where}: a second term named {key!r}; give one of the entries a unique 'key'")
        keys.add(key)
    return problems


def _term_key(spec: Mapping[str, Any]) -> str:
    """``spec["key"]``, or the loss name suffixed with the source when it is not the loss's first one (always for
    losses with ``term_suffix``: ``cwd_logits`` / ``cwd_feat``)."""
    if "key" in spec:
        return str(spec["key"])
    name = spec["name"]
    cls = LOSSES.get(name)
    source = spec.get("source") or cls.sources[0]
    if cls.term_suffix or source != cls.sources[0]:
        return f"{name}_{source}"
    return name


class KDCriterion(nn.Module):
    """A set of distillation losses, each built from a spec dict, returning one named weighted term each.

    Example::

        crit = KDCriterion(
            [{"name": "kd"}, {"name": "cwd", "weight": 3.0}, {"name": "cwd", "source": "feat"}],
            student_channels=128, teacher_channels=256,
        )
        terms = crit(student_out, teacher_out, labels)  # {"kd/kd": t, "kd/cwd_logits": t, "kd/cwd_feat": t}

    Each spec holds ``name`` (a registered loss), optionally ``key`` (the term's name, default the loss name, with
    ``_logits``/``_feat`` appended for losses that compare either), and the loss's parameters. ``shared`` keyword
    arguments (``student_channels``, ``teacher_channels``, ``num_classes``, ...) are passed to every loss that
    accepts them unless its spec sets them. All problems in the specs are reported at once. The parameters of the
    losses (projectors, generators) are this module's parameters: add ``criterion.parameters()`` to the optimizer.
    """

    def __init__(self, specs: Sequence[Mapping[str, Any]], **shared: Any) -> None:
        super().__init__()
        self.terms = nn.ModuleDict()
        problems: list[str] = []
        for i, spec in enumerate(specs):
            problem = self._add(i, spec, shared)
            if problem:
                problems.append(problem)
        if problems:
            raise ValueError("invalid distillation loss config:\n  " + "\n  ".join(problems))

    def _add(self, i: int, spec: Mapping[str, Any], shared: Mapping[str, Any]) -> str | None:
        where = f"kd loss #{i} ({spec!r})"
        if not isinstance(spec, Mapping) or "name" not in spec:
            return f"{where}: needs a 'name' (one of {LOSSES.names()})"
        try:
            key = _term_key(spec)
            if key in self.terms or "." in key or "/" in key or not key:
                return f"{where}: term name {key!r} is taken or invalid; give the entry a unique 'key'"
            accepted = loss_params(spec["name"])
            params = {k: v for k, v in shared.items() if k in accepted}
            params.update({k: v for k, v in spec.items() if k not in ("name", "key")})
            self.terms[key] = build_loss(spec["name"], **params)
        except (KeyError, TypeError, ValueError) as err:
            return f"{where}: {err.args[0] if err.args else err}"
        return None

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], target: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Return ``{"kd/<key>": weighted scalar}`` for every term."""
        return {PREFIX + key: loss(student, teacher, target) for key, loss in self.terms.items()}


def build_losses(specs: Sequence[Mapping[str, Any]], **shared: Any) -> KDCriterion:
    """Build a ``KDCriterion`` from a list of loss specs (see ``KDCriterion``)."""
    return KDCriterion(specs, **shared)
