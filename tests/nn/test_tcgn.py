import pytest
import torch

from scst.nn import _tcgn
from scst.nn._tcgn import TCGN_BENCH, TCGNModule, _ChannelAttentionFusion, _GraphBlock, topk_graph

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# 64 px: stage grids 16/8/4/2, a 4x4 graph grid; small enough to train for a few dozen steps in seconds
TINY = dict(TCGN_BENCH, img_size=64, channels=(8, 16, 32, 64), heads=(1, 1, 2, 2), fc_dim=64, graph_out=8)


def test_forward_shapes_bench():
    torch.manual_seed(0)
    m = TCGNModule(n_genes=30, **TCGN_BENCH)
    x = torch.randn(3, 3, 128, 128)
    out = m(x)  # train mode, batch statistics
    assert out["pred"].shape == (3, 30)
    assert out["emb"].shape == (3, TCGN_BENCH["fc_dim"])
    m.eval()
    with torch.no_grad():
        fmap, (e3, g1, g2) = m._features(x)
        pred = m(x)["pred"]
    assert fmap.shape == (3, TCGN_BENCH["fc_dim"], 4, 4)  # 128 / 32
    assert e3.shape == (3, 64, 64) and g1.shape == g2.shape == (3, 64, TCGN_BENCH["graph_out"])  # 8x8 grid
    assert torch.isfinite(pred).all()
    # eval mode: a sample's prediction does not depend on the rest of the batch
    with torch.no_grad():
        torch.testing.assert_close(m(x[:1])["pred"], pred[:1], rtol=1e-4, atol=1e-5)


def test_forward_shapes_default_224():
    torch.manual_seed(0)
    m = TCGNModule(n_genes=785).eval()
    with torch.no_grad():
        fmap, (e3, g1, g2) = m._features(torch.randn(1, 3, 224, 224))
        pred = m._predict(fmap)[0]
    assert fmap.shape == (1, 1280, 7, 7)
    assert e3.shape == (1, 196, 184) and g1.shape == (1, 196, 48) and g2.shape == (1, 196, 48)
    assert pred.shape == (1, 785) and torch.isfinite(pred).all()
    # authors' layer counts: 2 + 2 + 10 + 2 CMT blocks, two graph blocks with 4 ConvNeXt blocks in all
    assert [len(s.blocks) for s in m.stages] == [2, 2, 10, 2]
    assert sum(isinstance(mod, _tcgn.CNBlock) for mod in m.graphs.modules()) == 5


def _planted_attention(b, heads, n, targets):
    """Softmax-like map where row i puts large weight on ``targets[i]`` and small random weight elsewhere."""
    g = torch.Generator().manual_seed(1)
    attn = torch.rand(b, heads, n, n, generator=g) * 0.01
    for i, ts in enumerate(targets):
        for rank, t in enumerate(ts):
            attn[:, :, i, t] = 0.5 - 0.1 * rank
    return attn / attn.sum(-1, keepdim=True)


def test_topk_graph_picks_k_edges_per_node():
    b, heads, side, k = 2, 2, 4, 3
    n = side * side
    targets = [[(i + 1) % n, (i + 5) % n, i] for i in range(n)]  # third target is a self-loop
    attn = _planted_attention(b, heads, n, targets)
    nodes = torch.randn(b, n, 6)
    g = topk_graph(attn, nodes, k)

    assert g["dst"].shape == (b, n, k)
    for i, ts in enumerate(targets):
        for bi in range(b):
            assert set(g["dst"][bi, i].tolist()) == set(ts)
    assert torch.equal(g["adj"].sum(-1), torch.full((b, n), float(k)))
    torch.testing.assert_close(g["adj_norm"], g["adj"] / k)  # every out-degree is k

    e = n * k
    T = g["T"]
    assert T.shape == (b, n, e)
    assert torch.equal(T.sum(1), torch.full((b, e), 2.0))  # two endpoints per edge (2 on the self-loop's node)
    edge = 0 * k + list(g["dst"][0, 0]).index(1)  # edge 0 -> 1
    assert T[0, 0, edge] == 1 and T[0, 1, edge] == 1
    loop = 3 * k + list(g["dst"][0, 3]).index(3)  # self-loop 3 -> 3
    assert T[0, 3, loop] == 2

    # line graph: edge 0->1 and edge 1->2 share node 1; edge 0->1 and 3->4 share nothing
    ea = g["edge_adj_norm"][0]
    e12 = 1 * k + list(g["dst"][0, 1]).index(2)
    e34 = 3 * k + list(g["dst"][0, 3]).index(4)
    assert ea[edge, e12] > 0 and ea[edge, e34] == 0 and ea[edge, edge] > 0
    torch.testing.assert_close(ea, ea.T)

    f = g["edge_feat"]
    assert f.shape == (b, e, heads + 4)
    mean_attn = attn.mean(1)
    torch.testing.assert_close(f[0, edge, heads], mean_attn[0, 0, 1])  # mean attention of 0 -> 1
    torch.testing.assert_close(f[0, edge, heads + 1], torch.tensor(0.75))  # grid cells (0,0), (0,1): 1 / (1/3 + 1)
    e05 = list(g["dst"][0, 0]).index(5)  # (0,0) -> (1,1)
    torch.testing.assert_close(f[0, e05, heads + 1], torch.tensor(1 / (2**0.5 / 3 + 1)))
    torch.testing.assert_close(f[0, loop, heads + 2 :], torch.ones(2))  # self-loop: L2 affinity 1, (cos + 1) / 2 = 1


def test_graph_block_uses_planted_cross_attention(monkeypatch):
    torch.manual_seed(0)
    # stage-2 style block: 8x8 input, 2x down -> 4x4 = 16 nodes
    block = _GraphBlock(in_ch=8, in_grid=8, down=2, heads=2, topk=3, out=5, dropout=0.0, expansion=2)
    n, k = 16, 3
    targets = [[(i + 2) % n, (i + 7) % n, (i + 11) % n] for i in range(n)]
    planted = _planted_attention(2, 2, n, targets).requires_grad_(True)
    monkeypatch.setattr(block, "cross_attention", lambda conv_tok, tr_tok: planted)
    seen = {}

    def spy(attn, nodes, k, proximity=None):
        seen["g"] = out = topk_graph(attn, nodes, k, proximity)
        return out

    monkeypatch.setattr(_tcgn, "topk_graph", spy)
    y = block(torch.randn(2, 8, 8, 8))
    assert y.shape == (2, n, 5)
    dst = seen["g"]["dst"]
    for i, ts in enumerate(targets):
        assert set(dst[0, i].tolist()) == set(ts) and set(dst[1, i].tolist()) == set(ts)
    assert torch.equal(seen["g"]["adj"].sum(-1), torch.full((2, n), float(k)))
    # top-k indices carry no gradient, but the edge features read off the map do
    y.sum().backward()
    assert planted.grad is not None and planted.grad.abs().sum() > 0


def test_graph_block_gradient_reaches_cross_attention():
    torch.manual_seed(0)
    block = _GraphBlock(in_ch=8, in_grid=16, down=4, heads=2, topk=4, out=5, dropout=0.0, expansion=2)
    block(torch.randn(2, 8, 16, 16)).pow(2).sum().backward()
    assert block.q.weight.grad.abs().sum() > 0 and block.k.weight.grad.abs().sum() > 0


def test_channel_attention_fusion_weights():
    torch.manual_seed(0)
    fusion = _ChannelAttentionFusion(n_nodes=16, dropout=0.0)
    x, g = torch.randn(2, 16, 8), torch.randn(2, 16, 4)
    out, w = fusion(x, g, return_weights=True)
    assert out.shape == (2, 16, 8)
    assert w.shape == (2, 4, 12, 12)  # 4 heads over 8 + 4 channel tokens
    assert (w > 0).all() and (w < 1).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 12))
    # graph channels are fused into the kept backbone channels (a constant shift would be removed by the LayerNorm)
    assert not torch.allclose(fusion(x, torch.randn(2, 16, 4)), out)


def test_loss_decreases_on_planted_batch():
    torch.manual_seed(0)
    m = TCGNModule(n_genes=5, **dict(TINY, dropout=0.0))
    off = torch.randn(8, 3)
    x = torch.randn(8, 3, 64, 64) * 0.5 + off[:, :, None, None]
    target = off @ torch.randn(3, 5) + 1.0  # expression = linear in the patch's mean colour
    batch = {"patches": x, "target": target}
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = m.loss(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["mse"].item())
    assert not out["mse"].requires_grad and out["loss"].requires_grad
    assert losses[-1] < 0.1 * losses[0]
    # far below the best constant prediction: the model reads the images, not just the mean expression
    assert losses[-1] < 0.2 * target.var(0, unbiased=False).mean().item()


def _quadrant_images(n, size, tl=None, others=True):
    """Noise images, each quadrant shifted by its own offset; the target is the top-left offset."""
    h = size // 2
    x = torch.randn(n, 3, size, size) * 0.5
    off = torch.rand(n, 4) * 3 - 1.5
    if not others:
        off[:, 1:] = 0.0
    if tl is not None:
        off[:, 0] = tl
    for q, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        x[:, :, r * h : (r + 1) * h, c * h : (c + 1) * h] += off[:, q, None, None, None]
    return x, torch.stack([off[:, 0], -off[:, 0]], 1)


def test_attribution_peaks_on_planted_region():
    torch.manual_seed(0)
    m = TCGNModule(n_genes=2, **TINY)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    for _ in range(60):
        x, y = _quadrant_images(16, 64)
        loss = m.loss({"patches": x, "target": y})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    xv, yv = _quadrant_images(64, 64)
    with torch.no_grad():
        r = torch.corrcoef(torch.stack([m.eval()(xv)["pred"][:, 0], yv[:, 0]]))[0, 1]
    m.train()
    assert r > 0.8  # the model did learn to read the top-left quadrant

    xe, _ = _quadrant_images(8, 64, tl=1.5, others=False)
    cam = m.attribution(xe, 0)
    assert m.training  # mode restored
    assert cam.shape == (8, 64, 64)
    assert cam.min() >= 0 and torch.allclose(cam.flatten(1).amax(1), torch.ones(8))
    frac_tl = cam[:, :32, :32].sum((1, 2)) / cam.sum((1, 2))
    assert frac_tl.mean() > 0.5  # chance is 0.25
    peak = cam.mean(0).argmax()
    assert peak // 64 < 32 and peak % 64 < 32

    # authors' last-stage Grad-CAM: valid maps, same contract
    cam_gc = m.attribution(xe, torch.zeros(8, dtype=torch.long), method="gradcam")
    assert cam_gc.shape == (8, 64, 64) and cam_gc.min() >= 0 and cam_gc.max() <= 1
    # ... but after the spatially mixing fusion blocks it does not single out the quadrant (8/8 seeds: 0.25-0.31)
    frac_gc = cam_gc[:, :32, :32].sum((1, 2)) / cam_gc.sum((1, 2)).clamp_min(1e-12)
    assert frac_gc.mean() < frac_tl.mean()


def test_bad_inputs():
    m = TCGNModule(n_genes=4, **TINY)
    with pytest.raises(ValueError, match="patches"):
        m(torch.randn(2, 3, 32, 32))
    with pytest.raises(KeyError, match="target"):
        m.loss({"patches": torch.randn(2, 3, 64, 64)})
    with pytest.raises(ValueError, match="target"):
        m.loss({"patches": torch.randn(2, 3, 64, 64), "target": torch.randn(2, 3)})
    with pytest.raises(ValueError, match="gene_idx"):
        m.attribution(torch.randn(2, 3, 64, 64), 4)
    with pytest.raises(ValueError, match="method"):
        m.attribution(torch.randn(2, 3, 64, 64), 0, method="rollout")
    with pytest.raises(ValueError, match="img_size"):
        TCGNModule(n_genes=4, img_size=112)
    with pytest.raises(ValueError, match="sr_ratios"):
        TCGNModule(n_genes=4, **dict(TINY, sr_ratios=(8, 3, 2, 1)))
    with pytest.raises(ValueError, match="k"):
        topk_graph(torch.rand(1, 1, 4, 4), torch.randn(1, 4, 2), 5)
