"""predict_expression checks its inputs before the (long) prediction."""

import numpy as np
import pandas as pd
import pytest

import scst
from scst.io import read_st


class _PanelModel:
    """A trained-looking model that records whether prediction ran."""

    is_trained = True
    var_names = pd.Index(["A", "NOT_IN_TABLE"])

    def __init__(self):
        self.calls = 0

    def predict(self, data, sections=None, table="table"):
        self.calls += 1
        n = data.tables[table].n_obs
        return np.zeros((n, len(self.var_names)), np.float32)


def test_missing_panel_genes_fail_before_prediction():
    counts = pd.DataFrame({"A": [1, 2, 3, 4], "B": [0, 1, 0, 1]}, index=["1x1", "2x1", "1x2", "2x2"])
    spots = pd.DataFrame(
        {"x": [1, 2, 1, 2], "y": [1, 1, 2, 2], "pixel_x": [10.0, 30, 10, 30], "pixel_y": [10.0, 10, 30, 30]}
    )
    sd = read_st(counts, spots, None, sample="S")
    model = _PanelModel()
    with pytest.raises(ValueError, match=r"lacks 1 of the model's 2 panel genes: \['NOT_IN_TABLE'\]"):
        scst.tl.predict_expression(sd, model)
    assert model.calls == 0  # refused before any patch was read
    assert "predicted" not in sd.tables["table"].layers
