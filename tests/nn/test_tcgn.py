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


# --------------------------------------------------------------------------------------------------------------------
# Known answers computed by hand (loops / plain tensor ops), layer by layer
# --------------------------------------------------------------------------------------------------------------------
def test_topk_graph_matches_brute_force_on_irregular_graph():
    """Random map + a hub node every row points to: in-degrees differ, out-degrees are all k."""
    g = torch.Generator().manual_seed(3)
    b, heads, n, k, c = 2, 3, 9, 2, 4
    attn = torch.rand(b, heads, n, n, generator=g, dtype=torch.float64)
    attn[:, :, :, 4] += 5.0  # node 4 is every node's first target
    attn = attn / attn.sum(-1, keepdim=True)
    nodes = torch.randn(b, n, c, generator=g, dtype=torch.float64)
    out = topk_graph(attn, nodes, k)
    e = n * k
    mean = attn.mean(1)
    adj = torch.zeros(b, n, n, dtype=torch.float64)
    T = torch.zeros(b, n, e, dtype=torch.float64)
    feat = torch.zeros(b, e, heads + 4, dtype=torch.float64)
    for bi in range(b):
        for i in range(n):
            order = sorted(range(n), key=lambda j: -mean[bi, i, j].item())[:k]  # noqa: B023
            assert set(out["dst"][bi, i].tolist()) == set(order)
            for slot, j in enumerate(out["dst"][bi, i].tolist()):
                eid = i * k + slot
                adj[bi, i, j] = 1.0
                T[bi, i, eid] += 1.0
                T[bi, j, eid] += 1.0
                d = ((i // 3 - j // 3) ** 2 + (i % 3 - j % 3) ** 2) ** 0.5  # 3x3 grid
                xi, xj = nodes[bi, i], nodes[bi, j]
                feat[bi, eid, :heads] = attn[bi, :, i, j]  # one feature per head, in head order
                feat[bi, eid, heads] = mean[bi, i, j]
                feat[bi, eid, heads + 1] = 1 / (d / 3 + 1)
                feat[bi, eid, heads + 2] = (1 + ((xi - xj) ** 2).sum() / (c // 2)) ** -0.5
                feat[bi, eid, heads + 3] = (torch.dot(xi, xj) / xi.norm() / xj.norm() + 1) / 2
    assert (adj.sum(1) != k).any()  # in-degrees differ (the hub has n in-edges)
    torch.testing.assert_close(out["adj"], adj)
    torch.testing.assert_close(out["adj_norm"], adj / k)  # normalised by the out-degree k on both sides
    torch.testing.assert_close(out["T"], T)
    ea = (T.transpose(1, 2) @ T > 0).double()
    d_e = (ea.sum(-1) + 1) ** -0.5  # +1 in the degree only (the diagonal stays 1 before scaling)
    torch.testing.assert_close(out["edge_adj_norm"], d_e[:, :, None] * ea * d_e[:, None, :])
    torch.testing.assert_close(out["edge_feat"], feat)


def _eval_bn(module):
    """Eval mode with non-trivial BatchNorm running statistics (so a skipped BatchNorm is seen)."""
    g = torch.Generator().manual_seed(7)
    for mod in module.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g))
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return module.eval()


def test_lmhsa_matches_reference():
    torch.manual_seed(0)
    dim, heads, sr, h = 8, 2, 2, 4
    attn = _eval_bn(_tcgn._LMHSA(dim, heads, sr, qkv_bias=True, drop=0.0))
    x = torch.randn(3, h * h, dim)
    rel = torch.randn(heads, h * h, (h // sr) ** 2)
    conv = attn.sr_conv[0]
    kv_map = torch.nn.functional.conv2d(x.transpose(1, 2).reshape(3, dim, h, h), conv.weight, conv.bias, sr, groups=dim)
    kv = attn.sr_conv[1](kv_map).flatten(2).transpose(1, 2)  # (3, 4, dim): keys/values on the 2x downsampled map
    q, k, v = attn.q(x), attn.k(kv), attn.v(kv)
    d = dim // heads
    outs = []
    for hd in range(heads):
        sl = slice(hd * d, (hd + 1) * d)
        w = (q[..., sl] @ k[..., sl].transpose(1, 2) / d**0.5 + rel[hd]).softmax(-1)
        outs.append(w @ v[..., sl])
    ref = attn.proj(torch.cat(outs, -1))
    with torch.no_grad():
        torch.testing.assert_close(attn(x, h, h, rel), ref, rtol=1e-4, atol=1e-5)


def test_cmt_block_residual_structure_and_irffn():
    torch.manual_seed(0)
    dim, h = 8, 4
    blk = _eval_bn(_tcgn._CMTBlock(dim, 2, 2.0, 2))
    x = torch.randn(2, h * h, dim)
    rel = torch.randn(2, h * h, 4)
    with torch.no_grad():
        m = x.transpose(1, 2).reshape(2, dim, h, h)
        x1 = (blk.lpu(m) + m).flatten(2).transpose(1, 2)  # local perception unit, residual
        x2 = x1 + blk.attn(blk.norm1(x1), h, h, rel)
        ref = x2 + blk.ffn(blk.norm2(x2), h, h)
        torch.testing.assert_close(blk(x, h, h, rel), ref)
        # IRFFN: 1x1 conv -> GELU -> BN, depthwise 3x3 + residual -> GELU -> BN, 1x1 conv -> BN
        f = blk.ffn
        t = f.conv1(x.transpose(1, 2).reshape(2, dim, h, h))
        t = f.dw_act(f.dw(t) + t)
        torch.testing.assert_close(f(x, h, h), f.conv2(t).flatten(2).transpose(1, 2))
    # patch embedding: LayerNorm'd tokens (unit weight, zero bias at init), row-major over the grid
    emb = _tcgn._PatchEmbed(3, 6, 2)
    img = torch.randn(1, 3, 4, 4)
    tok, hh, ww = emb(img)
    assert (hh, ww) == (2, 2)
    raw = emb.proj(img)[0, :, 0, 1]  # grid cell (row 0, col 1) = token 1
    with torch.no_grad():
        torch.testing.assert_close(tok[0, 1], (raw - raw.mean()) / (raw.var(unbiased=False) + 1e-5).sqrt())


def test_cmt_block_stochastic_depth_drops_per_sample():
    torch.manual_seed(0)
    blk = _tcgn._CMTBlock(8, 2, 2.0, 1, drop_path=0.5).train()
    x = torch.randn(1, 16, 8).expand(64, 16, 8).contiguous()  # 64 copies of one sample
    with torch.no_grad():
        y = blk(x, 4, 4, torch.zeros(2, 16, 16))
    # "row" mode: each sample keeps or drops its residual branches on its own; the copies do not all agree
    assert not torch.allclose(y, y[:1].expand_as(y))


def test_censnet_layers_match_reference():
    g = topk_graph(torch.rand(2, 1, 9, 9).softmax(-1), torch.randn(2, 9, 3), 3)
    torch.manual_seed(0)
    hv, he = torch.randn(2, 9, 5), torch.randn(2, 27, 6)
    node = _tcgn._CensNetLayer(5, 4, 6, 6, node_layer=True)
    edge = _tcgn._CensNetLayer(5, 5, 6, 7, node_layer=False)
    T = g["T"]
    eye_n, eye_e = torch.eye(9), torch.eye(27)
    with torch.no_grad():
        s = he @ node.p[0]  # (2, E) edge gates
        m = torch.einsum("bie,be,bje->bij", T, s, T) * (1 - eye_n) + eye_n
        ref_v = (m * g["adj_norm"]) @ hv @ node.weight + node.bias
        out_v, out_e = node(hv, he, g)
        torch.testing.assert_close(out_v, ref_v)
        assert out_e is he
        s = hv @ edge.p[0]  # (2, N) node gates
        m = (torch.einsum("bie,bi,bif->bef", T, s, T) * (1 - eye_e) + eye_e) * g["edge_adj_norm"]
        m = m / m.max(1, keepdim=True).values  # each column scaled by its maximum
        out_v, out_e = edge(hv, he, g)
        torch.testing.assert_close(out_e, m @ he @ edge.weight + edge.bias)
        assert out_v is hv
        # the GCN: node -> ReLU -> edge -> ReLU -> node (eval: no dropout)
        gcn = _tcgn._CensNetGCN(5, 6, 4, 3, dropout=0.5).eval()
        v, e = gcn.gc1(hv, he, g)
        v, e = gcn.gc2(v.relu(), e.relu(), g)
        v, e = gcn.gc3(v.relu(), e.relu(), g)
        rv, re = gcn(hv, g | {"edge_feat": he})
        torch.testing.assert_close(rv, v)
        torch.testing.assert_close(re, e)


def test_graph_block_matches_reference():
    torch.manual_seed(0)
    block = _GraphBlock(in_ch=8, in_grid=8, down=2, heads=2, topk=3, out=5, dropout=0.0, expansion=2).eval()
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        conv_tok = block.conv_norm(block.conv(x).flatten(2).transpose(1, 2))  # (2, 16, 16)
        tr_tok, h, w = block.embed(x)
        tr_tok = block.encoder(tr_tok, h, w, block.rel_pos)
        q, k = block.q(tr_tok), block.k(conv_tok)  # queries: transformer tokens, keys: conv tokens
        attn = torch.stack(
            [
                (q[..., s] @ k[..., s].transpose(1, 2) / 16**0.5 + torch.eye(16)).softmax(-1)
                for s in (slice(0, 8), slice(8, 16))
            ],
            1,
        )
        torch.testing.assert_close(block.cross_attention(conv_tok, tr_tok), attn)
        nodes = block.v(conv_tok)
        g = topk_graph(attn, nodes, 3)
        hv, he = block.gcn(nodes, g)
        ref = block.fuse(torch.cat([hv, g["T"] @ he], -1))  # edge features summed onto their end nodes
        torch.testing.assert_close(block(x), ref)


def test_channel_attention_fusion_matches_reference():
    torch.manual_seed(0)
    fusion = _ChannelAttentionFusion(n_nodes=8, dropout=0.3).eval()
    x, gr = torch.randn(2, 8, 5), torch.randn(2, 8, 3)
    with torch.no_grad():
        z = torch.cat([x, gr], -1).transpose(1, 2)  # (2, 8 channels, 8 positions)
        q, k, v = fusion.qkv(fusion.norm1(z)).split(8, -1)
        outs = []
        for s in (slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)):  # 4 heads of 2 positions each
            w = ((q[..., s] @ k[..., s].transpose(1, 2) + torch.eye(8)) / 8**0.5).softmax(-1)
            outs.append(w @ v[..., s])
        z = z + torch.cat(outs, -1)
        z = z + fusion.ffn(fusion.norm2(z))
        torch.testing.assert_close(fusion(x, gr), z.transpose(1, 2)[..., :5])  # the first C1 channels are kept


def test_module_wiring_pooling_and_loss():
    torch.manual_seed(0)
    m = _eval_bn(TCGNModule(n_genes=3, **TINY))
    x = torch.randn(2, 3, 64, 64)
    seen = {}
    hooks = [m.graphs[i].register_forward_hook(lambda mod, a, out, i=i: seen.__setitem__(f"g{i}", out)) for i in (0, 1)]
    hooks += [m.fusions[i].register_forward_pre_hook(lambda mod, a, i=i: seen.__setitem__(f"f{i}", a)) for i in (0, 1)]
    with torch.no_grad():
        out = m(x)
        fmap, _ = m._features(x)
    for hk in hooks:
        hk.remove()
    # graph 1 (after stage 1) is fused before the stage-3 blocks, graph 2 after them
    assert seen["f0"][1] is seen["g0"] and seen["f1"][1] is seen["g1"]
    emb = m.head_act(fmap).mean((-2, -1))  # global average pool
    torch.testing.assert_close(out["emb"], emb)
    torch.testing.assert_close(out["pred"], m.head(emb))
    target = torch.randn(2, 3)
    with torch.no_grad():
        loss = m.loss({"patches": x, "target": target})
    torch.testing.assert_close(loss["loss"], ((out["pred"] - target) ** 2).mean())
    torch.testing.assert_close(loss["mse"], loss["loss"])


def test_init_and_drop_path_schedule():
    torch.manual_seed(0)
    m = TCGNModule(n_genes=3, **dict(TINY, depths=(1, 2, 1, 1), drop_path=0.4))
    w = m.head[0].weight
    assert 0.015 < w.std().item() < 0.025  # trunc-normal, std 0.02
    assert torch.equal(m.head[0].bias, torch.zeros_like(m.head[0].bias))
    conv = m.head_conv.weight  # Kaiming normal, fan-out mode: std = sqrt(2 / (out channels * 1 * 1))
    assert conv.std().item() == pytest.approx((2 / conv.shape[0]) ** 0.5, rel=0.1)
    # stochastic depth grows linearly over the 5 blocks: 0, 0.1, 0.2, 0.3, 0.4
    p = [blk.drop_path.p for s in m.stages for blk in s.blocks]
    assert p == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_attribution_known_answer_with_stub_features(monkeypatch):
    """Stub network: pred[:, j] = sum of w_j * tokens (HiResCAM) or of W_j * fmap (Grad-CAM), gradients known."""
    torch.manual_seed(0)
    m = TCGNModule(n_genes=2, **TINY).train()
    n, side = 2, 4  # 64 px: 4x4 graph grid
    g = torch.Generator().manual_seed(0)
    toks = [torch.randn(n, side * side, c, generator=g) for c in (3, 2, 2)]
    wts = [torch.randn(2, c, generator=g) for c in (3, 2, 2)]
    fmap0 = torch.randn(n, 3, 2, 2, generator=g)
    wmap = torch.randn(2, 3, 2, 2, generator=g)
    state = {}

    def features(patches):
        state["toks"] = [t.clone().requires_grad_(True) for t in toks]
        state["fmap"] = fmap0.clone().requires_grad_(True)
        state["training"] = m.training
        return state["fmap"], tuple(state["toks"])

    def predict(fmap):
        pred = sum((t[:, :, None, :] * w[None, None]).sum((1, 3)) for t, w in zip(state["toks"], wts))
        return pred + (fmap[:, None] * wmap[None]).sum((2, 3, 4)), None

    monkeypatch.setattr(m, "_features", features)
    monkeypatch.setattr(m, "_predict", predict)
    gene = torch.tensor([1, 0])
    up = torch.nn.functional.interpolate
    cam = m.attribution(torch.zeros(n, 3, 64, 64), gene)
    assert state["training"] is False and m.training  # computed in eval mode, mode restored
    raw = torch.stack([sum((t[i] * w[gene[i]]).sum(-1) for t, w in zip(toks, wts)) for i in range(n)])
    ref = up(raw.reshape(n, 1, side, side).relu(), size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    ref = ref / ref.flatten(1).amax(1)[:, None, None]
    assert (raw < 0).any() and (raw > 0).any()  # ReLU before upsampling matters here
    torch.testing.assert_close(cam, ref)
    cam_gc = m.attribution(torch.zeros(n, 3, 64, 64), gene, method="gradcam")
    raw = torch.stack([(wmap[gene[i]].mean((1, 2))[:, None, None] * fmap0[i]).sum(0) for i in range(n)])
    ref = up(raw[:, None].relu(), size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(cam_gc, ref / ref.flatten(1).amax(1).clamp_min(1e-30)[:, None, None])


def test_more_bad_inputs():
    m = TCGNModule(n_genes=4, **TINY)
    with pytest.raises(ValueError, match="gene_idx"):
        m.attribution(torch.randn(2, 3, 64, 64), -1)
    with pytest.raises(ValueError, match="gene_idx"):
        m.attribution(torch.randn(2, 3, 64, 64), [0, 1, 2])
    with pytest.raises(ValueError, match="float"):
        m(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="n_genes"):
        TCGNModule(n_genes=0, **TINY)
    with pytest.raises(ValueError, match="dropout"):
        TCGNModule(n_genes=4, **dict(TINY, dropout=1.0))
    # 80 px: every stage grid (20, 10, 5, 2) fits sr_ratios (4, 2, 1, 1), but 80 is not a multiple of 32
    with pytest.raises(ValueError, match="divisible by 32"):
        TCGNModule(n_genes=4, **dict(TINY, img_size=80, sr_ratios=(4, 2, 1, 1)))
    with pytest.raises(ValueError, match="4 entries"):
        TCGNModule(n_genes=4, **dict(TINY, depths=(1, 1, 1)))


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"heads": (3, 1, 2, 2)}, r"channel width 8 must be divisible by its number of heads 3"),
     ({"graph_heads": 3}, r"graph width 16 must be divisible by `graph_heads`=3"),
     ({"graph_topk": 17}, r"`graph_topk` must be in \[1, 16\] \(nodes of the 4x4 graph\), got 17")],
)  # fmt: skip
def test_bad_widths_and_graph_settings_are_named(kw, match):
    """TINY's first stage is 8 channels wide and its first graph block a 4x4 grid (16 px / 4) of 2 * 8 channels."""
    with pytest.raises(ValueError, match=match):
        TCGNModule(n_genes=4, **dict(TINY, **kw))


def test_graph_block_and_topk_graph_shape_checks():
    with pytest.raises(ValueError, match="graph block downsampling must be 2 or 4, got 3"):
        _GraphBlock(in_ch=8, in_grid=9, down=3, heads=2, topk=3, out=5, dropout=0.0, expansion=2)
    with pytest.raises(ValueError, match=r"`attn` must have shape \(B, heads, N, N\), got \(1, 4, 4\)"):
        topk_graph(torch.rand(1, 4, 4), torch.randn(1, 4, 2), 2)
    with pytest.raises(ValueError, match=r"`nodes` must have shape \(1, 4, C\), got \(1, 3, 2\)"):
        topk_graph(torch.rand(1, 1, 4, 4), torch.randn(1, 3, 2), 2)
    with pytest.raises(ValueError, match=r"`proximity` is required when N=3 is not a square grid"):
        topk_graph(torch.rand(1, 1, 3, 3), torch.randn(1, 3, 2), 2)
