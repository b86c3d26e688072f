"""One Markdown table from the per-student `infer/benchmark.py --rounds` runs of `benchmarks/cpu_students.sh`.

    python benchmarks/cpu_table.py runs/cpu_students/512x1024_1t runs/cpu_students/512x1024_2t ...

Each argument is a folder holding one ``<student>/benchmark.json`` per student (rows: .pth, FP32 ONNX, INT8-cpu
ONNX, FP32 OpenVINO IR, INT8 OpenVINO IR, compared to the FP32 ONNX row). A cell is the row's median latency
ratio to ONNX Runtime FP32 of the same student, with its spread; the run's load average and peaks follow the table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = [  # (suffix of the file name, column title)
    (".pth", "PyTorch fp32"),
    (".onnx", "ONNX fp32"),
    (".int8-cpu.onnx", "ONNX int8 (cpu)"),
    (".xml", "OpenVINO fp32"),
    (".int8.xml", "OpenVINO int8"),
]


def _column(name: str) -> str | None:
    """The column of a file name: the longest suffix that matches."""
    hits = [(len(s), title) for s, title in COLUMNS if name.endswith(s)]
    return max(hits)[1] if hits else None


def table(folders: list[Path]) -> str:
    """The ratio table (one line per student and folder) and the facts of each run below it."""
    lines = ["| student | input | threads | ONNX fp32 ms | " + " | ".join(t for _, t in COLUMNS) + " |"]
    lines.append("|" + "---|" * (4 + len(COLUMNS)))
    notes = []
    for folder in folders:
        for path in sorted(folder.glob("*/benchmark.json")):
            doc = json.loads(path.read_text())
            rows, env = doc["results"], doc["environment"]
            cells = {}
            ref = None
            for r in rows:
                col = _column(Path(r["path"]).name)
                if col is None or r.get("ratio") is None:
                    continue
                mark = " (unreliable)" if r.get("unreliable") else ""
                cells[col] = f"{r['ratio']:.2f} ({r['spread']:.2f}){mark}"
                if col == "ONNX fp32":
                    ref = r
            if ref is None:
                continue
            facts = env.get("interleaved", {})
            threads = env.get("threads") or "default"
            lines.append(
                f"| {path.parent.name} | {ref['input']} | {threads} | {ref['latency_median_ms']:.0f} | "
                + " | ".join(cells.get(t, "–") for _, t in COLUMNS)
                + " |"
            )
            peaks = ", ".join(f"{k} {v['gflops']:.0f}" for k, v in (facts.get("peaks") or {}).items())
            if not peaks and facts.get("peak_gflops"):  # runs from before the per-precision peaks
                peaks = f"fp32 {facts['peak_gflops']:.0f}"
            notes.append(
                f"- {path.parent.name} {ref['input']} {threads} thread(s): {facts.get('rounds')} rounds, load "
                f"{facts.get('load_start')} -> {facts.get('load_end')}, peaks G(FL)OP/s: {peaks or 'not measured'}"
            )
    return "\n".join(lines + [""] + notes)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    print(table([Path(a) for a in argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
