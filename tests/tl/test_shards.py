"""scst.tl.predict_shards / merge_shards: dask fan-out over shards equals serial predict_expression per section."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scst.models._baselines import RidgeExpression
from scst.tl._embed import embed_patches
from scst.tl._predict import predict_expression
from scst.tl._shards import SHARD_TABLE, ShardError, merge_shards, predict_shards

_spec = importlib.util.spec_from_file_location(
    "_he_synthetic", Path(__file__).parents[1] / "models" / "_he_synthetic.py"
)
syn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(syn)

PANEL = ["UP", "DOWN", "NOISE0", "HOUSE"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """Ridge on hand-crafted patch features of S1, S2: the workers recompute the features of each shard."""
    sd = syn.make_sdata(sections=("S1", "S2"))
    embed_patches(sd, "handcrafted", size_um=syn.SIZE_UM, out_px=32, progress=False)
    RidgeExpression.setup_sdata(sd, embedding_key="X_handcrafted", genes=PANEL, sections=["S1", "S2"])
    d = tmp_path_factory.mktemp("model") / "ridge"
    RidgeExpression(sd).train().save(d)
    return d


@pytest.fixture(scope="module")
def shard_sources(tmp_path_factory):
    """Three shards: two single-section zarr stores with spots (S3, S4) and a bare H&E PNG (S5, pseudo-spots)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("shards")
    out = {}
    for s, seed in (("S3", 3), ("S4", 4)):
        syn.make_sdata(sections=(s,), seed=seed).write(root / f"{s}.zarr")
        out[s] = root / f"{s}.zarr"
    img = np.asarray(syn.make_sdata(sections=("S5",), seed=5).images["S5_image"].values).transpose(1, 2, 0)
    Image.fromarray(img).save(root / "S5.png")
    out["S5"] = root / "S5.png"
    return out


def _serial(source, model_dir):
    """The reference: predict_expression on the shard alone, in this process."""
    import spatialdata as sd

    import scst

    model = RidgeExpression.load(model_dir)
    if source.suffix == ".png":
        from spatialdata import SpatialData

        sdata = SpatialData(images={"S5_image": scst.io.cached_image(source, "S5")})
        return predict_expression(sdata, model, um_per_px=syn.UM_PER_PX, copy=True, progress=False)
    return predict_expression(sd.read_zarr(source), model, table_added="p", copy=True, progress=False)


def test_fan_out_equals_serial(dask_client, model_dir, shard_sources, tmp_path):
    import spatialdata as sd

    out = tmp_path / "merged.zarr"
    report = predict_shards(list(shard_sources.values()), model_dir, out, client=dask_client, um_per_px=syn.UM_PER_PX)
    assert list(report["shard"]) == ["S3", "S4", "S5"] and report["worker"].nunique() >= 1
    merged = sd.read_zarr(out)
    tab = merged.tables[SHARD_TABLE]
    assert list(tab.var_names) == PANEL and tab.X.dtype == np.float32
    assert list(tab.obs["section"].cat.categories) == ["S3", "S4", "S5"]
    assert set(merged.shapes) == {"S3_spots", "S4_spots", "S5_grid"} and not merged.images
    for s, source in shard_sources.items():
        want = _serial(source, model_dir)
        rows = (tab.obs["section"] == s).to_numpy()
        assert rows.sum() == want.n_obs >= 9  # 64 spots; 9 pseudo-spots 200 µm apart on the PNG
        # exact: the same code on the same pixels, only in another process
        np.testing.assert_array_equal(np.asarray(tab.X[rows]), np.asarray(want.layers["predicted"]))
        np.testing.assert_array_equal(tab.obs_names[rows], want.obs_names)
        np.testing.assert_array_equal(tab.obsm["spatial"][rows], want.obsm["spatial"])
        assert (tab.obs.loc[rows, "shard"] == s).all()
    assert report.set_index("shard")["n_spots"].to_dict() == tab.obs["shard"].value_counts().to_dict()
    # the planted signal survives the trip: UP rises with the hidden z on the spot shards
    z = tab.obs["z"].to_numpy(dtype=float)
    spots = np.isfinite(z)
    assert syn.pearson(np.asarray(tab.X[spots, 0]), z[spots]) > 0.8
    assert json.loads(tab.uns["scst_shards"]["json"])[0]["shard"] == "S3"
    # the merged store is itself a shard store: merging it again with nothing else gives the same table
    again = merge_shards([out], tmp_path / "again.zarr")
    assert list(again["shard"]) == ["S3", "S4", "S5"]
    np.testing.assert_array_equal(sd.read_zarr(tmp_path / "again.zarr").tables[SHARD_TABLE].X, tab.X)


def test_failed_shard_is_named_and_nothing_is_written(dask_client, model_dir, shard_sources, tmp_path):
    import spatialdata as sd

    # a store whose table lacks geometry for its section and has no image: predict_expression fails there
    bad = syn.make_sdata(sections=("S9",), seed=9)
    del bad.images["S9_image"]
    bad.write(tmp_path / "broken.zarr")
    out = tmp_path / "merged.zarr"
    srcs = {"good": shard_sources["S3"], "broken": tmp_path / "broken.zarr"}
    with pytest.raises(ShardError, match=r"1 of 2 shards failed.*\n  shard 'broken' \(.*broken\.zarr\): ") as e:
        predict_shards(srcs, model_dir, out, client=dask_client)
    assert list(e.value.failures) == ["broken"]
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["broken.zarr"]  # no scratch shards left behind
    # an existing output is left as it was when a later run fails
    predict_shards({"good": shard_sources["S3"]}, model_dir, out, client=dask_client)
    before = np.asarray(sd.read_zarr(out).tables[SHARD_TABLE].X).copy()
    with pytest.raises(ShardError, match="'broken'"):
        predict_shards(srcs, model_dir, out, client=dask_client, overwrite=True)
    np.testing.assert_array_equal(np.asarray(sd.read_zarr(out).tables[SHARD_TABLE].X), before)


def test_bad_input_names_the_argument(model_dir, shard_sources, tmp_path):
    with pytest.raises(ValueError, match=r"shards: shard 'nope' .* neither an existing SpatialData zarr"):
        predict_shards([tmp_path / "nope.zarr"], model_dir, tmp_path / "o.zarr")
    with pytest.raises(ValueError, match=r"shards: shard 'C9' \('her2st:C9'\) names no her2st section"):
        predict_shards(["her2st:C9"], model_dir, tmp_path / "o.zarr")
    with pytest.raises(ValueError, match=r"shards: shard names \['S3'\] occur more than once"):
        predict_shards([shard_sources["S3"], shard_sources["S3"]], model_dir, tmp_path / "o.zarr")
    with pytest.raises(FileNotFoundError, match="model_dir: .* has no attr.json"):
        predict_shards([shard_sources["S3"]], tmp_path, tmp_path / "o.zarr")
    with pytest.raises(ValueError, match="out: expected a path ending in .zarr"):
        predict_shards([shard_sources["S3"]], model_dir, tmp_path / "o.h5ad")
    with pytest.raises(ValueError, match="n_workers: expected a positive integer"):
        predict_shards([shard_sources["S3"]], model_dir, tmp_path / "o.zarr", n_workers=0)
    with pytest.raises(TypeError, match="client: expected a dask.distributed.Client"):
        predict_shards([shard_sources["S3"]], model_dir, tmp_path / "o.zarr", client="localhost:8786")
    with pytest.raises(ValueError, match=r"um_per_px: \['S7'\] are not shard names"):
        predict_shards([shard_sources["S3"]], model_dir, tmp_path / "o.zarr", um_per_px={"S7": 1.0})
    with pytest.raises(ValueError, match=r"precision: expected one of"):
        predict_shards([shard_sources["S3"]], model_dir, tmp_path / "o.zarr", precision="fp8")
    assert not (tmp_path / "o.zarr").exists()


def test_default_local_cluster_and_duplicate_sections(dask_client, model_dir, shard_sources, tmp_path):
    """client=None starts (and closes) its own LocalCluster; two shards holding one section are refused."""
    out = tmp_path / "one.zarr"
    report = predict_shards({"a": shard_sources["S3"]}, model_dir, out, n_workers=1)
    assert report["n_spots"].tolist() == [64] and out.is_dir()
    with pytest.raises(ValueError, match=r"section 'S3' is in both shard 'a' and shard 'b'"):
        predict_shards({"a": shard_sources["S3"], "b": shard_sources["S3"]}, model_dir, tmp_path / "two.zarr",
                       client=dask_client)  # fmt: skip
    assert not (tmp_path / "two.zarr").exists()
    with pytest.raises(ValueError, match=r"section 'S3' is in both"):
        merge_shards([out, out], tmp_path / "two.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.zarr"]


def test_her2st_sections_as_shards_equal_serial(dask_client, tmp_path):
    """Real data: ridge on hand-crafted features of C2 (one penalty: no inner CV); C5 and C6 as two shards."""
    import spatialdata as sd

    import scst

    train = scst.datasets.her2st(sections=["C2"])
    scst.pp.select_genes(train.tables["table"], n_top=50)
    embed_patches(train, "handcrafted", progress=False)
    RidgeExpression.setup_sdata(train, embedding_key="X_handcrafted")
    model = RidgeExpression(train, alphas=[100.0]).train()
    model.save(tmp_path / "ridge")
    out = tmp_path / "c5c6.zarr"
    report = predict_shards(["her2st:C5", "her2st:C6"], tmp_path / "ridge", out, client=dask_client)
    assert list(report["sections"]) == [["C5"], ["C6"]]
    tab = sd.read_zarr(out).tables[SHARD_TABLE]
    assert (
        list(tab.var_names) == list(model.var_names)
        and 10 <= tab.n_vars <= 50
        and set(sd.read_zarr(out).shapes) == {"C5_spots", "C6_spots"}
    )
    serial = predict_expression(
        scst.datasets.her2st(sections=["C5", "C6"]), RidgeExpression.load(tmp_path / "ridge"), table_added="p",
        copy=True, progress=False,
    )  # fmt: skip
    assert serial.n_obs == tab.n_obs == report["n_spots"].sum()
    np.testing.assert_array_equal(tab.obs_names, serial.obs_names)
    np.testing.assert_array_equal(np.asarray(tab.X), np.asarray(serial.layers["predicted"]))
    pd.testing.assert_series_equal(
        tab.obs["label"].astype(str), serial.obs["label"].astype(str), check_names=False, check_categorical=False
    )


def test_merge_names_a_store_without_section_column(tmp_path):
    """A foreign 'predicted' table lacking obs['section'] is refused with a message naming `paths`, not a KeyError."""
    sdata = syn.make_sdata(sections=("S7",), grid=3)
    tab = sdata.tables["table"]
    del sdata.tables["table"]
    del tab.obs["section"]
    sdata.tables[SHARD_TABLE] = tab
    sdata.write(tmp_path / "foreign.zarr")
    with pytest.raises(
        ValueError, match=r"paths: table 'predicted' of .*foreign\.zarr' has no obs column\(s\) \['section'\]"
    ):
        merge_shards([tmp_path / "foreign.zarr"], tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()
