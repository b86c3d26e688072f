"""Segment images, folders, globs and videos with any model file; write pictures, label maps and class areas.

    segkd predict runs/demo/cwd/best.onnx data/demo/images/val --out runs/predict --view overlay --save-labels
    segkd predict student.pth 'frames/*.jpg' street.mp4 --view side

For every image: ``<out>/<name>.png`` (the chosen view), with ``--save-labels`` also ``<out>/labels/<name>.png``,
a palette PNG whose pixel values are the class ids (the dataset readers read it back as labels; image viewers
show the palette colours). For every video: ``<out>/<name>.mp4``. ``<out>/areas.csv`` and ``areas.json`` hold the
fraction of each image's (or video's) pixels per class. A file that cannot be read is reported and skipped; the
rest are processed, and the exit status is 1 when any file failed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import io
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if not __package__:  # run as a file: import through the installed `segkd`, not from this folder
    try:
        from segkd.script import detach_script_folder
    except ModuleNotFoundError:
        sys.exit("error: segkd is not installed in this Python; in the checkout run `pip install -e .`")
    detach_script_folder(__file__)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from segkd.infer.cliargs import hw_arg  # noqa: E402
from segkd.infer.datasets.base import IMAGE_SUFFIXES  # noqa: E402
from segkd.infer.datasets.reading import UnreadableFileError, read_image, write_palette_png, write_png  # noqa: E402
from segkd.infer.fileio import FolderBusy, atomic_write_text, lock_folder, unlock_folder  # noqa: E402
from segkd.infer.meta import ModelMeta  # noqa: E402
from segkd.infer.runtime import Runner, RunnerError, load_runner  # noqa: E402
from segkd.infer.video import VIEWS, VideoSink, render  # noqa: E402
from segkd.script import exit_status, prog, stop_on_sigterm  # noqa: E402

__all__ = ["VIDEO_SUFFIXES", "Item", "PredictReport", "collect_sources", "main", "predict"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


class SourceError(ValueError):
    """A SOURCE argument that names nothing to segment."""


@dataclass(frozen=True)
class Item:
    """One input file and the name (relative, without suffix) its outputs take."""

    path: Path
    name: str

    @property
    def is_video(self) -> bool:
        return self.path.suffix.lower() in VIDEO_SUFFIXES


@dataclass
class PredictReport:
    """What :func:`predict` did: outputs written, per-item class areas, files that failed with their reason."""

    outputs: list[Path] = field(default_factory=list)
    areas: dict[str, dict[str, float]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- sources


def _media(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES


def _expand(source: str) -> Iterator[tuple[Path, Path]]:
    """(file, the folder its output name is relative to) for one SOURCE: a file, a folder or a glob."""
    path = Path(source)
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if _media(p):
                yield p, path
    elif path.is_file():
        yield path, path.parent
    elif glob.has_magic(source):
        for p in sorted(Path(m) for m in glob.glob(source, recursive=True)):
            if _media(p):
                yield p, p.parent
    else:
        raise SourceError(
            f"{source}: no such file or folder (give image/video files, folders or quoted globs)"
        )


def collect_sources(sources: Sequence[str]) -> list[Item]:
    """Every image and video the SOURCE arguments name, each with a unique output name.

    Files of a folder keep their path below it (``a/x.png`` -> ``a/x``), so that two files with the same name in
    different sub-folders never overwrite each other's outputs; a name that still repeats gets ``-2``, ``-3``...

    Raises:
        SourceError: a source that does not exist, or sources that hold no image or video at all.
    """
    items: list[Item] = []
    seen: set[str] = set()
    for source in sources:
        found = list(_expand(source))
        if not found:
            raise SourceError(
                f"{source}: holds no images ({', '.join(IMAGE_SUFFIXES)}) or videos ({', '.join(VIDEO_SUFFIXES)})"
            )
        for path, base in found:
            stem = path.relative_to(base).with_suffix("").as_posix()
            name, k = stem, 1
            while name in seen:
                k += 1
                name = f"{stem}-{k}"
            seen.add(name)
            items.append(Item(path, name))
    return items


# --------------------------------------------------------------------------------------------------- outputs


def class_areas(labels: np.ndarray, meta: ModelMeta) -> dict[str, float]:
    """Fraction of the pixels of ``labels`` (H, W) per class name, classes present only, largest first."""
    counts = np.bincount(labels.ravel(), minlength=meta.num_classes)[: meta.num_classes]  # (K,)
    total = labels.size
    order = np.argsort(-counts, kind="stable")
    return {meta.class_names[c]: round(float(counts[c]) / total, 6) for c in order if counts[c]}


def _write_areas(out: Path, areas: dict[str, dict[str, float]], meta: ModelMeta) -> list[Path]:
    """``areas.json`` (item -> class -> fraction) and ``areas.csv`` (one row per item, one column per class)."""
    atomic_write_text(out / "areas.json", json.dumps(areas, indent=1) + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["item", *meta.class_names])
    for name, fractions in areas.items():
        writer.writerow([name, *(fractions.get(c, 0.0) for c in meta.class_names)])
    atomic_write_text(out / "areas.csv", buf.getvalue())
    return [out / "areas.json", out / "areas.csv"]


# --------------------------------------------------------------------------------------------------- work


@dataclass(frozen=True)
class PredictOptions:
    """How :func:`predict` renders and what it writes."""

    view: str = "overlay"
    save_labels: bool = False
    batch: int = 4
    size: tuple[int, int] | None = None
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise ValueError(f"unknown view {self.view!r}; choose one of {', '.join(VIEWS)}")
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1, not {self.batch}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], not {self.alpha}")


def _picture(opts: PredictOptions, image: np.ndarray, labels: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """The view of one input, with the legend of the classes it shows (a mask is unreadable without one)."""
    from segkd.infer.video.render import draw_legend, legend_entries

    view = render(opts.view, image, labels, meta, opts.alpha)
    draw_legend(view, legend_entries(labels, meta.num_classes), meta)
    return view


# An image is segmented at its own size up to this many times the model's training area (a 1024x2048 crop:
# 16 Mpx); past it the network's activations, not the picture, set the memory (3.8 GB at 8000x8000 measured).
MAX_AREA_FACTOR = 8


def bounded_size(runner: Runner, hw: tuple[int, int], size: tuple[int, int] | None) -> tuple[int, int] | None:
    """The size a dynamic-size model should run an ``hw`` image at when its own size is too large, else None.

    A fixed-size model, or a ``--size`` the user chose, is never changed. The bounded size keeps the image's
    aspect ratio, a multiple of 32 on each side, and ``MAX_AREA_FACTOR`` times the training area.
    """
    if size is not None or runner.input_size is not None:
        return None
    h, w = hw
    th, tw = runner.meta.input_size
    limit = MAX_AREA_FACTOR * th * tw
    if h * w <= limit:
        return None
    scale = (limit / (h * w)) ** 0.5
    return max(32, int(h * scale) // 32 * 32), max(32, int(w * scale) // 32 * 32)


def _images(
    runner: Runner, items: list[Item], out: Path, opts: PredictOptions, report: PredictReport, bar
) -> None:
    """Read, segment (``opts.batch`` at a time) and write every image item."""
    batch: list[tuple[Item, np.ndarray]] = []

    def flush() -> None:
        small = [
            (i, im)
            for i, (_, im) in enumerate(batch)
            if bounded_size(runner, im.shape[:2], opts.size) is None
        ]
        labels: list[np.ndarray | None] = [None] * len(batch)
        for (i, _), lab in zip(small, runner.predict([im for _, im in small], opts.size) if small else []):
            labels[i] = lab
        for i, (item, image) in enumerate(batch):
            if labels[i] is None:  # too large to run at its own size: one at a time, at the bounded size
                size = bounded_size(runner, image.shape[:2], opts.size)
                bar.write(
                    f"{item.name}: {image.shape[0]}x{image.shape[1]} is far larger than the "
                    f"{runner.meta.input_size[0]}x{runner.meta.input_size[1]} the model was trained at; segmenting "
                    f"at {size[0]}x{size[1]} and resizing the labels back (--size HxW chooses)"
                )
                labels[i] = runner.predict([image], size)[0]
        for (item, image), lab in zip(batch, labels):
            target = out / f"{item.name}.png"
            write_png(target, _picture(opts, image, lab, runner.meta))
            report.outputs.append(target)
            if opts.save_labels:
                write_palette_png(out / "labels" / f"{item.name}.png", lab, runner.meta.palette)
                report.outputs.append(out / "labels" / f"{item.name}.png")
            report.areas[item.name] = class_areas(lab, runner.meta)
        bar.update(len(batch))
        batch.clear()

    for item in items:
        try:
            batch.append((item, read_image(item.path)))
        except UnreadableFileError as e:
            report.failed[str(item.path)] = str(e)  # said once, in the summary's "failed:" lines
            bar.update(1)
            continue
        if len(batch) == opts.batch:
            flush()
    if batch:
        flush()


def _video(runner: Runner, item: Item, out: Path, opts: PredictOptions, report: PredictReport) -> None:
    """Segment every frame of one video file into ``<out>/<name>.mp4``; areas summed over all frames."""
    cap = cv2.VideoCapture(str(item.path))
    ok, frame = cap.read()
    if not ok:
        cap.release()
        report.failed[str(item.path)] = f"cannot decode video {item.path} (truncated or not a video file)"
        return
    sink = VideoSink(out / f"{item.name}.mp4", cap.get(cv2.CAP_PROP_FPS) or 25.0)
    counts = np.zeros(runner.meta.num_classes, np.int64)  # (K,) pixels per class over the video
    from tqdm import tqdm

    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None  # a stream or an odd container tells no count
    bar = tqdm(total=total, desc=f"video {item.name}", unit="frame", file=sys.stderr)
    try:
        while ok:
            (lab,) = runner.predict([frame], bounded_size(runner, frame.shape[:2], opts.size) or opts.size)
            counts += np.bincount(lab.ravel(), minlength=runner.meta.num_classes)[: runner.meta.num_classes]
            sink.write(_picture(opts, frame, lab, runner.meta))
            bar.update(1)
            ok, frame = cap.read()
    except BaseException:
        sink.close(keep=False)
        raise
    finally:
        bar.close()
        cap.release()
    sink.close()
    report.outputs.append(sink.path)
    order = np.argsort(-counts, kind="stable")
    report.areas[item.name] = {
        runner.meta.class_names[c]: round(float(counts[c]) / counts.sum(), 6) for c in order if counts[c]
    }


def predict(
    runner: Runner, items: list[Item], out: str | os.PathLike[str], opts: PredictOptions
) -> PredictReport:
    """Segment ``items`` with ``runner`` and write the outputs under ``out`` (see the module docstring)."""
    from tqdm import tqdm

    out = Path(out)
    report = PredictReport()
    images = [i for i in items if not i.is_video]
    try:
        with tqdm(total=len(images), desc="predict", unit="img", disable=not images, file=sys.stderr) as bar:
            _images(runner, images, out, opts, report, bar)
        for item in (i for i in items if i.is_video):
            _video(runner, item, out, opts, report)  # with its own progress bar over the frames
    finally:  # Ctrl-C or SIGTERM: the inputs finished so far get their areas too
        if report.areas:
            report.outputs += _write_areas(out, report.areas, runner.meta)
    return report


# --------------------------------------------------------------------------------------------------- command line


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog("infer/predict.py"),
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("model", help="model file: .pth checkpoint, .onnx or TensorRT .engine")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="image or video files, folders, quoted globs")
    p.add_argument("--out", type=Path, help="output folder (default: runs/predict/<model file name>)")
    p.add_argument(
        "--view", choices=list(VIEWS), default="overlay", help="picture written per input (default overlay)"
    )
    p.add_argument(
        "--save-labels", action="store_true", help="also write labels/<name>.png: class ids, palette PNG"
    )
    p.add_argument("--batch", type=int, default=4, help="images per forward pass (default 4)")
    p.add_argument(
        "--size", type=hw_arg, help="network input HxW (default: the model's size, else each image's)"
    )
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1] (default 0.5)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, help="CPU threads (default: the runtime's)")
    return p.parse_args(argv)


def _check_out(out: Path) -> None:
    """Refuse an output path that is a file or not writable before any work is done."""
    if out.exists() and not out.is_dir():
        raise SourceError(f"--out {out} is a file; give a folder (it is created if missing)")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise SourceError(f"--out {out}: folder {probe} is not writable; choose another --out")


@contextlib.contextmanager
def _one_writer(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock while predicting: two runs into one folder would mix their pictures and areas."""
    try:
        lock, _ = lock_folder(out)
    except FolderBusy as e:
        raise SourceError(
            f"--out {out} is being written by {e.holder or 'another process'} (another segkd predict); wait "
            "for it, or choose another --out"
        ) from None
    try:
        yield
    finally:
        unlock_folder(out, lock)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    stop_on_sigterm()
    out = args.out or Path("runs") / "predict" / Path(args.model).name
    try:
        if args.threads is not None and args.threads < 1:
            raise SourceError(f"--threads must be at least 1, not {args.threads}")
        opts = PredictOptions(args.view, args.save_labels, args.batch, args.size, args.alpha)
        _check_out(out)
        items = collect_sources(args.sources)
        with _one_writer(out), load_runner(args.model, device=args.device, threads=args.threads) as runner:
            report = predict(runner, items, out, opts)
    except (SourceError, RunnerError, ValueError, KeyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        code = exit_status(e)
        what = "terminated (SIGTERM)" if code == 143 else "interrupted"
        print(f"{what}: the inputs finished so far are in {out}/ with their areas.csv/json", file=sys.stderr)
        return code
    done = len(items) - len(report.failed)
    print(f"segmented {done} of {len(items)} inputs -> {out}/ (areas.csv, areas.json)")
    for path, reason in report.failed.items():
        print(f"failed: {reason}" if path in reason else f"failed: {path}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
