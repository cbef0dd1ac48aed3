"""BaseModel: setup → train → history → save/load, on a toy linear regression with a planted weight."""

from __future__ import annotations

import json
import re
from pathlib import Path

import _toys as toys  # tests/models is on pytest's pythonpath (pyproject.toml)
import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from safetensors import safe_open
from torch.utils.data import DataLoader, TensorDataset

from scst.models._base import BaseModel

N_OBS, N_VARS = 256, 4
W_TRUE = np.array([1.5, -2.0, 0.5, 3.0], dtype=np.float32)
B_TRUE = 0.7


class LinearModule(toys.Linear):
    def __init__(self, n_features: int, hidden: list[int] | None = None):  # hidden: unused, checks tuple → list
        super().__init__(n_features)

    def loss(self, batch):
        x, y = batch
        pred = self(x)
        return {"loss": ((pred - y) ** 2).mean(), "mae": (pred - y).abs().mean(), "vector": pred.detach()}


class ToyRegression(BaseModel):
    _module_cls = LinearModule
    _default_config = {"validation_fraction": 0.25, "lr": 0.1, "batch_size": 32, "max_epochs": 15}
    bench_config = {"max_epochs": 3}

    @classmethod
    def setup_anndata(cls, adata: AnnData, target_key: str = "y") -> None:
        if target_key not in adata.obs:
            raise KeyError(f"`target_key` {target_key!r} not in adata.obs.")
        cls._register(adata, {"target_key": target_key, "n_features": adata.n_vars, "var_names": adata.var_names})

    def _module_kwargs(self):
        return {"n_features": self.registry["n_features"], "hidden": (8, 8)}

    def _tensors(self, adata):
        x = torch.as_tensor(np.asarray(adata[:, self.registry["var_names"]].X), dtype=torch.float32)
        return x, torch.as_tensor(adata.obs[self.registry["target_key"]].to_numpy(), dtype=torch.float32)

    def _dataloaders(self, batch_size, validation, seed, **kw):
        frac = self.config["validation_fraction"] if validation is None else validation
        x, y = self._tensors(self.adata)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        n_val = int(round(frac * len(y)))
        val, tr = perm[:n_val], perm[n_val:]
        train_dl = DataLoader(TensorDataset(x[tr], y[tr]), batch_size=batch_size, shuffle=True)
        val_dl = DataLoader(TensorDataset(x[val], y[val]), batch_size=batch_size) if n_val else None
        return train_dl, val_dl

    def predict(self, adata=None):
        x, _ = self._tensors(self.adata if adata is None else adata)
        out = self._inference(DataLoader(x, batch_size=64), lambda m, b: m(b))
        return torch.cat(out).numpy()


class OtherToy(ToyRegression):
    """Same machinery, different class name: loading a ToyRegression as OtherToy must fail."""


class NaNModule(LinearModule):
    """Loss turns NaN after ``nan_after`` training steps."""

    def __init__(self, n_features: int, nan_after: int = 20, in_validation: bool = False):
        super().__init__(n_features)
        self.nan_after, self.in_validation, self.steps = nan_after, in_validation, 0

    def loss(self, batch):
        out = super().loss(batch)
        self.steps += self.training
        if self.steps > self.nan_after and self.training != self.in_validation:
            out["loss"] = out["loss"] * float("nan")
        return out


class NaNToy(ToyRegression):
    _module_cls = NaNModule

    _default_config = {**ToyRegression._default_config, "in_validation": False}

    def _module_kwargs(self):
        return {
            "n_features": self.registry["n_features"],
            "nan_after": 20,
            "in_validation": self.config["in_validation"],
        }


class NegMAEModule(LinearModule):
    def loss(self, batch):
        out = super().loss(batch)
        return {**out, "neg_mae": -out["mae"]}


class MaxToy(ToyRegression):
    """Monitors a metric to maximise (like GCNG's validation accuracy)."""

    _module_cls = NegMAEModule
    _monitor, _monitor_mode = "val_neg_mae", "max"


def make_adata(seed: int = 0, noise: float = 0.1) -> AnnData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N_OBS, N_VARS)).astype(np.float32)
    y = x @ W_TRUE + B_TRUE + noise * rng.normal(size=N_OBS)
    adata = AnnData(x, obs=pd.DataFrame({"y": y}, index=[f"c{i}" for i in range(N_OBS)]))
    adata.var_names = [f"g{i}" for i in range(N_VARS)]
    return adata


@pytest.fixture(scope="module")
def trained():
    adata = make_adata()
    ToyRegression.setup_anndata(adata)
    model = ToyRegression(adata)
    model.train(enable_progress_bar=False)
    return model, adata


def test_train_recovers_planted_weight(trained):
    model, _ = trained
    w = model.module.linear.weight.detach().numpy().ravel()
    np.testing.assert_allclose(w, W_TRUE, atol=0.05)
    assert abs(model.module.linear.bias.item() - B_TRUE) < 0.05
    h = model.history
    assert list(h.columns) == ["train_loss", "val_loss", "train_mae", "val_mae"]  # losses first, then train, val
    assert "train_vector" not in h.columns  # non-scalar entries are not logged
    assert h.index.name == "epoch" and (np.diff(h.index) == 1).all()
    assert h["val_loss"].iloc[-1] < 0.05 * h["val_loss"].iloc[0]
    assert h["val_loss"].min() < 0.03  # noise variance is 0.01
    assert model.is_trained and "Training status: Trained" in repr(model)
    assert model.device == torch.device("cpu")


def test_save_load_round_trip(trained, tmp_path):
    model, adata = trained
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["attr.json", "model.safetensors"]
    attrs = json.loads((tmp_path / "m" / "attr.json").read_text())
    assert attrs["model"] == "ToyRegression" and attrs["registry"]["var_names"] == ["g0", "g1", "g2", "g3"]
    assert attrs["module_kwargs"] == {"n_features": 4, "hidden": [8, 8]}
    assert len(attrs["history"]) == len(model.history)
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["linear.bias", "linear.weight"]

    # without data: weights, config, history come back; predictions are identical
    loaded = ToyRegression.load(tmp_path / "m")
    assert loaded.data is None and loaded.is_trained
    x = torch.as_tensor(adata.X)
    with torch.no_grad():
        np.testing.assert_array_equal(loaded.module(x).numpy(), model.module(x).numpy())
    pd.testing.assert_frame_equal(loaded.history, model.history)
    assert loaded.config == model.config
    with pytest.raises(ValueError, match="no data"):
        loaded.train()

    # with new data (not set up, genes in another order): registry transferred, same predictions
    new = make_adata(seed=1)[:, ["g3", "g1", "g0", "g2"]].copy()
    loaded = BaseModel.load(tmp_path / "m", data=new)  # dispatches on the saved class name
    assert type(loaded) is ToyRegression
    np.testing.assert_array_equal(loaded.predict(), model.predict(new))
    assert "_scst_setup" in new.uns


def test_load_checks(trained, tmp_path):
    model, adata = trained
    model.save(tmp_path / "m")
    with pytest.raises(FileExistsError, match="overwrite"):
        model.save(tmp_path / "m")
    model.save(tmp_path / "m", overwrite=True)
    with pytest.raises(ValueError, match="'ToyRegression' model, not 'OtherToy'"):
        OtherToy.load(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="not a saved model"):
        ToyRegression.load(tmp_path)
    with pytest.raises(ValueError, match=r"lacks 2 of the model's 4 genes: \['g1', 'g3'\]"):
        ToyRegression.load(tmp_path / "m", data=adata[:, ["g0", "g2"]].copy())


def test_save_data_round_trip(trained, tmp_path):
    model, adata = trained
    model.save(tmp_path / "m", save_data=True)
    loaded = ToyRegression.load(tmp_path / "m")
    assert loaded.adata.n_obs == N_OBS
    np.testing.assert_array_equal(loaded.predict(), model.predict())


def test_switches_in_the_config_must_be_booleans():
    """A setting whose default is True/False takes only a boolean: ``"False"`` (a command line's text) is a true
    string and ``1`` passed through ``bool()``; a numpy boolean is stored as a plain one. Checked before any data."""
    from scst.models import GCNG, HGGEP, MultimodalST, RidgeExpression

    for cls, key, bad in ((HGGEP, "use_ham", "False"), (GCNG, "log1p", 1), (MultimodalST, "freeze_encoders", None),
                          (RidgeExpression, "alpha_per_gene", "yes")):  # fmt: skip
        with pytest.raises(ValueError, match=f"{key}: expected True or False, got {bad!r}"):
            cls._merge_config({key: bad})
    config = HGGEP._merge_config({"augment": np.bool_(False)})
    assert config["augment"] is False and config["use_zinb"] is True
    # a number's place takes a number or None (numpy numbers are stored as plain ones)
    for cls, key, bad in ((HGGEP, "lr", "1e-3x"), (GCNG, "batch_size", True), (MultimodalST, "tau", [0.1])):
        with pytest.raises(ValueError, match=re.escape(f"{key}: expected a number, got {bad!r}")):
            cls._merge_config({key: bad})
    config = HGGEP._merge_config({"batch_size": np.int64(64), "lr": 3e-4, "seed": None})
    assert config["batch_size"] == 64 and type(config["batch_size"]) is int and config["seed"] is None


def test_setup_required_and_config_checked():
    adata = make_adata()
    with pytest.raises(ValueError, match=r"ToyRegression.setup_anndata\(adata\)` first"):
        ToyRegression(adata)
    ToyRegression.setup_anndata(adata)
    with pytest.raises(ValueError, match="not set up for OtherToy"):
        OtherToy(adata)
    with pytest.raises(ValueError, match=r"Unknown config key\(s\) \['n_hiden'\]"):
        ToyRegression(adata, n_hiden=3)
    model = ToyRegression(adata, **ToyRegression.bench_config)
    assert model.config["max_epochs"] == 3 and model.config["lr"] == 0.1 and not model.is_trained
    model.train(enable_progress_bar=False)
    assert len(model.history) == 3
    # the registry is a JSON string, so it survives h5ad/zarr writes unchanged
    assert isinstance(adata.uns["_scst_setup"]["ToyRegression"], str)


def test_setup_sdata():
    import spatialdata as sd

    adata = make_adata()
    sdata = sd.SpatialData(tables={"expr": adata})
    ToyRegression.setup_sdata(sdata, table="expr")
    model = ToyRegression(sdata, max_epochs=1)
    assert model.adata is sdata.tables["expr"] and model.registry["table"] == "expr"
    with pytest.raises(KeyError, match="'nope' not found"):
        ToyRegression.setup_sdata(sdata, table="nope")


def test_early_stopping_on_plateau():
    adata = make_adata()
    ToyRegression.setup_anndata(adata)
    model = ToyRegression(adata, lr=0.0, max_epochs=50, patience=3)  # lr=0: val loss is exactly flat
    model.train(enable_progress_bar=False)
    assert len(model.history) == 4  # best at epoch 0, then 3 epochs without improvement
    assert np.ptp(model.history["val_loss"]) == 0


def test_no_validation_trains_without_early_stopping():
    adata = make_adata()
    ToyRegression.setup_anndata(adata)
    model = ToyRegression(adata, max_epochs=5).train(validation=0.0, enable_progress_bar=False)
    assert len(model.history) == 5 and "val_loss" not in model.history


def test_nan_guard_restores_last_good_checkpoint(tmp_path):
    adata = make_adata()
    NaNToy.setup_anndata(adata)
    model = NaNToy(adata)
    # 192 training obs / batch 32 = 6 steps per epoch: NaN at the 21st step = epoch 3, batch 2
    with pytest.raises(FloatingPointError, match=r"nan at epoch 3, batch 2 .*restored the best checkpoint"):
        model.train(checkpoint_dir=tmp_path, enable_progress_bar=False)
    best = torch.load(tmp_path / "best.ckpt", weights_only=True)["state_dict"]
    for name, value in model.module.state_dict().items():
        assert torch.isfinite(value).all()
        torch.testing.assert_close(value, best[f"module.{name}"], rtol=0, atol=0)
    assert list(model.history.index) == [0, 1, 2]
    # the weights are those of the last validated epoch, not of the steps taken since
    assert model.history["val_loss"].is_monotonic_decreasing


def test_nan_guard_in_validation():
    adata = make_adata()
    NaNToy.setup_anndata(adata)
    model = NaNToy(adata, in_validation=True)
    # 6 steps per epoch: the validation after epoch 3 (steps 19-24) is the first to see NaN
    with pytest.raises(FloatingPointError, match=r"Validation loss is nan at epoch 3, validation batch 0"):
        model.train(enable_progress_bar=False)
    assert model.is_trained and torch.isfinite(model.module.linear.weight).all()
    assert list(model.history["val_loss"].dropna().index) == [0, 1, 2]


def test_seed_reproducibility():
    def fit(seed):
        adata = make_adata()
        ToyRegression.setup_anndata(adata)
        model = ToyRegression(adata, max_epochs=2, seed=seed).train(enable_progress_bar=False)
        return model.module.linear.weight.detach().clone(), model.history

    (w0, h0), (w0b, h0b), (w1, _) = fit(0), fit(0), fit(1)
    torch.testing.assert_close(w0, w0b, rtol=0, atol=0)
    pd.testing.assert_frame_equal(h0, h0b)
    assert not torch.equal(w0, w1)


def test_no_stray_logs_in_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    adata = make_adata()
    ToyRegression.setup_anndata(adata)
    ToyRegression(adata, max_epochs=1).train(enable_progress_bar=False)
    assert list(tmp_path.iterdir()) == []
    # Lightning's default_root_dir is set by train: passing it was Python's "got multiple values for keyword argument"
    with pytest.raises(ValueError, match="`default_root_dir` is not taken.*pass `checkpoint_dir`"):
        ToyRegression(adata, max_epochs=1).train(enable_progress_bar=False, default_root_dir=tmp_path)


def test_restores_best_epoch_of_max_monitor():
    adata = make_adata(noise=1.0)
    MaxToy.setup_anndata(adata)
    # a too-large step size makes the validation curve wander, so the last epoch is not the best one
    model = MaxToy(adata, lr=0.5, batch_size=32, max_epochs=6).train(early_stopping=False, enable_progress_bar=False)
    h = model.history["val_neg_mae"]
    assert h.idxmax() != h.index[-1]
    _, val_dl = model._dataloaders(32, None, 0)
    x, y = val_dl.dataset.tensors
    with torch.no_grad():
        neg_mae = -(model.module(x) - y).abs().mean().item()
    assert neg_mae == pytest.approx(h.max(), rel=1e-5)


class PrecisionModule(LinearModule):
    """Records the dtype of the forward pass in training."""

    def loss(self, batch):
        x, y = batch
        pred = self.linear(x).squeeze(-1)
        if self.training:
            self.seen_dtype = pred.dtype
        loss = ((pred.float() - y) ** 2).mean()
        return {"loss": loss}


class PrecisionToy(ToyRegression):
    _module_cls = PrecisionModule


def test_explicit_zero_settings_win_over_the_config():
    """``train(lr=0.0, patience=0)``: explicit falsy values are used, not replaced by the config (lr 0.1)."""
    adata = make_adata()
    ToyRegression.setup_anndata(adata)
    model = ToyRegression(adata, max_epochs=5)
    w0 = model.module.linear.weight.detach().clone()
    model.train(lr=0.0, patience=0, enable_progress_bar=False)
    torch.testing.assert_close(model.module.linear.weight.detach(), w0, rtol=0, atol=0)
    assert len(model.history) == 2  # flat val loss, patience 0: stops at the first epoch without improvement
    bad_settings = [("max_epochs", 0, "a positive integer"), ("batch_size", 0, "a positive integer"),
                    ("patience", -1, "an integer >= 0"), ("max_epochs", 2.5, "a positive integer"),
                    ("batch_size", True, "a positive integer")]  # fmt: skip
    for name, bad, expected in bad_settings:  # 2.5 epochs were truncated to 2, a batch of True was 1
        with pytest.raises(ValueError, match=f"{name}: expected {expected}, got {bad!r}"):
            model.train(enable_progress_bar=False, **{name: bad})
    model.train(max_epochs=2.0, enable_progress_bar=False)  # an integral float is a count (e.g. from arithmetic)
    assert len(model.history) == 2


def test_epoch_means_are_weighted_by_batch_size():
    """lr=0 keeps the initial weights, so the epoch means are the losses of the whole training / validation sets."""
    adata = make_adata()
    ToyRegression.setup_anndata(adata)
    model = ToyRegression(adata, lr=0.0, max_epochs=1)
    # 192 training obs in batches of 40 (4 x 40 + 32), 64 validation obs (40 + 24): an unweighted mean differs
    train_dl, val_dl = model._dataloaders(40, None, 0)
    with torch.no_grad():
        expected = {
            f"{prefix}_{key}": value.item()
            for prefix, dl in (("train", train_dl), ("val", val_dl))
            for key, value in model.module.loss(dl.dataset.tensors).items()
            if key != "vector"
        }
    model.train(batch_size=40, enable_progress_bar=False)
    got = model.history.iloc[0].to_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5), key


def test_no_validation_never_stops_early():
    adata = make_adata()
    ToyRegression.setup_anndata(adata)
    # a flat training loss would stop training after one epoch if early stopping watched it
    model = ToyRegression(adata, lr=0.0, max_epochs=4, patience=0).train(validation=0.0, enable_progress_bar=False)
    assert len(model.history) == 4 and model.is_trained


def test_precision_reaches_the_trainer():
    adata = make_adata()
    PrecisionToy.setup_anndata(adata)
    for precision, dtype in ((None, torch.float32), ("bf16-mixed", torch.bfloat16)):
        model = PrecisionToy(adata, max_epochs=1).train(precision=precision, enable_progress_bar=False)
        assert model.module.seen_dtype == dtype, precision


class TrainingModes(pl.Callback):
    """Records whether the network is in training mode at every training step."""

    def __init__(self):
        self.modes = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.modes.append(all(m.training for m in pl_module.module.modules()))


def test_training_again_or_after_load_runs_in_train_mode(tmp_path):
    """train() leaves the model in eval mode and load() returns it so; training further must switch back
    (Lightning keeps the modes it finds: dropout would stay off and batch norm would use frozen statistics)."""
    adata = make_adata()
    ToyRegression.setup_anndata(adata)
    model = ToyRegression(adata, max_epochs=2)
    for _ in range(2):
        modes = TrainingModes()
        model.train(callbacks=[modes], enable_progress_bar=False)
        assert len(modes.modes) == 12 and all(modes.modes)
        assert not model.module.training
    model.save(tmp_path / "m")
    loaded = ToyRegression.load(tmp_path / "m", data=adata)
    modes = TrainingModes()
    loaded.train(callbacks=[modes], enable_progress_bar=False)
    assert len(modes.modes) == 12 and all(modes.modes)
    # one callback (not in a list) and None, as Lightning's Trainer takes them: "Value after * must be an iterable"
    modes = TrainingModes()
    loaded.train(callbacks=modes, enable_progress_bar=False)
    assert len(modes.modes) == 12 and all(modes.modes)
    loaded.train(callbacks=None, enable_progress_bar=False)


def test_nan_at_the_first_step_leaves_an_untrained_model():
    adata = make_adata()
    NaNToy.setup_anndata(adata)
    model = NaNToy(adata)
    model.module.nan_after = 0
    with pytest.raises(FloatingPointError, match=r"epoch 0, batch 0 .*no checkpoint was saved before it"):
        model.train(enable_progress_bar=False)
    assert not model.is_trained and model.history is None


def test_nan_at_the_first_step_does_not_restore_an_earlier_runs_best_checkpoint(tmp_path):
    """A NaN before this run saved anything, in a `checkpoint_dir` holding another run's best.ckpt: those weights
    (here of another model class) were loaded and the model was marked trained."""
    adata = make_adata()
    ToyRegression.setup_anndata(adata)
    ToyRegression(adata, max_epochs=1).train(checkpoint_dir=tmp_path, enable_progress_bar=False)
    adata = make_adata()
    NaNToy.setup_anndata(adata)
    model = NaNToy(adata)
    model.module.nan_after = 0
    initial = {k: v.clone() for k, v in model.module.state_dict().items()}
    with pytest.raises(FloatingPointError, match=r"epoch 0, batch 0 .*no checkpoint was saved before it"):
        model.train(checkpoint_dir=tmp_path, enable_progress_bar=False)
    assert not model.is_trained
    for name, value in model.module.state_dict().items():
        torch.testing.assert_close(value, initial[name], rtol=0, atol=0)


@pytest.mark.parametrize("stop", [{"max_steps": 0}, {"max_time": {"seconds": 0}}, {"limit_train_batches": 0}])
def test_a_trainer_limit_that_stops_before_any_step_leaves_an_untrained_model(stop):
    """``max_steps=0`` / ``max_time=0`` / ``limit_train_batches=0`` ran no step, and the model was marked trained
    (predictions from random weights without a word)."""
    adata = make_adata()
    ToyRegression.setup_anndata(adata)
    model = ToyRegression(adata)
    initial = {k: v.clone() for k, v in model.module.state_dict().items()}
    with pytest.warns(UserWarning, match="no training step ran .* unchanged and the model is not trained"):
        model.train(enable_progress_bar=False, **stop)
    assert not model.is_trained and model.history is None
    for name, value in model.module.state_dict().items():
        torch.testing.assert_close(value, initial[name], rtol=0, atol=0)
    # a trained model stays trained (its weights are the trained ones)
    model.train(enable_progress_bar=False, max_epochs=2)
    with pytest.warns(UserWarning, match=r"no training step ran .* the weights are unchanged\.$"):
        model.train(enable_progress_bar=False, **stop)
    assert model.is_trained


def test_max_steps_inside_the_first_epoch_keeps_the_last_steps_weights_with_a_warning():
    """Ending inside the first epoch (before any validation) was Lightning's early-stopping error about a missing
    ``val_loss``; now the steps run, a warning says there was no checkpoint, and the model is trained."""
    adata = make_adata()
    ToyRegression.setup_anndata(adata)
    model = ToyRegression(adata, batch_size=16)
    initial = model.module.linear.weight.detach().clone()
    with pytest.warns(UserWarning, match=r"training stopped after 3 step\(s\) without a `val_loss`"):
        model.train(enable_progress_bar=False, max_steps=3)
    assert model.is_trained and list(model.history.index) == [0] and "val_loss" not in model.history
    assert not torch.equal(model.module.linear.weight, initial)


def test_modes_after_train_and_inference():
    adata = make_adata()
    ToyRegression.setup_anndata(adata)
    model = ToyRegression(adata, max_epochs=1).train(enable_progress_bar=False)
    assert not model.module.training  # trained models are left in eval mode
    model.module.train()
    seen = model._inference([torch.zeros(2, N_VARS)], lambda m, b: torch.tensor(m.training))
    assert seen == [torch.tensor(False)] and model.module.training  # eval inside, the caller's mode restored after
    out = model._inference([(torch.zeros(2, N_VARS), [torch.ones(1)], {"k": torch.ones(3)})], lambda m, b: b)
    assert type(out[0]) is tuple and type(out[0][1]) is list and out[0][2]["k"].shape == (3,)


def test_construction_is_seeded_and_leaves_the_global_rng_alone():
    adata = make_adata()
    ToyRegression.setup_anndata(adata)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b, c = ToyRegression(adata, seed=5), ToyRegression(adata, seed=5), ToyRegression(adata, seed=6)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(a.module.linear.weight, b.module.linear.weight, rtol=0, atol=0)
    assert not torch.equal(a.module.linear.weight, c.module.linear.weight)


def test_registry_is_plain_json_and_per_class():
    adata = make_adata()
    ToyRegression.setup_anndata(adata)
    OtherToy._register(adata, {"n": np.int64(3), "f": np.float32(0.5), "t": (1, "a"), "idx": pd.Index(["x"])})
    assert OtherToy._read_registry(adata) == {"n": 3, "f": 0.5, "t": [1, "a"], "idx": ["x"]}
    assert ToyRegression._read_registry(adata)["target_key"] == "y"  # the other class's setup is kept
    with pytest.raises(TypeError, match=r"registry\['d'\]: keys must be str, got 1"):
        OtherToy._register(adata, {"d": {1: 2}})
    with pytest.raises(ValueError, match=r"registry\['x'\]: non-finite float nan"):
        OtherToy._register(adata, {"x": float("nan")})
    with pytest.raises(ValueError, match="non-finite float inf"):
        ToyRegression(adata, lr=float("inf"))
    with pytest.raises(TypeError, match="object is not JSON-able"):
        OtherToy._register(adata, {"o": object()})


def test_find_adata_in_spatialdata():
    import spatialdata as sd

    a, b = make_adata(), make_adata(seed=1)
    sdata = sd.SpatialData(tables={"a": a, "b": b})
    with pytest.raises(ValueError, match="No table of the SpatialData is set up for ToyRegression"):
        ToyRegression(sdata)
    ToyRegression.setup_sdata(sdata, table="a")
    ToyRegression.setup_sdata(sdata, table="b")
    with pytest.raises(ValueError, match=r"Several tables .* \['a', 'b'\]"):
        ToyRegression(sdata)


def test_save_load_edge_cases(tmp_path):
    import spatialdata as sd
    from safetensors.torch import save_file

    adata = make_adata()
    ToyRegression.setup_anndata(adata)
    # an untrained model stays untrained; a history with NaN (validation every 2nd epoch) round-trips as NaN
    untrained = ToyRegression(adata)
    untrained.save(tmp_path / "u")
    assert not ToyRegression.load(tmp_path / "u").is_trained
    model = ToyRegression(adata, max_epochs=2).train(check_val_every_n_epoch=2, enable_progress_bar=False)
    assert np.isnan(model.history.loc[0, "val_loss"]) and np.isfinite(model.history.loc[1, "val_loss"])
    model.save(tmp_path / "m")
    loaded = ToyRegression.load(tmp_path / "m")
    pd.testing.assert_frame_equal(loaded.history, model.history)
    assert not loaded.module.training  # loaded models predict in eval mode
    with pytest.raises(ValueError, match="`save_data=True` but the model has no data"):
        loaded.save(tmp_path / "nodata", save_data=True)
    assert not (tmp_path / "nodata").exists()
    # data given as a SpatialData whose table was never set up: the default table gets the saved registry
    sdata = sd.SpatialData(tables={"table": make_adata(seed=2)})
    loaded = ToyRegression.load(tmp_path / "m", data=sdata)
    assert loaded.adata is sdata.tables["table"] and ToyRegression._read_registry(loaded.adata) is not None
    # weights missing a tensor (another architecture's file): refused, not silently half-initialised
    w = loaded.module.state_dict()
    save_file({"linear.weight": w["linear.weight"].contiguous()}, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ValueError, match="does not fit the ToyRegression"):
        ToyRegression.load(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="not a saved model"):
        ToyRegression.load(tmp_path / "m")
    # a checkpoint of a class that is not defined (its module not imported)
    attrs = json.loads((tmp_path / "u" / "attr.json").read_text())
    (tmp_path / "u" / "attr.json").write_text(json.dumps({**attrs, "model": "Gone", "model_class": "x.Gone"}))
    with pytest.raises(ValueError, match=r"'Gone' \(saved from x.Gone\) is not defined"):
        BaseModel.load(tmp_path / "u")


def test_parse_device_and_lightning_tips():
    import logging

    from scst.models._base import _DropTips, _parse_device

    assert _parse_device("cpu", 1) == torch.device("cpu")
    assert _parse_device("gpu") == _parse_device("cuda", "auto") == torch.device("cuda", 0)
    assert _parse_device("cuda", 1) == torch.device("cuda", 1)
    assert _parse_device("gpu", "cuda:2") == torch.device("cuda", 2)
    assert _parse_device("mps") == torch.device("mps", 0)
    assert _parse_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    with pytest.raises(ValueError, match="`accelerator` must be"):
        _parse_device("tpu")

    def record(msg):
        return logging.LogRecord("x", logging.INFO, "", 0, msg, None, None)

    assert not _DropTips().filter(record("💡 Tip: try LitServe"))
    assert _DropTips().filter(record("GPU available: False"))


class _KeepsLastAndRemovesBest(pl.Callback):
    """At the end of training: note the weights of the last epoch, then delete the best checkpoint."""

    def on_train_end(self, trainer, pl_module):
        self.last = {k: v.detach().clone() for k, v in pl_module.module.state_dict().items()}
        self.best = trainer.checkpoint_callback.best_model_path
        Path(self.best).unlink()


def test_a_best_checkpoint_removed_before_restoring_keeps_the_last_epochs_weights_with_one_warning():
    """The one warning says the checkpoint is gone; it was followed by a second one blaming `max_steps`/`max_time`
    for a run that had checkpointed every epoch."""
    adata = make_adata()
    ToyRegression.setup_anndata(adata)
    model = ToyRegression(adata, max_epochs=3)
    spy = _KeepsLastAndRemovesBest()
    with pytest.warns(UserWarning) as record:
        model.train(callbacks=[spy], enable_progress_bar=False)
    ours = [str(w.message) for w in record if w.filename == __file__]  # not Lightning's / torch's own
    assert len(ours) == 1, ours
    assert re.match(r"The best checkpoint '.*best\.ckpt' is gone .* weights of the last epoch", ours[0])
    assert spy.best.endswith("best.ckpt") and model.is_trained and len(model.history) == 3
    for name, value in model.module.state_dict().items():
        torch.testing.assert_close(value, spy.last[name], rtol=0, atol=0)


class _RemovesBestOnError(pl.Callback):
    """When training fails: delete the best checkpoint before ``train`` can restore it."""

    def on_exception(self, trainer, pl_module, exception):
        self.best = trainer.checkpoint_callback.best_model_path
        Path(self.best).unlink()


def test_a_nan_with_the_best_checkpoint_gone_says_so_not_that_none_was_saved():
    """Epochs 0-2 were checkpointed, then the file vanished: the error said 'no checkpoint was saved before it'."""
    adata = make_adata()
    NaNToy.setup_anndata(adata)
    model = NaNToy(adata)
    spy = _RemovesBestOnError()
    with (
        pytest.warns(UserWarning, match=r"The best checkpoint '.*best\.ckpt' is gone"),
        pytest.raises(
            FloatingPointError,
            match=r"nan at epoch 3, batch 2 .*best checkpoint was gone, so the weights "
            r"are those of the last finite step\.\)$",
        ),
    ):
        model.train(callbacks=[spy], enable_progress_bar=False)
    assert spy.best.endswith("best.ckpt") and list(model.history.index) == [0, 1, 2] and not model.is_trained
    assert all(torch.isfinite(v).all() for v in model.module.state_dict().values())


def test_inference_in_bf16_returns_float32_outputs():
    """``_inference(precision="bf16")``: the network runs under CPU autocast, its bf16 output comes back as float32
    (the same values to bf16 rounding); non-tensor parts of a batch pass through unchanged."""
    adata = make_adata()
    ToyRegression.setup_anndata(adata)
    model = ToyRegression(adata)
    x = torch.as_tensor(adata.X[:8])
    (plain,) = model._inference([x], lambda m, b: m(b))
    (half,) = model._inference([x], lambda m, b: (m(b), m(b).dtype), precision="bf16")
    assert half[1] == torch.bfloat16 and half[0].dtype == torch.float32
    torch.testing.assert_close(half[0], plain, rtol=2e-2, atol=2e-2)
    (passed,) = model._inference([(x, "tag", 3)], lambda m, b: b)
    assert passed[1:] == ("tag", 3)


class NoLossModule(torch.nn.Module):
    def forward(self, x):
        return x


class NoLossToy(ToyRegression):
    _module_cls = NoLossModule

    def _module_kwargs(self):
        return {}


class NoSetup(BaseModel):
    _module_cls = LinearModule

    def _module_kwargs(self):
        return {}

    def _dataloaders(self, batch_size, validation, seed, **kw):
        return None, None


class SetupWithoutRegister(NoSetup):
    @classmethod
    def setup_anndata(cls, adata):
        pass


def test_base_model_contract_checks_name_the_culprit():
    import spatialdata as sd

    adata = make_adata()
    with pytest.raises(TypeError, match="`registry` must be a dict, got list"):
        ToyRegression._register(adata, [("n_features", 4)])
    with pytest.raises(TypeError, match="`data` must be AnnData, MuData or SpatialData, got ndarray"):
        ToyRegression(adata.X)
    sdata = sd.SpatialData(tables={"table": adata})
    with pytest.raises(TypeError, match="NoSetup defines neither `setup_sdata` nor `setup_anndata`"):
        NoSetup.setup_sdata(sdata)
    with pytest.raises(RuntimeError, match=r"SetupWithoutRegister.setup_anndata did not call `_register`"):
        SetupWithoutRegister.setup_sdata(sdata)
    NoLossToy.setup_anndata(adata)
    with pytest.raises(TypeError, match="NoLossModule \\(the `_module_cls` of NoLossToy\\) must define `loss`"):
        NoLossToy(adata)


class ParameterFree(LinearModule):
    def __init__(self):
        torch.nn.Module.__init__(self)

    def forward(self, x):
        return x.sum(-1)


class ParameterFreeToy(ToyRegression):
    """No parameters and no gene panel in its registry: it runs on the CPU and takes any genes."""

    _module_cls = ParameterFree

    @classmethod
    def setup_anndata(cls, adata):
        cls._register(adata, {"n_features": adata.n_vars})

    def _module_kwargs(self):
        return {}

    def _tensors(self, adata):
        return torch.as_tensor(np.asarray(adata.X), dtype=torch.float32), None


def test_a_model_without_parameters_or_gene_panel(tmp_path):
    adata = make_adata()
    ParameterFreeToy.setup_anndata(adata)
    model = ParameterFreeToy(adata)
    assert model.device == torch.device("cpu")
    model.save(tmp_path / "m")
    other = AnnData(np.array([[1.0, 2.0], [3.0, -4.0]], np.float32))  # other genes, other count
    loaded = ParameterFreeToy.load(tmp_path / "m", data=other)
    np.testing.assert_array_equal(loaded.predict(), [3.0, -1.0])


def test_a_checkpoint_of_a_class_defined_elsewhere_now_loads_by_its_unique_name(tmp_path):
    """``model_class`` names another module (the class moved since): the one class of that name is used."""
    adata = make_adata()
    ToyRegression.setup_anndata(adata)
    model = ToyRegression(adata)
    model.save(tmp_path / "m")
    attrs = json.loads((tmp_path / "m" / "attr.json").read_text())
    (tmp_path / "m" / "attr.json").write_text(json.dumps({**attrs, "model_class": "old.place.ToyRegression"}))
    loaded = BaseModel.load(tmp_path / "m")
    assert type(loaded) is ToyRegression
    torch.testing.assert_close(loaded.module.linear.weight, model.module.linear.weight, rtol=0, atol=0)


def test_sanity_validation_is_not_recorded_as_an_epochs_validation():
    """``num_sanity_val_steps`` (a trainer argument, 0 by default) validates before epoch 0; with validation every
    2nd epoch, epoch 0 has no validation, so its ``val_loss`` must stay NaN, not the sanity pass's loss."""
    adata = make_adata()
    ToyRegression.setup_anndata(adata)
    model = ToyRegression(adata, max_epochs=2)
    model.train(check_val_every_n_epoch=2, num_sanity_val_steps=1, enable_progress_bar=False)
    assert np.isnan(model.history.loc[0, "val_loss"]) and np.isfinite(model.history.loc[1, "val_loss"])


def test_repr_of_a_model_without_data_and_overwrite_beside_data_read_from_disk(tmp_path):
    """A model loaded without data has no data line; ``overwrite=True`` is refused only when the folder holds the
    data read lazily from disk, not when the data lives elsewhere."""
    import spatialdata as sd

    sd.SpatialData(tables={"table": make_adata()}).write(tmp_path / "data.zarr")
    sdata = sd.read_zarr(tmp_path / "data.zarr")
    ToyRegression.setup_sdata(sdata)
    model = ToyRegression(sdata, max_epochs=1).train(enable_progress_bar=False)
    assert f"Data: {N_OBS} obs × {N_VARS} vars" in repr(model)
    model.save(tmp_path / "m")
    model.save(tmp_path / "m", overwrite=True)
    loaded = ToyRegression.load(tmp_path / "m")
    assert loaded.adata is None
    assert repr(loaded).splitlines()[-1] == "Training status: Trained" and "Data:" not in repr(loaded)
    np.testing.assert_array_equal(loaded.predict(make_adata()), model.predict(make_adata()))
