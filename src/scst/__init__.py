"""scst: deep learning on spatial transcriptomics and histology, the scverse way."""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, io, models, nn, pl, pp, tl

try:
    __version__ = version("scst")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["datasets", "io", "models", "nn", "pl", "pp", "tl", "__version__"]
