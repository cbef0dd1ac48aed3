"""scst.nn and its training step import and run without the scverse stack (as on the GPU machines)."""

import subprocess
import sys
import textwrap
from pathlib import Path

#: Packages the GPU machines lack (torch, torchvision, torch_geometric and numpy are there).
BLOCKED = (
    "anndata", "scanpy", "spatialdata", "squidpy", "lightning", "pytorch_lightning", "pandas", "scipy", "sklearn",
    "dask", "zarr", "xarray",
)  # fmt: skip

# Every import finder is wrapped to find nothing under the blocked names: `import pandas` raises ModuleNotFoundError and
# importlib.util.find_spec("pandas") returns None, exactly as when the package is not installed.
_BLOCKER = textwrap.dedent(
    f"""
    import sys

    class _Hide:
        def __init__(self, finder):
            self.finder = finder

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                return None
            find = getattr(self.finder, "find_spec", None)
            return find(name, path, target) if find is not None else None

        def __getattr__(self, attr):
            return getattr(self.finder, attr)

    sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    src = str(Path(__file__).resolve().parents[2] / "src")
    return subprocess.run(
        [sys.executable, "-c", _BLOCKER + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": src, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )


def test_blocker_blocks():
    """The blocker works: importing the full package's data side fails in the subprocess."""
    res = _run("import scst.io")
    assert res.returncode != 0
    assert "ModuleNotFoundError: No module named" in res.stderr


def test_scst_nn_trains_without_the_scverse_stack():
    res = _run(
        """
        import warnings
        warnings.simplefilter("ignore")
        import numpy as np
        import torch
        import scst.nn as nn_
        from scst.nn import HGGEP_BENCH, HGGEPModule, TCGN_BENCH, TCGNModule, patches_to_input, train_step

        torch.manual_seed(0)
        n, g = 12, 4
        rng = np.random.default_rng(0)
        rows, cols = np.divmod(np.arange(n), 4)
        x = patches_to_input(rng.integers(0, 256, (n, 3, 112, 112), dtype=np.uint8), augment=True)
        batch = {"patches": x, "coords": torch.from_numpy(np.stack([rows, cols], 1)),
                 "positions": torch.from_numpy(np.stack([rows, cols], 1).astype(np.float32)),
                 "target": torch.rand(n, g), "counts": torch.poisson(torch.full((n, g), 2.0)),
                 "size_factors": torch.ones(n)}
        hg = HGGEPModule(g, **HGGEP_BENCH["cpu_small"]["config"])
        out = train_step(hg, batch, torch.optim.AdamW(hg.parameters()), precision="bf16")
        tc = TCGNModule(g, **TCGN_BENCH)
        small = {"patches": torch.nn.functional.interpolate(x[:4], size=128), "target": batch["target"][:4]}
        out2 = train_step(tc, small, torch.optim.AdamW(tc.parameters()))
        bad = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("OK", float(out["loss"]), float(out2["loss"]), bad)
        """.replace("BLOCKED", repr(BLOCKED))
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("OK") and res.stdout.strip().endswith("[]"), res.stdout


def test_gpu_benchmark_step_runs_without_the_scverse_stack(tmp_path):
    """The GPU benchmark's `speed-one` (product step, per-spot reference and its agreement check) on a tiny cache."""
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    n_per, g = 9, 3
    sections = np.repeat(["C2", "C3", "C4", "C5", "C6"], n_per)
    n = len(sections)
    rows, cols = np.divmod(np.tile(np.arange(n_per), 5), 3)
    cache = tmp_path / "cache.npz"
    np.savez(
        cache, patches=rng.integers(0, 256, (n, 3, 112, 112), dtype=np.uint8),
        counts=rng.poisson(3.0, (n, g)).astype(np.float32), library_size=rng.uniform(500, 1500, n), sections=sections,
        array_coords=np.stack([rows, cols], 1), positions_um=np.stack([rows, cols], 1) * 100.0,
        var_names=np.array(["A", "B", "C"]),
    )  # fmt: skip
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_expression.py"
    runs = {
        model: ["gpu_expression.py", "speed-one", "--model", model, "--mode", mode, "--config", "cpu_small",
                "--device", "cpu", "--steps", "1", "--warmup", "1", "--cache", str(cache),
                "--out", str(tmp_path / f"{model}.json")]
        for model, mode in (("hggep", "reference"), ("tcgn", "bf16+cl"))
    }  # fmt: skip
    res = _run(  # both runs in one interpreter: a subprocess costs seconds of imports on CI's cores
        f"""
        import runpy
        for argv in {list(runs.values())!r}:
            sys.argv = argv
            runpy.run_path({str(script)!r}, run_name="__main__")
        bad = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
        assert not bad, bad
        """
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for model in runs:
        r = json.loads((tmp_path / f"{model}.json").read_text())
        assert r["spots_timed"] == n_per  # HGGEP: the whole section; TCGN: min(32, spots of the section)
        assert np.isfinite(r["losses"]).all() and r["spots_per_s"] > 0
        if model == "hggep":  # the per-spot Python-loop hypergraph reproduces the product's network
            assert r["reference_check"]["max_abs_diff"] < 1e-4
