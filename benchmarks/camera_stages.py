"""Camera demo postprocess + render, before and after the real-time work, interleaved frame by frame.

OMP_NUM_THREADS=1 python benchmarks/camera_stages.py MODEL.onnx VIDEO.mp4 [--threads 1] [--repeat 3]

Per frame of VIDEO: one network call (timed: inference), then the previous postprocess + render ("before": numpy's
strided argmax, a colour table rebuilt per frame and indexed by numpy, ``np.bincount`` for the legend) and the
current one ("after": the demo's own `_Stages.postprocess` and drawing), in alternating order, so that load from
elsewhere hits both alike. Prints medians in ms and (postprocess + render) / inference for both, and checks that
both give the same labels and the same picture.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import cv2
import numpy as np


def _before_post(out: np.ndarray, hw: tuple[int, int], align_corners: bool) -> np.ndarray:
    from segkd.infer.runtime.base import resize_scores

    return resize_scores(out[0], hw, align_corners=align_corners).argmax(axis=0).astype(np.uint8)  # (H, W)


def _before_render(frame: np.ndarray, labels: np.ndarray, meta) -> np.ndarray:
    from segkd.infer.meta import colorize
    from segkd.infer.video.render import draw_legend, draw_stats, overlay

    lut = colorize(np.arange(256, dtype=np.uint8), meta.palette, meta.ignore_index)  # (256, 3), every frame
    canvas = overlay(frame, np.take(lut, labels, axis=0), 0.5)
    counts = np.bincount(labels.ravel(), minlength=meta.num_classes)[: meta.num_classes]
    present = np.flatnonzero(counts)
    draw_legend(canvas, present[np.lexsort((present, -counts[present]))].tolist(), meta)
    draw_stats(
        canvas, 0.0, dict.fromkeys(("decode", "preprocess", "inference", "postprocess", "render"), 0.0)
    )
    return canvas


def _after_render(frame: np.ndarray, labels: np.ndarray, meta) -> np.ndarray:
    from segkd.infer.video.render import draw_legend, draw_stats, legend_entries, render

    canvas = render("overlay", frame, labels, meta, 0.5)
    draw_legend(canvas, legend_entries(labels, meta.num_classes), meta)
    draw_stats(
        canvas, 0.0, dict.fromkeys(("decode", "preprocess", "inference", "postprocess", "render"), 0.0)
    )
    return canvas


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("video")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3, help="passes over the video")
    args = p.parse_args(argv)
    from segkd.infer.runtime import load_runner
    from segkd.infer.video.loop import _Stages

    runner = load_runner(args.model, threads=args.threads)
    stages, meta = _Stages(runner), runner.meta
    cap = cv2.VideoCapture(args.video)
    frames = []
    while (ok_frame := cap.read())[0]:
        frames.append(ok_frame[1])
    t: dict[str, list[float]] = {
        k: [] for k in ("inference", "post_before", "post_after", "render_before", "render_after")
    }
    paths = {
        "before": (lambda out, hw: _before_post(out, hw, meta.align_corners), _before_render),
        "after": (stages.postprocess, _after_render),
    }
    load_start = os.getloadavg()
    for rep in range(args.repeat):
        for i, frame in enumerate(frames):
            hw = frame.shape[:2]
            x = stages.preprocess(frame)
            t0 = time.perf_counter()
            out = stages.infer(x)
            t["inference"].append(time.perf_counter() - t0)
            results = {}
            for which in ("before", "after") if (rep + i) % 2 == 0 else ("after", "before"):
                post, draw = paths[which]
                t0 = time.perf_counter()
                labels = post(out, hw)
                t1 = time.perf_counter()
                canvas = draw(frame, labels, meta)
                t2 = time.perf_counter()
                t[f"post_{which}"].append(t1 - t0)
                t[f"render_{which}"].append(t2 - t1)
                results[which] = (labels, canvas)
            assert (results["before"][0] == results["after"][0]).all(), f"labels differ on frame {i}"
            assert (results["before"][1] == results["after"][1]).all(), f"pictures differ on frame {i}"
    runner.close()
    ms = {k: 1e3 * float(np.median(v)) for k, v in t.items()}
    print(
        f"{len(frames)} frames x {args.repeat}, {frames[0].shape[1]}x{frames[0].shape[0]}, threads {args.threads}"
    )
    print(f"load average at start {load_start}, at end {os.getloadavg()}")
    for k, v in ms.items():
        print(f"{k:<14}{v:8.2f} ms (median)")
    for which in ("before", "after"):
        ratio = (ms[f"post_{which}"] + ms[f"render_{which}"]) / ms["inference"]
        print(f"(postprocess + render) / inference, {which}: {ratio:.3f}")
    print("labels and pictures identical on every frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
