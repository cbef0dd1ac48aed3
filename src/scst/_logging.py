"""Logging through scanpy's logger, so ``sc.settings.verbosity`` controls scst too."""

from scanpy import logging as logg

__all__ = ["logg"]
