"""What a run reports: ``metrics.jsonl`` (+ TensorBoard scalars) and the console lines of the main process."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from segkd.infer.fileio import atomic_write_text

__all__ = ["MetricsLog", "json_safe", "read_records", "say", "warn"]


class MetricsLog:
    """``metrics.jsonl`` (one JSON record per line) and TensorBoard scalars, written by the main process."""

    def __init__(self, path: Path, accelerator: Any, start_iter: int) -> None:
        self.path, self.accelerator = path, accelerator
        if accelerator.is_main_process:
            # A killed run may have logged past its last saved state: keep only what the resumed run continues.
            kept = []
            if start_iter > 0 and path.is_file():
                kept = [ln for ln in path.read_text().splitlines() if _record_iter(ln) <= start_iter]
            atomic_write_text(path, "".join(ln + "\n" for ln in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        record = json_safe(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        if self.accelerator.trackers and "event" not in record:
            scalars = {k: v for k, v in record.items() if isinstance(v, int | float) and k != "iter"}
            self.accelerator.log(scalars, step=record["iter"])


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; a line cut short by a kill (the last one, typically) is left out."""
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _record_iter(line: str) -> float:
    """Iteration of a metrics.jsonl line; infinite for a line cut short by a kill (so it is dropped)."""
    try:
        return json.loads(line)["iter"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def json_safe(value: Any) -> Any:
    """NaN/inf (a class absent from the validation data has IoU nan) -> null, so that the output is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def warn(msg: str) -> None:
    """Print a warning once, from the main process (every process reaches the same warnings)."""
    from tqdm import tqdm

    if int(os.environ.get("RANK", "0")) == 0:
        tqdm.write(f"WARNING: {msg}", file=sys.stderr)


def say(accelerator: Any, msg: str) -> None:
    """Print ``msg`` once (main process), without breaking the progress bar."""
    if accelerator.is_main_process:
        from tqdm import tqdm

        tqdm.write(msg)
