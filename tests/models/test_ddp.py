"""Lightning DDP on CPU with 2 gloo processes: trained weights, history and best checkpoint come back."""

from __future__ import annotations

from pathlib import Path

import _toys as toys  # tests/models is on pytest's pythonpath (pyproject.toml): spawned DDP workers import it
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")
W_TRUE = toys.W_TRUE


class DDPToy(toys.ToyRegressor):
    _default_config = {"lr": 0.2, "batch_size": 16, "max_epochs": 8}

    def _dataloaders(self, batch_size, validation, seed, **kw):
        x, y = self._xy()
        train = DataLoader(TensorDataset(x[:192], y[:192]), batch_size=batch_size, shuffle=True)
        return train, DataLoader(TensorDataset(x[192:], y[192:]), batch_size=batch_size)


class Ranks(pl.Callback):
    """Counts, in the training processes, the training samples each rank saw (gathered; its state comes back)."""

    def __init__(self):
        self.local = 0
        self.seen: list[int] = []
        self.world_size = 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.local += len(batch[0])

    def on_train_end(self, trainer, pl_module):
        self.world_size = trainer.world_size
        self.seen = pl_module.all_gather(torch.tensor(self.local)).reshape(-1).tolist()

    def state_dict(self):
        return {"seen": list(self.seen), "world_size": self.world_size}

    def load_state_dict(self, state):
        self.seen, self.world_size = list(state["seen"]), state["world_size"]


def _adata(n=256):  # 192 training, 64 validation spots
    a = toys.linear_adata(n, noise=0.1)
    DDPToy.setup_anndata(a)
    return a


@pytest.mark.parametrize("strategy", [pytest.param("ddp_spawn", marks=pytest.mark.slow), "ddp_notebook"])
def test_ddp_two_gloo_processes_on_cpu(strategy, tmp_path, monkeypatch):

    # Spawned workers unpickle DDPToy by its module name (tests.models.test_ddp): they need the repository root on
    # sys.path, which `python -m pytest` adds and the `pytest` script (nox, CI) does not.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    a = _adata()
    m = DDPToy(a)
    assert not m.is_trained
    ranks = Ranks()
    m.train(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        checkpoint_dir=tmp_path,
        callbacks=[ranks],
        enable_progress_bar=False,
    )
    # two processes trained, each on its half of the 192 training spots every epoch
    assert ranks.world_size == 2 and ranks.seen == [96 * 8, 96 * 8]
    # the weights, is_trained and the history of every epoch are back in this process
    assert m.is_trained
    assert list(m.history.index) == list(range(8))
    assert {"train_loss", "val_loss"} <= set(m.history.columns) and m.history.notna().all().all()
    assert m.history["val_loss"].iloc[-1] < 0.1 * m.history["val_loss"].iloc[0]
    pred = m.predict()
    assert np.corrcoef(pred, a.obs["y"])[0, 1] > 0.9
    np.testing.assert_allclose(m.module.linear.weight.detach().numpy().ravel(), W_TRUE, atol=0.3)
    # the restored weights are those of the best epoch's checkpoint (the one with the lowest val_loss)
    best = torch.load(tmp_path / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    torch.testing.assert_close(m.module.linear.weight, best["module.linear.weight"])
    assert (tmp_path / "last.ckpt").is_file()


class Poison(pl.Callback):
    """Make the loss NaN from epoch 3 on (in every process)."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 3:
            with torch.no_grad():
                pl_module.module.linear.weight.fill_(float("nan"))


def test_nan_in_ddp_workers_is_a_floating_point_error(tmp_path):
    """As with one process: FloatingPointError naming the epoch, and the best weights of epochs 0-2 restored."""
    a = _adata()
    m = DDPToy(a)
    with pytest.raises(FloatingPointError, match="Training loss is nan at epoch 3.*restored the best checkpoint"):
        m.train(
            accelerator="cpu",
            devices=2,
            strategy="ddp_notebook",
            checkpoint_dir=tmp_path,
            callbacks=[Poison()],
            enable_progress_bar=False,
        )
    best = torch.load(tmp_path / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["epoch"] <= 2
    assert m.is_trained and torch.isfinite(m.module.linear.weight).all()
    torch.testing.assert_close(m.module.linear.weight, best["state_dict"]["module.linear.weight"])


class Crash(pl.Callback):
    """Raise an error other than a NaN (in every process) at epoch 1."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("worker crashed")


def test_another_error_in_ddp_workers_is_raised_as_it_is():
    """Only a worker's FloatingPointError becomes one in this process; other errors come as the workers' error."""
    m = DDPToy(_adata())
    with pytest.raises(torch.multiprocessing.ProcessRaisedException, match="RuntimeError: worker crashed"):
        m.train(accelerator="cpu", devices=2, strategy="ddp_notebook", callbacks=[Crash()], enable_progress_bar=False)
    assert not m.is_trained


def test_ddp_that_would_rerun_pytest_is_a_clear_error():
    """Lightning's "ddp" (also its choice for "auto") re-runs sys.argv: under pytest that would re-run the session."""
    a = _adata()
    for strategy in ("ddp", "auto"):
        with pytest.raises(ValueError, match="re-runs the calling script.*strategy='ddp_spawn'"):
            DDPToy(a).train(accelerator="cpu", devices=2, strategy=strategy, enable_progress_bar=False)


def test_single_device_strategy_with_two_devices_is_refused():
    a = _adata()
    with pytest.raises(ValueError, match=r"`devices=2` asks for 2 devices, but `strategy='single_device'`"):
        DDPToy(a).train(accelerator="cpu", devices=2, strategy="single_device", enable_progress_bar=False)


SCRIPT = """
import json, os, sys
import numpy as np, pandas as pd, torch
sys.path.insert(0, {tests!r})
from test_ddp import DDPToy, _adata

if __name__ == "__main__":
    a = _adata()
    m = DDPToy(a).train(accelerator="cpu", devices=2, strategy="ddp", enable_progress_bar=False)
    out = {{
        "rank": int(os.environ.get("LOCAL_RANK", 0)),
        "is_trained": m.is_trained,
        "epochs": list(m.history.index),
        "corr": float(np.corrcoef(m.predict(), a.obs["y"])[0, 1]),
        "weight": m.module.linear.weight.detach().numpy().ravel().tolist(),
    }}
    with open(os.path.join({out!r}, f"rank{{out['rank']}}.json"), "w") as f:
        json.dump(out, f)
"""


@pytest.mark.slow
def test_ddp_from_a_script(tmp_path):
    """Lightning's own "ddp" (re-run the script in every process) works from `python script.py`: every rank ends
    with the same trained weights and the full history."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for res in results:
        assert res["is_trained"] and res["epochs"] == list(range(8)) and res["corr"] > 0.9
    np.testing.assert_allclose(results[0]["weight"], results[1]["weight"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(results[0]["weight"], W_TRUE, atol=0.3)
