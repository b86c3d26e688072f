"""Command-line value parsers shared by every script (torch-free)."""

from __future__ import annotations

import argparse
import re

__all__ = ["parse_hw", "hw_arg"]


def parse_hw(text: str) -> tuple[int, int]:
    """``"512x1024"`` (or ``"512,1024"``) -> (512, 1024); ValueError naming the expected form otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m or min(int(m[1]), int(m[2])) < 1:
        raise ValueError(f"expected HEIGHTxWIDTH such as 512x1024, got {text!r}")
    return int(m[1]), int(m[2])


def hw_arg(text: str) -> tuple[int, int]:
    """:func:`parse_hw` for ``argparse`` ``type=``: a bad value becomes a usage error with the message."""
    try:
        return parse_hw(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
