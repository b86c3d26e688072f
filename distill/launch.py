"""``accelerate launch distill/train.py`` whose user errors keep their exit code and end the output.

    python -m distill.launch [accelerate launch options] -- [distill/train.py arguments]
    python -m distill.launch --multi_gpu --num_processes 8 -- --config configs/cityscapes/deeplabv3_r18_cwd.yaml

``accelerate launch`` answers any non-zero exit of the script with its own traceback (``CalledProcessError``,
or torch.distributed's ``ChildFailedError``) and exit code 1, so a config mistake ends in a screen of launcher
frames. This wrapper runs the same launcher, then prints the trainer's one-line message again as the last line and
exits with the trainer's code (2 for a user error, 130 for Ctrl-C, ...). The trainer hands both over in a small
JSON file named by ``SEGKD_EXIT_STATUS``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["launch_command", "main"]

TRAIN = Path(__file__).resolve().parent / "train.py"


def launch_command(argv: list[str]) -> list[str]:
    """``accelerate launch`` options before ``--``, trainer arguments after it (all trainer's without ``--``)."""
    if "--" in argv:
        cut = argv.index("--")
        options, args = argv[:cut], argv[cut + 1 :]
    else:
        options, args = [], argv
    return [sys.executable, "-m", "accelerate.commands.launch", *options, str(TRAIN), *args]


def main(argv: list[str] | None = None) -> int:
    cmd = launch_command(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="segkd-launch-") as tmp:
        status = Path(tmp) / "status.json"
        proc = subprocess.Popen(cmd, env={**os.environ, "SEGKD_EXIT_STATUS": str(status)})
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:  # the trainer got the same Ctrl-C: let it save and report
                signal.signal(signal.SIGINT, signal.SIG_DFL)
        if status.is_file():
            record = json.loads(status.read_text())
            print(record["message"], file=sys.stderr)
            return int(record["code"])
    return code


if __name__ == "__main__":
    sys.exit(main())
