"""Latency against mIoU, one labelled point per model, coloured by format, drawn with matplotlib.

matplotlib is the ``plot`` extra (``pip install -e .[plot]``); without it the benchmark writes everything else and
says that the plot was skipped. It is drawn on a bare `matplotlib.figure.Figure`, not through pyplot: no
backend is switched and no global figure is left open in the caller's process.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segkd.infer.fileio import atomic_path
from segkd.infer.formats import formats

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PLOT_INSTALL", "latency_vs_miou_figure", "plot_latency_vs_miou", "plottable"]

PLOT_INSTALL = "pip install -e .[plot]"  # what installs matplotlib, named when the plot is skipped
_TITLE = "mIoU vs latency (batch 1, median)"
_SIZE_PX, _DPI = (960, 640), 100
_OTHER_COLOR = (90, 90, 90)  # BGR of a row whose format is in no table row


def plottable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with a finite mIoU and latency: the points of the plot."""
    return [r for r in rows if _finite(r.get("miou")) and _finite(r.get("latency_median_ms"))]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _rgb(bgr: tuple[int, int, int]) -> tuple[float, float, float]:
    """A format table colour (BGR, 0-255) as matplotlib's RGB (0-1)."""
    return bgr[2] / 255, bgr[1] / 255, bgr[0] / 255


# Latencies spanning this factor or more are drawn on a logarithmic axis: on a linear one the fast models
# (the ones a real-time user compares) crowd into the first tenth.
LOG_SPAN = 10.0


def log_latency(pts: list[dict[str, Any]]) -> bool:
    """Whether the latency axis is logarithmic (the slowest row >= ``LOG_SPAN`` times the fastest)."""
    xs = [r["latency_median_ms"] for r in pts if r["latency_median_ms"] > 0]
    return len(xs) > 1 and max(xs) >= LOG_SPAN * min(xs)


def _limits(pts: list[dict[str, Any]]) -> tuple[tuple[float, float], tuple[float, float]]:
    """(x0, x1), (y0, y1): latency from 0 (from half the fastest on a log axis) with room right of the slowest
    model; mIoU padded, within 0-100."""
    xs = [r["latency_median_ms"] for r in pts] or [0.0, 1.0]
    ys = [r["miou"] for r in pts] or [0.0, 1.0]
    y_pad = max((max(ys) - min(ys)) * 0.15, 1.0)
    x0 = min(xs) / 2 if log_latency(pts) else 0.0
    return (x0, max(xs) * 1.15 or 1.0), (max(min(ys) - y_pad, 0.0), min(max(ys) + y_pad, 100.0))


def _by_format(pts: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The points of each format present: table order first, then formats outside the table, sorted."""
    order = [f.name for f in formats()]
    present = {r.get("format", "?") for r in pts}
    names = [f for f in order if f in present] + sorted(present - set(order))
    return {name: [r for r in pts if r.get("format", "?") == name] for name in names}


def _label_offsets(
    pts: list[dict[str, Any]], xlim: tuple[float, float], ylim: tuple[float, float]
) -> list[int]:
    """Vertical offset (points) of each point's label: labels of points that nearly coincide are stacked."""
    log = log_latency(pts)
    at = [(_fraction(r["latency_median_ms"], xlim, log), _fraction(r["miou"], ylim)) for r in pts]
    return [
        -11 * sum(abs(x - u) < 0.15 and abs(y - v) < 0.04 for u, v in at[:i]) for i, (x, y) in enumerate(at)
    ]


def _fraction(value: float, lim: tuple[float, float], log: bool = False) -> float:
    """Where ``value`` sits between the axis limits ``lim`` (0 to 1), on a linear or logarithmic axis."""
    if log:
        return (math.log(value) - math.log(lim[0])) / (math.log(lim[1]) - math.log(lim[0]))
    return (value - lim[0]) / (lim[1] - lim[0])


def _label(r: dict[str, Any]) -> str:
    """``run/best.onnx (int8)``: the file with its folder (runs name their files alike), and its precision."""
    name = r["model"]
    if "/" not in name and r.get("path") and Path(r["path"]).parent.name:
        name = f"{Path(r['path']).parent.name}/{name}"
    return f"{name} ({r.get('precision', '?')})"


def latency_vs_miou_figure(rows: list[dict[str, Any]]) -> Figure:
    """The plot as a matplotlib Figure (960x640 px): one scatter per format (its table colour, legend entry
    outside the axes, right), each point labelled ``model (precision)``; axes start at 0 ms.

    Raises:
        ImportError: matplotlib is not installed (``pip install -e .[plot]``).
    """
    from matplotlib.figure import Figure

    pts = plottable(rows)
    colors = {f.name: f.color for f in formats()}  # BGR, from the format table
    fig = Figure(figsize=(_SIZE_PX[0] / _DPI, _SIZE_PX[1] / _DPI), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    xlim, ylim = _limits(pts)
    log = log_latency(pts)
    if log:
        ax.set_xscale("log")
    ax.set(xlim=xlim, ylim=ylim, xlabel="latency (ms, log scale)" if log else "latency (ms)", ylabel="mIoU (%)",
           title=_TITLE)  # fmt: skip
    ax.grid(alpha=0.3)
    for fmt, group in _by_format(pts).items():
        xs, ys = [r["latency_median_ms"] for r in group], [r["miou"] for r in group]
        ax.scatter(xs, ys, s=60, color=_rgb(colors.get(fmt, _OTHER_COLOR)), label=fmt, zorder=3)
    for r, dy in zip(pts, _label_offsets(pts, xlim, ylim)):
        right = _fraction(r["latency_median_ms"], xlim, log) < 0.6  # else left of it, to stay inside the axes
        ax.annotate(
            _label(r),
            (r["latency_median_ms"], r["miou"]),
            xytext=(8 if right else -8, dy),
            textcoords="offset points",
            ha="left" if right else "right",
            va="center",
            fontsize=8,
            color="0.25",
        )
    if pts:
        ax.legend(title="format", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return fig


def plot_latency_vs_miou(rows: list[dict[str, Any]], path: str | os.PathLike[str]) -> Path | None:
    """Draw :func:`latency_vs_miou_figure` into the PNG ``path`` (written atomically).

    Returns:
        ``path``, or None (nothing written) when matplotlib is not installed (``pip install -e .[plot]``).
    """
    try:
        fig = latency_vs_miou_figure(rows)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] != "matplotlib":
            raise
        return None
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
