"""Multimodal step of the demo: histology ↔ RNA retrieval with MultimodalST on the held-out section (C6).

``run(sdata, out_dir, test="C6")`` trains a small MultimodalST (``DEMO_CONFIG``, CPU) on the paired spots of the
other sections in the table (C2–C5; each spot ↔ its expression; gene groups from the kNN co-expression fallback).
The image encoder is an MLP on the hand-crafted features of each spot at 80/160/320 µm
(``scst.tl.embed_patches(..., "handcrafted")``, standardised within each section by ``scst.pp.scale_by_section``:
the expression models' input, reused when the table already holds ``obsm["X_hc_ms_scaled"]``): on CPU it beats the
from-scratch ViT (docs/benchmarks/multimodal.md) and trains in seconds. The RNA side is denoised (``rna_pcs=10``).
Three such models (seeds 0, 1, 2 by default) retrieve together: for every held-out patch, the closest RNA sample of
the same section by the mean of their cosines after each modality's embeddings are centred over the section
(``scst.tl.retrieve`` on the list, ``standardize="center"``; both chosen on a selection split without C6,
docs/benchmarks/multimodal.md). It prints the top-1 cluster-label accuracy against the label-frequency chance Σp²,
and the exact-spot top-5 rate against 5/n.

    python scripts/demo_multimodal.py --out demo_output
    python scripts/demo_multimodal.py --sections C2,C3,C4,C5,C6,D1 --test-section D1  # another patient (downloaded)
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import scst
from scst._utils import _atomic_file

SCALES_UM = (80.0, 160.0, 320.0)
#: ``rna_pcs=10``: each RNA sample projected on the training samples' 10 principal axes (spot counting noise removed;
#: chosen among 10/30/50 on a selection split without C6, docs/benchmarks/multimodal.md).
#: ``N_MODELS`` models of this setting (seeds 0 …) retrieve together (a deep ensemble; same selection split).
DEMO_CONFIG = {**scst.models.MultimodalST.bench_config, "image_encoder": "mlp", "pretrain_epochs": 2, "max_epochs": 8,
               "rna_pcs": 10}  # fmt: skip
N_MODELS = 3


def run(sdata: Any, out_dir: str | Path, test: str = "C6", seed: int = 0) -> dict:
    """Train on the table's other sections, retrieve on ``test``, print accuracy against chance.

    The ``N_MODELS`` models use seeds ``seed``, ``seed + 1``, …

    Results also go to ``out_dir/multimodal.json``.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    adata = sdata.tables["table"]
    sections = list(adata.obs["section"].cat.categories)
    if test not in sections:
        raise ValueError(f"test: expected one of the table's sections {sections}, got {test!r}.")
    train = [s for s in sections if s != test]
    train_table = adata[adata.obs["section"].isin(train)].copy()
    scst.pp.select_genes(train_table, n_top=1000, min_fraction=0.25)
    adata.var["multimodal_panel"] = train_table.var["highly_variable_scst"].to_numpy()
    tr = scst.pp.to_mudata(sdata, sections=train, genes="multimodal_panel", out_px=64)
    te = scst.pp.to_mudata(sdata, sections=[test], genes="multimodal_panel", out_px=64)
    if "X_hc_ms_scaled" not in adata.obsm:  # multi-scale hand-crafted features, standardised within each section
        scst.tl.embed_patches(sdata, "handcrafted", size_um=SCALES_UM, out_px=112, progress=False, key_added="X_hc_ms")
        scst.pp.scale_by_section(adata, "X_hc_ms")
    for m in (tr, te):  # each patch's spot row of the table
        rows = adata.obs_names.get_indexer(m["image"].obs["rna_sample"])
        m["image"].obsm["handcrafted"] = adata.obsm["X_hc_ms_scaled"][rows].astype("float32")
    scst.pp.gene_groups(tr["rna"], None, n_groups=7)  # the models keep them: te needs no copy
    scst.models.MultimodalST.setup_mudata(tr, group_key="label", patch_key="handcrafted")
    seeds = list(range(seed, seed + N_MODELS))
    models = [scst.models.MultimodalST(tr, **{**DEMO_CONFIG, "seed": s}) for s in seeds]
    retrieve = {"k": 5, "group_keys": ["label"], "standardize": "center"}  # the shipped retrieval setting
    untrained = scst.tl.retrieve(te, models, **retrieve, key_added="scst_retrieval_untrained")
    t1 = time.perf_counter()
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # Lightning's device and stop lines, twice per model: one summary below
    try:
        with warnings.catch_warnings():  # Lightning's own deprecation notice; scst's warnings still show
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            for model in models:
                model.train(enable_progress_bar=False)
    finally:
        lightning_log.setLevel(level)
    train_s = time.perf_counter() - t1
    res = scst.tl.retrieve(te, models, **retrieve)
    summary = {
        "test_section": test,
        "train_sections": train,
        "n_test_spots": int(res["n_target"]),
        "label_top1": res["accuracy"]["label"],
        "label_top1_untrained": untrained["accuracy"]["label"],
        "label_chance_sum_p2": res["chance"]["label"],
        "exact_top5": res["exact_topk"],
        "exact_top5_untrained": untrained["exact_topk"],
        "exact_top5_chance": res["chance_exact_topk"],
        "n_models": N_MODELS,
        "seeds": seeds,
        "train_seconds": train_s,
        "total_seconds": time.perf_counter() - t0,
    }
    print(
        f"Multimodal retrieval on held-out {test} ({summary['n_test_spots']} spots; {N_MODELS} models trained "
        f"{train_s:.0f} s on {models[0].device}):\n"
        f"  top-1 cluster label of the retrieved RNA sample: {summary['label_top1']:.3f} "
        f"(untrained {summary['label_top1_untrained']:.3f}, chance Σp² {summary['label_chance_sum_p2']:.3f})\n"
        f"  exact spot in the top 5: {summary['exact_top5']:.3f} (untrained {summary['exact_top5_untrained']:.3f}, "
        f"chance 5/n {summary['exact_top5_chance']:.3f})"
    )
    with _atomic_file(out_dir / "multimodal.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="demo_output")
    p.add_argument("--sections", default="C2,C3,C4,C5,C6", help="comma-separated her2st sections to load")
    p.add_argument("--test-section", default="C6")
    p.add_argument("--seed", type=int, default=0, help="seed of the first of the models (the others: +1, +2)")
    a = p.parse_args()
    sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    if a.test_section not in sections:  # said before the data are read
        p.error(f"--test-section: expected one of --sections {sections}, got {a.test_section!r}.")
    torch.set_num_threads(1)
    run(scst.datasets.her2st(sections=sections), a.out, test=a.test_section, seed=a.seed)
