"""The package layout: one import name, the stage scripts as typed, the `segkd` front, and no import cycles."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import tomllib

from segkd.cli import COMMANDS, main
from segkd.script import detach_script_folder

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGE_DIR: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]


def _env() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH pointing into the checkout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "OMP_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------------------ one import name
def _packages_on_disk() -> set[str]:
    found = set()
    for name, folder in PACKAGE_DIR.items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root).parts
            found.add(".".join([name, *rel]))
    return found


def test_every_package_folder_is_listed() -> None:
    assert set(PYPROJECT["tool"]["setuptools"]["packages"]) == _packages_on_disk()
    assert {name.split(".")[0] for name in PACKAGE_DIR} == {"segkd"}


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_name(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", minversion="77")
    # A copy of the sources: setuptools builds in a build/ folder beside them.
    src = tmp_path / "src"
    shutil.copytree(
        REPO, src, ignore=shutil.ignore_patterns(".*", "build", "runs", "data", "outputs", "*.egg-info")
    )
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("segkd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"segkd", f"segkd-{metadata.version('segkd')}.dist-info"}
    for module in (
        "distill/train.py",
        "export/to_trt.py",
        "infer/run_camera.py",
        "scenes/street.py",
        "cli.py",
    ):
        assert f"segkd/{module}" in names


def test_the_stage_folders_are_not_top_level_names(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import importlib, segkd.distill, segkd.export, segkd.infer, segkd.scenes
        print(segkd.infer.__file__)
        for name in ("distill", "export", "infer", "scenes"):
            try:
                importlib.import_module(name)
            except ModuleNotFoundError:
                continue
            raise SystemExit(f"{name} is importable")
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=_env()
    )
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()) == REPO / "infer" / "__init__.py"


# ----------------------------------------------------------------------------------- the scripts, as typed
@pytest.mark.parametrize("script", ["distill/train.py", "export/to_trt.py", "infer/run_camera.py"])
@pytest.mark.parametrize("where", ["checkout", "elsewhere"])
def test_documented_scripts_run_as_typed(script: str, where: str, tmp_path: Path) -> None:
    cwd, path = (REPO, script) if where == "checkout" else (tmp_path, str(REPO / script))
    res = subprocess.run(
        [sys.executable, path, "--help"], capture_output=True, text=True, cwd=cwd, env=_env(), timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith(f"usage: python {script}")


def test_a_script_takes_its_folder_off_the_import_path(monkeypatch: pytest.MonkeyPatch) -> None:
    folder = str(REPO / "infer")
    monkeypatch.setattr(sys, "path", [folder, "/elsewhere", folder + "/", str(REPO)])
    detach_script_folder(str(REPO / "infer" / "run_camera.py"))
    assert sys.path == ["/elsewhere", str(REPO)]


# ----------------------------------------------------------------------------------------- the front
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_segkd_subcommand_help_names_segkd(
    name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["segkd", name, "--help"])
    try:
        code = main([name, "--help"])
    except SystemExit as e:  # argparse's --help
        code = e.code
    assert code == 0
    assert capsys.readouterr().out.startswith(f"usage: segkd {name}")


def test_segkd_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"segkd {metadata.version('segkd')}"


def test_hints_name_the_command_the_user_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    from segkd.script import command, prog

    monkeypatch.setattr(sys, "argv", ["segkd train"])
    assert prog("distill/train.py") == "segkd train"
    assert command("trt", "python export/to_trt.py") == "segkd trt"
    monkeypatch.setattr(sys, "argv", ["distill/train.py"])
    assert prog("distill/train.py") == "python distill/train.py"
    assert command("trt", "python export/to_trt.py") == "python export/to_trt.py"


# ------------------------------------------------------------------------------------------ import cycles
def _module_files() -> dict[str, Path]:
    files = {}
    for name, folder in PACKAGE_DIR.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join([name, *parts])] = path
    return files


def import_graph(files: dict[str, Path], root: str = "segkd") -> dict[str, set[str]]:
    """Module -> modules of ``root`` it imports anywhere: at the top, inside functions, under TYPE_CHECKING."""

    def owner(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = owner(name) if name.split(".")[0] == root else None
                if target is not None and target != module:
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (each holds an import cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_scan_finds_a_lazy_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("import pkg.b\n")
    (tmp_path / "b.py").write_text("def f():\n    from pkg.c import x\n")
    (tmp_path / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import y\n"
    )
    (tmp_path / "d.py").write_text("import pkg.a\n")
    files = {f"pkg.{n}": tmp_path / f"{n}.py" for n in "abcd"}
    graph = import_graph(files, root="pkg")
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"}, "pkg.d": {"pkg.a"}}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_no_import_cycles() -> None:
    files = _module_files()
    assert len(files) > 100
    assert cycles(import_graph(files)) == []


def test_segkd_launch_help_leads_with_the_projects_options(capsys: pytest.CaptureFixture[str]) -> None:
    from segkd.distill.launch import main as launch

    assert launch(["--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage:") and len(text.splitlines()) < 80  # one screen, no launcher dump
    trainer, launcher = text.index("== trainer options"), text.index("== common launcher options")
    assert (
        trainer < launcher and "--config" in text[trainer:launcher] and "--num_processes" in text[launcher:]
    )


def test_the_trainers_hints_name_a_command_that_ends_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from segkd.script import train_command

    for key in ("ACCELERATE_MIXED_PRECISION", "TORCHELASTIC_RUN_ID", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(sys, "argv", ["distill/train.py"])
    assert train_command() == "python distill/train.py"
    monkeypatch.setenv("LOCAL_RANK", "0")  # under accelerate launch or torchrun
    assert train_command().startswith("segkd launch")
    monkeypatch.setattr(sys, "argv", ["segkd train"])
    assert train_command() == "segkd train"
