"""Tests for scst._utils (shared helpers): column-wise Pearson, constant columns, atomic file/directory writes."""

from __future__ import annotations

import numpy as np
import pytest

from scst import _utils
from scst._utils import _atomic_dir, _atomic_file, _colwise_pearson, _is_constant


def test_colwise_pearson_hand_values_and_brute_force():
    pred = np.array([[1.0, 0.0, 5.0], [2.0, 1.0, 5.0], [3.0, 0.0, 5.0], [4.0, 1.0, 5.0]])
    truth = np.array([[2.0, 1.0, 0.0], [4.0, 0.0, 1.0], [6.0, 1.0, 0.0], [8.0, 0.0, 3.0]])
    r = _colwise_pearson(pred, truth)
    # col 0: truth = 2 * pred -> 1; col 1: truth = 1 - pred -> -1; col 2: constant prediction -> 0.
    np.testing.assert_allclose(r, [1.0, -1.0, 0.0], atol=1e-12)
    # Per column (genes), over rows (spots): a non-square brute-force reference with np.corrcoef.
    rng = np.random.default_rng(0)
    p, t = rng.normal(size=(7, 3)) + [0, 5, -3], rng.normal(size=(7, 3)) * [1, 10, 0.1]
    ref = [np.corrcoef(p[:, j], t[:, j])[0, 1] for j in range(3)]
    np.testing.assert_allclose(_colwise_pearson(p, t), ref, rtol=1e-12)


def test_constant_means_round_off_relative_to_a_scale_of_at_least_one():
    x = np.array([[0.0, 1000.0], [1e-7, 1000.01], [0.0, 1000.0], [1e-7, 1000.01]])
    # Column 0 varies by 1e-7 only (round-off around zero: constant); column 1 varies by 1e-5 of its scale (real).
    np.testing.assert_array_equal(_is_constant(x), [True, False])
    r = _colwise_pearson(np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]), x)
    assert np.isnan(r[0]) and r[1] == pytest.approx(1.0)


def test_atomic_file_failure_leaves_the_old_file_and_no_half_file(tmp_path):
    dest = tmp_path / "a.json"
    dest.write_text("old")
    with pytest.raises(RuntimeError), _atomic_file(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed while writing")
    assert dest.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    with _atomic_file(dest) as tmp:
        tmp.write_text("new")
    assert dest.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "fallback"])
def test_atomic_dir_replaces_or_keeps_a_directory_without_leftovers(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(_utils, "_exchange", lambda a, b: False)
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "x").write_text("old")
    with pytest.raises(RuntimeError), _atomic_dir(dest) as tmp:
        (tmp / "x").write_text("half")
        raise RuntimeError("killed while writing")
    assert (dest / "x").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["d"]
    with _atomic_dir(dest) as tmp:
        (tmp / "x").write_text("new")
        (tmp / "y").write_text("1")
    assert sorted(p.name for p in dest.iterdir()) == ["x", "y"] and (dest / "x").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # neither the old directory nor a temporary one is left


def test_colwise_pearson_is_clipped_to_one():
    # A proportional pair whose raw sum ratio rounds to 1.0000000000000002: r stays a correlation.
    x = np.array([0.1257302210933933, -0.1321048632913019, 0.6404226504432821, 0.10490011715303971, -0.535669373161111])
    y = np.array([1.1487065314093614, -1.206947048800133, 5.851080790514484, 0.9583968649016855, -4.894025495819796])
    r = _colwise_pearson(np.stack([x, x], 1), np.stack([y, -y], 1))
    assert r.tolist() == [1.0, -1.0]


def test_get_table_picks_the_named_table():
    import anndata as ad
    from spatialdata import SpatialData

    a, b = ad.AnnData(np.zeros((2, 1))), ad.AnnData(np.zeros((3, 1)))
    sdata = SpatialData(tables={"table": a, "other": b})
    assert _utils._get_table(sdata) is sdata.tables["table"] and _utils._get_table(a) is a
    assert _utils._get_table(sdata, "other").n_obs == 3
    with pytest.raises(KeyError, match="missing"):
        _utils._get_table(sdata, "missing")
    with pytest.raises(TypeError, match="AnnData or SpatialData"):
        _utils._get_table(np.zeros(3))


def test_key_check_lists_the_available_keys_and_positive_refuses_bools():
    with pytest.raises(KeyError, match=r"'b' not found in adata\.obsm \(argument `x`\); available: \['a', 'c'\]"):
        _utils._check_key({"a": 1, "c": 2}, "b", "adata.obsm (argument `x`)")
    _utils._check_key({"a": 1}, "a", "here")
    assert _utils._positive("s", "2.5") == 2.5
    for bad in (True, 0, -1.0, np.nan, np.inf, "x", None):
        with pytest.raises(ValueError, match="s: expected a finite positive"):
            _utils._positive("s", bad)


def test_plain_turns_numpy_values_into_python_ones():
    out = _utils._plain({"a": np.int64(3), 1: (np.float32(0.5), None), "c": np.array([True, False])})
    assert out == {"a": 3, "1": [0.5, None], "c": [True, False]}
    assert type(out["a"]) is int and type(out["1"][0]) is float and type(out["c"][0]) is bool


def test_positive_int_takes_integral_floats_only_when_asked_and_names_the_argument():
    """One rule for counts and sizes: numpy integers yes, booleans/NaN/inf/strings/fractions no; ``floats=True`` adds
    integral floats (32.0); ``maximum`` and ``what`` shape the message."""
    f = _utils._positive_int
    assert f("n", 3) == 3 and type(f("n", np.int64(3))) is int
    assert f("n", 0, 0) == 0 and f("px", 32.0, 8, floats=True) == 32 and f("px", np.float32(8), 8, floats=True) == 8
    for bad in (True, np.bool_(True), 3.0, "3", None, 0):
        with pytest.raises(ValueError, match=r"^n: expected a positive integer, got "):
            f("n", bad)
    for bad in (np.nan, np.inf, -np.inf, 7.0, 8.5, True, "8"):
        with pytest.raises(ValueError, match=r"^px: expected an integer >= 8, got "):
            f("px", bad, 8, floats=True)
    with pytest.raises(ValueError, match=r"^levels: expected an integer in \[2, 256\], got 257"):
        f("levels", 257, 2, maximum=256)
    with pytest.raises(ValueError, match=r"^k: expected None \(all\) or a positive integer, got -1"):
        f("k", -1, what="None (all) or a positive integer")


def test_obsm_features_shape_errors_name_the_argument():
    from anndata import AnnData

    from scst._utils import _obsm_features

    a = AnnData(np.zeros((3, 1), np.float32))
    a.obsm["emb"] = np.arange(6, dtype=np.float64).reshape(3, 2)
    np.testing.assert_array_equal(_obsm_features(a, "emb", 2, rows=[2, 0]), [[4, 5], [0, 1]])
    a.obsm["flat"] = np.zeros((3, 0))
    with pytest.raises(ValueError, match=r"embedding_key: obsm\['flat'\] must have shape \(n_obs=3, n_features\)"):
        _obsm_features(a, "flat", arg="embedding_key")


def test_umask_without_proc_sets_and_restores_it(monkeypatch):
    import os
    from pathlib import Path

    old = os.umask(0o027)
    try:
        assert _utils._umask() == 0o027  # from /proc/self/status

        def no_proc(self, *args, **kwargs):
            raise OSError("no /proc here")

        monkeypatch.setattr(Path, "read_text", no_proc)
        assert _utils._umask() == 0o027  # set and restored
        assert os.umask(0o027) == 0o027
        monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "Name:\tpython\nState:\tR (running)\n")
        assert _utils._umask() == 0o027  # a status without the Umask line (Linux before 4.7): set and restored too
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)


def test_dir_of_the_package_lists_its_public_names():
    import scst

    assert dir(scst) == sorted(scst.__all__) and "pp" in dir(scst)
    # a subpackage not imported yet is imported on first attribute access (the module's __getattr__)
    import sys

    assert all(scst.__getattr__(name) is sys.modules[f"scst.{name}"] for name in ("pl", "tl", "nn"))


def test_a_prediction_of_the_same_spots_replaces_the_layer_without_a_warning():
    """Predicting the same spots again (here with another, smaller panel) leaves no other spots to keep or lose:
    the layer and its masks hold the new prediction only, and nothing is said."""
    import warnings

    from anndata import AnnData

    adata = AnnData(np.zeros((4, 3), dtype=np.float32))
    _utils._store_prediction(adata, "p", np.array([0, 1]), np.array([0, 1, 2]), np.ones((2, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _utils._store_prediction(adata, "p", np.array([1, 0]), np.array([1]), np.array([[6.0], [5.0]]))
    np.testing.assert_array_equal(adata.layers["p"].toarray(), [[0, 5, 0], [0, 6, 0], [0, 0, 0], [0, 0, 0]])
    assert adata.var["p_mask"].tolist() == [False, True, False]
    assert adata.obs["p_mask"].tolist() == [True, True, False, False]


def test_zarr_writes_state_unsharded_tables_and_keep_a_users_setting(tmp_path):
    """anndata 0.12 warned on every table scst wrote to zarr (5 times per predict_shards call) that sharded arrays
    become its default next release; scst states today's layout, and a user's own choice wins."""
    import warnings

    import anndata as ad
    from spatialdata import SpatialData
    from spatialdata.models import TableModel

    seen = []

    class Recorder:
        def write(self, path, **kwargs):
            seen.append((ad.settings.auto_shard_zarr_v3, path, kwargs))

    with ad.settings.override(auto_shard_zarr_v3=None):
        _utils._write_zarr(Recorder(), "x.zarr", overwrite=True)
        assert ad.settings.auto_shard_zarr_v3 is None  # restored
        table = TableModel.parse(ad.AnnData(np.arange(6, dtype=np.float32).reshape(3, 2)))
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="zarr v3 autosharding")
            _utils._write_zarr(SpatialData(tables={"t": table}), tmp_path / "s.zarr")
        with pytest.warns(UserWarning, match="zarr v3 autosharding"):  # what the plain write says
            SpatialData(tables={"t": table}).write(tmp_path / "plain.zarr")
    with ad.settings.override(auto_shard_zarr_v3=True):
        _utils._write_zarr(Recorder(), "y.zarr")
    assert seen == [(False, "x.zarr", {"overwrite": True}), (True, "y.zarr", {})]
    back = ad.read_zarr(tmp_path / "s.zarr" / "tables" / "t")
    np.testing.assert_array_equal(back.X, np.arange(6).reshape(3, 2))
