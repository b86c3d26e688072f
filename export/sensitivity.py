"""Accuracy-controlled INT8: the layers whose quantization hurts most stay in float until the file is within a
given mIoU drop of FP32 (``--max-drop D``), for users who cannot fine-tune.

    python export/to_onnx.py best.pth --precision int8 --max-drop 0.5 --calib-dataset cityscapes --calib-root DIR

The all-INT8 file is evaluated first; when it misses the drop, two steps follow, both from the one calibration
(`segkd.export.quantize.calibrate_ranges`):

1. `rank_layers`: each node the INT8 form quantizes (Conv/Gemm; for ``--target cpu`` also Add, Concat, Resize
   and pooling) is quantized *alone* (every other node float) and its damage measured on a few calibration
   images: the mean squared logit error against the float graph (the share of differing labels for a graph that
   ends in an argmax). Most damaging first.
2. `quantize_within`: the top ``k`` of that ranking stay float, ``k`` doubling from 0 (1, 2, 4, ...) until the
   file's mIoU on the labelled verification images (``evaluate``) is within ``max_drop`` of the reference, then
   bisected between the last ``k`` that failed and the first that met it: about ``2 log2(layers)`` mIoU
   evaluations, at most ``budget``.

Torch-free; ``evaluate`` is passed in, so the module knows nothing of the export pipeline.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segkd.export.quantize import Ranges, quantize_settings, quantize_with_ranges
from segkd.infer.fileio import work_dir

__all__ = [
    "DEFAULT_BUDGET",
    "RANK_IMAGES",
    "Result",
    "Trial",
    "cpu_latency_ratio",
    "quantizable_nodes",
    "quantize_within",
    "rank_layers",
]

# mIoU evaluations one search may spend: doubling then bisecting over 200 layers needs at most 2 * 8 + 1 = 17.
DEFAULT_BUDGET = 16
# Calibration batches the ranking runs each single-layer graph on: the damage is a mean over every logit, so a
# few frames rank as well as many (and each layer costs one quantization plus these inferences).
RANK_IMAGES = 4


@dataclass
class Trial:
    """One mIoU evaluation: the ``kept`` most damaging layers in float."""

    kept: int
    miou: float
    drop: float


@dataclass
class Result:
    """What `quantize_within` found (mIoU in points, 0..100).

    Attributes:
        kept: node names kept in float in the file written, most damaging first (the names of the ONNX graph:
            module paths such as ``/model/backbone/layer2/layer2.1/conv2/Conv`` with the torchscript exporter,
            ``node_Conv_427`` with dynamo).
        miou: that file's mIoU; ``drop``: ``reference - miou``.
        met: ``drop <= max_drop``. When False the file written is the best one reached, and ``reason`` says why
            the search stopped.
        layers: how many nodes could be kept in float; ``ranking``: (node, damage), most damaging first (empty
            when the all-INT8 file met the drop and no ranking was needed).
        trials: every mIoU evaluation, in order.
        latency_ratio: the file's ONNX Runtime CPU latency over the all-INT8 file's (None when nothing is kept
            in float, or the drop was not met).
    """

    kept: list[str]
    miou: float
    reference: float
    drop: float
    max_drop: float
    met: bool
    layers: int
    ranking: list[tuple[str, float]]
    trials: list[Trial] = field(default_factory=list)
    reason: str = ""
    latency_ratio: float | None = None

    def summary(self) -> str:
        """One line: what was kept and what it reached."""
        kept = f"{len(self.kept)} of {self.layers} layers in float" + (
            f" ({', '.join(self.kept)})" if self.kept else ""
        )
        return (
            f"{kept}: mIoU {self.miou:.2f} (drop {self.drop:.2f} vs {self.reference:.2f}, max {self.max_drop:g}) "
            f"after {len(self.trials)} mIoU evaluations"
        )


def quantizable_nodes(pre: str | os.PathLike[str], target: str = "tensorrt") -> list[str]:
    """Names of the nodes of the pre-processed graph ``pre`` that the ``target`` form quantizes, in graph order:
    Conv/Gemm for ``tensorrt``; also Add, Concat, Resize and pooling for ``cpu`` (`segkd.export.quantize`)."""
    import onnx

    op_types = set(quantize_settings("minmax", target)["op_types_to_quantize"])
    graph = onnx.load(str(pre), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in op_types and n.name]


def _session(path: Path, threads: int = 0) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _outputs(path: Path, inputs: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """The first output of ``path`` for each feed."""
    session = _session(path)
    return [session.run(None, feed)[0] for feed in inputs]


def _damage(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> float:
    """Mean squared error of float outputs (logits); the share of differing values for integer ones (labels)."""
    errors = []
    for ref, out in zip(reference, outputs, strict=True):
        if np.issubdtype(ref.dtype, np.floating):
            errors.append(float(np.mean((out.astype(np.float64) - ref.astype(np.float64)) ** 2)))
        else:
            errors.append(float(np.mean(out != ref)))
    return float(np.mean(errors))


def rank_layers(
    pre: str | os.PathLike[str],
    ranges: Ranges,
    inputs: Sequence[dict[str, np.ndarray]],
    *,
    target: str = "tensorrt",
    log: Callable[[str], None] = print,
) -> list[tuple[str, float]]:
    """(node, damage) for each node of ``pre`` the ``target`` form quantizes, most damaging first (ties in graph
    order).

    A node's damage is that of quantizing it *alone*, every other node float (rather than of leaving it alone in
    float in the all-INT8 graph): the same one quantization and one inference per node either way, but the
    single-layer graph runs at float speed instead of through every Q/DQ pair, and its error is that layer's own,
    not a small difference between two large errors that the other layers' rounding noise would swamp.

    Args:
        inputs: a few feeds (``{input name: batch}``), e.g. the first batches of the calibration reader.
    """
    nodes = quantizable_nodes(pre, target)
    if not nodes:
        raise ValueError(f"{pre} has no named nodes that the {target} INT8 form quantizes")
    log(
        f"ranking {len(nodes)} layers by INT8 damage: each quantized alone, mean squared output error against "
        f"float on {len(inputs)} calibration batches"
    )
    reference = _outputs(Path(pre), inputs)
    damage: dict[str, float] = {}
    with work_dir("rank") as work:
        one = work / "one.onnx"
        for node in nodes:
            quantize_with_ranges(pre, one, ranges, target=target, nodes_to_quantize=[node])
            damage[node] = _damage(reference, _outputs(one, inputs))
    ranking = sorted(damage.items(), key=lambda kv: -kv[1])  # stable: ties stay in graph order
    log("most damaging: " + ", ".join(f"{n} ({d:.3g})" for n, d in ranking[:5]))
    return ranking


def cpu_latency_ratio(
    path: str | os.PathLike[str],
    baseline: str | os.PathLike[str],
    feed: dict[str, np.ndarray],
    *,
    rounds: int = 5,
    runs: int = 3,
    threads: int = 1,
) -> float:
    """Latency of ``path`` over that of ``baseline`` on ONNX Runtime's CPU provider: the median, over ``rounds``
    interleaved rounds, of the ratio of their median times over ``runs`` runs each (interleaving lets a busy
    machine slow both files alike; ``threads`` intra-op threads, 1 for steadier numbers on a shared machine)."""
    sessions = [_session(Path(p), threads) for p in (path, baseline)]
    for s in sessions:
        s.run(None, feed)  # warm-up: first-run allocations and kernel choice

    def median_time(session: Any) -> float:
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    ratios = []
    for _ in range(rounds):
        t_path, t_base = (median_time(s) for s in sessions)
        ratios.append(t_path / t_base)
    return statistics.median(ratios)


def quantize_within(
    pre: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    ranges: Ranges,
    *,
    evaluate: Callable[[Path], float],
    reference: float,
    max_drop: float,
    inputs: Sequence[dict[str, np.ndarray]],
    target: str = "tensorrt",
    budget: int | None = None,
    ranking: list[tuple[str, float]] | None = None,
    log: Callable[[str], None] = print,
) -> Result:
    """Write to ``dst`` the INT8 graph of ``pre`` with the fewest most-damaging layers in float that keeps its
    mIoU within ``max_drop`` points of ``reference``.

    Args:
        pre: the pre-processed float graph (`segkd.export.quantize.pre_process`); ``ranges`` its calibration.
        evaluate: the mIoU (points) of an ONNX file on labelled images, e.g. its verification.
        reference: the mIoU of the float model on the same images.
        inputs: the feeds `rank_layers` measures damage on (only the first is timed for the latency ratio).
        budget: mIoU evaluations allowed (default :data:`DEFAULT_BUDGET`); past it the search stops with the best
            file reached.
        ranking: a ranking from `rank_layers` to reuse (when None it is computed, and only if the all-INT8 file
            misses the drop).

    Returns:
        The result; ``met`` False (with ``reason``) when ``max_drop`` was not reached: the caller refuses the file.
    """
    if max_drop < 0:
        raise ValueError(f"max_drop must be >= 0, got {max_drop}")
    budget = DEFAULT_BUDGET if budget is None else budget
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    layers = len(ranking) if ranking is not None else len(quantizable_nodes(pre, target))
    ranked = ranking

    def names() -> list[str]:  # ranked only once the all-INT8 file has missed the drop
        nonlocal ranked
        if ranked is None:
            ranked = rank_layers(pre, ranges, inputs, target=target, log=log)
        return [n for n, _ in ranked]

    trials: dict[int, Trial] = {}
    with work_dir("within") as work:

        def attempt(k: int) -> bool:
            path = work / ("int8.onnx" if k == 0 else "candidate.onnx")  # the all-INT8 file stays for timing
            quantize_with_ranges(pre, path, ranges, target=target, nodes_to_exclude=names()[:k] if k else ())
            miou = evaluate(path)
            trials[k] = Trial(k, miou, reference - miou)
            log(f"kept {k} layers in float: mIoU {miou:.2f} (drop {reference - miou:.2f}, max {max_drop:g})")
            return reference - miou <= max_drop

        k_met, reason = _search(attempt, layers, budget, trials)
        best = k_met if k_met is not None else min(trials.values(), key=lambda t: (t.drop, t.kept)).kept
        kept = names()[:best] if best else []
        quantize_with_ranges(pre, dst, ranges, target=target, nodes_to_exclude=kept)
        result = Result(
            kept=kept, miou=trials[best].miou, reference=reference, drop=trials[best].drop,
            max_drop=max_drop, met=k_met is not None, layers=layers, ranking=ranked or [],
            trials=list(trials.values()), reason=reason,
        )  # fmt: skip
        if result.met and best > 0:
            result.latency_ratio = cpu_latency_ratio(dst, work / "int8.onnx", inputs[0])
    if result.met:
        log(f"within the drop: {result.summary()}")
    if result.latency_ratio is not None:
        log(
            f"latency: x{result.latency_ratio:.2f} that of the all-INT8 file (ONNX Runtime CPU provider, 1 thread, "
            "median ratio over 5 interleaved rounds; a TensorRT engine's cost differs)"
        )
    return result


def _search(
    attempt: Callable[[int], bool], n: int, budget: int, trials: dict[int, Trial]
) -> tuple[int | None, str]:
    """The smallest ``k`` in 0..n found to meet the drop (doubling from 0, then bisecting), and why none was.

    Returns (k, "") or (None, reason); ``trials`` holds every evaluation. The drop need not fall monotonically
    with k (a float layer between INT8 ones can undo a rounding that happened to cancel another), so the bisection
    finds *a* k that meets it next to one that does not, not always the smallest.
    """
    failed, met = -1, None  # largest k known to fail, smallest known to meet
    k = 0
    while met is None:  # 0, 1, 2, 4, ... n
        if len(trials) >= budget:
            return (
                None,
                f"the budget of {budget} mIoU evaluations ran out (most layers in float tried: {failed} of {n})",
            )
        if attempt(k):
            met = k
        elif k == n:
            return None, f"even with all {n} ranked layers in float the drop is {trials[n].drop:.2f}"
        else:
            failed, k = k, min(n, max(1, 2 * k))
    while met - failed > 1 and len(trials) < budget:  # the first k that meets, within the budget
        mid = (failed + met) // 2
        if attempt(mid):
            met = mid
        else:
            failed = mid
    return met, ""
