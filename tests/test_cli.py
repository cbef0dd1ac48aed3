"""``scst`` console script: --help, one-line errors with a non-zero exit, a real train → predict run on her2st."""

from __future__ import annotations

import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

from scst.cli import main


def _run(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "scst.cli", *args], capture_output=True, text=True, cwd=cwd, env=env)


@pytest.mark.parametrize("cmd", ["train", "predict", "ligrec"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0 and "--out" in capsys.readouterr().out


def test_bad_input_is_one_line_and_non_zero(tmp_path):
    r = _run("predict", "--model-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "p.h5ad"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("scst:")]
    assert lines == [
        f"scst: error: --model-dir: {str(tmp_path / 'nope')!r} has no attr.json (not a model saved by `scst train`)."
    ]
    assert main(["train", "--model", "mean", "--data", str(tmp_path / "missing.zarr"), "--out", str(tmp_path)]) == 2
    assert main(["train", "--model", "mean", "--sections", "C9", "--out", str(tmp_path / "m")]) == 2


def test_train_then_predict_mean_on_her2st(tmp_path, capsys):
    from scst._normalize import log_normalized

    m = str(tmp_path / "m")
    assert main(["train", "--model", "mean", "--sections", "C2", "C3", "--n-genes", "50", "--out", m]) == 0
    assert main(["predict", "--model-dir", m, "--sections", "C4", "--out", str(tmp_path / "p.h5ad")]) == 0
    pred = ad.read_h5ad(tmp_path / "p.h5ad")
    assert set(pred.obs["section"]) == {"C4"}
    # The mean model predicts the training spots' mean log1p(normalize_total) for every C4 spot.
    import scst

    train = scst.datasets.her2st(sections=["C2", "C3"], images=False).tables["table"]
    panel = np.flatnonzero(pred.var["predicted_mask"].to_numpy())
    genes = pred.var_names[panel]
    assert 20 <= len(genes) <= 50  # the 50-gene panel, less genes absent from C4 alone
    want = log_normalized(train, list(genes)).mean(0)
    np.testing.assert_allclose(
        pred.layers["predicted"][:, panel].toarray(), np.broadcast_to(want, (pred.n_obs, len(genes))), rtol=1e-5
    )
    assert main(["predict", "--model-dir", m, "--sections", "C4", "--out", str(tmp_path / "p.h5ad")]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="precision='bf16'.*no effect"):  # the option reaches predict_expression
        assert main(["predict", "--model-dir", m, "--sections", "C4", "--precision", "bf16", "--out",
                     str(tmp_path / "q.h5ad")]) == 0  # fmt: skip


def test_ligrec_on_one_section(tmp_path):
    import pandas as pd

    assert main(["ligrec", "--sections", "C2", "--n-perms", "20", "--out", str(tmp_path / "lr.csv.gz")]) == 0
    df = pd.read_csv(tmp_path / "lr.csv.gz")
    assert {"ligand_complex", "receptor_complex", "spatial_pearson_score", "spatial_pearson_pvals"} <= set(df.columns)
    # p = (1 + #null >= observed) / (1 + 20): multiples of 1/21 in [1/21, 1].
    p = df["spatial_pearson_pvals"].dropna().to_numpy()
    assert len(p) > 100 and np.allclose(p * 21, np.round(p * 21)) and p.min() >= 1 / 21 - 1e-12
    assert main(["ligrec", "--sections", "C2", "--out", str(tmp_path / "lr.txt")]) == 2


def test_ligrec_gcng_config_reaches_the_tool(tmp_path, monkeypatch):
    import scst

    seen = {}

    def recording(adata, **kwargs):  # a stub tool: records what the CLI passes, writes an empty table
        import pandas as pd

        seen.update(kwargs)
        adata.uns["scst_ligrec"] = pd.DataFrame({"ligand_complex": [], "receptor_complex": []})

    monkeypatch.setattr(scst.tl, "ligand_receptor", recording)
    out = str(tmp_path / "lr.csv")
    assert main(["ligrec", "--sections", "C2", "--method", "gcng", "--gcng-config", "pooled", "--out", out]) == 0
    assert seen["gcng_config"] == scst.models.GCNG.pooled_config and seen["method"] == ["gcng"]
    assert main(["ligrec", "--sections", "C2", "--method", "gcng", "--out", out, "--overwrite"]) == 0
    assert seen["gcng_config"] == scst.models.GCNG.bench_config
    assert main(["ligrec", "--sections", "C2", "--method", "gcng", "--gcng-config", "fast", "--out", out,
                 "--overwrite"]) == 0  # fmt: skip
    assert seen["gcng_config"] == scst.models.GCNG.fast_config != scst.models.GCNG.bench_config


def test_train_head_then_predict_a_bare_he_image(tmp_path):
    """`scst train --model hggep_head` → `scst predict --image he.jpg`: pseudo-spots, features recomputed."""
    import scst

    image = os.path.join(os.environ["SCST_DATA_DIR"], "her2st", "C4", "he.jpg")  # set by tests/conftest.py
    assert os.path.isfile(image), f"{image} missing: the her2st data are needed (../shared/data or SCST_DATA_DIR)"
    m = str(tmp_path / "m")
    assert main(["train", "--model", "hggep_head", "--sections", "C2", "C3", "--n-genes", "50", "--max-epochs", "5",
                 "--out", m]) == 0  # fmt: skip
    upp = scst.datasets.her2st(sections=["C4"], images=False).tables["table"].uns["scst"]["sections"]["C4"]["um_per_px"]
    out = tmp_path / "he.h5ad"
    assert main(["predict", "--model-dir", m, "--image", image, "--um-per-px", str(upp), "--spacing-um", "200",
                 "--out", str(out)]) == 0  # fmt: skip
    pred = ad.read_h5ad(out)
    assert pred.n_obs > 50 and pred.obsm["X_hc_ms_scaled"].shape[1] == 3 * len(scst.pp.handcrafted_feature_names())
    assert np.isfinite(pred.X).all() and np.median(pred.X.std(0)) > 0  # pseudo-spots differ
    np.testing.assert_allclose(pred.obsm["X_hc_ms_scaled"].mean(0), 0, atol=1e-4)  # scaled over the slide, as trained
    assert main(["predict", "--model-dir", m, "--image", image, "--out", str(tmp_path / "x.h5ad")]) == 2  # no µm/px


def test_train_config_overrides_reach_the_model(tmp_path, capsys, monkeypatch):
    """`--config KEY=VALUE` (JSON values) reaches the model; a bad key or value is one named error, and a bad key
    fails before the data are read (a synthetic store: what is tested is the config's path, not her2st)."""
    import _he_synthetic as syn  # tests/models is on pytest's pythonpath (pyproject.toml)

    import scst

    data = tmp_path / "syn.zarr"
    syn.make_sdata(sections=("S1", "S2")).write(data)
    m = tmp_path / "m"
    assert main(["train", "--model", "ridge", "--data", str(data), "--n-genes", "8", "--config", "n_programs=2",
                 "--config", "alphas=[10.0, 1000.0]", "--out", str(m)]) == 0  # fmt: skip
    model = scst.models.RidgeExpression.load(m)
    assert model.n_programs_ == 2 and model.config["alphas"] == [10.0, 1000.0]
    capsys.readouterr()
    assert main(["train", "--model", "ridge", "--data", str(data), "--config", "n_programs=0", "--out",
                 str(tmp_path / "x")]) == 2  # fmt: skip
    assert 'scst: error: --config: n_programs: expected None, "auto" or an int' in capsys.readouterr().err
    assert main(["train", "--model", "mean", "--config", "n_programs", "--out", str(tmp_path / "y")]) == 2
    assert "--config: expected KEY=VALUE (e.g. n_programs=6), got 'n_programs'" in capsys.readouterr().err

    def no_reading(*args, **kwargs):
        raise AssertionError("the data were read before the config was checked")

    monkeypatch.setattr("scst.cli._load_data", no_reading)
    for model_name, cls in (("mean", "MeanExpression"), ("hggep", "HGGEP")):
        assert main(["train", "--model", model_name, "--config", "hidden=3", "--out", str(tmp_path / "z")]) == 2
        assert f"--config: Unknown config key(s) ['hidden'] for {cls}" in capsys.readouterr().err


def _no_reading(*args, **kwargs):
    raise AssertionError("the data were read before the arguments were checked")


@pytest.mark.parametrize(("content", "expect"), [("not json", "is not valid JSON"),
                                                 ("[1,2]", "holds a JSON list, expected an object")])  # fmt: skip
def test_predict_bad_attr_json_is_a_model_dir_error(tmp_path, capsys, monkeypatch, content, expect):
    """A corrupt attr.json names --model-dir and the file (no bare JSON message, no AttributeError traceback)."""
    monkeypatch.setattr("scst.cli._load_data", _no_reading)
    m = tmp_path / "m"
    m.mkdir()
    (m / "attr.json").write_text(content)
    assert main(["predict", "--model-dir", str(m), "--out", str(tmp_path / "p.h5ad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"scst: error: --model-dir: {str(m / 'attr.json')!r} {expect}"), err


def test_predict_checks_the_model_dir_before_reading_the_data(tmp_path, capsys, monkeypatch):
    """attr.json of a known class but no weights: the model directory fails before any data set is read."""
    monkeypatch.setattr("scst.cli._load_data", _no_reading)
    m = tmp_path / "m"
    m.mkdir()
    (m / "attr.json").write_text('{"model": "HGGEP"}')
    assert main(["predict", "--model-dir", str(m), "--sections", "C4", "--out", str(tmp_path / "p.h5ad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scst: error: --model-dir: ") and "lacks attr.json / model.safetensors" in err


def test_a_store_without_table_or_section_column(tmp_path, capsys, monkeypatch):
    """No table 'table': a --data error listing the tables (train, ligrec). A table without obs['section']: ligrec
    builds one grid graph over all spots (an 8 × 8 grid: 2·2·8·7 = 224 directed 4-neighbour links); --sections is
    then an error naming obs['section'], and a section absent from the store is one too."""
    import _he_synthetic as syn
    import pandas as pd
    from spatialdata import SpatialData

    import scst

    full = syn.make_sdata(sections=("S1",))
    empty = tmp_path / "empty.zarr"
    SpatialData(images=dict(full.images)).write(empty)
    for cmd in (["train", "--model", "mean"], ["ligrec"]):
        out = str(tmp_path / ("m" if cmd[0] == "train" else "lr.csv"))
        assert main([*cmd, "--data", str(empty), "--out", out]) == 2
        assert f"scst: error: --data: {str(empty)!r} has no table 'table' (tables: [])." in capsys.readouterr().err
    seen = {}

    def recording(adata, **kwargs):
        seen["adata"] = adata
        adata.uns["scst_ligrec"] = pd.DataFrame({"ligand_complex": [], "receptor_complex": []})

    monkeypatch.setattr(scst.tl, "ligand_receptor", recording)
    del full.tables["table"].obs["section"]
    flat = tmp_path / "flat.zarr"
    full.write(flat)
    assert main(["ligrec", "--data", str(flat), "--out", str(tmp_path / "lr.csv")]) == 0
    conn = seen["adata"].obsp["spatial_connectivities"]
    assert seen["adata"].n_obs == 64 and conn.nnz == 224
    assert main(["ligrec", "--data", str(flat), "--sections", "S1", "--out", str(tmp_path / "lr2.csv")]) == 2
    assert "--sections: the table has no obs['section'] column" in capsys.readouterr().err
    two = tmp_path / "two.zarr"
    syn.make_sdata(sections=("S1", "S2")).write(two)
    seen.clear()
    assert main(["ligrec", "--data", str(two), "--sections", "S1", "BOGUS", "--out", str(tmp_path / "lr3.csv")]) == 2
    assert "scst: error: --sections: ['BOGUS'] not in the data (sections: ['S1', 'S2'])." in capsys.readouterr().err
    assert not seen


def test_options_that_do_not_apply_are_errors(tmp_path, capsys, monkeypatch):
    """--max-epochs 0 (or for a closed-form model) and predict options of the other mode are errors, raised
    before any data are read."""
    monkeypatch.setattr("scst.cli._load_data", _no_reading)
    monkeypatch.setattr("scst.cli._image_only", _no_reading)
    out = str(tmp_path / "m")
    assert main(["train", "--model", "mlp", "--max-epochs", "0", "--out", out]) == 2
    assert "scst: error: --max-epochs: expected a positive number of epochs, got 0." in capsys.readouterr().err
    assert main(["train", "--model", "ridge", "--max-epochs", "5", "--out", out]) == 2
    assert "--max-epochs: not used by --model ridge" in capsys.readouterr().err
    m = tmp_path / "model"
    m.mkdir()
    (m / "attr.json").write_text('{"model": "MeanExpression"}')
    pred = ["predict", "--model-dir", str(m), "--out", str(tmp_path / "p.h5ad")]
    for extra, opt in ((["--spacing-um", "100"], "--spacing-um"), (["--data", "her2st", "--um-per-px", "1"],
                                                                   "--um-per-px")):  # fmt: skip
        assert main([*pred, *extra]) == 2
        assert f"scst: error: {opt}: only used with --image" in capsys.readouterr().err
    image = tmp_path / "he.png"
    image.write_bytes(b"")
    for extra, opt in ((["--sections", "C4"], "--sections"), (["--data", "her2st"], "--data")):
        assert main([*pred, "--image", str(image), "--um-per-px", "1", *extra]) == 2
        assert f"scst: error: {opt}: not used with --image" in capsys.readouterr().err


def test_train_chooses_the_panel_from_the_training_sections_only(tmp_path, monkeypatch):
    """A store with three sections (read whole, as a zarr store is), trained on S1 and S2: the panel is the one
    select_genes picks from S1 and S2. S3, where NOISE7 is the most variable gene (0 or 1000 counts), must not bring
    NOISE7 into it."""
    import _he_synthetic as syn  # tests/models is on pytest's pythonpath (pyproject.toml)
    from scipy import sparse

    import scst

    sdata = syn.make_sdata(sections=("S1", "S2", "S3"), image=False)
    tab = sdata.tables["table"]
    X = tab.X.toarray()
    s3 = np.flatnonzero(tab.obs["section"] == "S3")
    X[s3, tab.var_names.get_loc("NOISE7")] = np.where(np.arange(len(s3)) % 2, 1000, 0)
    tab.X = sparse.csr_matrix(X)
    del tab.var["highly_variable_scst"]
    monkeypatch.setattr("scst.cli._load_data", lambda data, sections: sdata)
    m = tmp_path / "m"
    assert main(["train", "--model", "mean", "--data", "store.zarr", "--sections", "S1", "S2", "--n-genes", "2",
                 "--out", str(m)]) == 0  # fmt: skip
    ref = tab[tab.obs["section"].isin(["S1", "S2"])].copy()
    scst.pp.select_genes(ref, n_top=2)
    want = list(ref.var_names[ref.var["highly_variable_scst"]])
    assert list(scst.models.MeanExpression.load(m).var_names) == want and "NOISE7" not in want
