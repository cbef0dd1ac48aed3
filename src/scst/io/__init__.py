"""Readers into SpatialData."""

from ._image import cached_image
from ._read_st import concatenate_sections, read_st

__all__ = ["cached_image", "concatenate_sections", "read_st"]
