"""Deploy-side runtime: datasets, metrics and model runners. Imports without torch."""

__version__ = "0.1.0"
