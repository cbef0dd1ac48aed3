"""Expression-programme output of the heads: the formula, the linear path's projection, zero columns, bad axes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scst.nn import ExpressionPrograms, MLPHeadModule, SpatialHeadModule


def _axes(n_genes: int, k: int, seed: int = 0) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).normal(size=(n_genes, k)))[0]


def test_programmes_formula_by_hand():
    """pred = m + (u Aᵀ + ((b - m) / s) A Aᵀ) ⊙ s, checked on numbers; j < k axes leave the other scores unused."""
    torch.manual_seed(0)
    prog = ExpressionPrograms(n_genes=6, k=3)
    axes, center, scale = _axes(6, 2), np.arange(6.0), np.linspace(0.5, 2.0, 6)
    prog.set_axes(axes, center, scale)
    u, b = np.random.default_rng(1).normal(size=(4, 3)), np.random.default_rng(2).normal(size=(4, 6))
    out = prog(torch.tensor(u, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)).numpy()
    expected = center + (u[:, :2] @ axes.T + ((b - center) / scale) @ axes @ axes.T) * scale
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # the third score has a zero axis: changing it changes nothing
    u2 = u.copy()
    u2[:, 2] += 10.0
    np.testing.assert_allclose(prog(torch.tensor(u2, dtype=torch.float32)).numpy(),
                               prog(torch.tensor(u, dtype=torch.float32)).numpy(), atol=1e-6)  # fmt: skip
    # a linear path already in the programme space passes unchanged (the projection is idempotent)
    inside = center + (u[:, :2] @ axes.T) * scale
    np.testing.assert_allclose(prog(torch.zeros(4, 3), torch.tensor(inside, dtype=torch.float32)).numpy(), inside,
                               rtol=1e-5, atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("make", [
    lambda k: MLPHeadModule(in_dim=5, n_genes=8, hidden=16, ridge_skip=True, n_programs=k),
    lambda k: SpatialHeadModule(in_dim=5, n_genes=8, dim=16, vit_heads=4, hg_hidden=8, lstm_hidden=16,
                                use_ham=False, ridge_skip=True, n_programs=k),
])  # fmt: skip
def test_heads_predict_inside_the_programme_space(make):
    torch.manual_seed(0)
    m = make(3)
    m.programs.set_axes(_axes(8, 2), np.zeros(8), np.ones(8))
    with torch.no_grad():  # a random linear path and a non-zero output layer
        m.skip.weight.normal_()
        last = m.net[-1] if isinstance(m, MLPHeadModule) else m.gene_head[-1]
        assert last.out_features == 3
        last.weight.normal_()
    m.eval()
    pred = m(torch.randn(20, 5))["pred"].detach().numpy()
    sv = np.linalg.svd(pred, compute_uv=False)
    assert (sv > 1e-4 * sv[0]).sum() == 2  # rank = the two set axes
    assert "programs.axes" in m.state_dict()  # saved with the module
    assert "programs.axes" not in make(None).state_dict()  # one output per gene: unchanged module


def test_bad_programmes():
    with pytest.raises(ValueError, match=r"n_programs must be an int in \[1, n_genes=4\]"):
        ExpressionPrograms(4, 5)
    prog = ExpressionPrograms(4, 2)
    with pytest.raises(ValueError, match=r"axes must have shape \(4, j\) with 1 <= j <= 2"):
        prog.set_axes(np.zeros((4, 3)), np.zeros(4), np.ones(4))
    with pytest.raises(ValueError, match="scale positive"):
        prog.set_axes(_axes(4, 1), np.zeros(4), np.zeros(4))
