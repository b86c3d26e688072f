"""What a benchmark measures and how: the settings of one ``infer/benchmark.py`` run."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MAX_SIDE", "BenchConfig"]

MAX_SIDE = 16384  # per image side: larger is a typo (and beyond what the kernels take)


@dataclass
class BenchConfig:
    """What to measure and how; field names follow the command-line options of ``infer/benchmark.py``."""

    models: list[str]
    dataset: str | None = None
    data_root: str | None = None
    split: str = "val"
    size: tuple[int, int] | None = None
    batch: int = 1
    warmup: int = 10
    runs: int = 100
    device: str = "cpu"
    out: str = "runs/benchmark"
    provider: str | None = None
    cuda_lib: str = "cuda-python"
    threads: int | None = None
    mode: str = "whole"
    crop: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    eval_size: tuple[int, int] | None = None
    flip: bool = False
    scales: list[float] = field(default_factory=lambda: [1.0])
    limit: int | None = None
    rounds: int = 0
    cpu_precision: str | None = None
    compare_to: str | None = None
    isolate: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        if not self.models:
            problems.append("give at least one model file")
        if self.threads is not None and self.threads < 1:
            problems.append(f"--threads must be >= 1, got {self.threads}")
        if self.cpu_precision not in (None, "fp32", "bf16"):
            problems.append(f"--cpu-precision must be fp32 or bf16, not {self.cpu_precision!r}")
        if self.rounds < 0:
            problems.append(f"--rounds must be >= 0, got {self.rounds}")
        if self.limit is not None and self.limit < 1:
            problems.append(f"--limit must be >= 1, got {self.limit}")
        for name in ("size", "crop", "stride", "eval_size"):
            hw = getattr(self, name)
            if hw is not None and not all(1 <= v <= MAX_SIDE for v in hw):
                problems.append(
                    f"--{name.replace('_', '-')} {hw[0]}x{hw[1]} must be within 1..{MAX_SIDE} per side"
                )
        if not self.scales or not all(0 < s <= 8 for s in self.scales):
            problems.append(f"--scales {self.scales} must be in (0, 8]")
        if self.batch > 1024:
            problems.append(f"--batch {self.batch} is too large (at most 1024)")
        if self.batch < 1 or self.runs < 1 or self.warmup < 0:
            problems.append(
                f"need batch >= 1, runs >= 1, warmup >= 0 (got {self.batch}, {self.runs}, {self.warmup})"
            )
        if self.device not in ("cpu", "cuda"):
            problems.append(f"device must be cpu or cuda, not {self.device!r}")
        if (self.dataset is None) != (self.data_root is None):
            problems.append("--dataset and --data-root go together")
        if self.mode == "slide" and self.crop is None:
            problems.append("--mode slide needs --crop HxW")
        if problems:
            raise ValueError("invalid benchmark settings: " + "; ".join(problems))
