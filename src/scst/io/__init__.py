"""Readers into SpatialData."""

from ._image import cached_image
from ._read_st import concatenate_sections, read_st
from ._register import register_sections

__all__ = ["cached_image", "concatenate_sections", "read_st", "register_sections"]
