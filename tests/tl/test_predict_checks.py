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


def _toy_sdata():
    counts = pd.DataFrame({"A": [1, 2, 3, 4], "NOT_IN_TABLE": [0, 1, 0, 1]}, index=["1x1", "2x1", "1x2", "2x2"])
    spots = pd.DataFrame(
        {"x": [1, 2, 1, 2], "y": [1, 1, 2, 2], "pixel_x": [10.0, 30, 10, 30], "pixel_y": [10.0, 10, 30, 30]}
    )
    return read_st(counts, spots, None, sample="S")


class _OptionsModel(_PanelModel):
    """Records the inference options its ``predict`` receives."""

    def predict(self, data, sections=None, table="table", num_workers=0, pin_memory=None, precision="32"):
        self.seen = {"num_workers": num_workers, "pin_memory": pin_memory, "precision": precision}
        return super().predict(data, sections, table)


def test_inference_options_reach_the_model():
    model = _OptionsModel()
    scst.tl.predict_expression(_toy_sdata(), model, num_workers=3, pin_memory=False, precision="bf16")
    assert model.seen == {"num_workers": 3, "pin_memory": False, "precision": "bf16"}


def test_inference_options_a_model_cannot_use_warn():
    with pytest.warns(UserWarning, match=r"precision='bf16'.*no effect"):
        scst.tl.predict_expression(_toy_sdata(), _PanelModel(), precision="bf16")
    import warnings

    with warnings.catch_warnings():  # defaults: nothing to say
        warnings.simplefilter("error")
        scst.tl.predict_expression(_toy_sdata(), _PanelModel())


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"precision": "fp8"}, "precision: expected one of"), ({"num_workers": -1}, "num_workers: expected an integer"),
     ({"pin_memory": "yes"}, "pin_memory: expected True, False or None"),
     ({"batch_size": 0}, "batch_size: expected a positive integer, got 0")],
)  # fmt: skip
def test_bad_inference_options_fail_before_prediction(kw, match):
    model = _OptionsModel()
    with pytest.raises((ValueError, TypeError), match=match):
        scst.tl.predict_expression(_toy_sdata(), model, **kw)
    assert model.calls == 0


def test_bad_layer_and_sdata_fail_before_prediction_and_copy_semantics():
    """A bad ``layer`` or a non-SpatialData is refused before any prediction; without ``copy`` the table is written
    in place and None returned, with ``copy`` the caller's table is left alone and the written copy returned."""
    model = _PanelModel()
    sd = _toy_sdata()
    with pytest.raises(ValueError, match="layer: expected a non-empty string, got ''"):
        scst.tl.predict_expression(sd, model, layer="")
    with pytest.raises(TypeError, match="sdata: expected a SpatialData object with images, got AnnData"):
        scst.tl.predict_expression(sd.tables["table"], model)
    assert model.calls == 0
    out = scst.tl.predict_expression(sd, model, layer="p", copy=True)
    assert "p" in out.layers and out is not sd.tables["table"] and "p" not in sd.tables["table"].layers
    assert scst.tl.predict_expression(sd, model, layer="p") is None
    tab = sd.tables["table"]
    assert "p" in tab.layers and tab.var["p_mask"].tolist() == [True, True] and tab.obs["p_mask"].all()


def test_unknown_sections_wrong_shapes_and_tables_without_regions_fail_clearly():
    """An unknown section is refused before any featurising or prediction; a model returning another shape than
    (spots of sections, panel genes) is an error, not a misplaced layer; a new table needs region/instance columns."""
    sd = _toy_sdata()
    model = _PanelModel()
    with pytest.raises(ValueError, match=r"sections: \['S9'\] have no spots in table 'table' \(sections with spots"):
        scst.tl.predict_expression(sd, model, sections="S9")
    assert model.calls == 0

    class _Short(_PanelModel):
        def predict(self, data, sections=None, table="table"):
            return super().predict(data, sections, table)[:-1]

    with pytest.raises(ValueError, match=r"returned shape \(3, 2\); expected .* = \(4, 2\)"):
        scst.tl.predict_expression(sd, _Short())
    assert "predicted" not in sd.tables["table"].layers
    tab = sd.tables["table"]
    del tab.obs["region"]
    with pytest.raises(ValueError, match=r"table_added: a new table needs obs\['region'\]"):
        scst.tl.predict_expression(sd, model, table_added="pred")
    assert model.calls == 0


def test_an_image_only_sdata_without_section_images_names_sections():
    """No table and no image named ``<section>_image``: the sections to tile cannot be guessed; the error names
    ``sections`` before any tiling or prediction."""
    import spatialdata as sdd
    from spatialdata.models import Image2DModel

    sd = sdd.SpatialData(images={"slide": Image2DModel.parse(np.zeros((3, 8, 8), np.uint8), dims=("c", "y", "x"))})
    model = _PanelModel()
    with pytest.raises(ValueError, match=r"sections: no table and no image named '<section>_image'; pass `sections`"):
        scst.tl.predict_expression(sd, model, um_per_px=1.0)
    assert model.calls == 0
