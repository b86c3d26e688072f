"""The ``--shapes`` of an engine: parse ``MIN:OPT:MAX`` and check it against the ONNX input's dimensions."""

from __future__ import annotations

from segkd.infer.runtime.engine_record import ShapeProfile

__all__ = ["ShapeProfile", "fit_profile", "fmt_dims", "parse_shapes"]


def _parse_dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"shape {text!r} is not dimensions joined by 'x', e.g. 1x3x512x1024") from None
    if any(d < 1 for d in dims):
        raise ValueError(f"shape {text!r} has a dimension below 1")
    return dims


def parse_shapes(text: str) -> ShapeProfile:
    """``"1x3x512x1024"`` (fixed) or ``"MIN:OPT:MAX"`` such as ``"1x3x512x1024:2x3x512x1024:4x3x1024x2048"``.

    Raises:
        ValueError: not 1 or 3 shapes, ranks that differ, or not min <= opt <= max in every dimension.
    """
    parts = text.strip().split(":")
    if len(parts) not in (1, 3):
        raise ValueError(
            f"--shapes {text!r}: give one shape or MIN:OPT:MAX, e.g. 1x3x512x1024:1x3x512x1024:4x3x512x1024"
        )
    shapes = [_parse_dims(p) for p in parts] * (3 if len(parts) == 1 else 1)
    lo, opt, hi = shapes
    if not len(lo) == len(opt) == len(hi):
        raise ValueError(f"--shapes {text!r}: min, opt and max have different ranks")
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
        raise ValueError(f"--shapes {text!r}: need min <= opt <= max in every dimension")
    return ShapeProfile(lo, opt, hi)


def fit_profile(profile: ShapeProfile, dims: tuple[int, ...], name: str = "input") -> None:
    """Check a profile against the network input's dims (-1 = dynamic).

    Raises:
        ValueError: different rank, or a fixed dimension that the profile changes.
    """
    if len(profile.min) != len(dims):
        raise ValueError(
            f"--shapes {profile} has rank {len(profile.min)}; input {name!r} is {fmt_dims(dims)}"
        )
    for i, d in enumerate(dims):
        if d >= 0 and not profile.min[i] == profile.opt[i] == profile.max[i] == d:
            raise ValueError(
                f"--shapes {profile}: dimension {i} of input {name!r} ({fmt_dims(dims)}) is fixed to {d} in the "
                "ONNX file; export it with --dynamic to vary it"
            )


def fmt_dims(dims: tuple[int, ...]) -> str:
    return "x".join("?" if d < 0 else str(d) for d in dims)
