"""Time the quick start of docs/gcng.md step by step, and GCNG's fit report with ``fast_config`` on HER2+ C2.

Run from the repository root (data under ``$SCST_DATA_DIR``)::

    python benchmarks/bench_gcng_quickstart.py

Writes ``benchmarks/results/gcng_quickstart/results.json`` (seconds per step, CPU, load average before/after, the
fit report's AUROCs); docs/gcng.md quotes it. The steps are the quick start's calls, in its order, with its
arguments; the second part is the cross-fitted GCNG on C2's grid with ``GCNG.fast_config`` (5 fold models and one
on all known pairs), whose ``gcng_fit`` report gives the training and held-out AUROCs the page states.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from _page import cpu_name

import scst
from scst._utils import _atomic_file

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "gcng_quickstart" / "results.json"


def _timed(steps: dict, name: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, its wall time recorded in ``steps[name]``; returns its result."""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    steps[name] = time.perf_counter() - t
    print(f"{name:<60} {steps[name]:6.1f} s", flush=True)
    return out


def main() -> None:
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", category=FutureWarning)
    load_before, t0 = os.getloadavg()[0], time.perf_counter()
    steps: dict[str, float] = {}

    adata = scst.datasets.seqfish_cortex()
    scst.pp.cell_graph(adata, radius=140)
    scst.pp.graph_matrix(adata, "autocrine+")
    pairs = scst.datasets.ligand_receptor("gcng", organism="mouse")
    steps["load, cell graph, graph matrix, pairs"] = time.perf_counter() - t0
    scst.models.GCNG.setup_anndata(adata, graph_key="gcng_autocrine_plus")
    model = scst.models.GCNG(adata, **scst.models.GCNG.bench_config)
    lr = scst.tl.ligand_receptor
    _timed(steps, "GCNG.train (bench_config)", model.train, pairs)
    _timed(steps, "ligand_receptor with the trained model", lr, adata, model, pairs=pairs, method="gcng")
    methods = ["gcng", "spatial_pearson", "bivariate", "expression"]
    _timed(steps, "ligand_receptor cross-fitted GCNG + baselines, 1,000 permutations", lr, adata,
           pairs="consensus", method=methods, n_perms=1000)  # fmt: skip
    _timed(steps, "ligand_receptor pooled readout", lr, adata, pairs=pairs, method="gcng",
           gcng_config=scst.models.GCNG.pooled_config)  # fmt: skip
    cv = _timed(steps, "ligrec_cv (expression-matched negatives)", scst.tl.ligrec_cv, adata, pairs,
                negatives="expression_matched")  # fmt: skip
    scst.tl.ligrec_metrics(cv)
    quick_total = time.perf_counter() - t0

    # HER2+ C2 with fast_config: the fit report of the cross-fitted GCNG (docs/gcng.md, "GCNG without model")
    c2 = scst.datasets.her2st(sections=["C2"], images=False).tables["table"]
    scst.pp.cell_graph(c2, grid=True)
    t = time.perf_counter()
    scst.tl.ligand_receptor(c2, pairs="gcng", method="gcng", gcng_config=scst.models.GCNG.fast_config, n_perms=0)
    c2_s = time.perf_counter() - t
    fit = c2.uns["scst_ligrec_params"]["gcng_fit"]
    fit = fit.to_dict(orient="records") if hasattr(fit, "to_dict") else fit
    print(f"C2 fast_config cross-fit: {c2_s:.1f} s, {len(fit)} fits", flush=True)

    record = {
        "quick_start_seconds": steps,
        "quick_start_total_seconds": quick_total,
        "her2st_C2_fast_config": {"seconds": c2_s, "n_fits": len(fit), "gcng_fit": fit},
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "torch": torch.__version__,
        "command": " ".join(["python benchmarks/bench_gcng_quickstart.py", *sys.argv[1:]]),
    }
    with _atomic_file(OUT) as tmp:
        tmp.write_text(json.dumps(record, indent=1, default=float))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
