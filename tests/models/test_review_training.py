"""BaseModel.train / save found in a review (2026-12-04): validation every n epochs, saving through a link."""

from __future__ import annotations

import os

import _toys as toys  # tests/models is on pytest's pythonpath (pyproject.toml)
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")
KW = {"enable_progress_bar": False, "accelerator": "cpu"}


class ReviewToyVal(toys.ToyRegressor):
    _default_config = {"lr": 0.1, "batch_size": 32, "max_epochs": 5}

    def _dataloaders(self, batch_size, validation, seed, **kwargs):
        x, y = self._xy()
        return (DataLoader(TensorDataset(x[:96], y[:96]), batch_size=batch_size, shuffle=True),
                DataLoader(TensorDataset(x[96:], y[96:]), batch_size=64))  # fmt: skip


class ReviewToyNoVal(toys.ToyRegressor):
    _default_config = {"lr": 0.1, "batch_size": 32, "max_epochs": 5}

    def _dataloaders(self, batch_size, validation, seed, **kwargs):
        return DataLoader(TensorDataset(*self._xy()), batch_size=batch_size, shuffle=True), None


def test_plateau_scheduler_steps_on_the_epochs_that_validate():
    """lr_scheduler="plateau" with check_val_every_n_epoch=2 died after epoch 0 (no val_loss to step on)."""
    a = toys.linear_adata()
    ReviewToyVal.setup_anndata(a)
    m = ReviewToyVal(a).train(max_epochs=4, lr_scheduler="plateau", check_val_every_n_epoch=2, **KW)
    assert m.is_trained and len(m.history) == 4
    assert m.history["val_loss"].isna().tolist() == [True, False, True, False]


def test_without_validation_the_best_training_epoch_is_kept_whatever_the_validation_interval():
    """No validation loader: check_val_every_n_epoch > 1 kept the last step's weights (the checkpoint waited for a
    validation pass that never came) and warned about it; now every interval keeps the same best epoch."""
    a = toys.linear_adata(noise=1.0)
    ReviewToyNoVal.setup_anndata(a)
    weights = []
    for every in (1, 2):
        m = ReviewToyNoVal(a, lr=0.9).train(max_epochs=6, check_val_every_n_epoch=every, **KW)
        best = int(np.argmin(m.history["train_loss"].to_numpy()))
        assert best != len(m.history) - 1  # lr 0.9 overshoots: the last epoch is not the best (the test bites)
        weights.append(torch.cat([p.detach().flatten() for p in m.module.parameters()]))
    torch.testing.assert_close(weights[0], weights[1])


def test_save_through_a_symbolic_link_writes_where_it_points(tmp_path):
    a = toys.linear_adata()
    ReviewToyVal.setup_anndata(a)
    m = ReviewToyVal(a).train(max_epochs=1, **KW)
    real = tmp_path / "store" / "model"
    m.save(real)
    (real / "attr.json").write_text((real / "attr.json").read_text())  # the folder a later save replaces
    link = tmp_path / "link"
    link.symlink_to(real)
    m.train(max_epochs=1, **KW)
    m.save(link, overwrite=True)
    assert link.is_symlink() and sorted(os.listdir(tmp_path)) == ["link", "store"]  # no stray swapped entry
    assert sorted(os.listdir(tmp_path / "store")) == ["model"]
    loaded = ReviewToyVal.load(link, a)
    np.testing.assert_allclose(loaded.predict(), m.predict())
