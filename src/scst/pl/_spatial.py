"""One section on its H&E through spatialdata-plot: a small SpatialData of that section's image, spots and values."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.colors import Colormap, Normalize

from .._constants import INSTANCE_KEY, SECTION_KEY, SPATIAL_KEY, UNS_KEY

# Pyramid level drawn under the spots (1/8 of full resolution: ~1200 px for a her2st section).
IMAGE_LEVEL = 3


def _sections(adata: AnnData, sections: Any, key: str | None = SECTION_KEY) -> list[str | None]:
    """The sections to draw: values of ``obs[key]``; ``key=None``: ``[None]``, all spots in one panel."""
    if key is None:
        if sections is not None:
            raise ValueError("sections: picking sections needs their obs column (library_key); none is given or found.")
        return [None]
    if key not in adata.obs:
        if key != SECTION_KEY:
            raise KeyError(f"library_key: adata.obs has no {key!r} column.")
        raise KeyError(f"adata.obs has no {SECTION_KEY!r} column; read the data with scst.io.read_st/scst.datasets.")
    # Sections with spots: an unused category (e.g. left by filtering obs with pandas) has nothing to draw.
    col = adata.obs[key].astype("category").cat.remove_unused_categories()
    present = list(col.cat.categories.astype(str))
    if sections is None:
        return present
    if not isinstance(sections, str | Sequence | np.ndarray | pd.Index):
        raise TypeError(f"sections: expected a section name or a list of them, got {sections!r}.")
    sections = [sections] if isinstance(sections, str) else [str(s) for s in sections]
    if not sections:
        raise ValueError("sections: expected at least one section.")
    from ._utils import _check_in

    for s in sections:
        _check_in(s, present, "sections", f"adata.obs[{key!r}]")
    return sections


class _Section:
    """The elements of one section: spots (shapes), the image if any, the table rows, and the coordinate system."""

    def __init__(self, data: Any, adata: AnnData, section: str | None, key: str = SECTION_KEY):
        from geopandas import GeoDataFrame

        self.name = section  # None: all spots (no section column), drawn as circles at obsm["spatial"]
        if section is None:
            self.rows, geo = np.arange(adata.n_obs), {}
        else:
            self.rows = np.flatnonzero((adata.obs[key].astype(str) == section).to_numpy())
            geo = adata.uns.get(UNS_KEY, {}).get("sections", {}).get(section, {})
        self.cs = geo.get("coordinate_system", "global" if section is None else section)
        inst = adata.uns.get("spatialdata_attrs", {}).get("instance_key", INSTANCE_KEY)
        shapes = getattr(data, "shapes", {})
        images = getattr(data, "images", {})
        shapes_key, image_key = geo.get("shapes_key"), geo.get("image_key")
        if shapes_key in shapes and inst in adata.obs:
            self.shapes: GeoDataFrame = shapes[shapes_key]
            self.ids = adata.obs[inst].to_numpy()[self.rows]
        else:
            self.shapes, self.ids = self._circles(adata, geo)
        self.image = images[image_key] if image_key in images else None
        if self.image is None:
            warnings.warn(
                f"{'The data have' if section is None else f'Section {section!r} has'} no image in the SpatialData; "
                "plotting the spots only.",
                UserWarning,
                stacklevel=4,
            )
        # The extent of the spots drawn (those of the table: a table subset to some spots, e.g. a region, is framed
        # as the same spots without shapes), in the coordinate system drawn: shapes stored in other units (a Scale
        # or Affine to ``cs``, e.g. spots in µm over a pixel image) are placed there by spatialdata-plot, so their
        # bounds are mapped alike.
        drawn = self.shapes[self.shapes.index.isin(self.ids)]
        drawn = drawn if len(drawn) else self.shapes
        xy = np.stack([drawn.geometry.x.to_numpy(), drawn.geometry.y.to_numpy()], 1)
        lin, shift = self._to_cs()
        xy = xy @ lin.T + shift
        pad = 2 * float(np.nanmax(drawn["radius"])) if "radius" in drawn else 0.0
        pad *= float(np.sqrt(abs(np.linalg.det(lin))))
        self.extent = (xy[:, 0].min() - pad, xy[:, 0].max() + pad, xy[:, 1].min() - pad, xy[:, 1].max() + pad)

    def _to_cs(self) -> tuple[np.ndarray, np.ndarray]:
        """Linear part and shift of the shapes' (x, y) → ``self.cs`` transformation (identity when they have none)."""
        from spatialdata.transformations import get_transformation

        ts = get_transformation(self.shapes, get_all=True)
        if self.cs not in ts:
            return np.eye(2), np.zeros(2)
        m = np.asarray(ts[self.cs].to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=np.float64)
        return m[:2, :2], m[:2, 2]

    def _circles(self, adata: AnnData, geo: Mapping) -> tuple[Any, np.ndarray]:
        """Circles at ``obsm["spatial"]``.

        Radius: half the spot diameter, else half the median distance from a position to the nearest other one.
        """
        from scipy.spatial import cKDTree
        from spatialdata.models import ShapesModel
        from spatialdata.transformations import Identity

        if SPATIAL_KEY not in adata.obsm:
            raise KeyError(f"adata.obsm has no {SPATIAL_KEY!r} coordinates to place the spots of {self.name!r}.")
        xy = np.asarray(adata.obsm[SPATIAL_KEY][self.rows], dtype=np.float64)
        if "spot_diameter_px" in geo:
            radius = float(geo["spot_diameter_px"]) / 2
        elif len(uniq := np.unique(xy, axis=0)) > 1:  # distinct positions: spots stacked at one place (sections
            # drawn in one panel over the same coordinates) would give a zero radius, which spatialdata refuses
            radius = float(np.median(cKDTree(uniq).query(uniq, k=2)[0][:, 1])) / 2
        else:
            radius = 1.0
        ids = np.arange(len(xy))
        gdf = ShapesModel.parse(
            xy, geometry=0, radius=np.full(len(xy), radius), index=ids, transformations={self.cs: Identity()}
        )
        return gdf, ids

    def render(
        self,
        ax: Axes,
        values: pd.DataFrame,
        column: str,
        *,
        title: str,
        norm: Normalize | None = None,
        cmap: Colormap | str | None = None,
        palette: Mapping[str, str] | None = None,
        legend: bool = True,
    ) -> None:
        """Draw ``values[column]`` (one row per spot of this section, table order) on the spots over the image."""
        import spatialdata_plot  # noqa: F401  (registers the .pl accessor)
        from spatialdata import SpatialData
        from spatialdata.models import TableModel

        obs = pd.DataFrame(
            {"region": pd.Categorical(["spots"] * len(self.rows)), "instance": self.ids}, index=values.index.astype(str)
        )
        num = column not in values or not isinstance(values[column].dtype, pd.CategoricalDtype)
        if num:
            X = values[[column]].to_numpy(np.float32)
            table = AnnData(X=X, obs=obs, var=pd.DataFrame(index=[column]))
        else:
            obs[column] = values[column].array
            table = AnnData(X=np.zeros((len(obs), 0), np.float32), obs=obs)
        table = TableModel.parse(table, region="spots", region_key="region", instance_key="instance")
        sd = SpatialData(
            shapes={"spots": self.shapes},
            tables={"table": table},
            images={"image": self.image} if self.image is not None else {},
        )
        sd_ = sd
        with warnings.catch_warnings():  # spatialdata-plot 0.4 calls matplotlib's deprecated Colormap.set_bad
            warnings.simplefilter("ignore", category=PendingDeprecationWarning)
            if self.image is not None:
                levels = len(self.image.children) if hasattr(self.image, "children") else 0
                scale = f"scale{min(IMAGE_LEVEL, levels - 1)}" if levels else None
                sd_ = sd_.pl.render_images("image", scale=scale)
            kw: dict[str, Any] = {"norm": norm, "cmap": cmap} if num else {"palette": dict(palette or {}) or None}
            sd_ = sd_.pl.render_shapes("spots", color=column, table_name="table", colorbar=False, **kw)
            sd_.pl.show(
                coordinate_systems=self.cs,
                ax=ax,
                title=title,
                colorbar=False,
                legend_loc="right margin" if legend and not num else None,
            )
        x0, x1, y0, y1 = self.extent
        ax.set_xlim(x0, x1)
        ax.set_ylim(y1, y0)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("")
        ax.set_ylabel("")
