"""Check a dataset: sample count, pixels per class, ignore fraction and problems; exit 1 on any problem.

python -m infer.datasets check --dataset cityscapes --root data/cityscapes --split val [--json]
python -m infer.datasets check --dataset folder --root data/mine --split train -o classes=data/classes.txt
"""

from __future__ import annotations

import argparse
import json
import sys

import cv2

from infer.datasets import DATASETS
from infer.datasets.check import check_dataset

__all__ = ["check_main", "main"]


def _option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.replace("-", "_"), value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infer.datasets", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="read every sample and report problems")
    check.add_argument("--dataset", required=True, choices=DATASETS.names())
    check.add_argument("--root", required=True, help="dataset root folder")
    check.add_argument("--split", required=True, help="split name, e.g. train or val")
    check.add_argument(
        "-o",
        "--option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="reader option, e.g. label_type=trainIds (cityscapes, cocostuff) or classes=FILE (folder)",
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # problems are reported below, once
    report = check_dataset(
        args.dataset, args.root, args.split, progress=not args.no_progress, **dict(args.option)
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0 if report.ok else 1


def check_main(argv: list[str] | None = None) -> int:
    """``segkd-check ...`` / ``segkd check ...``: the ``check`` subcommand without having to name it."""
    args = list(sys.argv[1:] if argv is None else argv)
    return main(args if args[:1] == ["check"] else ["check", *args])


if __name__ == "__main__":
    sys.exit(main())
