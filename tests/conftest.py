"""Test-wide setup: real data from ../shared/data (CI has it beside the checkout)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
if "SCST_DATA_DIR" not in os.environ and SHARED.is_dir():
    os.environ["SCST_DATA_DIR"] = str(SHARED)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Test processes run side by side (`nox -s tests` runs pytest-xdist): one intra-op thread each, also in the
    # processes the tests start, or the workers oversubscribe CI's 2 cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``).

    CI has 2 shared cores: intra-op threads oversubscribe and slow the small training tests down several-fold.
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def dask_client():
    """One dask ``LocalCluster`` (two worker processes, one thread each) for every fan-out test of the session.

    Starting worker processes and importing scst in them costs ~15 s on CI's 2 cores, so the tests share one
    cluster; the default-cluster path (``client=None``) has its own test. The client is not made dask's default
    scheduler: the other tests' dask arrays keep computing in this process.
    """
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0") as lc:
        with Client(lc, set_as_default=False) as client:
            yield client


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


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark("gpu_pretrain")``: a script of ``benchmarks/`` imported as a module (not run)."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
