"""scst: deep learning on spatial transcriptomics and histology, the scverse way."""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scst")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

_SUBMODULES = ("datasets", "io", "models", "nn", "pl", "pp", "tl")
__all__ = [*_SUBMODULES, "__version__"]


def __getattr__(name: str):
    # Subpackages load on first use, so `import scst.nn` needs only torch (GPU machines lack the scverse stack).
    if name in _SUBMODULES:
        return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'scst' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
