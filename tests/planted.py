"""A pickled object whose loading runs code, for the tests that plant it where weights are read."""

from __future__ import annotations

from pathlib import Path


class Payload:
    """Unpickling this runs ``open(marker, 'w')``: the proof that a loader executed code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.marker, "w"))
