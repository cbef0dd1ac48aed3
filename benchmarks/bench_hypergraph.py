"""Benchmark the HGGEP hypergraph build (scst.nn knn_hyperedges and scst.pp.hypergraph) on CPU.

Run from the repository root::

    python benchmarks/bench_hypergraph.py

Writes ``docs/benchmarks/hypergraph.md``. Synthetic Visium-like data: spots on a hexagonal lattice
(100 px pitch) inside a disc, 64-d features = smooth spatial signal + unit Gaussian noise.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import anndata as ad
import numpy as np
import torch
from _page import machine_line, write_page

from scst.nn._hypergraph import knn_hyperedges
from scst.pp._hypergraph import hypergraph

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "hypergraph.md"
COMMAND = "python benchmarks/bench_hypergraph.py"


def make_spots(n: int, d: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """About ``n`` spots on a hex lattice cut to a disc, with spatially smooth ``d``-d features."""
    side = math.ceil(math.sqrt(n * 4 / math.pi * 1.02 / (math.sqrt(3) / 2))) + 2
    yy, xx = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    pos = np.stack([(xx * 2 + yy % 2).ravel() * 50.0, (yy * math.sqrt(3)).ravel() * 50.0], 1)
    centre = pos.mean(0)
    order = np.argsort(((pos - centre) ** 2).sum(1), kind="stable")[:n]  # the n spots closest to the centre
    pos = pos[np.sort(order)]
    rng = np.random.default_rng(seed)
    freq = rng.normal(scale=1 / 2000, size=(2, d))
    feat = np.sin(pos @ freq + rng.uniform(0, 2 * np.pi, size=d)) * 2 + rng.normal(size=(n, d))
    return torch.tensor(feat, dtype=torch.float32), torch.tensor(pos, dtype=torch.float32)


def timeit(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up: allocator, lazy imports and thread pool start outside the timing
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()

    load_before = os.getloadavg()
    rows = []
    for n in args.sizes:
        feat, pos = make_spots(n)
        adata = ad.AnnData(np.zeros((n, 1), dtype=np.float32))
        adata.obsm["X_pca"] = feat.numpy()
        adata.obsm["spatial"] = pos.numpy().astype(np.float64)
        for threads in (2, 1):
            torch.set_num_threads(threads)
            med, best = timeit(lambda f=feat, p=pos: knn_hyperedges(f, p, 3), args.repeats)
            rows.append(("`nn.knn_hyperedges` (fast path)", n, threads, med, best))
            med, best = timeit(lambda a=adata: hypergraph(a, "X_pca", k=3, library_key=None), args.repeats)
            rows.append(("`pp.hypergraph` (AnnData wrapper)", n, threads, med, best))
            print(rows[-2], rows[-1], flush=True)

    # The call HGGEP makes in every forward pass: one section (~600 spots on HER2ST) of 1024-d features.
    torch.set_num_threads(1)
    feat, pos = make_spots(600, d=1024)
    med, best = timeit(lambda: knn_hyperedges(feat, pos, 3), max(args.repeats, 5))
    rows.append(("`nn.knn_hyperedges` (dense, 1024-d, HGGEP forward)", 600, 1, med, best))

    # Agreement of the fast path with the dense (paper) ranking on the 10k data.
    torch.set_num_threads(2)
    feat, pos = make_spots(10_000)
    fast = knn_hyperedges(feat, pos, 3, n_candidates=16, exact=False)[0].reshape(-1, 3)
    dense = knn_hyperedges(feat, pos, 3, exact=True)[0].reshape(-1, 3)
    same = (fast.sort(1).values == dense.sort(1).values).all(1).float().mean().item()
    load_after = os.getloadavg()

    lines = [
        "## Hypergraph build (HGGEP)",
        "",
        "Feature/position k-NN hyperedges (k = 3, `n_candidates = 16`) on synthetic Visium-like data: spots on",
        "a hexagonal lattice cut to a disc, 64-d features (smooth spatial signal + Gaussian noise). Wall time",
        f"in seconds, median and best of {args.repeats} runs (5 for the 600-spot row); CPU only,",
        "`torch.set_num_threads` as listed.",
        "",
        "| routine | spots | threads | median (s) | best (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {name} | {n:,} | {t} | {med:.3f} | {best:.3f} |" for name, n, t, med, best in rows]
    lines += [
        "",
        f"Fast path vs dense ranking on the 10,000-spot data: {same:.2%} of hyperedges identical.",
        "",
        machine_line(load_before, load_after) + " Goal: 100k spots in < 10 s on 2 cores. With the cores already "
        "busy, 2 torch threads contend with the other jobs, which is why the 2-thread rows can be slower than the "
        "1-thread rows.",
    ]
    raw = {
        "rows": [dict(zip(("routine", "spots", "threads", "median_s", "best_s"), r)) for r in rows],
        "fast_vs_dense_identical": same, "repeats": args.repeats, "load_before": load_before, "load_after": load_after,
    }  # fmt: skip
    write_page(OUT, lines, COMMAND, raw)


if __name__ == "__main__":
    main()
