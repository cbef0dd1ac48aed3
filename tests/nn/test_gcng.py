from __future__ import annotations

import warnings

import pytest
import torch

from scst.nn._gcng import GCNGConv, GCNGNet, sparse_matmul
from scst.nn._train_step import train_step


def _graph(n: int = 12) -> torch.Tensor:
    a = (torch.rand(n, n, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    return a + a.T + torch.eye(n)


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_sparse_graph_under_cpu_bf16_autocast(layout):
    torch.manual_seed(0)
    dense = _graph()
    graph = dense.to_sparse() if layout == "coo" else dense.to_sparse_csr()
    x = torch.randn(12, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = sparse_matmul(graph, x)
        yb = sparse_matmul(graph, x.to(torch.bfloat16))
    assert y.dtype == torch.float32 and yb.dtype == torch.bfloat16
    torch.testing.assert_close(y, dense @ x)
    torch.testing.assert_close(yb.float(), dense @ x.to(torch.bfloat16).float(), rtol=2e-2, atol=2e-2)

    net = GCNGNet(12, hidden_channels=4, dense_units=8)
    net.set_graph(graph)
    batch = (torch.randn(3, 12, 2), torch.tensor([0, 1, 1]))
    ref = net(batch[0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = net(batch[0])
    torch.testing.assert_close(got.float(), ref, rtol=0.1, atol=0.1)
    out = train_step(net, batch, torch.optim.SGD(net.parameters(), lr=0.01), precision="bf16")
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize("layout", ["coo", "csc"])
def test_set_graph_stores_a_coo_or_csc_graph_as_csr_once(layout):
    """PyG's spmm converts a COO/CSC graph to CSR on every product and warns each time; set_graph converts it once."""
    torch.manual_seed(0)
    dense = _graph()
    graph = dense.to_sparse() if layout == "coo" else dense.to_sparse_csc()
    net = GCNGNet(12, hidden_channels=4, dense_units=8)
    net.set_graph(graph)
    assert net.graph.layout == torch.sparse_csr
    torch.testing.assert_close(net.graph.to_dense(), dense)
    x = torch.randn(3, 12, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = net(x)
    net.set_graph(dense)
    torch.testing.assert_close(got, net(x))  # the same network on the dense graph


@pytest.mark.parametrize(("c_in", "c_out"), [(2, 4), (5, 3)])
@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_conv_is_graph_times_signal_on_a_directed_graph(c_in, c_out, layout):
    """Z = L X W + b with L applied as given (not transposed), in both association orders ((L X) W and L (X W))."""
    torch.manual_seed(0)
    n = 6
    dense = torch.zeros(n, n)
    dense[0, 1], dense[1, 2], dense[2, 0], dense[3, 4], dense[5, 3] = 1.0, 2.0, 0.5, 3.0, -1.0  # directed edges
    graph = dense if layout == "dense" else dense.to_sparse_csr()
    conv = GCNGConv(c_in, c_out)
    x = torch.randn(n, 3, c_in)  # node-major batch of 3 signals
    out = conv(graph, x)
    assert out.shape == (n, 3, c_out)
    for b in range(3):
        want = dense @ x[:, b] @ conv.lin.weight.T + conv.lin.bias
        torch.testing.assert_close(out[:, b], want, rtol=1e-5, atol=1e-5)


def test_loss_accuracy_and_probabilities_by_hand():
    torch.manual_seed(0)
    net = GCNGNet(5, hidden_channels=3, dense_units=4)
    net.set_graph(_graph(5))
    x = torch.randn(4, 5, 2)
    logits = net(x)
    y = (logits > 0).float()
    y[3] = 1 - y[3]  # three of four right
    got = net.loss((x, y))
    p = torch.sigmoid(logits)
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    torch.testing.assert_close(got["loss"], bce, rtol=1e-5, atol=1e-6)
    assert got["accuracy"].item() == pytest.approx(0.75)
    torch.testing.assert_close(net.predict_proba(x), p)
    assert net(x[:1]).shape == (1,)  # a batch of one pair stays a batch


def test_gcngnet_input_checks_dropout_and_constant_signals():
    with pytest.raises(ValueError, match="n_layers"):
        GCNGNet(5, n_layers=0)
    with pytest.raises(ValueError, match="n_nodes"):
        GCNGNet(0)
    pooled = GCNGNet(5, hidden_channels=3, dense_units=4, readout="pool", standardize=True)
    with pytest.raises(ValueError, match="square"):
        pooled.set_graph(torch.ones(5, 4))
    pooled.set_graph(_graph(5).double())  # a float64 graph is cast to the weights' dtype
    assert pooled.graph.dtype == torch.float32
    with pytest.raises(ValueError, match=r"x: expected \(batch, 5, channels\)"):
        pooled(torch.rand(2, 4, 2))
    # standardize: a constant signal carries nothing and becomes 0 (not NaN)
    x = torch.rand(3, 5, 2)
    const = x.clone()
    const[..., 0] = 7.0
    zero = x.clone()
    zero[..., 0] = 0.0
    out = pooled(const)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, pooled(zero))
    # dropout before the dense layer: random in training mode, off in eval mode
    torch.manual_seed(0)
    drop = GCNGNet(5, hidden_channels=3, dense_units=4, dropout=0.5)
    drop.set_graph(_graph(5))
    x = torch.rand(8, 5, 2)
    assert not torch.allclose(drop(x), drop(x))
    drop.eval()
    torch.testing.assert_close(drop(x), drop(x))


def test_bad_readout_and_a_missing_graph_are_named():
    with pytest.raises(ValueError, match="readout: expected 'flatten' or 'pool', got 'mean'"):
        GCNGNet(5, readout="mean")
    net = GCNGNet(5, hidden_channels=3, dense_units=4)
    with pytest.raises(RuntimeError, match=r"GCNGNet has no graph matrix; call `set_graph\(L\)` or pass `graph`"):
        net(torch.zeros(2, 5, 2))
