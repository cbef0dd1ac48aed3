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
import matplotlib.pyplot as plt
import numpy as np
import scanpy as sc
import spatialdata_plot  # noqa: F401  (registers sdata.pl)
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

    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)

    # ST arrays: 4-neighbour grid on the integer array indices, per section (no edges across sections).
    sq.gr.spatial_neighbors(adata, spatial_key="spatial_array", coord_type="grid", n_neighs=4,
                            library_key="section", key_added="grid")  # fmt: skip
    print(f"Grid graph: {adata.obsp['grid_connectivities'].nnz // 2} undirected edges → obsp['grid_connectivities']")

    panel = adata[:, adata.var["highly_variable_scst"]].copy()
    sc.pp.pca(panel, n_comps=30)
    adata.obsm["X_pca"] = panel.obsm["X_pca"]
    scst.pp.hypergraph(adata, use_rep="X_pca", k=3)
    inc = adata.obsp["hypergraph_incidence"]
    print(f"Hypergraph: {inc.shape[1]} hyperedges of {int(inc.sum(0).max())} spots → obsp['hypergraph_incidence']")

    ds = scst.pp.SpotPatchDataset(sdata, size_um=80.0, out_px=112)
    loader = torch.utils.data.DataLoader(ds, batch_size=64)
    t1 = time.perf_counter()
    grey = []
    for batch in loader:
        grey.append(batch["patch"].mean(dim=(1, 2, 3)))
    grey = torch.cat(grey).numpy()
    print(f"Patches: {len(ds)} × 3 × 112 × 112 (80 µm) read in {time.perf_counter() - t1:.1f} s; "
          f"mean intensity under spots {grey.mean():.2f} (white background = 1.0)")  # fmt: skip

    fig, axes = plt.subplots(1, len(sections), figsize=(4 * len(sections), 4.2))
    for ax, s in zip(np.atleast_1d(axes), sections):
        sdata.pl.render_images(f"{s}_image").pl.render_shapes(
            f"{s}_spots", color="ERBB2", table_name="table", cmap="magma"
        ).pl.show(coordinate_systems=s, ax=ax, title=f"{s}: ERBB2 (log1p)")
    fig.tight_layout()
    fig.savefig(out / "her2st_erbb2.png", dpi=110)
    print(f"Saved {out / 'her2st_erbb2.png'}; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
