import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest

import scst


def test_spatial_expression_panels(her2st_sdata, tmp_path):
    sd = her2st_sdata
    t = sd.tables["table"]
    t.layers["predicted"] = np.zeros((t.n_obs, t.n_vars), np.float32)
    axes = scst.pl.spatial_expression(sd, "ERBB2", sections=["C2", "C4"], show=False)
    assert len(axes) == 4 and axes[1].get_title() == "C2 · ERBB2 · predicted"
    # Observed panel colours = log1p(normalize_total 1e4) of the raw counts, per spot of C4.
    m = (t.obs["section"] == "C4").to_numpy()
    X = t.X[m]
    expect = np.log1p(X[:, t.var_names.get_loc("ERBB2")].toarray().ravel() / np.asarray(X.sum(1)).ravel() * 1e4)
    np.testing.assert_allclose(axes[2].collections[0].get_array(), expect, rtol=1e-6)
    out = tmp_path / "erbb2.png"
    fig = scst.pl.spatial_expression(sd, "ERBB2", sections=["C2"], layers=[None], save=out, return_fig=True)
    assert out.stat().st_size > 10_000 and len(fig.axes) == 2  # panel + colour bar
    with pytest.raises(KeyError, match="NOPE"):
        scst.pl.spatial_expression(sd, "NOPE", show=False)
    with pytest.raises(KeyError, match="missing_layer"):
        scst.pl.spatial_expression(sd, "ERBB2", layers=["missing_layer"], show=False)
    del t.layers["predicted"]
