"""Check a dataset: sample count, pixels per class, ignore fraction and problems; exit 1 on any problem.

segkd check --dataset cityscapes --root data/cityscapes --split val [--json]
segkd check --dataset folder --root data/mine --split train -o classes=data/classes.txt
"""

from __future__ import annotations

import argparse
import json
import sys

import cv2

from segkd.infer.datasets import DATASETS
from segkd.infer.datasets.check import check_dataset

__all__ = ["main"]


def _option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.replace("-", "_"), value


def _parser() -> argparse.ArgumentParser:
    check = argparse.ArgumentParser(prog="segkd check", description=__doc__.split("\n")[0])
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
    return check


def main(argv: list[str] | None = None) -> int:
    """``segkd check ...``; ``python -m segkd.infer.datasets check ...`` names the subcommand, which is dropped."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv[1:] if argv[:1] == ["check"] else argv)
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # problems are reported below, once
    report = check_dataset(
        args.dataset, args.root, args.split, progress=not args.no_progress, **dict(args.option)
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
