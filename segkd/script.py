"""What a stage's script does first when it is run as a file (``python export/to_trt.py ...``).

Python puts the script's own folder first on the import path, which would make every module beside it a
top-level name (``infer/datasets`` shadowing the ``datasets`` distribution, ``export/calib.py`` importable as
``calib``). The stage folders are the subpackages ``segkd.distill``, ``segkd.export`` and ``segkd.infer`` of the
installed project, so the folder is taken off the path and everything is imported through ``segkd``.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = [
    "Terminated",
    "command",
    "detach_script_folder",
    "exit_status",
    "prog",
    "stop_on_sigterm",
    "train_command",
]


class Terminated(KeyboardInterrupt):
    """SIGTERM (what Slurm, Kubernetes, ``docker stop`` and systemd send), raised where Ctrl-C would be.

    A subclass of KeyboardInterrupt, so every path that saves and cleans up on Ctrl-C does the same on SIGTERM;
    only the exit status differs (143 instead of 130).
    """


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def stop_on_sigterm() -> None:
    """Make SIGTERM raise :class:`Terminated` in the main thread (commands call this first)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """143 for SIGTERM, 130 for Ctrl-C (128 + the signal number, as a shell reports them)."""
    return 143 if isinstance(interrupt, Terminated) else 130


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


def train_command() -> str:
    """How the trainer's hints (resume, recover, train a teacher) name it: the form that was typed, and under a
    launcher ``segkd launch``, whose failures end in the trainer's one line (``accelerate launch`` ends in its own
    traceback, once per process)."""
    import os

    if _typed():
        return _typed()
    launched = any(
        k in os.environ for k in ("ACCELERATE_MIXED_PRECISION", "TORCHELASTIC_RUN_ID", "LOCAL_RANK")
    )
    return "segkd launch [the same launcher options] --" if launched else "python distill/train.py"


def _typed() -> str:
    typed = sys.argv[0] if sys.argv else ""
    return typed if typed.startswith("segkd ") else ""
