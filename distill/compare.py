"""Compare distillation methods over several seeds: one table of mIoU mean ± std per method.

    python -m distill.compare --config-dir configs/demo --methods baseline,kd,cwd,hwd,lad,cad --seeds 3 \
        --out runs/compare/demo [key=value ...]

Each method is the recipe ``<config-dir>/<method>.yaml``; every (method, seed) pair trains in its own process
(``distill/train.py``) into ``<out>/<method>/seed<k>``, so an interrupted comparison resumes where it stopped and
finished runs are not trained again. Overrides apply to every run. Writes ``<out>/compare.md`` (the table, in the
form of the HWD paper's Table II) and ``<out>/compare.json`` (every run's numbers).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from infer.fileio import atomic_write_text

__all__ = ["RunResult", "MethodRow", "read_run", "summarise", "render_markdown", "main"]

REPO = Path(__file__).resolve().parents[1]


@dataclass
class RunResult:
    method: str
    seed: int
    run_dir: str
    best_miou: float | None  # best mIoU over the run's evaluations (what best.pth holds)
    final_miou: float | None  # mIoU at the last evaluation


@dataclass
class MethodRow:
    method: str
    n: int
    best_mean: float
    best_std: float
    final_mean: float
    final_std: float
    delta: float | None = None  # best_mean minus the baseline's
    seeds: list[float] = field(default_factory=list)


def read_run(run_dir: Path) -> tuple[float | None, float | None]:
    """(best, final) mIoU from a run's metrics.jsonl; (None, None) when it has no evaluation yet."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None, None
    from distill.runlog import read_records  # a last line cut short by a kill is left out

    evals = [float(rec["eval/mIoU"]) for rec in read_records(path) if rec.get("eval/mIoU") is not None]
    return (max(evals), evals[-1]) if evals else (None, None)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(results: list[RunResult], baseline: str = "baseline") -> list[MethodRow]:
    """Aggregate per-seed results into one row per method, in the order the methods first appear."""
    rows: list[MethodRow] = []
    for method in dict.fromkeys(r.method for r in results):
        done = [r for r in results if r.method == method and r.best_miou is not None]
        if not done:
            continue
        bm, bs = _mean_std([r.best_miou for r in done])  # type: ignore[misc]
        fm, fs = _mean_std([r.final_miou for r in done])  # type: ignore[misc]
        rows.append(MethodRow(method, len(done), bm, bs, fm, fs, seeds=[r.best_miou for r in done]))  # type: ignore[misc]
    base = next((r for r in rows if r.method == baseline), None)
    for r in rows:
        r.delta = None if base is None else r.best_mean - base.best_mean
    return rows


def render_markdown(rows: list[MethodRow], header: str) -> str:
    lines = [
        header,
        "",
        "| Method | mIoU (%) best, mean ± std | Δ vs baseline | mIoU (%) last | runs | per seed |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        delta = "–" if r.delta is None or r.method == "baseline" else f"{r.delta:+.2f}"
        seeds = ", ".join(f"{s:.2f}" for s in r.seeds)
        lines.append(
            f"| {r.method} | {r.best_mean:.2f} ± {r.best_std:.2f} | {delta} | {r.final_mean:.2f} ± {r.final_std:.2f}"
            f" | {r.n} | {seeds} |"
        )
    return "\n".join(lines) + "\n"


def _train(config: Path, seed: int, run_dir: Path, overrides: list[str], log: Path) -> int:
    cmd = [sys.executable, str(REPO / "distill" / "train.py"), "--config", str(config),
           f"train.seed={seed}", f"train.output_dir={run_dir}", *overrides]  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config-dir", type=Path, default=REPO / "configs" / "demo", help="folder of <method>.yaml"
    )
    p.add_argument("--methods", default="baseline,kd,cwd,hwd,lad,cad", help="comma-separated recipe names")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per method")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "compare", help="output folder")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = _parse(argv)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    missing = [str(a.config_dir / f"{m}.yaml") for m in methods if not (a.config_dir / f"{m}.yaml").is_file()]
    if missing:
        print(f"error: no recipe for {', '.join(missing)}; methods are file names in {a.config_dir}")
        return 2
    results, failed = [], []
    jobs = [(m, s) for m in methods for s in range(a.seeds)]
    for method, seed in tqdm(jobs, desc="compare", unit="run"):
        run_dir = a.out / method / f"seed{seed}"
        rc = _train(
            a.config_dir / f"{method}.yaml", seed, run_dir, a.overrides, a.out / f"{method}_seed{seed}.log"
        )
        if rc != 0:
            failed.append(f"{method} seed {seed} (exit {rc}; log {a.out / f'{method}_seed{seed}.log'})")
        best, final = read_run(run_dir)
        results.append(RunResult(method, seed, str(run_dir), best, final))
    rows = summarise(results)
    header = (
        f"Recipes `{a.config_dir}`, {a.seeds} seed(s) per method, overrides `{' '.join(a.overrides) or 'none'}`; "
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}."
    )
    md = render_markdown(rows, header)
    atomic_write_text(a.out / "compare.md", md)
    blob = {"rows": [asdict(r) for r in rows], "runs": [asdict(r) for r in results], "failed": failed}
    atomic_write_text(a.out / "compare.json", json.dumps(blob, indent=2, allow_nan=False) + "\n")
    print(md)
    print(f"table: {a.out / 'compare.md'}; every run: {a.out / 'compare.json'}")
    for f in failed:
        print(f"failed: {f}")
    return 1 if failed or any(math.isnan(r.best_mean) for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
