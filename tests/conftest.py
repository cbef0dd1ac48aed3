"""Test-wide setup: real data from ../shared/data (CI has it beside the checkout)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
if "SCST_DATA_DIR" not in os.environ and SHARED.is_dir():
    os.environ["SCST_DATA_DIR"] = str(SHARED)


@pytest.fixture(scope="session")
def her2st_sdata():
    """All five HER2+ sections with images (zarr cache built once, then opened lazily)."""
    import scst

    return scst.datasets.her2st()


@pytest.fixture(scope="session")
def her2st_counts():
    """All five HER2+ sections, counts only."""
    import scst

    return scst.datasets.her2st(images=False).tables["table"]
