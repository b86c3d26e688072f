"""Train a segmentation model, or distil a teacher into a student, with Accelerate.

    accelerate launch distill/train.py --config configs/demo/cwd.yaml [key=value ...]
    accelerate launch distill/train.py dataset=cityscapes student=deeplabv3_r18 method=cwd   # composed from configs/
    accelerate launch --multi_gpu --num_processes 8 distill/train.py dataset=voc student=pspnet_r18 method=hwd
    python distill/train.py --config configs/demo/teacher.yaml train.max_iters=100     # one process
    torchrun --nproc_per_node 2 distill/train.py --config ...                          # several CPU processes
    segkd launch --multi_gpu --num_processes 8 -- --config ...   # accelerate launch, errors last
    python distill/train.py --config configs/demo/cwd.yaml --eval runs/demo/cwd/best.pth   # evaluate only

Without --config or dataset=/student=/method= it runs the demo distillation recipe (configs/demo/cwd.yaml).
``dataset=D student=S method=M`` merge ``configs/D/_base.yaml``, ``configs/_students/S.yaml`` and
``configs/_methods/M.yaml`` (or the dataset's ``configs/D/_M.yaml``) after the --config files. Overrides are dotted
YAML ``key=value`` pairs (``train.max_iters=200 data.crop_size=[128,256] losses.0.weight=5``); the resolved config,
metrics.jsonl, last.pth, best.pth and the resumable state go to ``train.output_dir`` (default
``runs/<config path below configs/>``, or ``runs/D/S_M`` when composed). Re-running the same command resumes an
interrupted run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if not __package__:  # run as a file: import through the installed `segkd`, not from this folder
    try:
        from segkd.script import detach_script_folder
    except ModuleNotFoundError:
        sys.exit("error: segkd is not installed in this Python; in the checkout run `pip install -e .`")
    detach_script_folder(__file__)

from segkd.distill.config import GROUPS, ConfigError, load_config  # noqa: E402
from segkd.script import exit_status, prog, stop_on_sigterm  # noqa: E402

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo" / "cwd.yaml"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    """The trainer's command line (``segkd launch --help`` shows it too)."""
    p = argparse.ArgumentParser(prog=prog("distill/train.py"), description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config",
        type=Path,
        action="append",
        help="YAML recipe; repeat to merge several in order (default, when no dataset=/student=/method= is "
        f"given either: the demo distillation, {DEMO_CONFIG.name})",
    )
    p.add_argument(
        "--eval", metavar="CKPT", help="only evaluate this checkpoint on the config's validation split"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="parts of configs/ (dataset=cityscapes student=deeplabv3_r18 method=cwd), then dotted overrides "
        "(train.max_iters=100)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    stop_on_sigterm()
    from segkd.distill.checkpoint import CheckpointError
    from segkd.distill.data import BadDataError
    from segkd.distill.evaluation import evaluate_checkpoint
    from segkd.distill.guard import NonFiniteLossError
    from segkd.distill.loop import RunStopped, train
    from segkd.distill.models.pretrained import WeightsError
    from segkd.distill.run_dir import DiskFullError
    from segkd.distill.runlog import json_safe

    composed = any(o.partition("=")[0] in GROUPS for o in args.overrides)
    config = args.config or (None if composed else [DEMO_CONFIG])
    try:
        cfg = load_config(config, args.overrides)
        if args.eval:
            metrics = evaluate_checkpoint(args.eval, cfg)
            if metrics["process_index"] == 0:
                print(
                    _eval_table(args.eval, metrics), file=sys.stderr
                )  # for the reader; stdout stays one JSON line
                print(json.dumps(json_safe(metrics)))
        else:
            train(cfg)
    except (ConfigError, CheckpointError, NonFiniteLossError, BadDataError, WeightsError) as e:
        return _fail(f"error: {e}", 2)
    except DiskFullError as e:
        return _fail(f"error: {e}", 1)
    except RunStopped as e:
        return _fail(f"stopped: {e}", e.exit_code)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM while the run is built (the loop saves its own)
        code = exit_status(e)
        what = "terminated (SIGTERM)" if code == 143 else "interrupted"
        return _fail(f"{what} before the first iteration completed; nothing new was saved", code)
    return 0


def _eval_table(checkpoint: str, metrics: dict) -> str:
    """mIoU, mAcc, aAcc and the IoU of each class by name, one per line."""
    lines = [
        f"{checkpoint}: mIoU {metrics['mIoU']:.2f}  mAcc {metrics['mAcc']:.2f}  aAcc {metrics['aAcc']:.2f}"
    ]
    width = max((len(n) for n in metrics.get("class_IoU", {})), default=0)
    for name, iou in metrics.get("class_IoU", {}).items():
        lines.append(f"  {name:<{width}}  " + ("   n/a" if iou is None or iou != iou else f"{iou:6.2f}"))
    return "\n".join(lines)


def _fail(message: str, code: int) -> int:
    """Print the one-line outcome; under ``segkd launch`` also hand it to the launcher wrapper."""
    import os

    print(message, file=sys.stderr)
    status = os.environ.get("SEGKD_EXIT_STATUS")
    if status and int(os.environ.get("RANK", "0")) == 0:
        from segkd.infer.fileio import atomic_write_text

        atomic_write_text(status, json.dumps({"code": code, "message": message}))
    return code


if __name__ == "__main__":
    sys.exit(main())
