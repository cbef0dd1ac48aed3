"""Readers into SpatialData."""

from ._image import cached_image, check_image_cache
from ._read_st import concatenate_sections, read_st
from ._register import register_sections
from ._wsi import read_wsi

__all__ = ["cached_image", "check_image_cache", "concatenate_sections", "read_st", "read_wsi", "register_sections"]
