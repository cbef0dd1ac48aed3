"""A tiny BaseModel regressing ``obs["y"]`` on ``X``, shared by the checkpoint, resume and DDP tests.

Each test module subclasses :class:`ToyRegressor` under its own class name (``BaseModel.load`` dispatches by the
saved class) and gives it a network, a configuration and its data loaders.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from torch import nn
from torch.utils.data import DataLoader

from scst.models._base import BaseModel

W_TRUE = np.array([1.5, -2.0, 0.5, 3.0], dtype=np.float32)


class Linear(nn.Module):
    """``y = w·x + b`` with a mean-squared-error loss."""

    def __init__(self, n_features: int):
        super().__init__()
        self.linear = nn.Linear(n_features, 1)

    def forward(self, x):
        return self.linear(x).squeeze(-1)

    def loss(self, batch):
        x, y = batch
        return {"loss": ((self(x) - y) ** 2).mean()}


def linear_adata(n: int = 128, noise: float = 0.1, seed: int = 0, genes=("g0", "g1", "g2", "g3")) -> AnnData:
    """``n`` cells with standard-normal ``X`` and ``obs["y"] = X[:, :4] @ W_TRUE + 0.7`` (+ Gaussian noise)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, len(genes))).astype(np.float32)
    y = x[:, :4] @ W_TRUE[: min(4, len(genes))] + 0.7
    if noise:
        y = y + noise * rng.standard_normal(n).astype(np.float32)
    return AnnData(
        X=x, obs=pd.DataFrame({"y": y}, index=[f"c{i}" for i in range(n)]), var=pd.DataFrame(index=list(genes))
    )


class ToyRegressor(BaseModel):
    """Registry: the genes of ``X``; ``predict`` runs the network over ``X`` through ``BaseModel._inference``."""

    _module_cls = Linear

    @classmethod
    def setup_anndata(cls, adata: AnnData) -> None:
        cls._register(adata, {"n_features": adata.n_vars, "var_names": adata.var_names})

    def _module_kwargs(self):
        return {"n_features": self.registry["n_features"]}

    def _x(self, adata):
        return torch.as_tensor(np.asarray(adata[:, self.registry["var_names"]].X), dtype=torch.float32)

    def _xy(self):
        return self._x(self.adata), torch.as_tensor(self.adata.obs["y"].to_numpy(), dtype=torch.float32)

    def predict(self, adata=None):
        loader = DataLoader(self._x(self.adata if adata is None else adata), batch_size=64)
        return torch.cat(self._inference(loader, lambda m, b: m(b))).numpy()
