"""Synthetic H&E + ST data with a planted image → expression signal (shared by the image-model tests).

Each spot has a hidden value ``z`` in [0, 1] that sets the colour of the tissue square under it (pink eosin for
``z = 0`` to purple haematoxylin for ``z = 1``) and its number of dark "nuclei"; gene ``UP`` rises with ``z``
and gene ``DOWN`` falls with it, the other genes are noise. A model that reads the patch predicts ``UP``/``DOWN``
on unseen sections.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

UM_PER_PX = 2.0
STEP_PX = 40  # grid step: 80 µm
SIZE_UM = 64.0  # patch edge: 32 px at 2 µm/px
PINK = np.array([235.0, 160.0, 205.0])
PURPLE = np.array([70.0, 40.0, 140.0])
GENES = ["UP", "DOWN", *[f"NOISE{i}" for i in range(8)], "HOUSE"]


def make_sdata(sections=("S1", "S2", "S3"), grid=8, seed=0, um_per_px=UM_PER_PX, image=True):
    """SpatialData with ``grid × grid`` spots per section, images, shapes and one table (raw counts)."""
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity

    rng = np.random.default_rng(seed)
    step = STEP_PX * UM_PER_PX / um_per_px
    half = int(round(0.45 * step))
    images, shapes, tabs, geos = {}, {}, [], {}
    for s in sections:
        side = int((grid + 1) * step)
        img = rng.normal(245, 5, size=(side, side, 3))
        rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
        rows, cols = rows.ravel(), cols.ravel()
        xy = np.stack([(cols + 1) * step, (rows + 1) * step], 1) + rng.uniform(-1.5, 1.5, (len(rows), 2))
        z = rng.uniform(0, 1, len(rows))
        for (x, y), zi in zip(xy, z):
            y0, x0 = int(y) - half, int(x) - half
            colour = (1 - zi) * PINK + zi * PURPLE
            sq = colour + rng.normal(0, 12, (2 * half, 2 * half, 3))
            # nuclei: dark dots, more of them for larger z (texture carries the signal too, not only colour)
            for _ in range(int(2 + 14 * zi)):
                cy, cx = rng.integers(2, 2 * half - 2, 2)
                sq[cy - 2 : cy + 2, cx - 2 : cx + 2] = PURPLE * 0.5
            img[y0 : y0 + 2 * half, x0 : x0 + 2 * half] = sq
        img = np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1)
        lam = np.column_stack(
            [30 * np.exp(1.5 * z), 30 * np.exp(1.5 * (1 - z)), *[np.full(len(z), 15.0)] * 8, np.full(len(z), 400.0)]
        )
        counts = rng.poisson(lam).astype(np.int32)
        ids = [f"{c}x{r}" for c, r in zip(cols, rows)]
        obs = pd.DataFrame(
            {"section": s, "region": f"{s}_spots", "spot_id": ids, "array_row": rows, "array_col": cols, "z": z},
            index=[f"{s}_{i}" for i in ids],
        )
        t = AnnData(X=sparse.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=GENES))
        t.obsm["spatial"] = xy
        tabs.append(t)
        if image:
            images[f"{s}_image"] = Image2DModel.parse(img, dims=("c", "y", "x"), transformations={s: Identity()})
        shapes[f"{s}_spots"] = ShapesModel.parse(
            xy, geometry=0, radius=np.full(len(xy), half), index=pd.Index(ids, name="spot_id"),
            transformations={s: Identity()},
        )  # fmt: skip
        geos[s] = {
            "image_key": f"{s}_image" if image else None, "shapes_key": f"{s}_spots", "coordinate_system": s,
            "um_per_px": float(um_per_px), "spot_diameter_um": SIZE_UM, "spot_diameter_px": SIZE_UM / um_per_px,
            "grid_step_um": STEP_PX * UM_PER_PX, "image_shape": [side, side], "source": None,
        }  # fmt: skip
    import anndata as ad

    table = ad.concat(tabs, merge="same")
    table.obs["section"] = pd.Categorical(table.obs["section"], categories=list(sections))
    table.obs["region"] = pd.Categorical(table.obs["region"], categories=[f"{s}_spots" for s in sections])
    table.uns["scst"] = {"sections": geos, "gene_alignment": "intersection"}
    table.var["highly_variable_scst"] = True
    table = TableModel.parse(table, region=list(shapes), region_key="region", instance_key="spot_id")
    return SpatialData(images=images, shapes=shapes, tables={"table": table})


def pearson(a, b):
    a, b = np.asarray(a, float) - np.mean(a), np.asarray(b, float) - np.mean(b)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
