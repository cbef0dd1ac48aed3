"""Fixtures for scst.pl: her2st sections C2 and C3 with a fake ``predicted`` layer (observed + noise)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest

BASELINE = Path(__file__).with_name("baseline")


@pytest.fixture(scope="session")
def her2st_two():
    """C2 and C3 with images; ``layers["predicted"]`` = observed log1p(normalize_total) + N(0, 0.5²), seed 0."""
    import scst
    from scst._normalize import log_normalized

    sd = scst.datasets.her2st(sections=["C2", "C3"])
    t = sd.tables["table"]
    rng = np.random.default_rng(0)
    t.layers["predicted"] = log_normalized(t) + rng.normal(0, 0.5, (t.n_obs, t.n_vars)).astype(np.float32)
    return sd


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def compare_to_baseline(fig, name: str, tmp_path: Path, tol: float) -> float:
    """RMS difference (0–255) between ``fig`` saved at 40 dpi and ``baseline/<name>.png``; fails above ``tol``.

    ``SCST_UPDATE_BASELINE=1`` rewrites the baseline instead.
    """
    import os

    from matplotlib.testing.compare import compare_images

    out = tmp_path / f"{name}.png"
    fig.savefig(out, dpi=40)
    ref = BASELINE / f"{name}.png"
    if os.environ.get("SCST_UPDATE_BASELINE") == "1":
        ref.write_bytes(out.read_bytes())
    res = compare_images(str(ref), str(out), tol=tol, in_decorator=True)
    assert res is None or res["rms"] <= tol, f"{name}: RMS {res['rms']:.2f} > {tol} (diff in {res['diff']})"
    return 0.0 if res is None else float(res["rms"])
