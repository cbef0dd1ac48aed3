"""Expression-programme output of the heads: the formula, the linear path's projection, zero columns, bad axes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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


def _spatial(**kw) -> SpatialHeadModule:
    return SpatialHeadModule(in_dim=5, n_genes=3, dim=8, vit_heads=2, hg_hidden=4, lstm_hidden=8, **kw)


@pytest.mark.parametrize("make", [lambda: MLPHeadModule(in_dim=5, n_genes=3, hidden=16, ridge_skip=True),
                                  lambda: _spatial(use_ham=False, ridge_skip=True)])  # fmt: skip
def test_ridge_skip_starts_exactly_at_the_linear_path(make):
    """With ridge_skip the output layer starts at zero, so before training pred == skip(x) = x W^T + b."""
    torch.manual_seed(0)
    m = make().eval()
    w, b = torch.randn(3, 5), torch.tensor([1.0, -2.0, 0.5])
    with torch.no_grad():
        m.skip.weight.copy_(w)
        m.skip.bias.copy_(b)
    x = torch.randn(7, 5)
    torch.testing.assert_close(m(x)["pred"], x @ w.T + b)


def test_mlp_loss_is_the_mean_squared_error():
    m = MLPHeadModule(in_dim=2, n_genes=2, hidden=4, ridge_skip=True).eval()
    with torch.no_grad():
        m.skip.bias.copy_(torch.tensor([1.0, 2.0]))  # pred = (1, 2) for every spot
    out = m.loss({"x": torch.zeros(3, 2), "target": torch.zeros(3, 2)})
    torch.testing.assert_close(out["loss"], torch.tensor(2.5))  # (1 + 4) / 2, not the L1 1.5
    torch.testing.assert_close(out["mse"], torch.tensor(2.5))


def test_spatial_loss_weights_zinb_and_hidden_is_the_step_mean():
    torch.manual_seed(0)
    m = _spatial(use_ham=False, zinb_weight=0.5).eval()
    x = torch.randn(6, 5)
    batch = {"x": x, "target": torch.zeros(6, 3), "counts": torch.ones(6, 3), "size_factors": torch.ones(6)}
    out = m.loss(batch)
    assert out["zinb"] > 0
    torch.testing.assert_close(out["loss"], out["mse"] + 0.5 * out["zinb"])
    # hidden = mean over the LSTM's steps [LN(z0), LN(z1)] (not its last step)
    with torch.no_grad():
        z0 = m.input(x)
        z1 = m.vit(z0)
        seq, _ = m.lstm(torch.stack([m.step_norms[0](z0), m.step_norms[1](z1)], 0))
        torch.testing.assert_close(m(x)["hidden"], seq.mean(0))


def test_bad_head_inputs():
    for make in (MLPHeadModule, _spatial):
        kw = {"in_dim": 5, "n_genes": 3} if make is MLPHeadModule else {}
        with pytest.raises(ValueError, match="dropout"):
            make(dropout=1.0, **kw)
        with pytest.raises(ValueError, match="x is empty"):
            make(**kw, **({} if make is MLPHeadModule else {"use_ham": False}))(torch.zeros(0, 5))
    # hyperedges are numbered 0..n-1: index n (one past the last spot) is rejected
    m = _spatial()
    hei = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 4]])
    with pytest.raises(ValueError, match="hyperedge_index refers"):
        m(torch.randn(4, 5), hei)


def test_mlp_prediction_is_the_gelu_mlp_plus_the_linear_path():
    """pred = Linear(GELU(Linear(x))) + skip(x) in eval mode, computed by hand with a non-zero output layer."""
    torch.manual_seed(0)
    m = MLPHeadModule(in_dim=4, n_genes=3, hidden=6, dropout=0.5, ridge_skip=True).eval()
    first, last = m.net[1], m.net[-1]
    with torch.no_grad():
        last.weight.normal_()
        last.bias.normal_()
        m.skip.weight.normal_()
        m.skip.bias.normal_()
    x = torch.randn(5, 4)
    with torch.no_grad():
        expected = (
            F.gelu(x @ first.weight.T + first.bias) @ last.weight.T + last.bias + x @ m.skip.weight.T + m.skip.bias
        )
    torch.testing.assert_close(m(x)["pred"], expected)


def test_spatial_head_with_ham_and_zinb_outputs_by_hand():
    """use_ham: hidden is the LSTM's step mean over [LN(z0), LN(z1), LN(HAM(z1))]; the ZINB heads are exp, softplus
    and sigmoid of linear maps of hidden, and the ZINB term is the NLL of the counts with the batch's size factors."""
    from scst.nn._layers import zinb_nll

    torch.manual_seed(0)
    m = _spatial(use_ham=True, zinb_weight=0.3).eval()
    x = torch.randn(6, 5)
    hei = torch.tensor([[0, 1, 2, 1, 3, 4, 5, 4], [0, 0, 0, 1, 1, 2, 2, 3]])
    out = m(x, hei)
    with torch.no_grad():
        z0 = m.input(x)
        z1 = m.vit(z0)
        steps = [m.step_norms[0](z0), m.step_norms[1](z1), m.step_norms[2](m.ham(z1, hei))]
        h = m.lstm(torch.stack(steps, 0))[0].mean(0)
        torch.testing.assert_close(out["hidden"], h)
        torch.testing.assert_close(out["zinb_mean"], torch.exp(m.zinb_mean(h)))
        torch.testing.assert_close(out["zinb_disp"], F.softplus(m.zinb_disp(h)))
        torch.testing.assert_close(out["zinb_pi"], torch.sigmoid(m.zinb_pi(h)))
        counts = torch.tensor(np.random.default_rng(0).poisson(3.0, (6, 3)), dtype=torch.float32)
        sf = torch.tensor([0.5, 1.0, 2.0, 1.5, 0.8, 3.0])
        batch = {"x": x, "hyperedge_index": hei, "target": torch.zeros(6, 3), "counts": counts, "size_factors": sf}
        loss = m.loss(batch)
        zinb = zinb_nll(counts, out["zinb_mean"], out["zinb_disp"], out["zinb_pi"], size_factors=sf)
        torch.testing.assert_close(loss["zinb"], zinb)
        assert not torch.allclose(zinb, zinb_nll(counts, out["zinb_mean"], out["zinb_disp"], out["zinb_pi"]))
        torch.testing.assert_close(loss["mse"], (out["pred"] ** 2).mean())
        torch.testing.assert_close(loss["loss"], loss["mse"] + 0.3 * zinb)


def test_bad_head_settings_and_shapes_are_named():
    with pytest.raises(ValueError, match="hidden must be a positive int, got 0"):
        MLPHeadModule(in_dim=5, n_genes=3, hidden=0)
    with pytest.raises(ValueError, match="n_genes must be a positive int, got True"):
        MLPHeadModule(in_dim=5, n_genes=True)
    with pytest.raises(ValueError, match=r"vit_heads \(3\) must divide dim \(8\)"):
        SpatialHeadModule(in_dim=5, n_genes=3, dim=8, vit_heads=3)
    with pytest.raises(ValueError, match="zinb_weight must be non-negative"):
        _spatial(zinb_weight=-0.1)
    m = MLPHeadModule(in_dim=5, n_genes=3, hidden=4)
    with pytest.raises(ValueError, match=r"x must be a \(n, 5\) float tensor of spot embeddings, got \(4, 6\)"):
        m(torch.zeros(4, 6))
    with pytest.raises(ValueError, match=r"batch\['target'\] must have shape \(4, 3\), got \(4, 1\)"):
        m.loss({"x": torch.zeros(4, 5), "target": torch.zeros(4, 1)})
    with pytest.raises(ValueError, match="hyperedge_index: a"):
        _spatial()(torch.zeros(4, 5))


@pytest.mark.parametrize("kw", [{}, {"ridge_skip": True, "n_programs": 2}])
def test_spatial_head_float64_and_permuted_spots(kw):
    """SpatialHeadModule.double() runs (its LSTM input was cast by a fixed .float() → dtype error) and matches
    float32; permuting the spots (hyperedge index relabelled) permutes every output."""
    torch.manual_seed(0)
    m = SpatialHeadModule(in_dim=5, n_genes=3, dim=8, vit_heads=2, hg_hidden=4, lstm_hidden=8, **kw).eval()
    n = 7
    x = torch.randn(n, 5)
    hei = torch.stack(
        [torch.arange(n).repeat_interleave(2), torch.stack([torch.arange(n), (torch.arange(n) + 1) % n], 1).reshape(-1)]
    )
    perm = torch.randperm(n)
    inv = torch.argsort(perm)
    with torch.no_grad():
        out = m(x, hei)
        out_p = m(x[perm], inv[hei])
        out64 = copy.deepcopy(m).double()(x.double(), hei)
    for key, value in out.items():
        torch.testing.assert_close(out_p[key], value[perm], atol=1e-5, rtol=1e-5)
        assert out64[key].dtype == torch.float64
        torch.testing.assert_close(out64[key].float(), value, atol=1e-4, rtol=1e-4)


def test_spatial_head_without_zinb_has_no_count_outputs_and_its_loss_is_the_mse():
    """``use_zinb=False``: no ZINB layers or outputs, the batch needs no counts, and ``loss == mse`` (zinb 0)."""
    m = _spatial(use_ham=False, use_zinb=False, ridge_skip=True).eval()
    assert m.zinb_mean is None and m.zinb_disp is None and m.zinb_pi is None
    with torch.no_grad():
        m.skip.weight.zero_()
        m.skip.bias.copy_(torch.tensor([1.0, 2.0, 0.0]))  # pred = (1, 2, 0) for every spot
    x = torch.randn(4, 5)
    assert not any(k.startswith("zinb") for k in m(x))
    out = m.loss({"x": x, "target": torch.zeros(4, 3)})
    torch.testing.assert_close(out["mse"], torch.tensor(5.0 / 3))
    torch.testing.assert_close(out["loss"], out["mse"])
    assert out["zinb"].item() == 0.0


@pytest.mark.parametrize("name", ["in_dim", "dim", "vit_depth", "vit_heads", "hg_hidden", "lstm_layers", "lstm_hidden"])
@pytest.mark.parametrize("value", [0, 2.0, True])
def test_spatial_head_sizes_must_be_positive_ints(name, value):
    kw = {"in_dim": 5, "n_genes": 3, "dim": 8, "vit_heads": 2, "hg_hidden": 4, "lstm_hidden": 8, name: value}
    with pytest.raises(ValueError, match=rf"{name} must be a positive int, got {value!r}"):
        SpatialHeadModule(**kw)
