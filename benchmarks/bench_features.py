"""Benchmark the histology → expression baselines' feature side: hand-crafted features, patch embeddings, ridge fit.

Run from the repository root (her2st C2–C6, 910 spots)::

    SCST_DATA_DIR=../shared/data SCST_CACHE_DIR=<cache> python benchmarks/bench_features.py

Writes ``docs/benchmarks/features.md``. CPU only, ``torch.set_num_threads(1)``; networks start from random
initialisation (no pretrained weights can be downloaded here). Times are wall-clock and process CPU time: on a
machine shared with other jobs the CPU time is the steadier number.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from _page import machine_line, write_page

import scst.datasets
from scst.models._baselines import MeanExpression, RidgeExpression
from scst.pp import select_genes
from scst.pp._features import handcrafted_features
from scst.pp._patches import extract_patches
from scst.tl._embed import embed_patches

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "features.md"
COMMAND = "SCST_DATA_DIR=../shared/data python benchmarks/bench_features.py"


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def texture_ab(patches) -> list[tuple]:
    """Same-run A/B of the two texture steps: skimage patch by patch vs scst's batched versions (equal output)."""
    import numpy as np
    from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

    from scst.pp._features import _GLCM_ANGLES, _GLCM_DISTANCES, _GLCM_PROPS, _GREY, _glcm_props, _lbp_histogram

    grey = np.einsum("nchw,c->nhw", patches.astype(np.float32) / np.float32(255.0), _GREY)
    g8, q = np.round(grey * 255).astype(np.uint8), np.minimum(grey * 32, 31).astype(np.uint8)
    n = len(patches)

    def lbp_skimage():
        return [np.bincount(local_binary_pattern(im, 8, 1, method="uniform").astype(np.int64).ravel(), minlength=10)
                for im in g8]  # fmt: skip

    m = np.concatenate([graycomatrix(im, _GLCM_DISTANCES, _GLCM_ANGLES, levels=32, symmetric=True) for im in q], 3)
    rows = []
    for name, fn in (
        ("uniform LBP histograms: skimage `local_binary_pattern`, patch by patch", lbp_skimage),
        ("uniform LBP histograms: scst, batched (same codes)", lambda: _lbp_histogram(g8)),
        ("6 GLCM properties: skimage `graycoprops` (normalises per property)",
         lambda: [graycoprops(m, p) for p in _GLCM_PROPS]),
        ("6 GLCM properties: scst, all six from the counts (same values to 1e-14)", lambda: _glcm_props(m)),
    ):  # fmt: skip
        _, wall, cpu = timed(fn)
        rows.append((f"{name} (112 px, grey)", n, wall, cpu))
    return rows


def texture_estimate(rows: list[tuple]) -> str:
    """What the 112 px features would cost in this run with skimage's two texture steps (A/B rows added back)."""
    cpu = {name.split(" (112 px")[0]: c for name, _, _, c in rows}
    feats = next(c for name, _, _, c in rows if name.startswith("`pp.handcrafted_features` (112 px"))
    lbp = cpu["uniform LBP histograms: skimage `local_binary_pattern`, patch by patch"] - cpu[
        "uniform LBP histograms: scst, batched (same codes)"]  # fmt: skip
    props = cpu["6 GLCM properties: skimage `graycoprops` (normalises per property)"] - cpu[
        "6 GLCM properties: scst, all six from the counts (same values to 1e-14)"]  # fmt: skip
    before = feats + lbp + 2 * props  # GLCM properties run twice per patch: grey and haematoxylin
    return (
        f"With skimage's LBP and `graycoprops` (the implementation before this page's run), "
        f"`pp.handcrafted_features` at 112 px would cost ≈ {before:.2f} CPU s here (the row above plus the A/B "
        f"differences, the GLCM properties twice: grey and haematoxylin): {before / feats:.1f}× the current "
        f"{feats:.2f} s. Compare runs of different days by such same-run ratios only: this machine's speed varies "
        "from day to day (the ResNet-18 rows of two runs differ by up to 3×, see the git history of this page)."
    )


ACC_PX = (56, 80, 112)


def patch_size_accuracy(sdata) -> tuple[list[str], dict]:
    """Leave-one-section-out ridge on hand-crafted features (80 µm) at several patch sizes: what a smaller one costs.

    Reported, not used to choose a default (it is scored on every test section): the cost side of
    ``docs/benchmarks/scale.md``. Each fold picks its own panel on its training sections (``cross_validate``).
    """
    import pandas as pd

    from scst.tl import cross_validate

    table = sdata.tables["table"]
    per_gene, means = [], {}
    for px in ACC_PX:
        embed_patches(sdata, "handcrafted", size_um=80.0, out_px=px, key_added=f"hc80_{px}", progress=False)
        df = cross_validate(RidgeExpression, sdata, setup_kwargs={"embedding_key": f"hc80_{px}"},
                            metrics=("pearson",))  # fmt: skip
        per_gene.append(df.assign(out_px=px)[["out_px", "section", "gene", "value"]].rename(columns={"value": "pcc"}))
        means[px] = df.groupby("section", observed=True)["value"].mean().to_dict()
        del table.obsm[f"hc80_{px}"]
    csv = OUT.parents[2] / "benchmarks" / "results" / "features" / "patch_size_per_gene.csv.gz"
    csv.parent.mkdir(parents=True, exist_ok=True)
    tmp = csv.with_name(csv.name + ".tmp")
    pd.concat(per_gene).to_csv(tmp, index=False, float_format="%.5f", compression="gzip")
    tmp.replace(csv)
    sections = list(means[ACC_PX[0]])
    lines = [
        "### What a smaller patch costs in accuracy",
        "",
        "Leave-one-section-out `RidgeExpression` on the hand-crafted features of 80 µm windows resized to each size "
        "(`tl.embed_patches(..., 'handcrafted', out_px=px)`; each fold's panel chosen on its training sections): "
        "mean PCC over the panel genes of each held-out section. Reported to size the cost/accuracy trade-off of "
        "the whole-slide benchmark (docs/benchmarks/scale.md), not used to choose a default: every section is a "
        "test section here, and `embed_patches` keeps its default. Per gene: "
        "`benchmarks/results/features/patch_size_per_gene.csv.gz`.",
        "",
        "| patch size | " + " | ".join(sections) + " | mean |",
        "|---|" + "---:|" * (len(sections) + 1),
    ]
    for px in ACC_PX:
        vals = [means[px][s] for s in sections]
        lines.append(f"| {px} px | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {sum(vals) / len(vals):.3f} |")
    raw = {"mean_pcc": {str(k): v for k, v in means.items()}, "per_gene_csv": str(csv.relative_to(OUT.parents[2]))}
    return lines, raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--densenet", action="store_true", help="also embed with DenseNet-121 at 224 px (slow)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    sdata = scst.datasets.her2st()
    table = sdata.tables["table"]
    n = table.n_obs
    rows = []

    for px in (56, 112, 224):
        res, wall, cpu = timed(lambda p=px: extract_patches(sdata, size_um=80.0, out_px=p, return_counts=False))
        rows.append((f"`pp.extract_patches` (80 µm → {px} px, uint8)", n, wall, cpu))
        patches = res["patches"]
        handcrafted_features(patches[:8])  # warm-up: lazy imports
        feats, wall, cpu = timed(lambda x=patches: handcrafted_features(x))
        rows.append((f"`pp.handcrafted_features` ({px} px, {feats.shape[1]} features)", n, wall, cpu))
        if px == 112:
            rows += texture_ab(patches)

    encoders = [("handcrafted", 112), ("resnet18", 112), ("resnet18", 224)]
    if args.densenet:
        encoders.append(("densenet121", 224))
    for enc, px in encoders:
        _, wall, cpu = timed(
            lambda e=enc, p=px: embed_patches(sdata, e, out_px=p, key_added=f"X_{e}_{p}", progress=False)
        )
        rows.append((f"`tl.embed_patches(encoder={enc!r}, out_px={px})`", n, wall, cpu))

    # Closed-form baselines: one leave-one-section-out fold (train C2–C5, predict C6), 546-gene panel.
    select_genes(table)
    train = ["C2", "C3", "C4", "C5"]
    for key in ("X_handcrafted_112", "X_resnet18_224"):
        RidgeExpression.setup_anndata(table, key, sections=train)
        model, wall, cpu = timed(lambda: RidgeExpression(table).train())
        rows.append((f"`RidgeExpression.train` on `{key}` ({len(model.cv_folds)} inner folds)", 729, wall, cpu))
    MeanExpression.setup_anndata(table, sections=train)
    _, wall, cpu = timed(lambda: MeanExpression(table).train())
    rows.append(("`MeanExpression.train`", 729, wall, cpu))
    load_after = os.getloadavg()
    acc_lines, acc_raw = patch_size_accuracy(sdata)

    lines = [
        "## Histology features and closed-form baselines",
        "",
        "her2st C2–C6 (910 spots; 80 µm windows at 0.69 µm/px ≈ 116 px, resized). Wall and process CPU time in",
        "seconds for the whole data set; `torch.set_num_threads(1)`; networks randomly initialised (no",
        "pretrained weights available here). `embed_patches` includes reading the patches from the zarr image",
        "cache; `handcrafted_features` times the features alone on patches already in memory. The four texture",
        "rows time one step of it both ways on the same 112 px grey patches in the same run (GLCM properties:",
        "one channel, the matrices precomputed); the features use the scst versions.",
        "",
        "| step | spots | wall (s) | CPU (s) | CPU per 1,000 spots (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {name} | {k:,} | {wall:.2f} | {cpu:.2f} | {cpu / k * 1000:.2f} |" for name, k, wall, cpu in rows]
    lines += ["", texture_estimate(rows), "", machine_line(load_before, load_after), "", *acc_lines]
    raw = {
        "rows": [dict(zip(("step", "spots", "wall_s", "cpu_s"), r)) for r in rows],
        "load_before": load_before, "load_after": load_after, "patch_size_accuracy": acc_raw,
    }  # fmt: skip
    write_page(OUT, lines, COMMAND, raw)


if __name__ == "__main__":
    main()
