"""``accelerate launch distill/train.py`` whose user errors keep their exit code and end the output.

    segkd launch [accelerate launch options] -- [distill/train.py arguments]
    segkd launch --multi_gpu --num_processes 8 -- dataset=cityscapes student=deeplabv3_r18 method=cwd

``accelerate launch`` answers any non-zero exit of the script with its own traceback (``CalledProcessError``,
or torch.distributed's ``ChildFailedError``) and exit code 1, so a config mistake ends in a screen of launcher
frames. This wrapper runs the same launcher, then prints the trainer's one-line message again as the last line and
exits with the trainer's code (2 for a user error, 130 for Ctrl-C, ...). The trainer hands both over in a small
JSON file named by ``SEGKD_EXIT_STATUS``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

from segkd.script import prog

__all__ = ["check_gpus", "launch_command", "main"]

TRAIN = Path(__file__).resolve().parent / "train.py"


def launch_command(argv: list[str]) -> list[str]:
    """``accelerate launch`` options before ``--``, trainer arguments after it (all trainer's without ``--``)."""
    if "--" in argv:
        cut = argv.index("--")
        options, args = argv[:cut], argv[cut + 1 :]
    else:
        options, args = [], argv
    return [sys.executable, "-m", "accelerate.commands.launch", *options, str(TRAIN), *args]


def _requested_gpus(options: list[str]) -> int:
    """GPUs the launcher options ask for: ``--multi_gpu`` processes, ``--gpu_ids``, or a config file's."""

    def value(flag: str) -> str | None:
        for i, opt in enumerate(options):
            if opt == flag and i + 1 < len(options):
                return options[i + 1]
            if opt.startswith(flag + "="):
                return opt.split("=", 1)[1]
        return None

    if "--cpu" in options:
        return 0
    procs = int(value("--num_processes") or 1)
    if "--multi_gpu" in options:
        return max(procs, 2)
    config = value("--config_file")
    if config and Path(config).is_file():
        import yaml

        cfg = yaml.safe_load(Path(config).read_text()) or {}
        if str(cfg.get("distributed_type", "")).upper() == "MULTI_GPU" or cfg.get("use_cpu") is False:
            return int(cfg.get("num_processes") or procs)
    return 0


def check_gpus(options: list[str], available: int) -> str | None:
    """The one-line refusal when the launcher options ask for more GPUs than ``available``, else None."""
    wanted = _requested_gpus(options)
    if wanted <= available:
        return None
    found = "none found" if available == 0 else f"{available} found"
    return (
        f"error: these launcher options ask for {wanted} GPUs; {found}. On this machine use one process: "
        "`python distill/train.py --config ...` (or `torchrun --nproc_per_node 2 distill/train.py ...` for two CPU "
        "processes)"
    )


# The launcher options most runs need; `accelerate launch --help` lists all of them (over a hundred).
_COMMON_LAUNCHER_OPTIONS = """\
  --config_file FILE      an accelerate config (configs/accelerate/1gpu.yaml, 8gpu.yaml, 2machines.yaml)
  --multi_gpu             data-parallel over the GPUs of this machine
  --num_processes N       processes in all (GPUs x machines)
  --num_machines N        machines; with --machine_rank R, --main_process_ip IP, --main_process_port P
  --mixed_precision M     no | fp16 (GPU) | bf16
  --cpu                   CPU processes (gloo) even where a GPU is visible"""


def _print_help() -> None:
    """This wrapper's usage, the trainer's options and the common launcher options: no subprocess, one screen."""
    from segkd.distill.train import build_parser

    print(f"usage: {prog('-m segkd.distill.launch')} [accelerate launch options] -- [train options]\n")
    print(__doc__.strip() + "\n")
    print("== trainer options (after --) ==")
    print(build_parser().format_help())
    print("== common launcher options (before --; `accelerate launch --help` lists every one) ==")
    print(_COMMON_LAUNCHER_OPTIONS)


# The exceptions a launcher raises only to say that the trainer exited non-zero: the trainer said why already.
_LAUNCHER_FAILURES = (
    b"subprocess.CalledProcessError:",
    b"torch.distributed.elastic.multiprocessing.errors.ChildFailedError",
)


def relay_without_launcher_tracebacks(source: BinaryIO, sink: BinaryIO) -> None:
    """Copy the launcher's stderr (its children's included) to ``sink`` as it comes (progress bars keep their
    carriage returns), holding back each Python traceback until its last line: a traceback that ends in
    "the trainer exited with status N" is dropped, any other (a real crash) is passed on whole."""
    held: list[bytes] = []
    pending = b""
    for chunk in iter(lambda: source.read1(65536), b""):
        pending += chunk
        *parts, pending = re.split(rb"(?<=[\r\n])", pending)
        for part in parts:
            if not held and not part.startswith(b"Traceback (most recent call last):"):
                sink.write(part)
                continue
            held.append(part)
            if not part[:1].isspace() and not part.startswith(
                (b"Traceback", b"During handling", b"The above")
            ):
                if not part.startswith(
                    _LAUNCHER_FAILURES
                ):  # the traceback's last line: which exception it was
                    sink.writelines(held)
                held = []
        sink.flush()
    sink.writelines([*held, pending])
    sink.flush()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["-h"], ["--help"]):
        _print_help()
        return 0
    options = args[: args.index("--")] if "--" in args else []
    import torch

    problem = check_gpus(options, torch.cuda.device_count())
    if problem:
        print(problem, file=sys.stderr)
        return 2
    cmd = launch_command(args)
    with tempfile.TemporaryDirectory(prefix="segkd-launch-") as tmp:
        status = Path(tmp) / "status.json"
        env = {**os.environ, "SEGKD_EXIT_STATUS": str(status)}
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
        relay = threading.Thread(
            target=relay_without_launcher_tracebacks, args=(proc.stderr, sys.stderr.buffer)
        )
        relay.start()
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:  # the trainer got the same Ctrl-C: let it save and report
                signal.signal(signal.SIGINT, signal.SIG_DFL)
        relay.join()
        if status.is_file():
            record = json.loads(status.read_text())
            print(record["message"], file=sys.stderr)
            return int(record["code"])
    return code


if __name__ == "__main__":
    sys.exit(main())
