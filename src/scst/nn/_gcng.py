"""GCNG layers (Yuan & Bar-Joseph, Genome Biol 2020): graph convolutions on one cell graph, batched over gene pairs.

Every gene pair is a graph signal on the *same* cell graph, so a batch of ``B`` pairs is one sparse–dense
product ``L @ [X_1 | … | X_B]`` over a ``cells × (channels·B)`` matrix — no loop over pairs and no copy of
the graph per pair. Torch only (``torch_geometric.utils.spmm`` is used when installed).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GCNGConv", "GCNGNet", "sparse_matmul"]

try:  # PyG's spmm dispatches CSR/COO/SparseTensor; plain torch is the fallback
    from torch_geometric.utils import spmm as _pyg_spmm
except ImportError:  # pragma: no cover - exercised only without torch_geometric
    _pyg_spmm = None


@contextmanager
def _quiet_csr_notice() -> Iterator[None]:
    """Hide torch's "Sparse CSR tensor support is in beta" UserWarning within the block.

    torch prints it for the first CSR tensor of a process; there is nothing a user can act on.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        yield


def sparse_matmul(graph: Tensor, x: Tensor) -> Tensor:
    """``graph @ x`` for a sparse (COO/CSR) or dense ``(n, n)`` graph and a dense ``(n, m)`` matrix."""
    if not graph.is_sparse and graph.layout != torch.sparse_csr:
        return graph @ x
    # Sparse kernels take one dtype and CPU has none for bfloat16, so under autocast (x bfloat16/float16, or autocast
    # casting inside the sparse addmm) multiply in the graph's dtype with autocast off, and return x's dtype.
    with torch.autocast(x.device.type, enabled=False):
        y = x.to(graph.dtype)
        y = _pyg_spmm(graph, y) if _pyg_spmm is not None else torch.sparse.mm(graph, y)
    return y.to(x.dtype)


class GCNGConv(nn.Module):
    r"""GCNG's graph convolution :math:`Z = L X W + b` for a batch of signals on one graph (no activation).

    Parameters
    ----------
    in_channels, out_channels
        Sizes of :math:`W` (``in × out``).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.lin = nn.Linear(in_channels, out_channels)

    def forward(self, graph: Tensor, x: Tensor) -> Tensor:
        """Apply the layer.

        Parameters
        ----------
        graph
            ``(n, n)`` graph matrix :math:`L` (sparse COO/CSR or dense).
        x
            ``(n, B, in_channels)`` node-major batch of signals.

        Returns
        -------
        ``(n, B, out_channels)``.
        """
        n, b, c = x.shape
        if c <= self.out_channels:  # propagate the narrower side: (L X) W is cheaper when in < out
            h = sparse_matmul(graph, x.reshape(n, b * c)).reshape(n, b, c)
            return self.lin(h)
        h = F.linear(x, self.lin.weight)
        h = sparse_matmul(graph, h.reshape(n, b * self.out_channels)).reshape(n, b, self.out_channels)
        return h + self.lin.bias


class GCNGNet(nn.Module):
    r"""GCNG: graph conv layers (ELU) → flatten → dense (ReLU) → one logit per gene pair.

    With the defaults this is the paper's network: two 32-channel graph convolutions
    :math:`Z = \mathrm{elu}(L X W + b)`, flatten, a 512-unit dense layer and a sigmoid output (the sigmoid is
    applied by :meth:`predict_proba`; :meth:`loss` uses the logit for a stable binary cross-entropy).

    ``readout="pool"`` (scst's deviation, off by default) replaces the flatten by the mean and the maximum of each
    channel over the cells: the dense layer then sees *what* the graph convolutions found, not *where*, so what
    it learns on one pair's cells transfers to pairs whose signal sits in other cells, and the network is no
    longer tied to one cell set. ``standardize=True`` centres and scales each input signal over the cells
    (per pair and channel) first, so that a gene's abundance carries no label.

    The graph matrix is a non-persistent buffer (:meth:`set_graph`): it belongs to the data, so it is not in
    the state dict and is moved with the module by ``.to(device)``.

    Parameters
    ----------
    n_nodes
        Number of cells/spots; the flatten layer ties the network to this cell set, as in the paper.
    in_channels
        Signals per node (2: ligand and receptor expression).
    hidden_channels
        Channels of each graph convolution.
    n_layers
        Number of graph convolutions (paper: 2 after comparing 1–3).
    dense_units
        Width of the dense layer.
    dropout
        Dropout before the dense layer (paper: none).
    readout
        ``"flatten"`` (the paper: one weight per cell and channel) or ``"pool"`` (mean and max over the cells).
    standardize
        Centre and scale each pair's input signals over the cells (paper: no).
    """

    def __init__(
        self,
        n_nodes: int,
        in_channels: int = 2,
        hidden_channels: int = 32,
        n_layers: int = 2,
        dense_units: int = 512,
        dropout: float = 0.0,
        readout: str = "flatten",
        standardize: bool = False,
    ) -> None:
        super().__init__()
        if n_nodes < 1 or n_layers < 1:
            raise ValueError(f"n_nodes and n_layers must be >= 1, got {n_nodes} and {n_layers}.")
        if readout not in ("flatten", "pool"):
            raise ValueError(f"readout: expected 'flatten' or 'pool', got {readout!r}.")
        self.n_nodes, self.readout, self.standardize = n_nodes, readout, bool(standardize)
        dims = [in_channels] + [hidden_channels] * n_layers
        self.convs = nn.ModuleList(GCNGConv(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.dropout = nn.Dropout(dropout)
        width = n_nodes * hidden_channels if readout == "flatten" else 2 * hidden_channels
        self.dense = nn.Linear(width, dense_units)
        self.out = nn.Linear(dense_units, 1)
        self.register_buffer("graph", None, persistent=False)

    def set_graph(self, graph: Tensor) -> None:
        """Set the ``(n, n)`` graph matrix (dense or sparse; COO/CSC stored as CSR); it follows the module's device.

        With ``readout="flatten"``, ``n`` must be ``n_nodes``; a pooled network takes any cell set.
        """
        n = graph.shape[0]
        if graph.ndim != 2 or graph.shape[1] != n or (self.readout == "flatten" and n != self.n_nodes):
            want = f"({self.n_nodes}, {self.n_nodes})" if self.readout == "flatten" else "square (n, n)"
            raise ValueError(f"graph: expected shape {want}, got {tuple(graph.shape)}.")
        if graph.layout in (torch.sparse_coo, torch.sparse_csc):  # PyG's spmm would convert it at every product
            with _quiet_csr_notice():
                graph = (graph.coalesce() if graph.layout == torch.sparse_coo else graph).to_sparse_csr()
        ref = self.out.weight
        self.graph = graph.to(device=ref.device, dtype=ref.dtype)

    def forward(self, x: Tensor, graph: Tensor | None = None) -> Tensor:
        """Logits for a batch of gene pairs.

        Parameters
        ----------
        x
            ``(B, n, in_channels)`` normalised expression of each pair's genes in every cell (``n`` = the graph's
            cells; ``n_nodes`` for ``readout="flatten"``).
        graph
            Graph matrix; default the one set with :meth:`set_graph`.

        Returns
        -------
        ``(B,)`` logits.
        """
        graph = self.graph if graph is None else graph
        if graph is None:
            raise RuntimeError("GCNGNet has no graph matrix; call `set_graph(L)` or pass `graph`.")
        if x.ndim != 3 or x.shape[1] != graph.shape[0]:
            raise ValueError(f"x: expected (batch, {graph.shape[0]}, channels), got {tuple(x.shape)}.")
        if self.standardize:  # per pair and channel over the cells; a constant signal becomes 0
            x = (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp_min(1e-6)
        h = x.transpose(0, 1)  # node-major (n, B, c): L @ h.reshape(n, B*c) is one spmm for the whole batch
        for conv in self.convs:
            h = F.elu(conv(graph, h))
        if self.readout == "pool":
            h = torch.cat([h.mean(0), h.amax(0)], dim=-1)  # (B, 2 * hidden): what was found, not where
        else:
            # Flatten, then the 512-unit dense layer with ReLU (the paper's "flatten ... using ReLU"; in the
            # released code the ReLU is the dense layer's activation).
            h = h.transpose(0, 1).reshape(x.shape[0], -1)
        h = F.relu(self.dense(self.dropout(h)))
        return self.out(h).squeeze(-1)

    def predict_proba(self, x: Tensor, graph: Tensor | None = None) -> Tensor:
        """Interaction probabilities (sigmoid of the logits)."""
        return torch.sigmoid(self(x, graph))

    def loss(self, batch: Any) -> dict[str, Tensor]:
        """Binary cross-entropy and accuracy of a ``(x, y)`` batch (``y`` in {0, 1})."""
        x, y = batch
        logits = self(x)
        y = y.to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        acc = ((logits > 0).to(y.dtype) == y).float().mean()
        return {"loss": loss, "accuracy": acc}
