"""Property-based tests of the readers: ``read_st`` on random small sections, ``register_sections`` on random circles.

Every generated section ends in a checked result (spots, counts and pixel size equal to the planted ones) or in a
clear error naming the argument (see ``conftest.py``).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import sparse
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Identity

from scst.io import concatenate_sections, read_st, register_sections

SETTINGS = settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# Damage applied to an otherwise valid section (None: the section is valid).
BAD_COUNTS = ("negative_count", "nan_count", "inf_count", "fraction_count", "huge_count", "duplicate_count_id")
BAD_SPOTS = ("nan_pixel", "inf_pixel", "duplicate_spot", "outside_image", "tiny_image")
DAMAGE = (None, "empty_counts", "no_genes", *BAD_COUNTS, *BAD_SPOTS)


@st.composite
def sections(draw):
    """A random ST section: spots on a jittered grid, raw counts, an image size, and one kind of damage."""
    n_cols, n_rows = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    cells = [(c, r) for r in range(1, n_rows + 1) for c in range(1, n_cols + 1)]
    keep = draw(st.lists(st.booleans(), min_size=len(cells), max_size=len(cells)))
    cells = [cell for cell, k in zip(cells, keep) if k] or cells[:1]
    pitch = draw(st.floats(4.0, 40.0))
    origin = draw(st.tuples(st.floats(4.0, 30.0), st.floats(4.0, 30.0)))  # ≥ the largest jitter
    jitter = draw(st.floats(0.0, 0.08))
    n_genes = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    counts = rng.integers(0, 30, size=(len(cells), n_genes))
    return {
        "cells": cells, "pitch": pitch, "origin": origin, "jitter": jitter * pitch, "counts": counts, "rng": rng,
        "um_per_px": draw(st.sampled_from([None, None, 0.5, 2.0])),
        "image": draw(st.integers(0, 3)) == 0, "as_files": draw(st.booleans()),
    }  # fmt: skip


def _build(sec, tmp: Path):
    """(counts, spots, image, expected) for ``read_st``; files or DataFrames."""
    rng, cells, damage = sec["rng"], sec["cells"], sec["damage"]
    col = np.array([c for c, _ in cells])
    row = np.array([r for _, r in cells])
    px = sec["origin"][0] + (col - 1) * sec["pitch"] + rng.uniform(-1, 1, len(cells)) * sec["jitter"]
    py = sec["origin"][1] + (row - 1) * sec["pitch"] + rng.uniform(-1, 1, len(cells)) * sec["jitter"]
    spots = pd.DataFrame({"x": col, "y": row, "pixel_x": px, "pixel_y": py, "selected": 1})
    ids = [f"{c}x{r}" for c, r in cells]
    counts = pd.DataFrame(sec["counts"], index=ids, columns=[f"G{j}" for j in range(sec["counts"].shape[1])])
    i = int(rng.integers(len(cells)))
    if damage == "empty_counts":
        counts = counts.iloc[:0]
    elif damage == "no_genes":
        counts = counts.iloc[:, :0]
    elif damage == "negative_count":
        counts.iloc[i, 0] = -1
    elif damage in ("nan_count", "inf_count", "fraction_count"):
        counts = counts.astype(float)
        counts.iloc[i, 0] = {"nan_count": np.nan, "inf_count": np.inf, "fraction_count": 0.5}[damage]
    elif damage == "huge_count":
        counts = counts.astype(np.int64)
        counts.iloc[i, 0] = 2**40
    elif damage == "duplicate_count_id":
        counts = pd.concat([counts, counts.iloc[[i]]])
    elif damage in ("nan_pixel", "inf_pixel"):
        spots.loc[i, "pixel_x"] = np.nan if damage == "nan_pixel" else np.inf
    elif damage == "duplicate_spot":
        spots = pd.concat([spots, spots.iloc[[i]]], ignore_index=True)
    elif damage == "outside_image":
        spots.loc[i, "pixel_y"] = -5.0 if rng.random() < 0.5 else 1e6
    h = int(np.ceil(spots["pixel_y"].replace([np.inf, -np.inf], 0).fillna(0).max())) + 5
    w = int(np.ceil(spots["pixel_x"].replace([np.inf, -np.inf], 0).fillna(0).max())) + 5
    h, w = min(max(h, 16), 400), min(max(w, 16), 400)  # the image cache needs 16 px per side
    if damage == "tiny_image":
        h, w = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    image = None
    if sec["image"] or damage in ("outside_image", "tiny_image"):
        image = tmp / "he.png"
        Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)).save(image)
    if sec["as_files"]:
        counts.to_csv(tmp / "counts.tsv", sep="\t")
        spots.to_csv(tmp / "spots.tsv", sep="\t", index=False)
        return tmp / "counts.tsv", tmp / "spots.tsv", image, (h, w)
    return counts, spots, image, (h, w)


@pytest.mark.parametrize("damage", DAMAGE)
@SETTINGS
@given(sec=sections())
def test_read_st_random_sections(damage, sec, contract):
    sec["damage"] = damage
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        counts, spots, image, (h, w) = _build(sec, tmp)
        one_line = len({c for c, _ in sec["cells"]}) < 2 and len({r for _, r in sec["cells"]}) < 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "dropped N spots": checked in tests/io
            sd = contract(
                f"read_st: {damage or 'valid'}",
                lambda: read_st(counts, spots, image, sample="S", um_per_px=sec["um_per_px"], cache_dir=tmp / "c"),
                "counts", "spots", "um_per_px", "pixel_cols", "image",
                expect_error=damage is not None and damage != "no_genes",
            )  # fmt: skip
    if sd is None:
        # A valid section may only be refused for its pixel size (one spot / one grid line, no um_per_px).
        assert damage is not None or (sec["um_per_px"] is None and one_line)
        return
    t = sd.tables["table"]
    ids = [f"{c}x{r}" for c, r in sec["cells"]]
    assert list(t.obs["spot_id"]) == ids
    n_genes = 0 if damage == "no_genes" else sec["counts"].shape[1]
    assert t.X.dtype == np.int32 and t.X.shape == (len(ids), n_genes)
    np.testing.assert_array_equal(t.X.toarray(), sec["counts"][:, :n_genes])
    xy = t.obsm["spatial"]
    assert np.isfinite(xy).all()
    geo = t.uns["scst"]["sections"]["S"]
    assert np.isfinite(geo["um_per_px"]) and geo["um_per_px"] > 0
    if sec["um_per_px"] is not None:
        assert geo["um_per_px"] == sec["um_per_px"]
    else:  # planted: 200 µm per grid step of `pitch` px (jitter of at most 8 % of a step)
        assert geo["um_per_px"] == pytest.approx(200.0 / sec["pitch"], rel=0.2)
    if image is not None:
        assert geo["image_shape"] == [h, w]
        assert ((xy >= 0) & (xy < [w, h])).all()


# ------------------------------------------------------------------------------------------------ register
@st.composite
def foreign_tables(draw):
    """A SpatialData as another reader writes it: circles with random radii, a table, maybe an image."""
    n = draw(st.integers(1, 6))
    radius = draw(st.sampled_from(["ok", "zero", "negative", "nan", "inf"]))
    r = {"ok": draw(st.floats(0.5, 80.0)), "zero": 0.0, "negative": -3.0, "nan": np.nan, "inf": np.inf}[radius]
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    xy = rng.uniform(0, 50, size=(n, 2))
    obs = pd.DataFrame(
        {"region": pd.Categorical(["V1"] * n), "spot_id": np.arange(n)}, index=[f"s{i}" for i in range(n)]
    )
    with_array = draw(st.booleans())
    if with_array:
        obs["array_row"], obs["array_col"] = rng.integers(0, 9, n), rng.integers(0, 9, n)
    table = ad.AnnData(sparse.csr_matrix(rng.poisson(2, (n, 3)).astype(np.int32)), obs=obs)
    with_spatial = draw(st.sampled_from([True, True, True, False]))
    if with_spatial:
        table.obsm["spatial"] = xy
    images = {}
    if draw(st.booleans()):
        hw = draw(st.tuples(st.integers(1, 12), st.integers(1, 12)))
        img = rng.integers(0, 255, size=(3, *hw), dtype=np.uint8)
        images["V1_image"] = Image2DModel.parse(img, dims=("c", "y", "x"), transformations={"global": Identity()})
    shapes = ShapesModel.parse(xy, geometry=0, radius=np.ones(n), transformations={"global": Identity()})
    table = TableModel.parse(table, region="V1", region_key="region", instance_key="spot_id")
    sd = SpatialData(images=images, shapes={"V1": shapes}, tables={"table": table})
    sd.shapes["V1"]["radius"] = r  # set afterwards: spatialdata refuses radii <= 0 on parsing (files may hold them)
    return sd, radius, r, with_spatial, with_array


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=foreign_tables(), diameter_um=st.sampled_from([55.0, 100.0]))
def test_register_sections_random_circles(case, diameter_um, contract):
    sd, radius, r, with_spatial, with_array = case
    out = contract(
        f"register_sections: radius {radius}",
        lambda: register_sections(sd, spot_diameter_um=diameter_um) or sd,
        "radius", "spatial",
        expect_error=radius != "ok" or not with_spatial,
    )  # fmt: skip
    if out is None:
        return
    t = sd.tables["table"]
    geo = t.uns["scst"]["sections"]["V1"]
    assert geo["um_per_px"] == pytest.approx(diameter_um / (2 * r))  # planted: µm/px = spot diameter / 2 r
    assert geo["image_key"] == ("V1_image" if "V1_image" in sd.images else None)
    assert list(t.obs["section"].unique()) == ["V1"]
    if with_array:
        np.testing.assert_array_equal(t.obsm["spatial_array"], t.obs[["array_col", "array_row"]].to_numpy())


# ------------------------------------------------------------------------------------------------ concatenate
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    panels=st.lists(st.sets(st.sampled_from(["A", "B", "C", "D"]), min_size=1), min_size=0, max_size=3),
    join=st.sampled_from(["inner", "outer", "left"]),
    repeat=st.booleans(),
    seed=st.integers(0, 100),
)
def test_concatenate_sections_random_panels(panels, join, repeat, seed, contract):
    rng = np.random.default_rng(seed)
    spots = pd.DataFrame(
        {"x": [1, 2, 1, 2], "y": [1, 1, 2, 2], "pixel_x": [10.0, 30, 10, 30], "pixel_y": [5.0, 5, 25, 25]}
    )
    ids = ["1x1", "2x1", "1x2", "2x2"]
    tables, parts = [], []
    for i, genes in enumerate(panels):
        counts = pd.DataFrame(rng.integers(0, 9, (4, len(genes))), index=ids, columns=sorted(genes))
        parts.append(read_st(counts, spots, None, sample=f"S{0 if repeat else i}", um_per_px=1.0 + i))
        tables.append(counts)
    dup = repeat and len(panels) > 1
    res = contract(
        f"concatenate_sections: {'no section' if not panels else 'repeated section' if dup else join}",
        lambda: concatenate_sections(parts, join=join),
        "sdatas", "join",
        expect_error=not panels or dup or join == "left",
    )  # fmt: skip
    if res is None:
        return
    t = res.tables["table"]
    genes = set.intersection(*panels) if join == "inner" else set.union(*panels)
    assert set(t.var_names) == genes and t.n_obs == 4 * len(panels)
    for i, counts in enumerate(tables):  # known answer: each spot keeps its counts; genes not measured are 0
        sub = t[t.obs["section"] == f"S{i}"]
        want = counts.reindex(columns=list(sub.var_names), fill_value=0).to_numpy()
        np.testing.assert_array_equal(sub.X.toarray(), want)
    assert set(t.uns["scst"]["sections"]) == {f"S{i}" for i in range(len(panels))}
