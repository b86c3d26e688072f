"""Make this checkout importable as ``segkd`` without setuptools, as an editable install would.

    python benchmarks/map_checkout.py        # undo: pip uninstall segkd

For a machine whose setuptools is older than pyproject's build requirement (>= 77) and that cannot fetch a newer
one (`benchmarks/gpu_check.sh` runs it there). ``PYTHONPATH`` alone does not do: the stage folders are mapped
below ``segkd`` (``segkd.distill`` is ``distill/``), and a script's own folder or the working directory puts the
checkout's bare ``segkd/`` first. So this writes what ``pip install -e .`` writes into site-packages: a ``.pth``
that installs an import finder for pyproject's ``package-dir`` mapping, and a dist-info with the entry points
(the ``.pth`` format row, the ``segkd`` command's module) and a RECORD, so that ``pip uninstall segkd`` removes it.
Needs Python >= 3.11 (tomllib) and a writable site-packages.
"""

from __future__ import annotations

import csv
import sys
import sysconfig
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
FINDER = "__segkd_checkout_finder"

_FINDER_SOURCE = '''"""segkd mapped from the checkout {repo} (written by benchmarks/map_checkout.py)."""
import importlib.abc
import importlib.util
import sys

MAPPING = {mapping!r}


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """``segkd`` and ``segkd.<stage>`` from their folders; deeper modules follow their package's folder."""

    def find_spec(self, name, path=None, target=None):
        folder = MAPPING.get(name)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(
            name, folder + "/__init__.py", submodule_search_locations=[folder]
        )


if not any(isinstance(f, _CheckoutFinder) for f in sys.meta_path):
    sys.meta_path.append(_CheckoutFinder())
'''


def _entry_points(project: dict) -> str:
    groups = {"console_scripts": project.get("scripts", {}), **project.get("entry-points", {})}
    return "".join(
        f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items()
    )


def main() -> int:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = pyproject["project"]
    mapping = {
        name: str(REPO / folder) for name, folder in pyproject["tool"]["setuptools"]["package-dir"].items()
    }
    site = Path(sysconfig.get_paths()["purelib"])
    info = site / f"{project['name']}-{project['version']}.dist-info"
    files = {
        site / f"{FINDER}.py": _FINDER_SOURCE.format(repo=REPO, mapping=mapping),
        site / "__segkd_checkout.pth": f"import {FINDER}\n",
        info / "METADATA": f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n",
        info / "entry_points.txt": _entry_points(project),
        info / "INSTALLER": "benchmarks/map_checkout.py\n",
    }
    try:
        info.mkdir(exist_ok=True)
        for path, text in files.items():
            path.write_text(text)
        with open(info / "RECORD", "w", newline="") as f:  # what `pip uninstall segkd` removes
            csv.writer(f).writerows([(str(p.relative_to(site)), "", "") for p in [*files, info / "RECORD"]])
    except OSError as e:
        sys.exit(
            f"error: cannot write to {site} ({e}); run this with a Python whose site-packages is writable"
        )
    print(f"segkd -> {REPO} (mapped in {site}; undo with: pip uninstall segkd)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
