"""The README's commands run as typed, in order, on what `make demo` leaves behind.

    OMP_NUM_THREADS=1 python -m pytest -q tests/test_readme_blocks.py

Every command of README.md's ```bash blocks runs, in document order, in a temporary folder laid out as `make demo`
leaves the checkout (``configs/``, ``assets/`` and the script folders linked in; ``data/demo`` and ``runs/demo``
made by ``scripts/demo.sh`` in miniature), unless :data:`SKIP` names it with the reason. Each must exit 0 (or its
documented status), print no traceback, and read only files that the demo or an earlier README command wrote.
Long commands are shortened only by the overrides in :data:`SHORTEN`, appended the way a user could append them.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Regular expression searched in a command -> why that command does not run here. The first match wins; every
# other command runs, so a new README command is tested unless it is added here with its reason.
SKIP: dict[str, str] = {
    r"^make demo$": "the fixture below is scripts/demo.sh in miniature; the Makefile target is checked below",
    r"^make test$": "the test-suite itself, this file included; the Makefile target is checked below",
    r"^python -m venv ": "creates the environment this test already runs in",
    r"^pip install ": "installs packages from the network",
    r"deeplabv3_resnet101_citys_best_model\.pth": "CIRKD's released Cityscapes teacher, a download",
    r"--dataset cityscapes": "reads the Cityscapes download (data/cityscapes), not in the demo output",
    r"configs/accelerate/8gpu\.yaml": "8 GPUs and Cityscapes (the papers' recipes)",
    r"^segkd compare\b": "trains 9 to 40 students (14 minutes and more); test_compare.py covers the command",
    r"--multi_gpu|--num_machines 2|2machines\.yaml": "several GPUs or machines",
    r"\bC\.yaml\b": "C.yaml stands for the reader's config; the launchers run real configs in ## Distill",
    r"--source 0\b": "a webcam",
    r"--source rtsp://": "a network camera",
}

# Regular expression searched in a command -> (appended to it, why). Each only shortens the work: the last of two
# equal options or overrides wins, so what the command does and writes stays as typed.
SHORTEN: dict[str, tuple[str, str]] = {
    r"distill/train\.py(?!.*--eval)": (
        " train.max_iters=3",
        "3 training iterations (the fixture's runs have 2: a 'train longer' line still resumes and extends them)",
    ),
    r"infer/benchmark\.py|^segkd benchmark\b": (" --runs 2 --warmup 1", "2 timed runs instead of 30-100"),
    r"--rounds\b": (" --rounds 1", "1 interleaved round instead of 8"),
}

# Regular expression searched in a command -> the module it needs; without it the command is skipped.
NEEDS: dict[str, str] = {r"to_openvino\.py|^segkd openvino\b|\.xml\b": "openvino"}

# Folders of the checkout the commands read, linked into the demo folder (only read: no command writes there).
LINKED = ("configs", "assets", "distill", "export", "infer", "scripts", "benchmarks")

# scripts/demo.sh's five steps on 8 + 2 frames, students of 2 iterations (the evaluation at the end writes
# best.pth) and 2 timed benchmark runs (beside the video, as the students train side by side): the same files in
# the same places.
DEMO_SH = """
set -euo pipefail
launch="accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no"
short="train.max_iters=2"
segkd demo-data --root data/demo --train 8 --val 2 --size 128x256 --classes categories \
  --video runs/demo/street.mp4 --video-size 256x512
$launch distill/train.py --config configs/demo/baseline.yaml data.root=data/demo \
  train.output_dir=runs/demo/baseline $short > runs/demo/baseline.log 2>&1 &
$launch distill/train.py --config configs/demo/cwd.yaml data.root=data/demo \
  train.output_dir=runs/demo/cwd teacher.checkpoint=assets/demo_teacher.pth $short
wait $!
python export/to_onnx.py runs/demo/cwd/best.pth --precision fp32 int8 --height 128 --width 256 \
  --calib-dataset demo --calib-root data/demo --calib-split train --verify-split val
python infer/benchmark.py assets/demo_teacher.pth runs/demo/baseline/best.pth runs/demo/cwd/best.pth \
  runs/demo/cwd/best.onnx runs/demo/cwd/best.int8.onnx --dataset demo --data-root data/demo --split val \
  --size 128x256 --eval-size 128x256 --warmup 1 --runs 2 --out runs/demo/benchmark &
python infer/run_camera.py runs/demo/cwd/best.onnx --source runs/demo/street.mp4 --headless \
  --save runs/demo/street_segmented.mp4 --json-summary runs/demo/camera_summary.json
wait $!
"""

OUTPUT_FLAGS = {"--out", "--save", "--json-summary", "--snapshot-dir"}  # their values are written, not read
LABEL_FLAGS = {"--compare-to"}  # its value names a row of the table, not a file
OUTPUT_KEYS = {"train.output_dir"}
FILE_SUFFIX = re.compile(r"\.(pth|onnx|xml|engine|mp4|yaml|png|jpg)$")
TRACEBACK = "Traceback (most recent call last)"


def _bash_blocks(text: str) -> list[str]:
    """The bodies of the ```bash blocks of a Markdown text, in order, lines unindented."""
    blocks, body, lang = [], None, ""
    for line in text.splitlines():
        fence = line.strip().startswith("```")
        if body is None and fence:
            body, lang = [], line.strip()[3:].strip()
        elif fence:
            if lang == "bash":
                blocks.append("\n".join(body))
            body = None
        elif body is not None:
            body.append(line.strip())
    return blocks


def _strip_comment(line: str) -> str:
    """``line`` without its shell comment: a ``#`` that starts a word outside quotes."""
    quote, prev = "", " "
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and prev.isspace():
            return line[:i].rstrip()
        prev = ch
    return line.rstrip()


def _split_commands(block: str) -> list[str]:
    """The commands of a bash block: comments dropped, backslash continuations joined, a loop kept whole."""
    commands, pending, loop = [], "", []
    for raw in block.splitlines():
        line = _strip_comment(raw.strip())
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line, pending = (pending + line).strip(), ""
        if loop or re.match(r"(for|while|until)\b.*\bdo$", line):
            loop.append(line)
            if line == "done":
                commands.append("\n".join(loop))
                loop = []
        elif line:
            commands.append(line)
    return commands


COMMANDS = [c for block in _bash_blocks((REPO / "README.md").read_text()) for c in _split_commands(block)]


def _first_match(table: dict[str, object], cmd: str) -> object | None:
    return next((v for pattern, v in table.items() if re.search(pattern, cmd, re.M)), None)


def _brace_expand(word: str) -> list[str]:
    """Bash's ``a/{b,c}`` -> ``a/b a/c`` (one level per pass, as often as the word has braces)."""
    m = re.match(r"(.*?)\{([^{}]*,[^{}]*)\}(.*)$", word)
    if m is None:
        return [word]
    return [w for part in m[2].split(",") for w in _brace_expand(m[1] + part + m[3])]


def _reads(cmd: str) -> list[str]:
    """The paths (files, folders, globs) a command reads: path-like words that are not outputs or row labels."""
    words = [w for word in shlex.split(cmd) for w in _brace_expand(word)]
    paths = []
    for prev, word in zip(["", *words[:-1]], words, strict=True):
        key, eq, value = word.partition("=")
        if prev in OUTPUT_FLAGS | LABEL_FLAGS or word.startswith("-") or (eq and key in OUTPUT_KEYS):
            continue
        path = value if eq else word
        if "://" not in path and ("/" in path or FILE_SUFFIX.search(path)):
            paths.append(path)
    return paths


def _expected(cmd: str) -> tuple[int, str | None]:
    """The exit status a command documents here, and the last line it must then print."""
    no_trt = importlib.util.find_spec("tensorrt") is None
    if no_trt and re.search(r"export/to_trt\.py|^segkd trt\b", cmd):
        return 2, "TensorRT is not installed"  # README: "Without TensorRT, `to_trt.py` ... exits 2"
    return 0, None


@dataclass
class _Result:
    command: str  # as run, with the SHORTEN overrides
    returncode: int
    output: str  # stdout and stderr
    missing: list[str]  # paths it reads that did not exist before it ran


class _DemoFolder:
    """A folder that `make demo` has run in; runs the README's commands there in order, each once."""

    def __init__(self, root: Path) -> None:
        bin_dir = str(Path(sys.executable).parent)  # `python`, `segkd` and `accelerate` of this environment
        self.root = root
        self.env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "MPLBACKEND": "Agg",
        }
        self.env.setdefault("OMP_NUM_THREADS", "1")
        self.results: dict[int, _Result] = {}
        for name in LINKED:
            (root / name).symlink_to(REPO / name)
        (root / "runs" / "demo").mkdir(parents=True)
        demo = self._bash(DEMO_SH)
        assert demo.returncode == 0 and TRACEBACK not in demo.stdout, (
            f"miniature demo failed:\n{demo.stdout[-4000:]}"
        )

    def _bash(self, cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", cmd], cwd=self.root, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=600,
        )  # fmt: skip

    def run(self, index: int) -> _Result:
        """The result of README command ``index``, after the commands before it (the skipped ones left out)."""
        for i in range(index + 1):
            if i not in self.results and _skip_reason(COMMANDS[i]) is None:
                self.results[i] = self._run(COMMANDS[i])
        return self.results[index]

    def _run(self, cmd: str) -> _Result:
        missing = [p for p in _reads(cmd) if not glob.glob(p, root_dir=self.root)]
        for pattern, (extra, _why) in SHORTEN.items():
            cmd += extra if re.search(pattern, cmd) else ""
        proc = self._bash(cmd)
        return _Result(cmd, proc.returncode, proc.stdout, missing)


def _skip_reason(cmd: str) -> str | None:
    reason = _first_match(SKIP, cmd)
    module = _first_match(NEEDS, cmd)
    if reason is None and module is not None and importlib.util.find_spec(module) is None:
        reason = f"needs {module} (pip install -e .[{module}]; `make test` installs it)"
    return reason


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> _DemoFolder:
    return _DemoFolder(tmp_path_factory.mktemp("readme"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "index",
    range(len(COMMANDS)),
    ids=[f"{i:02d}:{c[:60]}".replace("\n", "; ") for i, c in enumerate(COMMANDS)],
)
def test_readme_command_runs_on_the_demo_output(index: int, request: pytest.FixtureRequest) -> None:
    cmd = COMMANDS[index]
    reason = _skip_reason(cmd)
    if reason is not None:
        pytest.skip(reason)
    result = request.getfixturevalue("demo_folder").run(index)
    assert not result.missing, (
        f"`{cmd}` reads {result.missing}, which neither `make demo` nor an earlier README command writes"
    )
    assert TRACEBACK not in result.output, f"`{result.command}` printed a traceback:\n{result.output[-4000:]}"
    status, last_line = _expected(cmd)
    assert result.returncode == status, (
        f"`{result.command}` exited {result.returncode}, not {status}:\n{result.output[-4000:]}"
    )
    if last_line is not None:
        final = (result.output.strip().splitlines() or [""])[-1]
        assert last_line in final, (
            f"`{result.command}` does not end with {last_line!r}:\n{result.output[-2000:]}"
        )


def test_commands_split_as_bash_reads_them() -> None:
    block = (
        "python a.py --title 'x # y' --tag=#1   # a comment\n"
        "# a whole-line comment\n"
        "python b.py \\\n    --flag v   # ends the command\n"
        "for m in a b; do\n  run $m   # inside\ndone\n"
    )
    assert _split_commands(block) == [
        "python a.py --title 'x # y' --tag=#1",
        "python b.py --flag v",
        "for m in a b; do\nrun $m\ndone",
    ]


def test_reads_are_the_inputs_not_the_outputs() -> None:
    cmd = (
        "python infer/benchmark.py runs/x/{a.onnx,b.xml} --compare-to a.onnx --out runs/bench "
        "teacher.checkpoint=t/best.pth train.output_dir=runs/new --source rtsp://h/s"
    )
    assert _reads(cmd) == ["infer/benchmark.py", "runs/x/a.onnx", "runs/x/b.xml", "t/best.pth"]


def test_every_skip_and_shortening_rule_still_matches_a_readme_command() -> None:
    stale = [p for p in [*SKIP, *SHORTEN, *NEEDS] if not any(re.search(p, c, re.M) for c in COMMANDS)]
    assert not stale, f"rules that match no README command (remove them): {stale}"


def test_readme_opens_with_the_makefile_demo_and_test_targets() -> None:
    assert COMMANDS[:2] == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text()
    recipes = dict(re.findall(r"^(\w+):[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.M))
    assert "scripts/demo.sh" in recipes["demo"]
    assert re.search(r"-m pytest -q tests$", recipes["test"], re.M)
