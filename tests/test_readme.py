"""The README's commands stay true: the scripts exist, accept the flags shown, and the configs named exist."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines, joined = [], ""
    for block in blocks:
        for raw in block.splitlines():
            line = raw.split("  #")[0].strip()
            joined = f"{joined} {line.rstrip(chr(92))}".strip() if joined else line.rstrip(chr(92)).strip()
            if not line.endswith("\\"):
                if joined:
                    lines.append(joined)
                joined = ""
    return lines


def _target(cmd: str) -> list[str] | None:
    """The argv that prints help for the program a README line runs, or None for shell lines."""
    words = shlex.split(cmd.replace("$m", "cwd"))
    for i, w in enumerate(words):
        if w.endswith(".py") and "/" in w:
            return [sys.executable, w]
        if w == "-m" and i + 1 < len(words) and words[i - 1] in ("python", "python3"):
            sub = words[i + 2 : i + 3]  # a sub-command such as `check` has its own flags
            return [
                sys.executable,
                "-m",
                words[i + 1],
                *(s for s in sub if not s.startswith("-") and "/" not in s and not s.endswith(".pth")),
            ]
    return None


@cache
def _help(argv: tuple[str, ...]) -> str:
    res = subprocess.run([*argv, "--help"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, f"{' '.join(argv)} --help failed:\n{res.stderr[-2000:]}"
    return res.stdout


def test_readme_opens_with_the_demo_and_the_test_command() -> None:
    first = _commands()[:2]
    assert first == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()


PROGRAM_LINES = [c for c in _commands() if _target(c)]


@pytest.mark.parametrize("cmd", PROGRAM_LINES)
def test_readme_command_flags_exist(cmd: str) -> None:
    argv = _target(cmd)
    assert argv is not None
    if argv[1].endswith(".py"):
        assert (REPO / argv[1]).is_file(), f"README runs {argv[1]}, which does not exist"
    text = _help(tuple(argv))
    flags = {w.split("=")[0] for w in shlex.split(cmd.replace("$m", "cwd")) if w.startswith("--")}
    # accelerate's own flags come before the script
    script_part = cmd.split(argv[-1], 1)[1] if argv[-1] in cmd else cmd
    flags = {f for f in flags if f in script_part}
    missing = sorted(f for f in flags if f not in text)
    assert not missing, f"{argv[-1]} does not accept {missing}"


def test_readme_config_paths_exist() -> None:
    for path in set(re.findall(r"configs/[\w/.$-]+\.yaml", README)):
        for m in ("baseline", "cwd", "hwd") if "$m" in path else ("",):
            p = REPO / path.replace("$m", m)
            assert p.is_file(), f"README names {p.relative_to(REPO)}, which does not exist"
