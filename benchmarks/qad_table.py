"""The FP32 / post-training / QAD table of docs/quantization.md from the runs of `benchmarks/qad_demo.sh`.

    python benchmarks/qad_table.py runs/qad_demo/*/benchmark

One row per model: mIoU on the demo val frames of each file (change against the float PyTorch model in
brackets), the best mIoU of the control run (the same fine-tune in float, ``RUN/fp32_ctl``, when present), whether each QAD ONNX file has the op-for-op graph of its post-training counterpart, and the latency of
each QAD file as a ratio to its post-training counterpart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FILES = [  # (file name, column)
    ("float.pth", "FP32"),
    ("float.int8.onnx", "PTQ tensorrt"),
    ("qad_tensorrt.int8.onnx", "QAD tensorrt"),
    ("float.int8-cpu.onnx", "PTQ cpu"),
    ("qad_cpu.int8-cpu.onnx", "QAD cpu"),
    ("float.int8.xml", "PTQ OpenVINO"),
    ("qad_tensorrt.int8.xml", "QAD OpenVINO"),
]
PAIRS = [("qad_tensorrt.int8.onnx", "float.int8.onnx"), ("qad_cpu.int8-cpu.onnx", "float.int8-cpu.onnx"),
         ("qad_tensorrt.int8.xml", "float.int8.xml")]  # fmt: skip


def _same_graph(a: Path, b: Path) -> bool:
    import onnx

    ops = [
        [(n.op_type, len(n.input)) for n in onnx.load(str(f), load_external_data=False).graph.node]
        for f in (a, b)
    ]
    return ops[0] == ops[1]


def _best_miou(run_dir: Path) -> float | None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    evals = [float(r["eval/mIoU"]) for r in records if r.get("eval/mIoU") is not None]
    return max(evals) if evals else None


def main(folders: list[str]) -> None:
    print("| model | " + " | ".join(c for _, c in FILES) + " | FP32 fine-tuned alike | same graph as PTQ | QAD/PTQ latency (tensorrt, cpu, "
          "OpenVINO) |")  # fmt: skip
    print("|---" * (len(FILES) + 4) + "|")
    loads = []
    for folder in folders:
        data = json.loads((Path(folder) / "benchmark.json").read_text())
        rows = {Path(r["path"]).name: r for r in data["results"]}
        fp32 = rows["float.pth"]["miou"]
        cells = []
        for name, _ in FILES:
            if name not in rows:  # an export its verification refused
                cells.append("refused")
                continue
            miou = rows[name]["miou"]
            cells.append(f"{miou:.2f}" if name == "float.pth" else f"{miou:.2f} ({miou - fp32:+.2f})")
        ratios = [
            rows[a]["latency_median_ms"] / rows[b]["latency_median_ms"] if a in rows else None
            for a, b in PAIRS
        ]
        run = Path(folder).parent
        pairs = [(run / a, run / b) for a, b in PAIRS if a.endswith(".onnx") and a in rows and b in rows]
        present = all(a.is_file() and b.is_file() for a, b in pairs)
        same = ("yes" if all(_same_graph(a, b) for a, b in pairs) else "NO") if present else "-"
        control = _best_miou(run / "fp32_ctl")
        cells.append("-" if control is None else f"{control:.2f} ({control - fp32:+.2f})")
        print(f"| {run.name} | " + " | ".join(cells) + f" | {same} | "
              + ", ".join("-" if r is None else f"{r:.2f}" for r in ratios) + " |")  # fmt: skip
        loads.append(
            f"{Path(folder).parent.name}: {(data['environment']['load_start'][0], data['environment']['load_end'][0])}"
        )
    print("\nLoad average (start, end) per run: " + "; ".join(loads))


if __name__ == "__main__":
    main(sys.argv[1:])
