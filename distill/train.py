"""Train a segmentation model, or distil a teacher into a student, with Accelerate.

    accelerate launch distill/train.py --config configs/demo/cwd.yaml [key=value ...]
    accelerate launch --multi_gpu --num_processes 8 distill/train.py --config configs/cityscapes/deeplabv3_r18_cwd.yaml
    python distill/train.py --config configs/demo/teacher.yaml train.max_iters=100     # one process
    torchrun --nproc_per_node 2 distill/train.py --config ...                          # several CPU processes
    python -m distill.launch --multi_gpu --num_processes 8 -- --config ...   # accelerate launch, errors last
    python distill/train.py --config configs/demo/cwd.yaml --eval runs/demo/cwd/best.pth   # evaluate only

Without --config it runs the demo distillation recipe (configs/demo/cwd.yaml). Overrides are dotted YAML
``key=value`` pairs (``train.max_iters=200 data.crop_size=[128,256] losses.0.weight=5``); the resolved config,
metrics.jsonl, last.pth, best.pth and the resumable state go to ``train.output_dir`` (default
``runs/<config path below configs/>``). Re-running the same command resumes an interrupted run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Run as `python distill/train.py` from a checkout: import from the repository root, not from distill/.
if __package__ in (None, ""):
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p != _here]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.config import ConfigError, load_config  # noqa: E402

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo" / "cwd.yaml"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config", type=Path, help=f"YAML recipe (default: the demo distillation, {DEMO_CONFIG.name})"
    )
    p.add_argument(
        "--eval", metavar="CKPT", help="only evaluate this checkpoint on the config's validation split"
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.max_iters=100"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from distill.checkpoint import CheckpointError
    from distill.data import BadDataError
    from distill.evaluation import evaluate_checkpoint
    from distill.guard import NonFiniteLossError
    from distill.loop import RunStopped, train
    from distill.run_dir import DiskFullError
    from distill.runlog import json_safe

    config = args.config if args.config is not None else DEMO_CONFIG
    try:
        cfg = load_config(config, args.overrides)
        if args.eval:
            metrics = evaluate_checkpoint(args.eval, cfg)
            if metrics["process_index"] == 0:
                print(json.dumps(json_safe(metrics)))
        else:
            train(cfg)
    except (ConfigError, CheckpointError, NonFiniteLossError, BadDataError) as e:
        return _fail(f"error: {e}", 2)
    except DiskFullError as e:
        return _fail(f"error: {e}", 1)
    except RunStopped as e:
        return _fail(f"stopped: {e}", e.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted before the first iteration completed; nothing new was saved", 130)
    return 0


def _fail(message: str, code: int) -> int:
    """Print the one-line outcome; under ``python -m distill.launch`` also hand it to the launcher wrapper."""
    import os

    print(message, file=sys.stderr)
    status = os.environ.get("SEGKD_EXIT_STATUS")
    if status and int(os.environ.get("RANK", "0")) == 0:
        from infer.fileio import atomic_write_text

        atomic_write_text(status, json.dumps({"code": code, "message": message}))
    return code


if __name__ == "__main__":
    sys.exit(main())
