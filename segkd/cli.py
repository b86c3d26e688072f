"""`segkd SUBCOMMAND ...`: every stage of the toolkit behind one command.

    segkd train --config configs/demo/cwd.yaml train.max_iters=100
    segkd export runs/demo/cwd/best.pth --precision int8
    segkd benchmark runs/demo/cwd/best.pth runs/demo/cwd/best.onnx --dataset demo --root data/demo
    segkd predict runs/demo/cwd/best.onnx data/demo/images/val --save-labels
    segkd SUBCOMMAND --help

Each subcommand is the same code as its script (``distill/train.py``, ``export/to_onnx.py`` ...): the table below
names the function, imported only when its subcommand runs, so that ``segkd predict`` on a deployment machine
never imports torch. The exit status is the subcommand's: 0 done, 1 finished with problems (failed checks or
files), 2 a user error (one line on stderr), 130 interrupted.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["COMMANDS", "Command", "benchmark", "main", "version"]


@dataclass(frozen=True)
class Command:
    """One subcommand: ``module:function`` taking ``argv`` and returning the exit status."""

    target: str
    help: str
    script: str = ""  # the same command as a file of the checkout, where there is one

    def run(self, argv: Sequence[str]) -> int:
        module, func = self.target.split(":")
        return int(getattr(importlib.import_module(module), func)(list(argv)) or 0)


COMMANDS: dict[str, Command] = {
    "train": Command("segkd.distill.train:main", "train or distil a model (one process)", "distill/train.py"),
    "launch": Command(
        "segkd.distill.launch:main", "train under accelerate launch: [launcher options] -- [train options]"
    ),
    "compare": Command("segkd.distill.compare:main", "compare distillation methods over seeds"),
    "curves": Command("segkd.distill.curves:main", "redraw a run's training curves (curves.png)"),
    "convert": Command("segkd.distill.convert:main", "official / Hugging Face weights -> checkpoint"),
    "export": Command(
        "segkd.export.cli:onnx_main", "checkpoint -> verified ONNX (fp32/fp16/int8)", "export/to_onnx.py"
    ),
    "openvino": Command(
        "segkd.export.cli:openvino_main",
        "checkpoint -> verified OpenVINO IR (fp32/fp16/int8)",
        "export/to_openvino.py",
    ),
    "trt": Command("segkd.export.cli:trt_main", "checkpoint or ONNX -> TensorRT engine", "export/to_trt.py"),
    "benchmark": Command(
        "segkd.cli:benchmark",
        "params, GMACs, latency and mIoU in one table (CKPT --formats all: export to every format first)",
        "infer/benchmark.py",
    ),
    "camera": Command(
        "segkd.infer.run_camera:main", "live segmentation of a camera, file or stream", "infer/run_camera.py"
    ),
    "predict": Command(
        "segkd.infer.predict:main", "segment images, folders, globs and videos", "infer/predict.py"
    ),
    "check": Command("segkd.infer.datasets.__main__:main", "check a dataset before training"),
    "demo-data": Command("segkd.scenes.street:main", "generate the demo street scenes (and a video)"),
}


def benchmark(argv: Sequence[str]) -> int:
    """``segkd benchmark``: files as they are, or with ``--formats`` a checkpoint exported to each format first.

    The deploy runtime's benchmark never imports the exporter; only this front chooses between them.
    """
    formats = any(a == "--formats" or a.startswith("--formats=") for a in argv)
    module = "segkd.export.bench_formats" if formats else "segkd.infer.benchmark"
    return int(importlib.import_module(module).main(list(argv)) or 0)


def version() -> str:
    """The installed distribution's version (``unknown`` when run from a checkout that was never installed)."""
    from importlib import metadata

    try:
        return metadata.version("segkd")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(
        f"  {name:<{width}}  {cmd.help}" + (f"  ({cmd.script})" if cmd.script else "")
        for name, cmd in COMMANDS.items()
    )
    return (
        "usage: segkd SUBCOMMAND [options]   (segkd SUBCOMMAND --help for its options; segkd --version)\n\n"
        f"subcommands:\n{rows}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``segkd SUBCOMMAND ...``; returns the subcommand's exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"segkd {version()}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"error: unknown subcommand {name!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    from segkd.script import exit_status, stop_on_sigterm

    argv0, sys.argv[0] = (
        sys.argv[0],
        f"segkd {name}",
    )  # argparse's prog: `usage: segkd predict ...`; hints too
    stop_on_sigterm()
    try:
        return COMMANDS[name].run(rest)
    except KeyboardInterrupt as e:
        code = exit_status(e)
        print("terminated (SIGTERM)" if code == 143 else "interrupted", file=sys.stderr)
        return code
    finally:
        sys.argv[0] = argv0  # a caller in the same process (a test, a notebook) keeps its own name


if __name__ == "__main__":
    sys.exit(main())
