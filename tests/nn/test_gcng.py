from __future__ import annotations

import pytest
import torch

from scst.nn._gcng import GCNGNet, sparse_matmul
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
