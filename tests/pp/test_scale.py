"""Tests for scst.pp.scale_by_section (per-section standardisation of an embedding)."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scst.pp import scale_by_section


def _adata(x: np.ndarray, sections: list[str]) -> ad.AnnData:
    a = ad.AnnData(np.zeros((len(sections), 1), dtype=np.float32))
    a.obs["section"] = pd.Categorical(sections)
    a.obsm["f"] = x
    return a


def test_hand_values_interleaved_sections_and_constant_feature():
    # Sections interleaved in row order; column 1 is constant within section B (→ 0), column 0 by hand:
    # A: 1, 2, 3 → mean 2, sd (ddof=1) 1; B: 10, 30 → mean 20, sd 14.142...
    x = np.array([[1.0, 7.0], [10.0, 5.0], [2.0, 8.0], [30.0, 5.0], [3.0, 9.0]])
    a = _adata(x, ["A", "B", "A", "B", "A"])
    scale_by_section(a, "f", min_spots=2)
    out = a.obsm["f_scaled"]
    assert out.dtype == np.float32
    s = 20 / np.sqrt(2)
    expected = np.array([[-1, -1], [-10 / s, 0], [0, 0], [10 / s, 0], [1, 1]], dtype=np.float32)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(a.obsm["f"], x)  # input untouched
    assert a.uns["f_scaled"]["params"] == {"use_rep": "f", "library_key": "section", "n_sections": 2}


def test_feature_constant_at_any_value_becomes_exactly_zero():
    # scanpy's E[x²] - E[x]² variance of a constant column is rounding noise, here negative: the "scaled" feature
    # came out NaN (0.1 over 25 spots, 0.3 over 60) instead of 0, whatever a shift of the constant.
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(size=85), np.full(85, 0.1), np.r_[np.full(25, 1.7), np.full(60, 0.3)]])
    a = _adata(x, ["A"] * 25 + ["B"] * 60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "invalid value encountered in sqrt" inside scanpy reached the user
        scale_by_section(a, "f", min_spots=2)
    out = a.obsm["f_scaled"]
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[:, 1:], 0.0)
    b = _adata(x[:, :1], ["A"] * 25 + ["B"] * 60)  # the varying feature is scaled as without the constant ones
    scale_by_section(b, "f", min_spots=2)
    np.testing.assert_array_equal(out[:, :1], b.obsm["f_scaled"])


def test_slide_wide_shift_is_removed():
    # A stain/scanner-like shift: every feature of section B scaled and offset as a whole. After scaling, B's
    # features equal those of an unshifted copy of B, while without scaling a model would see other values.
    rng = np.random.default_rng(0)
    base = rng.normal(size=(60, 5))
    gain, offset = rng.uniform(0.5, 2.0, 5), rng.normal(0, 3, 5)
    x = np.vstack([base[:30], base[30:]])
    shifted = np.vstack([base[:30], base[30:] * gain + offset])
    sections = ["A"] * 30 + ["B"] * 30
    a, b = _adata(x, sections), _adata(shifted, sections)
    scale_by_section(a, "f")
    scale_by_section(b, "f")
    np.testing.assert_allclose(a.obsm["f_scaled"], b.obsm["f_scaled"], atol=1e-5)
    assert np.abs(a.obsm["f"][30:] - b.obsm["f"][30:]).max() > 1  # the shift was real
    # Within each section: mean 0, sd 1.
    for idx in (slice(0, 30), slice(30, 60)):
        np.testing.assert_allclose(b.obsm["f_scaled"][idx].mean(0), 0, atol=1e-6)
        np.testing.assert_allclose(b.obsm["f_scaled"][idx].std(0, ddof=1), 1, atol=1e-5)


def test_copy_key_added_and_overwrite():
    x = np.arange(40, dtype=float).reshape(20, 2) ** 1.5
    a = _adata(x, ["A"] * 20)
    out = scale_by_section(a, "f", key_added="g", copy=True)
    assert "g" in out.obsm and "g" not in a.obsm
    assert scale_by_section(a, "f", key_added="f") is None
    np.testing.assert_allclose(a.obsm["f"], out.obsm["g"])


def test_bad_input_named():
    x = np.ones((25, 3))
    a = _adata(x, ["A"] * 25)
    with pytest.raises(KeyError, match="use_rep"):
        scale_by_section(a, "missing")
    with pytest.raises(KeyError, match="library_key"):
        scale_by_section(a, "f", library_key="batch")
    a.obsm["nan"] = np.where(np.eye(25, 3) > 0, np.nan, 1.0)
    with pytest.raises(ValueError, match="use_rep.*NaN"):
        scale_by_section(a, "nan")
    with pytest.raises(ValueError, match="min_spots"):
        scale_by_section(a, "f", min_spots=1)
    a.obs["section"] = pd.Categorical(["A"] * 24 + [np.nan])
    with pytest.raises(ValueError, match="library_key.*NaN"):
        scale_by_section(a, "f")


def test_small_section_warns():
    a = _adata(np.random.default_rng(0).normal(size=(25, 2)), ["A"] * 22 + ["B"] * 3)
    with pytest.warns(UserWarning, match=r"\['B \(3\)'\].*min_spots=20"):
        scale_by_section(a, "f")
    # A one-spot section has no spread: its row becomes 0, not NaN.
    b = _adata(np.random.default_rng(0).normal(size=(25, 2)), ["A"] * 24 + ["B"])
    with pytest.warns(UserWarning):
        scale_by_section(b, "f")
    np.testing.assert_array_equal(b.obsm["f_scaled"][-1], 0)


def test_a_section_of_exactly_min_spots_does_not_warn():
    import warnings

    a = _adata(np.random.default_rng(0).normal(size=(25, 2)), ["A"] * 20 + ["B"] * 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scale_by_section(a, "f", min_spots=5)
    with pytest.warns(UserWarning, match=r"\['B \(5\)'\]"):
        scale_by_section(a, "f", min_spots=6)


def test_numpy_integer_min_spots_is_accepted():
    a = _adata(np.random.default_rng(0).normal(size=(25, 2)), ["A"] * 20 + ["B"] * 5)
    with pytest.warns(UserWarning, match=r"\['B \(5\)'\]"):
        scale_by_section(a, "f", min_spots=np.int64(6))  # was "min_spots: expected an int >= 2, got np.int64(6)"


def test_embed_recipe_travels_with_the_scaling():
    a = _adata(np.random.default_rng(0).normal(size=(25, 2)), ["A"] * 25)
    a.uns["scst_embed"] = {"f": {"method": "handcrafted", "size_um": 80}, "g": {"stale": True}}
    scale_by_section(a, "f", key_added="g")
    assert a.uns["scst_embed"]["g"] == {"method": "handcrafted", "size_um": 80, "scale_by_section": "section"}
    assert a.uns["scst_embed"]["f"] == {"method": "handcrafted", "size_um": 80}
    # An embedding without a recipe: a stale recipe under key_added is dropped (it would be recomputed wrongly).
    a.obsm["h"] = a.obsm["f"].copy()
    scale_by_section(a, "h", key_added="g")
    assert "g" not in a.uns["scst_embed"] and "f" in a.uns["scst_embed"]


def test_recipe_records_the_library_key_used():
    # The recipe names the column the scaling used (predict_expression scales a new slide by the same column).
    a = _adata(np.random.default_rng(1).normal(size=(6, 2)), ["A"] * 6)
    a.obs["slide"] = ["s1"] * 3 + ["s2"] * 3
    a.uns["scst_embed"] = {"f": {"method": "handcrafted"}}
    scale_by_section(a, "f", library_key="slide", min_spots=3)
    assert a.uns["scst_embed"]["f_scaled"]["scale_by_section"] == "slide"


def test_features_of_more_than_two_dims_are_refused_naming_use_rep():
    a = _adata(np.zeros((4, 2)), ["A", "A", "B", "B"])
    a.obsm["cube"] = np.zeros((4, 2, 2))
    with pytest.raises(ValueError, match=r"adata.obsm\['cube'\] \(argument `use_rep`\): expected shape \(n_obs, d\)"):
        scale_by_section(a, "cube")
