"""Exact resume from epoch-boundary checkpoints, and same seed → same model (CPU)."""

from __future__ import annotations

import importlib.util
import pickle
import warnings
from pathlib import Path

import _toys as toys  # tests/models is on pytest's pythonpath (pyproject.toml): spawned DDP workers import it
import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from scst.models import MLPExpression

pytestmark = pytest.mark.usefixtures("one_torch_thread")
W_TRUE = toys.W_TRUE

_spec = importlib.util.spec_from_file_location("_he_synthetic", Path(__file__).parent / "_he_synthetic.py")
syn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(syn)


class DropoutMLP(nn.Module):
    """Small MLP with dropout: every epoch draws from the torch RNG (shuffling and dropout masks)."""

    def __init__(self, n_features: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)

    def loss(self, batch):
        x, y = batch
        return {"loss": ((self(x) - y) ** 2).mean()}


class ResumeToy(toys.ToyRegressor):
    _module_cls = DropoutMLP
    _default_config = {"lr": 0.03, "batch_size": 16, "max_epochs": 6}

    def _dataloaders(self, batch_size, validation, seed, **kw):
        x, y = self._xy()
        gen = torch.Generator().manual_seed(seed)  # a loader with its own generator (as several scst models have)
        train = DataLoader(TensorDataset(x[:96], y[:96]), batch_size=batch_size, shuffle=True, generator=gen)
        return train, DataLoader(TensorDataset(x[96:], y[96:]), batch_size=batch_size)


class _NotTensors:
    """An object that only full unpickling can restore."""


class Crash(pl.Callback):
    """Simulate a crash at the start of epoch ``at`` (after the checkpoint of epoch ``at - 1`` was written)."""

    def __init__(self, at: int):
        self.at = at

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.at:
            raise RuntimeError("power cut")


def _adata():
    a = toys.linear_adata(128, noise=0.1)
    ResumeToy.setup_anndata(a)
    return a


SETTINGS = {"max_epochs": 6, "lr_scheduler": "cosine", "enable_progress_bar": False, "early_stopping": False}


def _last_weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    d = tmp_path_factory.mktemp("full")
    a = _adata()
    m = ResumeToy(a).train(checkpoint_dir=d, **SETTINGS)
    return m, d


def test_resume_after_crash_equals_uninterrupted_run(uninterrupted, tmp_path):
    full, full_dir = uninterrupted
    a = _adata()
    with pytest.raises(RuntimeError, match="power cut"):
        ResumeToy(a).train(checkpoint_dir=tmp_path, callbacks=[Crash(at=3)], **SETTINGS)
    last = tmp_path / "last.ckpt"
    # Lightning's full checkpoint loads with weights_only=True: only tensors and primitives in it
    ck = torch.load(last, map_location="cpu", weights_only=True)
    assert ck["epoch"] == 2 and ck["optimizer_states"] and ck["lr_schedulers"]
    assert ck["hyper_parameters"]["lr_scheduler"] == "cosine" and ck["hyper_parameters"]["max_epochs"] == 6
    assert sorted(ck["callbacks"]["History"]["rows"]) == [0, 1, 2]

    resumed = ResumeToy(a).train(ckpt_path=last, **SETTINGS)  # a fresh model object, as after a restart
    # the weights at the end of epoch 6 are the same (shuffling, dropout, Adam moments, cosine LR all continued)
    w_full, w_res = _last_weights(full_dir / "last.ckpt"), _last_weights(last)
    assert w_full.keys() == w_res.keys()
    for k in w_full:
        torch.testing.assert_close(w_res[k], w_full[k], rtol=0, atol=1e-6)
    # and so are the restored best weights, the predictions and the history of all 6 epochs
    np.testing.assert_allclose(resumed.predict(), full.predict(), rtol=0, atol=1e-5)
    assert list(resumed.history.index) == list(range(6)) == list(full.history.index)
    pd.testing.assert_frame_equal(resumed.history, full.history, rtol=1e-6)
    assert resumed.is_trained
    # the checkpoint has learned something real: a linear map close to the planted one explains y
    assert np.corrcoef(resumed.predict(), a.obs["y"])[0, 1] > 0.9


def test_resume_without_the_random_streams_differs(uninterrupted, tmp_path, monkeypatch):
    """The check above can fail: without restoring the random streams the resumed run is another run."""
    full, full_dir = uninterrupted
    a = _adata()
    with pytest.raises(RuntimeError, match="power cut"):
        ResumeToy(a).train(checkpoint_dir=tmp_path, callbacks=[Crash(at=3)], **SETTINGS)
    monkeypatch.setattr("scst.models._training.RNGState.load_state_dict", lambda self, state: None)
    ResumeToy(a).train(ckpt_path=tmp_path / "last.ckpt", **SETTINGS)
    w_full, w_res = _last_weights(full_dir / "last.ckpt"), _last_weights(tmp_path / "last.ckpt")
    assert any(not torch.allclose(w_full[k], w_res[k], atol=1e-6) for k in w_full)


def test_finished_run_extended_equals_longer_run(tmp_path):
    """3 epochs (finished, no scheduler) + resume to 6 = 6 epochs in one go; other settings on resume warn."""
    a = _adata()
    kw = {**SETTINGS, "lr_scheduler": None}
    full = ResumeToy(a).train(checkpoint_dir=tmp_path / "full", **kw)
    ResumeToy(a).train(checkpoint_dir=tmp_path / "ext", **{**kw, "max_epochs": 3})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ext = ResumeToy(a).train(ckpt_path=tmp_path / "ext" / "last.ckpt", **kw)
    # only max_epochs differs, and without a cosine schedule that is the exact continuation: no warning
    assert not [w for w in caught if "training settings other than" in str(w.message)]
    w_full, w_ext = _last_weights(tmp_path / "full" / "last.ckpt"), _last_weights(tmp_path / "ext" / "last.ckpt")
    for k in w_full:
        torch.testing.assert_close(w_ext[k], w_full[k], rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(ext.history, full.history, rtol=1e-6)
    # a cosine schedule's period is the first run's max_epochs, and the optimiser keeps the checkpoint's lr
    ResumeToy(a).train(checkpoint_dir=tmp_path / "cos", **{**SETTINGS, "max_epochs": 3})
    with pytest.warns(UserWarning, match=r"lr: 0.03 → 0.1, max_epochs: 3 → 6.*not the continuation"):
        ResumeToy(a).train(ckpt_path=tmp_path / "cos" / "last.ckpt", **{**SETTINGS, "lr": 0.1})


def test_early_stopping_state_survives_resume(tmp_path):
    """Patience counts across the resume: the resumed run stops at the same epoch as the uninterrupted one."""
    a = _adata()
    kw = {"max_epochs": 40, "patience": 2, "lr": 0.05, "enable_progress_bar": False}
    full = ResumeToy(a).train(checkpoint_dir=tmp_path / "full", **kw)
    n = len(full.history)
    assert 4 < n < 40  # it did stop early
    with pytest.raises(RuntimeError, match="power cut"):
        ResumeToy(a).train(checkpoint_dir=tmp_path / "cut", callbacks=[Crash(at=n - 2)], **kw)
    resumed = ResumeToy(a).train(ckpt_path=tmp_path / "cut" / "last.ckpt", **kw)
    assert len(resumed.history) == n
    np.testing.assert_allclose(resumed.predict(), full.predict(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("where", ["moved", "other_checkpoint_dir"])
def test_resume_from_another_folder_keeps_the_best_epoch_before_the_resume(tmp_path, where):
    """Lightning forgets the best score of a checkpoint written to another folder (a moved run folder, or
    ``checkpoint_dir`` elsewhere): the best weights restored were those of the epochs after the resume only."""
    import shutil

    a = _adata()
    kw = {"max_epochs": 12, "patience": 20, "lr": 0.2, "enable_progress_bar": False}
    full = ResumeToy(a).train(checkpoint_dir=tmp_path / "full", **kw)
    best = int(full.history["val_loss"].idxmin())
    assert best < 8 and full.history["val_loss"].iloc[8:].min() > full.history["val_loss"].min()  # the scenario
    with pytest.raises(RuntimeError, match="power cut"):
        ResumeToy(a).train(checkpoint_dir=tmp_path / "cut", callbacks=[Crash(at=8)], **kw)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="The dirpath has changed")  # Lightning's: nothing is forgotten now
        if where == "moved":
            shutil.move(tmp_path / "cut", tmp_path / "moved")
            resumed = ResumeToy(a).train(ckpt_path=tmp_path / "moved" / "last.ckpt", **kw)
        else:
            last = tmp_path / "cut" / "last.ckpt"
            resumed = ResumeToy(a).train(ckpt_path=last, checkpoint_dir=tmp_path / "new", **kw)
            assert (tmp_path / "cut" / "best.ckpt").is_file()  # the old folder is left as it was
    pd.testing.assert_frame_equal(resumed.history, full.history, rtol=1e-6)
    np.testing.assert_allclose(resumed.predict(), full.predict(), rtol=0, atol=1e-6)  # the weights of epoch `best`


def test_resume_bad_input(tmp_path):
    a = _adata()
    with pytest.raises(FileNotFoundError, match="`ckpt_path` .* is not a file"):
        ResumeToy(a).train(ckpt_path=tmp_path / "nothing.ckpt", **SETTINGS)
    # best.ckpt holds only weights: Lightning refuses to resume the optimiser from it, naming the reason
    ResumeToy(a).train(checkpoint_dir=tmp_path, **{**SETTINGS, "max_epochs": 2})
    with pytest.raises(KeyError, match="save_weights_only"):
        ResumeToy(a).train(ckpt_path=tmp_path / "best.ckpt", **SETTINGS)
    # max_epochs is the total: 1 or 2 on a finished 2-epoch run were silently no-ops (fewer: Lightning's error)
    for n in (1, 2):
        with pytest.raises(ValueError, match=rf"holds 2 trained epoch\(s\): expected `max_epochs` > 2, got {n}"):
            ResumeToy(a).train(ckpt_path=tmp_path / "last.ckpt", **{**SETTINGS, "max_epochs": n})
    # checkpoints are loaded with weights_only=True: a pickled object other than tensors and primitives is refused
    ck = torch.load(tmp_path / "last.ckpt", weights_only=True)
    torch.save({**ck, "note": _NotTensors()}, tmp_path / "foreign.ckpt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        ResumeToy(a).train(ckpt_path=tmp_path / "foreign.ckpt", **SETTINGS)


def test_mid_epoch_checkpoint_resumes_with_a_warning(tmp_path):
    """Mid-epoch checkpoints (a user's ModelCheckpoint(every_n_train_steps=...)) resume only approximately."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    a = _adata()
    mid = ModelCheckpoint(dirpath=tmp_path / "mid", filename="mid", every_n_train_steps=4, enable_version_counter=False)
    with pytest.raises(RuntimeError, match="power cut"):
        ResumeToy(a).train(callbacks=[mid, Crash(at=1)], **SETTINGS)
    with pytest.warns(UserWarning, match="ended before the epoch ended"):
        m = ResumeToy(a).train(ckpt_path=tmp_path / "mid" / "mid.ckpt", **SETTINGS)
    assert m.is_trained and list(m.history.index) == list(range(6))


def test_interrupted_checkpoint_write_keeps_the_previous_last_ckpt(tmp_path, monkeypatch):
    a = _adata()
    ResumeToy(a).train(checkpoint_dir=tmp_path, **{**SETTINGS, "max_epochs": 3})
    before = (tmp_path / "last.ckpt").read_bytes()
    real_save = torch.save

    def interrupted(obj, f, *args, **kwargs):  # the process dies half-way through writing a checkpoint file
        if isinstance(f, str | Path):
            Path(f).write_bytes(b"partial")
            raise RuntimeError("killed while writing")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(RuntimeError, match="killed while writing"):
        ResumeToy(a).train(ckpt_path=tmp_path / "last.ckpt", **SETTINGS)
    monkeypatch.undo()
    assert (tmp_path / "last.ckpt").read_bytes() == before  # still the complete checkpoint of epoch 3
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]  # no temporary file left


def test_no_last_checkpoint_without_save_last(tmp_path):
    a = _adata()
    ResumeToy(a).train(checkpoint_dir=tmp_path, save_last=False, **{**SETTINGS, "max_epochs": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt"]


# ------------------------------------------------------------------ determinism of a real scst model
PANEL = ["UP", "DOWN", "NOISE0", "HOUSE"]


@pytest.fixture(scope="module")
def table():
    tab = syn.make_sdata(image=False).tables["table"]
    rng = np.random.default_rng(0)
    tab.obsm["X_emb"] = np.column_stack([10 * tab.obs["z"].to_numpy() + 3, rng.normal(0, 50, (tab.n_obs, 6))])
    MLPExpression.setup_anndata(tab, use_rep="X_emb", genes=PANEL, sections=["S1", "S2"])
    return tab


def _trained_mlp(tab, seed: int, train_seed: int | None = None):
    cfg = {**MLPExpression.bench_config, "max_epochs": 8, "seed": seed}
    return MLPExpression(tab, **cfg).train(validation="S2", seed=train_seed, enable_progress_bar=False)


def test_same_seed_same_predictions_on_cpu(table):
    a, b = _trained_mlp(table, 0), _trained_mlp(table, 0)
    pa, pb = a.predict(table, "S3"), b.predict(table, "S3")
    np.testing.assert_array_equal(pa, pb)
    pd.testing.assert_frame_equal(a.history, b.history)
    assert pa.std(0).max() > 0  # not a constant prediction that would trivially agree
    # another seed (initialisation and training), or only another training seed: another model
    for other in (_trained_mlp(table, 1), _trained_mlp(table, 0, train_seed=1)):
        assert np.abs(other.predict(table, "S3") - pa).max() > 1e-4


def test_a_second_train_call_continues_from_the_weights_in_memory_or_loaded(tmp_path):
    """Invariance: ``train`` twice on one object = ``train``, ``save``, ``load``, ``train`` (same weights and history;
    the second call starts from the trained weights, counts epochs from 0 and replaces ``history``)."""
    kw = {"max_epochs": 2, "enable_progress_bar": False}
    first = ResumeToy(_adata()).train(**kw)
    first.save(tmp_path / "m")
    trained = {k: v.clone() for k, v in first.module.state_dict().items()}
    loaded = ResumeToy.load(tmp_path / "m", data=_adata())
    first.train(**kw)
    loaded.train(**kw)
    for k, v in first.module.state_dict().items():
        torch.testing.assert_close(loaded.module.state_dict()[k], v, rtol=0, atol=0)
    pd.testing.assert_frame_equal(loaded.history, first.history)
    assert list(first.history.index) == [0, 1]
    assert any(not torch.equal(trained[k], v) for k, v in first.module.state_dict().items())
    fresh = ResumeToy(_adata()).train(**kw)  # not a restart from the initial weights
    assert not np.allclose(fresh.predict(), first.predict(), atol=1e-6)
