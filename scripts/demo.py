"""scst demo: the main job end-to-end on the five HER2+ sections (``nox -s demo``).

Loads C2–C6 into one SpatialData, selects the gene panel, builds the spot grid graph (squidpy) and the
feature/position hypergraph, reads 80 µm spot patches from the zarr image cache, then trains HGGEP at its small
CPU setting (``bench_config``, random initialisation) on C2–C5, predicts the held-out C6 from its H&E image alone,
prints per-gene Pearson correlations and saves observed vs predicted ERBB2.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import scanpy as sc
import squidpy as sq
import torch

import scst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo_output", help="output folder")
    parser.add_argument("--test-section", default="C6", help="held-out section predicted from its image")
    parser.add_argument("--epochs", type=int, default=None, help="HGGEP training epochs (default: bench_config's)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sc.settings.verbosity = 1
    t0 = time.perf_counter()

    sdata = scst.datasets.her2st()
    adata = sdata.tables["table"]
    sections = list(adata.obs["section"].cat.categories)
    print(f"Loaded {adata.n_obs} spots × {adata.n_vars} genes from sections {sections}")
    for s, geo in adata.uns["scst"]["sections"].items():
        print(f"  {s}: {int((adata.obs['section'] == s).sum())} spots, image {geo['image_shape']} px, "
              f"{geo['um_per_px']:.3f} µm/px, spot diameter {geo['spot_diameter_px']:.0f} px")  # fmt: skip

    scst.pp.select_genes(adata, n_top=1000, min_fraction=0.5)
    print(f"Gene panel: {int(adata.var['highly_variable_scst'].sum())} genes (top-1000 HVG per section, ≥50 % spots)")

    # ST arrays: 4-neighbour grid on the integer array indices, per section (no edges across sections).
    sq.gr.spatial_neighbors(adata, spatial_key="spatial_array", coord_type="grid", n_neighs=4,
                            library_key="section", key_added="grid")  # fmt: skip
    print(f"Grid graph: {adata.obsp['grid_connectivities'].nnz // 2} undirected edges → obsp['grid_connectivities']")

    # X stays raw counts (models and plots expect that); PCA of log1p(normalize_total) panel expression.
    lognorm = sc.pp.log1p(sc.pp.normalize_total(adata, target_sum=1e4, inplace=False)["X"])
    adata.obsm["X_pca"] = sc.pp.pca(lognorm[:, adata.var["highly_variable_scst"].to_numpy()], n_comps=30)
    scst.pp.hypergraph(adata, use_rep="X_pca", k=3)
    inc = adata.obsp["hypergraph_incidence"]
    print(f"Hypergraph: {inc.shape[1]} hyperedges of {int(inc.sum(0).max())} spots → obsp['hypergraph_incidence']")

    ds = scst.pp.SpotPatchDataset(sdata, size_um=80.0, out_px=112, normalize=None)
    loader = torch.utils.data.DataLoader(ds, batch_size=64)
    t1 = time.perf_counter()
    grey = []
    for batch in loader:
        grey.append(batch["patch"].mean(dim=(1, 2, 3)))
    grey = torch.cat(grey).numpy()
    print(f"Patches: {len(ds)} × 3 × 112 × 112 (80 µm) read in {time.perf_counter() - t1:.1f} s; "
          f"mean intensity under spots {grey.mean():.2f} (white background = 1.0)")  # fmt: skip

    scst.pl.spatial_expression(sdata, "ERBB2", layers=[None], save=out / "her2st_erbb2.png")
    print(f"Saved {out / 'her2st_erbb2.png'}")

    # Histology → expression: train on four sections, predict the fifth from its H&E image alone.
    torch.set_num_threads(2)
    test = args.test_section
    train = [s for s in sections if s != test]
    genes = list(adata.var_names[adata.var["highly_variable_scst"]])
    genes += [g for g in ("ERBB2",) if g not in genes]  # shown below; not among the HVGs of patient C
    scst.models.HGGEP.setup_sdata(sdata, genes=genes, sections=train)
    model = scst.models.HGGEP(sdata, **scst.models.HGGEP.bench_config)
    t1 = time.perf_counter()
    model.train(max_epochs=args.epochs or model.config["max_epochs"], enable_progress_bar=False)
    secs = time.perf_counter() - t1
    print(f"HGGEP (bench_config, random init) trained on {train} for {len(model.history)} epochs in {secs:.0f} s")
    model.save(out / "hggep_model", overwrite=True)

    scst.tl.predict_expression(sdata, model, sections=test, progress=False)
    held_out = adata[adata.obs["section"] == test].copy()
    scst.tl.evaluate_expression(held_out, layer="predicted", genes=genes, metrics=("pearson",))
    pcc = held_out.uns["scst_eval"].query("metric == 'pearson'").set_index("gene")["value"]
    print(f"Held-out {test}: per-gene Pearson over {int(pcc.notna().sum())} genes: mean {pcc.mean():.3f}, "
          f"median {pcc.median():.3f}, > 0.2 for {(pcc > 0.2).mean():.1%}; ERBB2 {pcc['ERBB2']:.3f}")  # fmt: skip
    print("Top genes:", ", ".join(f"{g} {v:.2f}" for g, v in pcc.sort_values(ascending=False).head(5).items()))
    scst.pl.spatial_expression(sdata, "ERBB2", sections=[test], save=out / "erbb2_observed_vs_predicted.png")
    print(f"Saved {out / 'erbb2_observed_vs_predicted.png'}; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
