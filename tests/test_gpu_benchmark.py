"""The GPU benchmark's leave-one-section-out (benchmarks/gpu_expression.py run) on a synthetic patch cache.

Each fold must train on its own panel (chosen without its test section, stored by ``export``) and the test section
must never reach training or early stopping: a recorder around the batch builder sees every batch and its section.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

SECTIONS = ["C2", "C3", "C4", "C5", "C6"]


@pytest.fixture(scope="module")
def gpu_expression(load_benchmark):
    return load_benchmark("gpu_expression")


def _cache(path: Path, rng) -> tuple[Path, np.ndarray]:
    n_per, g = 9, 4
    sections = np.repeat(SECTIONS, n_per)
    n = len(sections)
    rows, cols = np.divmod(np.tile(np.arange(n_per), 5), 3)
    # every fold a panel of its own, most of them strict subsets of the genes
    panels = np.array([[1, 1, 1, 1], [1, 0, 1, 0], [0, 1, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=bool)
    np.savez(
        path, patches=rng.integers(0, 256, (n, 3, 112, 112), dtype=np.uint8),
        counts=rng.poisson(3.0, (n, g)).astype(np.float32), library_size=rng.uniform(500, 1500, n), sections=sections,
        array_coords=np.stack([rows, cols], 1), positions_um=np.stack([rows, cols], 1) * 100.0,
        var_names=np.array(["A", "B", "C", "D"]), fold_sections=np.array(SECTIONS), fold_panels=panels,
    )  # fmt: skip
    return path, panels


def test_run_trains_each_fold_on_its_panel_and_never_on_its_test_section(gpu_expression, tmp_path, monkeypatch):
    cache, panels = _cache(tmp_path / "cache.npz", np.random.default_rng(0))
    seen = []  # (section, training?, genes in the batch's target)
    build = gpu_expression._step_batch

    def recording(model_name, sec, idx, device, augment, *args, **kwargs):
        seen.append((sec["name"], augment, sec["target"].shape[1]))
        return build(model_name, sec, idx, device, augment, *args, **kwargs)

    real_sections = gpu_expression._sections

    def named_sections(path):  # each section's dict carries its name, so the recorder can tell them apart
        data, genes, fold_panels = real_sections(path)
        return {s: {**d, "name": s} for s, d in data.items()}, genes, fold_panels

    monkeypatch.setattr(gpu_expression, "_step_batch", recording)
    monkeypatch.setattr(gpu_expression, "_sections", named_sections)
    for k, test in enumerate(SECTIONS):
        seen.clear()
        args = SimpleNamespace(
            cache=str(cache), model="hggep", config="cpu_small", precision="fp32", folds=test, epochs=1,
            device="cpu", seed=0, time_limit=None, results=str(tmp_path / "res"),
        )  # fmt: skip
        gpu_expression.run(args)
        res = json.loads((tmp_path / "res" / f"hggep_cpu_small_fp32_{test}.json").read_text())
        assert res["n_genes"] == panels[k].sum() and res["panel"].startswith("per fold")
        assert {g for _, _, g in seen} == {panels[k].sum()}  # every batch on the fold's panel only
        trained = {s for s, augment, _ in seen if augment}
        assert test not in trained and res["validation"] not in trained and len(trained) == 3
        # the test section is only predicted, once, at the end (after the last validation pass)
        assert [s for s, _, _ in seen].index(test) == len(seen) - 1
