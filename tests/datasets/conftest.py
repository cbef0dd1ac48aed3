"""Point scst at the shared data folder (``../shared/data`` next to the repository) unless SCST_DATA_DIR is set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _scst_data_dir():
    with pytest.MonkeyPatch.context() as mp:
        if not os.environ.get("SCST_DATA_DIR") and SHARED.is_dir():
            mp.setenv("SCST_DATA_DIR", str(SHARED))
        yield
