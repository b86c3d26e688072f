"""Compare distillation methods over several seeds: mean ± std per method and the paired difference to the
baseline with its 95 % confidence interval.

    segkd compare                      # the demo comparison: 8 methods x 5 seeds (configs/demo)
    segkd compare --quick              # baseline, CWD, HWD x 3 seeds: a first look in minutes
    segkd compare --config-dir configs/demo --methods baseline,kd,cwd --seeds 5 \
        --out runs/compare/demo [key=value ...]

Each method is the recipe ``<config-dir>/<method>.yaml``; every (method, seed) pair trains in its own process
(``distill/train.py``) into ``<out>/<method>/seed<k>``, so an interrupted comparison resumes where it stopped and
finished runs are not trained again. Seed k gives every method the same initialisation, data order and
augmentation, so the methods are compared pair by pair: the difference to the baseline is taken per seed, and
its mean gets a Student-t 95 % interval (an interval that excludes 0 is a difference the seeds cannot explain).
The score is the mIoU of the last evaluation (the best of several evaluations would select on the validation
split). Overrides apply to every run. Writes ``<out>/compare.md`` (the table), ``<out>/compare.json`` (every
run's numbers) and ``<out>/compare.png`` (the differences with their intervals, when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from segkd.infer.fileio import atomic_path, atomic_write_text, to_json

__all__ = [
    "DEFAULT_METHODS",
    "MethodRow",
    "QUICK_METHODS",
    "RunResult",
    "main",
    "paired_interval",
    "plot_comparison",
    "read_run",
    "render_markdown",
    "summarise",
    "t_critical",
]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_METHODS = "baseline,kd,cwd,cwd_feat,hwd,lad,cad,cirkd"
QUICK_METHODS = "baseline,cwd,hwd"
QUICK_SCHEDULE = ["train.max_iters=200", "train.eval_every=100"]
_TIME_FILE = "compare_time.json"  # per run folder: seconds spent training it, over every invocation

# Two-sided 95 % critical values of Student's t for 1..30 degrees of freedom; beyond that, the normal's 1.96.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)  # fmt: skip


def t_critical(df: int) -> float:
    """Two-sided 95 % critical value of Student's t with ``df`` degrees of freedom (``df >= 1``)."""
    if df < 1:
        raise ValueError(f"need at least 1 degree of freedom, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def paired_interval(diffs: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean of per-seed differences and its 95 % Student-t interval.

    With a single difference the interval is unbounded (``-inf``, ``inf``): one seed says nothing about noise.
    """
    if not diffs:
        raise ValueError("no paired differences")
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, -math.inf, math.inf
    half = t_critical(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


@dataclass
class RunResult:
    method: str
    seed: int
    run_dir: str
    best_miou: float | None  # best mIoU over the run's evaluations (what best.pth holds)
    final_miou: float | None  # mIoU at the last evaluation: the score compared
    train_s: float | None = None  # seconds spent training this run (all invocations)


@dataclass
class MethodRow:
    method: str
    n: int
    best_mean: float
    best_std: float
    final_mean: float
    final_std: float
    delta: float | None = None  # final_mean minus the baseline's (over the seeds both have)
    ci_low: float | None = None  # 95 % interval of the paired difference
    ci_high: float | None = None
    minutes_per_run: float | None = None
    seeds: list[float] = field(default_factory=list)  # final mIoU per seed, in seed order

    @property
    def significant(self) -> bool:
        """The paired interval excludes zero."""
        return self.ci_low is not None and self.ci_high is not None and (self.ci_low > 0 or self.ci_high < 0)


def read_run(run_dir: Path) -> tuple[float | None, float | None]:
    """(best, final) mIoU from a run's metrics.jsonl; (None, None) when it has no evaluation yet."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None, None
    from segkd.distill.runlog import read_records  # a last line cut short by a kill is left out

    evals = [float(rec["eval/mIoU"]) for rec in read_records(path) if rec.get("eval/mIoU") is not None]
    return (max(evals), evals[-1]) if evals else (None, None)


def _last_iter(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return -1
    from segkd.distill.runlog import read_records

    return max((int(rec.get("iter", -1)) for rec in read_records(path)), default=-1)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(results: list[RunResult], baseline: str = "baseline") -> list[MethodRow]:
    """Aggregate per-seed results into one row per method, in the order the methods first appear.

    Each method's difference to ``baseline`` is paired by seed: only seeds that both finished count.
    """
    rows: list[MethodRow] = []
    by_seed: dict[str, dict[int, float]] = {}
    for method in dict.fromkeys(r.method for r in results):
        done = sorted(
            (r for r in results if r.method == method and r.final_miou is not None), key=lambda r: r.seed
        )
        if not done:
            continue
        bm, bs = _mean_std([r.best_miou for r in done])  # type: ignore[misc]
        fm, fs = _mean_std([r.final_miou for r in done])  # type: ignore[misc]
        times = [r.train_s for r in done if r.train_s is not None]
        rows.append(
            MethodRow(
                method, len(done), bm, bs, fm, fs,
                minutes_per_run=statistics.fmean(times) / 60 if times else None,
                seeds=[r.final_miou for r in done],  # type: ignore[misc]
            )
        )  # fmt: skip
        by_seed[method] = {r.seed: r.final_miou for r in done}  # type: ignore[misc]
    base = by_seed.get(baseline)
    for row in rows:
        if base is None or row.method == baseline:
            continue
        common = sorted(set(base) & set(by_seed[row.method]))
        if common:
            row.delta, row.ci_low, row.ci_high = paired_interval(
                [by_seed[row.method][s] - base[s] for s in common]
            )
    return rows


def _fmt_ci(row: MethodRow) -> str:
    if row.ci_low is None or row.ci_high is None:
        return "–"
    if not math.isfinite(row.ci_low):
        return "(one seed)"
    return f"[{row.ci_low:+.2f}, {row.ci_high:+.2f}]" + (" *" if row.significant else "")


def render_markdown(rows: list[MethodRow], header: str) -> str:
    lines = [
        header,
        "",
        "| Method | mIoU (%) last, mean ± std | Δ vs baseline (paired) | 95 % CI of Δ | best of evals, mean ± std "
        "| runs | min/run | per seed (last) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        delta = "–" if r.delta is None else f"{r.delta:+.2f}"
        seeds = ", ".join(f"{s:.2f}" for s in r.seeds)
        minutes = "–" if r.minutes_per_run is None else f"{r.minutes_per_run:.1f}"
        lines.append(
            f"| {r.method} | {r.final_mean:.2f} ± {r.final_std:.2f} | {delta} | {_fmt_ci(r)} | "
            f"{r.best_mean:.2f} ± {r.best_std:.2f} | {r.n} | {minutes} | {seeds} |"
        )
    lines += ["", "`*`: the interval excludes 0 (the difference is larger than the seeds explain)."]
    return "\n".join(lines) + "\n"


def plot_comparison(rows: list[MethodRow], path: str | os.PathLike[str], title: str = "") -> Path | None:
    """Bar chart of each method's paired difference to the baseline with its 95 % interval (``compare.png``).

    Returns None (and draws nothing) when matplotlib is not installed (``pip install matplotlib``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    shown = [r for r in rows if r.delta is not None and r.ci_low is not None and math.isfinite(r.ci_low)]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(1.1 * len(shown) + 3, 4.2), dpi=120)
    xs = range(len(shown))
    colors = ["#2a9d4b" if r.ci_low > 0 else "#c0392b" if r.ci_high < 0 else "#8c8c8c" for r in shown]  # type: ignore[operator]
    lows = [r.delta - r.ci_low for r in shown]  # type: ignore[operator]
    highs = [r.ci_high - r.delta for r in shown]  # type: ignore[operator]
    ax.bar(xs, [r.delta for r in shown], color=colors, yerr=[lows, highs], capsize=5, width=0.6)  # type: ignore[misc]
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(list(xs), [r.method for r in shown], rotation=20, ha="right")
    ax.set_ylabel("mIoU difference to baseline (points)")
    ax.set_title(title or "paired difference to the baseline, 95 % CI (green: interval above 0)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _record_time(run_dir: Path, seconds: float) -> float:
    path = run_dir / _TIME_FILE
    total = seconds + (_read_time(run_dir) or 0.0)
    atomic_write_text(path, json.dumps({"train_s": total}) + "\n")
    return total


def _read_time(run_dir: Path) -> float | None:
    try:
        return float(json.loads((run_dir / _TIME_FILE).read_text())["train_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class _Stop:
    """Ctrl-C or SIGTERM for the whole comparison: no new run starts, and each running trainer gets the signal
    once (it saves its state and exits 130/143; the next invocation resumes it).

    The trainers run in their own process groups, so a terminal's Ctrl-C reaches them only through this relay:
    a second copy would make a trainer stop at once instead of saving.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.code = 0
        self._children: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.event.is_set():
            return  # said once; the trainers are saving
        self.code = 143 if signum == signal.SIGTERM else 130
        self.event.set()
        with self._lock:
            for child in self._children:
                child.send_signal(signum)

    def run(self, cmd: list[str], **kw: Any) -> int:
        """Run ``cmd`` to its end (signals relayed); -1 without starting it once the comparison is stopping."""
        with self._lock:
            if self.event.is_set():
                return -1
            child = subprocess.Popen(cmd, start_new_session=True, **kw)
            self._children.add(child)
        try:
            return child.wait()
        finally:
            with self._lock:
                self._children.discard(child)


def _train(
    config: Path, seed: int, run_dir: Path, overrides: list[str], log: Path, threads: int | None, stop: _Stop
) -> int:
    cmd = [sys.executable, str(REPO / "distill" / "train.py"), "--config", str(config),
           f"train.seed={seed}", f"train.output_dir={run_dir}", *overrides]  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    before, t0 = _last_iter(run_dir), time.perf_counter()
    with open(log, "a") as f:
        rc = stop.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    if _last_iter(run_dir) > before:  # it trained (a finished run only re-reads its state)
        _record_time(run_dir, time.perf_counter() - t0)
    return rc


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="segkd compare", description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument(
        "--config-dir", type=Path, default=REPO / "configs" / "demo", help="folder of <method>.yaml"
    )
    p.add_argument(
        "--methods", default=None, help=f"comma-separated recipe names (default {DEFAULT_METHODS})"
    )
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 per method (default 5; --quick: 3)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a first look: methods {QUICK_METHODS}, 3 seeds, {' '.join(QUICK_SCHEDULE)} (explicit --methods, "
        "--seeds and train.max_iters= still win)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at once, each with cores/jobs threads (default 1: one run on every core)",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/compare/<config dir>)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    a = p.parse_args(argv)
    a.methods = a.methods or (QUICK_METHODS if a.quick else DEFAULT_METHODS)
    a.seeds = a.seeds or (3 if a.quick else 5)
    if a.quick and not any(o.startswith("train.max_iters=") for o in a.overrides):
        a.overrides = [*QUICK_SCHEDULE, *a.overrides]  # the short schedule of docs/compare_demo.md
    if a.seeds < 1 or a.jobs < 1:
        p.error("--seeds and --jobs must be at least 1")
    a.out = a.out or REPO / "runs" / "compare" / (a.config_dir.name + ("_quick" if a.quick else ""))
    return a


def main(argv: list[str] | None = None) -> int:
    a = _parse(argv)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    missing = [str(a.config_dir / f"{m}.yaml") for m in methods if not (a.config_dir / f"{m}.yaml").is_file()]
    if missing:
        print(f"error: no recipe for {', '.join(missing)}; methods are file names in {a.config_dir}")
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // a.jobs) if a.jobs > 1 else None
    jobs = [(m, s) for s in range(a.seeds) for m in methods]  # seed-major: an early stop leaves paired runs
    failed: list[str] = []
    start = time.perf_counter()

    stop = _Stop()

    def run(job: tuple[str, int]) -> tuple[str, int, int]:
        method, seed = job
        log = a.out / f"{method}_seed{seed}.log"
        return method, seed, _train(a.config_dir / f"{method}.yaml", seed, a.out / method / f"seed{seed}",
                                    a.overrides, log, threads, stop)  # fmt: skip

    stop.install()
    try:
        with ThreadPoolExecutor(a.jobs) as pool, tqdm(total=len(jobs), desc="compare", unit="run") as bar:
            for method, seed, rc in pool.map(run, jobs):
                if rc not in (0, -1, 130, 143):
                    failed.append(
                        f"{method} seed {seed} (exit {rc}; log {a.out / f'{method}_seed{seed}.log'})"
                    )
                bar.set_postfix_str(f"{method} seed {seed}")
                bar.update()
    finally:
        stop.restore()
    if stop.event.is_set():
        what = "terminated (SIGTERM)" if stop.code == 143 else "interrupted"
        print(
            f"{what}: the running trainings saved their state and the rest did not start; run the same command "
            f"again to resume the comparison (finished runs are kept in {a.out})",
            file=sys.stderr,
        )
        return stop.code
    results = []
    for method, seed in jobs:
        run_dir = a.out / method / f"seed{seed}"
        best, final = read_run(run_dir)
        results.append(RunResult(method, seed, str(run_dir), best, final, _read_time(run_dir)))
    rows = summarise(results)
    config_dir = (
        a.config_dir.resolve().relative_to(REPO)
        if a.config_dir.resolve().is_relative_to(REPO)
        else a.config_dir
    )
    header = (
        f"Command: `segkd compare --config-dir {config_dir} --methods {','.join(methods)} --seeds {a.seeds}"
        f"{' --jobs ' + str(a.jobs) if a.jobs > 1 else ''}{' ' + ' '.join(a.overrides) if a.overrides else ''}` "
        f"({(time.perf_counter() - start) / 60:.1f} min in this invocation); machine: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"load average {os.getloadavg()[0]:.2f}, Python {platform.python_version()}."
    )
    md = render_markdown(rows, header)
    atomic_write_text(a.out / "compare.md", md)
    blob = {"rows": [asdict(r) for r in rows], "runs": [asdict(r) for r in results], "failed": failed}
    atomic_write_text(a.out / "compare.json", to_json(blob, indent=2) + "\n")
    png = plot_comparison(rows, a.out / "compare.png")
    print(md)
    print(f"table: {a.out / 'compare.md'}; every run: {a.out / 'compare.json'}")
    print(f"chart: {png}" if png else "chart: not drawn (pip install matplotlib)")
    for f in failed:
        print(f"failed: {f}")
    return 1 if failed or any(math.isnan(r.final_mean) for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
