"""The method-comparison table: per-seed results aggregate to mean ± std and deltas computed by hand."""

from __future__ import annotations

import json

from distill.compare import RunResult, read_run, render_markdown, summarise


def test_summary_mean_std_and_delta_against_baseline() -> None:
    runs = [
        RunResult("baseline", 0, "a", 10.0, 9.0),
        RunResult("baseline", 1, "b", 12.0, 11.0),
        RunResult("cwd", 0, "c", 13.0, 13.0),
        RunResult("cwd", 1, "d", 16.0, 15.0),
        RunResult("cwd", 2, "e", None, None),  # not evaluated yet: left out
    ]
    rows = {r.method: r for r in summarise(runs)}
    assert rows["baseline"].best_mean == 11.0 and abs(rows["baseline"].best_std - 2**0.5) < 1e-12
    assert (
        rows["cwd"].n == 2 and rows["cwd"].best_mean == 14.5 and abs(rows["cwd"].best_std - 4.5**0.5) < 1e-12
    )
    assert rows["cwd"].final_mean == 14.0 and rows["cwd"].delta == 3.5
    md = render_markdown(list(rows.values()), "header")
    assert "| cwd | 14.50 ± 2.12 | +3.50 | 14.00 ± 1.41 | 2 | 13.00, 16.00 |" in md
    assert "| baseline | 11.00 ± 1.41 | – |" in md


def test_read_run_takes_best_and_last_evaluation(tmp_path) -> None:
    lines = [
        {"iter": 10, "loss/total": 1.0},
        {"iter": 100, "eval/mIoU": 20.5},
        {"iter": 200, "eval/mIoU": 25.0},
        {"iter": 300, "eval/mIoU": 24.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert read_run(tmp_path) == (25.0, 24.0)
    assert read_run(tmp_path / "missing") == (None, None)
