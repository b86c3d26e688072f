"""What a stage's script does first when it is run as a file (``python export/to_trt.py ...``).

Python puts the script's own folder first on the import path, which would make every module beside it a
top-level name (``infer/datasets`` shadowing the ``datasets`` distribution, ``export/calib.py`` importable as
``calib``). The stage folders are the subpackages ``segkd.distill``, ``segkd.export`` and ``segkd.infer`` of the
installed project, so the folder is taken off the path and everything is imported through ``segkd``.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["command", "detach_script_folder", "prog"]


def detach_script_folder(script: str) -> None:
    """Remove the folder of ``script`` (a ``__file__``) from ``sys.path``."""
    here = Path(script).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]


def prog(script: str) -> str:
    """The running command as the user typed it, for usage lines: ``segkd NAME`` or ``python SCRIPT``.

    ``segkd NAME`` sets ``sys.argv[0]`` to itself before it calls the subcommand (see :mod:`segkd.cli`).
    """
    return _typed() or f"python {script}"


def command(name: str, script: str) -> str:
    """How a hint names another command: ``segkd NAME`` under ``segkd``, else the checkout's ``script`` form."""
    return f"segkd {name}" if _typed() else script


def _typed() -> str:
    typed = sys.argv[0] if sys.argv else ""
    return typed if typed.startswith("segkd ") else ""
