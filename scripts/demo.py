"""scst demo: the main job end-to-end on the five HER2+ sections (``nox -s demo``).

Loads C2–C6 into one SpatialData, selects the gene panel, builds the spot grid graph (squidpy) and the
feature/position hypergraph, reads 80 µm spot patches from the zarr image cache, prints a summary and saves
``ERBB2`` over the H&E of every section.
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
    print(f"Saved {out / 'her2st_erbb2.png'}; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
