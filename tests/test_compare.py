"""The method comparison: per-seed results, paired differences and their intervals against hand-computed values."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segkd.distill import compare
from segkd.distill.compare import (
    MethodRow,
    RunResult,
    paired_interval,
    plot_comparison,
    read_run,
    render_markdown,
    summarise,
    t_critical,
)


def test_t_critical_values() -> None:
    assert t_critical(1) == 12.706 and t_critical(4) == 2.776 and t_critical(30) == 2.042
    assert t_critical(200) == 1.96
    with pytest.raises(ValueError):
        t_critical(0)


def test_paired_interval_by_hand() -> None:
    # diffs 1, 2, 3: mean 2, sd 1, half width t(2) * 1 / sqrt(3) = 4.303 / 1.7320508 = 2.48434
    mean, lo, hi = paired_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and abs(lo - (2 - 2.48434)) < 1e-4 and abs(hi - (2 + 2.48434)) < 1e-4
    assert paired_interval([5.0])[1:] == (-math.inf, math.inf)
    with pytest.raises(ValueError):
        paired_interval([])


def test_summary_pairs_seeds_with_the_baseline() -> None:
    runs = [
        RunResult("baseline", 0, "a", 10.0, 9.0, 60.0),
        RunResult("baseline", 1, "b", 12.0, 11.0, 120.0),
        RunResult("baseline", 2, "b2", 12.0, 13.0, 90.0),
        RunResult("cwd", 0, "c", 13.0, 11.0),
        RunResult("cwd", 1, "d", 16.0, 14.0),
        RunResult("cwd", 2, "e", None, None),  # not evaluated yet: left out, and out of the pairing
    ]
    rows = {r.method: r for r in summarise(runs)}
    base, cwd = rows["baseline"], rows["cwd"]
    assert base.final_mean == 11.0 and abs(base.final_std - 2.0) < 1e-12 and base.minutes_per_run == 1.5
    assert base.delta is None and cwd.minutes_per_run is None
    # paired on seeds 0 and 1: diffs 2 and 3 -> mean 2.5, sd 0.70711, half width 12.706 * 0.70711 / sqrt(2) = 6.353
    assert cwd.n == 2 and cwd.final_mean == 12.5 and cwd.best_mean == 14.5 and cwd.delta == 2.5
    assert abs(cwd.ci_low - (2.5 - 6.353)) < 1e-3 and abs(cwd.ci_high - (2.5 + 6.353)) < 1e-3
    assert not cwd.significant
    md = render_markdown(list(rows.values()), "header")
    assert "| cwd | 12.50 ± 2.12 | +2.50 | [-3.85, +8.85] | 14.50 ± 2.12 | 2 | – | 11.00, 14.00 |" in md
    assert "| baseline | 11.00 ± 2.00 | – | – |" in md


def test_an_interval_that_excludes_zero_is_marked() -> None:
    runs = [RunResult("baseline", s, "x", v, v) for s, v in enumerate([10.0, 11.0, 12.0])]
    runs += [RunResult("hwd", s, "y", v, v) for s, v in enumerate([11.0, 12.1, 12.9])]  # diffs 1, 1.1, 0.9
    hwd = summarise(runs)[1]
    assert hwd.significant and hwd.ci_low > 0
    assert "[+0.75, +1.25] *" in render_markdown(summarise(runs), "h")


def test_read_run_takes_best_and_last_evaluation(tmp_path: Path) -> None:
    lines = [
        {"iter": 10, "loss/total": 1.0},
        {"iter": 100, "eval/mIoU": 20.5},
        {"iter": 200, "eval/mIoU": 25.0},
        {"iter": 300, "eval/mIoU": 24.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert read_run(tmp_path) == (25.0, 24.0)
    assert read_run(tmp_path / "missing") == (None, None)


def test_chart_is_a_png_with_one_bar_per_compared_method(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra) draws the comparison chart")
    import cv2

    rows = [
        MethodRow("baseline", 3, 10, 1, 10, 1),
        MethodRow("cwd", 3, 12, 1, 12, 1, delta=2.0, ci_low=0.5, ci_high=3.5),
        MethodRow("lad", 3, 10, 1, 10, 1, delta=-0.2, ci_low=-1.0, ci_high=0.6),
    ]
    path = plot_comparison(rows, tmp_path / "compare.png")
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 300
    green = ((image[..., 1] > 140) & (image[..., 2] < 80) & (image[..., 0] < 110)).sum()
    assert green > 500  # cwd's bar, whose interval is above zero, is drawn in green


def test_cli_pairs_runs_and_times_them_with_a_stand_in_trainer(tmp_path: Path, monkeypatch) -> None:
    """The command end to end, with a trainer that writes what distill/train.py writes (metrics.jsonl)."""
    (tmp_path / "cfg").mkdir()
    for m in ("baseline", "kd"):
        (tmp_path / "cfg" / f"{m}.yaml").write_text("{}\n")
    fake = tmp_path / "fake_train.py"
    fake.write_text(
        "import json, sys\n"
        "args = dict(a.split('=', 1) for a in sys.argv[1:] if '=' in a)\n"
        "seed, out = int(args['train.seed']), args['train.output_dir']\n"
        "m = 10 + seed + (1.5 if 'kd' in sys.argv[2] else 0)\n"
        "open(out + '/metrics.jsonl', 'w').write(json.dumps({'iter': 5, 'eval/mIoU': m}) + '\\n')\n"
    )
    monkeypatch.setattr(compare, "REPO", tmp_path)
    (tmp_path / "distill").mkdir()
    (tmp_path / "distill" / "train.py").write_text(fake.read_text())
    out = tmp_path / "out"
    argv = [
        "--config-dir",
        str(tmp_path / "cfg"),
        "--methods",
        "baseline,kd",
        "--seeds",
        "3",
        "--out",
        str(out),
    ]
    assert compare.main(argv) == 0
    blob = json.loads((out / "compare.json").read_text())
    kd = next(r for r in blob["rows"] if r["method"] == "kd")
    assert (
        kd["delta"] == 1.5 and kd["ci_low"] == kd["ci_high"] == 1.5
    )  # identical gains: a zero-width interval
    assert all(r["train_s"] > 0 for r in blob["runs"])
    md = (out / "compare.md").read_text()
    assert "| kd | 12.50 ± 1.00 | +1.50 | [+1.50, +1.50] *" in md and "--seeds 3" in md


def test_quick_mode_takes_three_methods_three_seeds_and_the_short_schedule() -> None:
    a = compare._parse(["--quick"])
    assert a.methods == "baseline,cwd,hwd" and a.seeds == 3
    assert a.overrides == ["train.max_iters=200", "train.eval_every=100"] and a.out.name == "demo_quick"
    b = compare._parse(["--quick", "--seeds", "5", "train.max_iters=50"])
    assert b.seeds == 5 and b.overrides == ["train.max_iters=50"]
    assert compare._parse([]).seeds == 5 and compare._parse([]).methods == compare.DEFAULT_METHODS


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"]
)
def test_a_signal_stops_the_whole_comparison_and_reaches_the_trainer_once(
    tmp_path: Path, sig: int, code: int
) -> None:
    # A stand-in trainer that waits for a signal, records each one it gets, and exits as train.py does.
    (tmp_path / "cfg").mkdir()
    for m in ("baseline", "kd"):
        (tmp_path / "cfg" / f"{m}.yaml").write_text("{}\n")
    (tmp_path / "distill").mkdir()
    (tmp_path / "distill" / "train.py").write_text(
        "import signal, sys, time\n"
        "out = dict(a.split('=', 1) for a in sys.argv[1:] if '=' in a)['train.output_dir']\n"
        "def got(n, f):\n"
        "    open(out + '/signals', 'a').write(f'{n}\\n')\n"
        "    sys.exit(143 if n == signal.SIGTERM else 130)\n"
        "signal.signal(signal.SIGINT, got); signal.signal(signal.SIGTERM, got)\n"
        "open(out + '/started', 'w').write('x')\n"
        "time.sleep(120)\n"
    )
    driver = (
        "import sys; from pathlib import Path; import segkd.distill.compare as c\n"
        f"c.REPO = Path({str(tmp_path)!r})\n"
        f"sys.exit(c.main(['--config-dir', {str(tmp_path / 'cfg')!r}, '--methods', 'baseline,kd', '--seeds', '2',"
        f" '--out', {str(tmp_path / 'out')!r}]))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", driver], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    first = tmp_path / "out" / "baseline" / "seed0"
    deadline = time.monotonic() + 60
    while not (first / "started").exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
        time.sleep(0.1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    assert (first / "signals").read_text().split() == [
        str(int(sig))
    ]  # once: a second copy stops without saving
    assert "run the same command again to resume" in err.strip().splitlines()[-1]
    started = sorted(p.parent.name + "/" + p.parent.parent.name for p in (tmp_path / "out").rglob("started"))
    assert started == ["seed0/baseline"]  # no run started after the signal
