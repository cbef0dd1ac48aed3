"""pl.training_history and pl.attribution with a small TCGN trained for two epochs on her2st C2 (C3 validates)."""

from __future__ import annotations

import numpy as np
import pytest

import scst

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tcgn(her2st_two, one_torch_thread):
    from scst.models import TCGN

    sd = her2st_two
    TCGN.setup_sdata(sd, genes=["ERBB2", "GNAS", "CD74"], sections=["C2", "C3"], patch_px=64)
    model = TCGN(sd, **{**TCGN.bench_config, "img_size": 64, "augment": False})
    model.train(max_epochs=2, validation=["C3"], batch_size=64, enable_progress_bar=False)
    yield model
    sd.tables["table"].uns.pop("_scst_setup", None)


def test_training_history(tcgn):
    ax = scst.pl.training_history(tcgn, show=False)
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert {"train_loss", "val_loss"} <= set(lines)
    np.testing.assert_allclose(lines["val_loss"].get_ydata(), tcgn.history["val_loss"].to_numpy())
    np.testing.assert_allclose(lines["train_loss"].get_xdata(), tcgn.history.index.to_numpy(float))
    with pytest.raises(KeyError, match=r"keys: 'val_los' not found in model.history; close matches: \['val_loss'"):
        scst.pl.training_history(tcgn, "val_los", show=False)

    class Untrained:
        history = None

    with pytest.raises(ValueError, match="no training history"):
        scst.pl.training_history(Untrained(), show=False)


def test_training_history_marks_the_monitored_metric():
    """The 'best' line marks the epoch checkpoints were chosen on (val_mse for the heads), not the total loss."""
    import pandas as pd

    class Head:
        _monitor = "val_mse"
        history = pd.DataFrame(
            {"train_loss": [3.0, 2.0, 1.0], "val_loss": [3.0, 2.5, 1.0], "val_mse": [1.0, 0.5, 0.9]},
            index=pd.Index([0, 1, 2], name="epoch"),
        )

    ax = scst.pl.training_history(Head(), show=False)
    best = [ln for ln in ax.get_lines() if ln.get_label().startswith("best")]
    assert [ln.get_label() for ln in best] == ["best val_mse (epoch 1)"]
    assert best[0].get_xdata()[0] == 1.0


def test_attribution_draws_the_model_maps(her2st_two, tcgn):
    t = her2st_two.tables["table"]
    spots = list(t.obs_names[(t.obs["section"] == "C3").to_numpy()][:3])
    axes = scst.pl.attribution(her2st_two, tcgn, spots, "ERBB2", show=False)
    maps, patches = tcgn.attribution(her2st_two, "ERBB2", spots, return_patches=True)
    assert [a.get_title() for a in axes] == [f"{s} · ERBB2" for s in spots]
    for a, m, p in zip(axes, maps, patches):
        under, over = a.images
        np.testing.assert_array_equal(under.get_array(), np.moveaxis(p, 0, -1))
        np.testing.assert_allclose(over.get_array(), m, atol=1e-5)
    with pytest.raises(KeyError, match="not in the model's panel"):
        scst.pl.attribution(her2st_two, tcgn, spots, "MUC1", show=False)
    with pytest.raises(TypeError, match="no attribution method"):
        scst.pl.attribution(her2st_two, object(), spots, "ERBB2", show=False)


def test_training_history_defaults_gaps_and_log_scale():
    """Default keys are the loss columns; an epoch without a value is left out of its line; without ``_monitor`` the
    best epoch is that of ``val_loss``; ``log=True`` sets a logarithmic y axis."""
    import pandas as pd

    class Plain:
        history = pd.DataFrame(
            {"train_loss": [3.0, 2.0, 1.0], "val_loss": [2.0, np.nan, 1.5], "val_mse": [0.1, 0.05, 0.3]},
            index=pd.Index([0, 1, 2], name="epoch"),
        )

    ax = scst.pl.training_history(Plain(), log=True, show=False)
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert list(lines) == ["train_loss", "val_loss", "best val_loss (epoch 2)"]
    np.testing.assert_array_equal(lines["val_loss"].get_xdata(), [0.0, 2.0])
    np.testing.assert_array_equal(lines["val_loss"].get_ydata(), [2.0, 1.5])
    assert ax.get_yscale() == "log"
    assert scst.pl.training_history(Plain(), show=False).get_yscale() == "linear"


def test_attribution_overlay_opacity_scale_and_spot_names():
    """A recording stub model: the map is drawn on the fixed [0, 1] scale with the given opacity over the patch,
    a boolean mask names the spots it selects, one panel per spot (no empty grid cells), and alpha is checked."""
    import pandas as pd
    from anndata import AnnData

    a = AnnData(np.zeros((8, 1), np.float32), obs=pd.DataFrame(index=[f"spot{i}" for i in range(8)]))
    rng = np.random.default_rng(0)

    class Stub:
        registry = {}

        def attribution(self, sdata, gene, spots, table=None, return_patches=False):
            self.called = (gene, spots, table)
            n = int(np.asarray(spots).sum())
            return rng.uniform(0, 0.5, (n, 8, 8)), rng.uniform(0, 1, (n, 3, 8, 8))

    mask = np.array([True, False, True, True, False, True, True, False])
    model = Stub()
    axes = scst.pl.attribution(a, model, mask, "G", alpha=0.3, ncols=4, show=False)
    assert model.called[0] == "G" and model.called[1] is mask
    assert [ax.get_title() for ax in axes] == [f"spot{i} · G" for i in (0, 2, 3, 5, 6)]
    assert len(axes[0].figure.axes) == 5
    for ax in axes:
        _, over = ax.images
        assert over.get_alpha() == 0.3 and over.get_clim() == (0, 1)
    with pytest.raises(ValueError, match=r"alpha: expected a value in \[0, 1\]"):
        scst.pl.attribution(a, model, mask, "G", alpha=1.5, show=False)


def test_training_history_best_epoch_of_a_metric_maximised():
    """A model whose checkpoints keep the largest monitored value (GCNG's val_accuracy, ``_monitor_mode="max"``):
    the 'best' line marks the epoch of the maximum, not of the minimum."""
    import pandas as pd

    class Classifier:
        _monitor, _monitor_mode = "val_accuracy", "max"
        history = pd.DataFrame(
            {"train_loss": [3.0, 2.0, 1.0], "val_accuracy": [0.5, 0.9, 0.7]}, index=pd.Index([0, 1, 2], name="epoch")
        )

    ax = scst.pl.training_history(Classifier(), keys=["val_accuracy"], show=False)
    best = [ln for ln in ax.get_lines() if ln.get_label().startswith("best")]
    assert [ln.get_label() for ln in best] == ["best val_accuracy (epoch 1)"]
    assert best[0].get_xdata()[0] == 1.0


def test_training_history_best_epoch_of_staged_training_is_in_the_last_stage():
    """MultimodalST trains in two stages, each restoring its own best checkpoint: the weights kept are the best of
    the joint stage (``stage`` 1), so the 'best' line is there even when a pre-training epoch has a lower value."""
    import pandas as pd

    class Staged:
        history = pd.DataFrame(
            {"train_loss": [6.0, 5.0, 7.0, 6.5, 6.8], "val_loss": [5.0, 4.0, 6.0, 5.5, 5.8],
             "stage": [0.0, 0.0, 1.0, 1.0, 1.0]},
            index=pd.Index([0, 1, 2, 3, 4], name="epoch"),
        )  # fmt: skip

    ax = scst.pl.training_history(Staged(), show=False)
    best = [ln for ln in ax.get_lines() if ln.get_label().startswith("best")]
    assert [ln.get_label() for ln in best] == ["best val_loss (epoch 3)"]


def test_training_history_best_epoch_of_a_model_trained_without_validation():
    """Without validation, training checkpoints on the training counterpart of the monitored metric (``train_loss``
    for ``val_loss``) and restores its best epoch: the 'best' line marks it (it was missing). A history with
    neither column gets no 'best' line."""
    import pandas as pd

    class NoValidation:
        history = pd.DataFrame({"train_loss": [3.0, 1.0, 2.0]}, index=pd.Index([0, 1, 2], name="epoch"))

    ax = scst.pl.training_history(NoValidation(), show=False)
    best = [ln for ln in ax.get_lines() if ln.get_label().startswith("best")]
    assert [ln.get_label() for ln in best] == ["best train_loss (epoch 1)"]
    assert best[0].get_xdata()[0] == 1.0

    class OtherMetrics:
        history = pd.DataFrame({"train_mse": [3.0, 1.0, 2.0]}, index=pd.Index([0, 1, 2], name="epoch"))

    ax = scst.pl.training_history(OtherMetrics(), show=False)
    assert [ln.get_label() for ln in ax.get_lines()] == ["train_mse"]
