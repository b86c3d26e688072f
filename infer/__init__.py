"""Deploy-side runtime: datasets, metrics and model runners. Imports without torch.

``__version__`` is the installed ``segkd`` distribution's version (pyproject.toml is its one source); a checkout
that was never installed reports ``0+unknown``.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("segkd")
except _metadata.PackageNotFoundError:  # running from a checkout without `pip install -e .`
    __version__ = "0+unknown"
