"""Public data sets: local copies (``$SCST_DATA_DIR``) or pooch downloads with known hashes."""

from ._fetch import cache_dir, fetch
from ._her2st import HER2ST_SECTIONS, her2st

__all__ = ["HER2ST_SECTIONS", "cache_dir", "fetch", "her2st"]
