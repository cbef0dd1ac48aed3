"""Fixtures for scst.pp patch and tissue tests: section C2 of her2st, its zarr image cache built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if "SCST_DATA_DIR" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["SCST_DATA_DIR"] = str(ROOT.parent / "shared" / "data")


@pytest.fixture(scope="session")
def her2st_dir() -> Path:
    """Folder with the her2st files (``C2/he.jpg``, ...): ../shared/data or $SCST_DATA_DIR (CI has it)."""
    d = Path(os.environ.get("SCST_DATA_DIR", ROOT.parent / "shared" / "data")) / "her2st"
    assert (d / "C2" / "he.jpg").is_file(), f"her2st data not found under {d}; set SCST_DATA_DIR"
    return d


@pytest.fixture(scope="session")
def c2_sdata(her2st_dir):
    """Section C2 with its image, opened lazily from scst's default zarr cache (the one ``her2st_sdata`` fills, so
    the image is converted once per session).

    Tests must not modify it: wrap it with :func:`fresh` before adding elements.
    """
    import scst

    return scst.datasets.her2st(["C2"], path=her2st_dir)


def fresh(sdata):
    """A new SpatialData over the same (lazy) elements, so a test can add elements without touching the fixture."""
    from spatialdata import SpatialData

    return SpatialData(images=dict(sdata.images), shapes=dict(sdata.shapes), tables=dict(sdata.tables))


@pytest.fixture
def c2(c2_sdata):
    """A fresh SpatialData wrapper around the session's C2 elements."""
    return fresh(c2_sdata)
