"""Training curves of a run, drawn from its ``metrics.jsonl`` into ``curves.png`` beside it.

    segkd curves runs/demo/cwd            # redraw (the trainer draws it at every evaluation)

Two panels: every logged loss term over the iterations (log scale), and the evaluation mIoU. Drawing needs
matplotlib (``pip install matplotlib``, the ``plot`` extra); without it nothing is drawn and training is unaffected.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from segkd.distill.runlog import read_records
from segkd.infer.fileio import atomic_path

__all__ = ["CURVES_FILE", "main", "plot_curves"]

CURVES_FILE = "curves.png"


def plot_curves(metrics: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path | None:
    """Draw the loss and mIoU curves of ``metrics`` (a run's metrics.jsonl) into ``out`` (default: curves.png
    beside it). Returns the PNG's path, or None when matplotlib is missing or nothing has been logged yet."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    metrics = Path(metrics)
    records = read_records(metrics) if metrics.is_file() else []
    losses: dict[str, list[tuple[int, float]]] = {}
    evals: list[tuple[int, float]] = []
    for rec in records:
        it = rec.get("iter")
        if not isinstance(it, int):
            continue
        for key, value in rec.items():
            if (
                key.startswith("loss/")
                and isinstance(value, (int, float))
                and math.isfinite(value)
                and value > 0
            ):
                losses.setdefault(key.removeprefix("loss/"), []).append((it, float(value)))
        miou = rec.get("eval/mIoU")
        if isinstance(miou, (int, float)) and math.isfinite(miou):
            evals.append((it, float(miou)))
    if not losses and not evals:
        return None
    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for name, points in losses.items():
        xs, ys = zip(*points)
        ax_loss.plot(xs, ys, label=name, linewidth=2.0 if name == "total" else 1.2)
    if losses:
        ax_loss.set_yscale("log")
        ax_loss.legend(fontsize=8, loc="upper right")
    ax_loss.set(title="losses (window means)", xlabel="iteration")
    ax_loss.grid(alpha=0.3)
    if evals:
        xs, ys = zip(*evals)
        ax_miou.plot(xs, ys, marker="o", color="#2a6fdb")
        best = max(range(len(ys)), key=ys.__getitem__)
        ax_miou.annotate(f"best {ys[best]:.2f}", (xs[best], ys[best]), textcoords="offset points",
                         xytext=(0, -16), ha="center", fontsize=9)  # fmt: skip
    ax_miou.set(title="validation mIoU (%)", xlabel="iteration")
    ax_miou.grid(alpha=0.3)
    fig.suptitle(metrics.parent.name, fontsize=10)
    fig.tight_layout()
    path = Path(out) if out is not None else metrics.with_name(CURVES_FILE)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="segkd curves", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", type=Path, help="run folders (each holding metrics.jsonl)")
    a = p.parse_args(argv)
    status = 0
    for run_dir in a.run_dirs:
        if not (run_dir / "metrics.jsonl").is_file():
            print(
                f"error: {run_dir / 'metrics.jsonl'} not found; pass a run folder written by distill/train.py"
            )
            status = 2
            continue
        path = plot_curves(run_dir / "metrics.jsonl")
        print(path if path else "nothing drawn: install matplotlib (pip install matplotlib) or train first")
        status = status or (0 if path else 1)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
