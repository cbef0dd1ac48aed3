import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision

import scst.nn._hggep as hggep_mod
from scst.nn._hggep import HGGEP_BENCH, HGGEPModule
from scst.nn._layers import CBAM

SMALL = {**HGGEP_BENCH["cpu_small"]["config"], "dim": 64, "hg_hidden": 32, "lstm_hidden": 64, "dropout": 0.0}
PX = 112


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _n_params(m):
    return sum(p.numel() for p in m.parameters())


def _planted_batch(n=16, n_genes=12, seed=0, px=PX):
    """Two tissue types: red-ish patches express genes 0-5, blue-ish patches genes 6-11."""
    gen = torch.Generator().manual_seed(seed)
    kind = torch.arange(n) % 2
    colour = torch.where(kind[:, None] == 0, torch.tensor([1.0, -1.0, -1.0]), torch.tensor([-1.0, -1.0, 1.0]))
    patches = colour[:, :, None, None] + 0.3 * torch.randn(n, 3, px, px, generator=gen)
    rate = torch.full((n, n_genes), 0.5)
    rate[kind == 0, :6] = 20.0
    rate[kind == 1, 6:] = 20.0
    counts = torch.poisson(rate, generator=gen)
    total = counts.sum(1)
    target = torch.log1p(counts / total[:, None] * 1e4)
    side = int(n**0.5) + 1
    coords = torch.stack([torch.arange(n) // side, torch.arange(n) % side], 1)
    return {
        "patches": patches,
        "coords": coords,
        "positions": coords.float() * 100.0,
        "target": target,
        "counts": counts,
        "size_factors": total / total.median(),
    }


def test_forward_shapes_small_config():
    torch.manual_seed(0)
    m = HGGEPModule(20, **HGGEP_BENCH["cpu_small"]["config"])
    n = 10
    b = _planted_batch(n, 20)
    out = m(b["patches"], b["coords"], b["positions"])
    assert set(out) == {"pred", "hidden", "zinb_mean", "zinb_disp", "zinb_pi"}
    assert out["pred"].shape == (n, 20) and out["hidden"].shape == (n, 128)
    assert (out["zinb_mean"] > 0).all() and (out["zinb_disp"] > 0).all()
    assert ((out["zinb_pi"] > 0) & (out["zinb_pi"] < 1)).all()
    # Stage maps for a 112-px patch: GEM 56 px, then stage3 7x7 (96), stage4 4x4 (192), conv5 4x4 (1024).
    with torch.no_grad():
        z = m.gem(b["patches"])
        s3, s4, s5 = m.backbone(z)
    assert z.shape == (n, 3, 56, 56)
    assert (s3.shape, s4.shape, s5.shape) == ((n, 96, 7, 7), (n, 192, 4, 4), (n, 1024, 4, 4))


def test_encode_patches_is_per_spot_in_eval_mode_and_forward_tokens_checks_its_input():
    """Eval mode: a spot's tokens do not depend on the other patches of the batch (what lets prediction encode each
    patch once for overlapping windows), and forward = forward_tokens(encode_patches)."""
    torch.manual_seed(0)
    m = HGGEPModule(12, **SMALL).eval()
    b = _planted_batch(8, 12)
    with torch.no_grad():
        tokens = m.encode_patches(b["patches"])
        assert tokens.shape == (3, 8, SMALL["dim"])
        torch.testing.assert_close(m.encode_patches(b["patches"][[5, 2]]), tokens[:, [5, 2]], rtol=1e-5, atol=1e-5)
        full = m(b["patches"], b["coords"], b["positions"])["pred"]
        torch.testing.assert_close(m.forward_tokens(tokens, b["coords"], b["positions"])["pred"], full)
        with pytest.raises(ValueError, match=r"tokens must be a \(3, n, 64\) tensor from encode_patches"):
            m.forward_tokens(tokens[:2], b["coords"], b["positions"])
        with pytest.raises(ValueError, match=r"coords must be a \(8, 2\) integer tensor"):
            m.forward_tokens(tokens, b["coords"][:7], b["positions"])


def test_forward_windows_equals_forward_tokens_on_each_window():
    """b windows in one call = forward_tokens on each window (attention, the hypergraph and its convolution stay
    inside a window), on lattice positions with tied neighbours and windows sharing spots; shapes are checked."""
    torch.manual_seed(1)
    m = HGGEPModule(12, **SMALL).eval()
    b = _planted_batch(25, 12, seed=3)
    with torch.no_grad():
        tokens = m.encode_patches(b["patches"])
        windows = [torch.arange(0, 9), torch.arange(5, 14), torch.tensor([20, 3, 11, 7, 24, 0, 16, 9, 1])]
        one = [m.forward_tokens(tokens[:, w], b["coords"][w], b["positions"][w]) for w in windows]
        many = m.forward_windows(
            torch.stack([tokens[:, w] for w in windows], 1),
            torch.stack([b["coords"][w] for w in windows]),
            torch.stack([b["positions"][w] for w in windows]),
        )
    assert set(many) == set(one[0]) and many["pred"].shape == (3, 9, 12)
    for key in many:
        torch.testing.assert_close(many[key], torch.stack([o[key] for o in one]), rtol=1e-5, atol=1e-5)
    w = torch.stack([tokens[:, v] for v in windows], 1)
    c, p = torch.stack([b["coords"][v] for v in windows]), torch.stack([b["positions"][v] for v in windows])
    with pytest.raises(ValueError, match=r"tokens must be a \(3, b, n, 64\) tensor"):
        m.forward_windows(w[0], c, p)
    with pytest.raises(ValueError, match=r"coords must be a \(3, 9, 2\) tensor"):
        m.forward_windows(w, c[:, :8], p)
    with pytest.raises(ValueError, match=r"positions must be a \(3, 9, 2\) tensor"):
        m.forward_windows(w, c, None)


def test_paper_config_structure_on_meta_device():
    with torch.device("meta"):
        m = HGGEPModule(785, **HGGEP_BENCH["paper"]["config"])
    assert (m.lstm.num_layers, m.lstm.hidden_size, m.lstm.input_size) == (4, 1024, 1024)
    assert all(len(v.blocks) == 4 and v.blocks[0].self_attn.num_heads == 8 for v in m.vits)
    assert m.ham.conv1.out_channels == 512 and m.ham.conv2.out_channels == 1024
    assert m.gene_head[1].out_features == 785
    assert 100e6 < _n_params(m) < 130e6


def test_loss_decreases_when_overfitting_planted_batch():
    torch.manual_seed(1)
    m = HGGEPModule(12, **SMALL)
    b = _planted_batch(px=64)  # 64 px keeps the 30 steps fast; stage maps 8, 4, 2 (pooled to 4x4)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = m.loss(b)
    assert set(first) == {"loss", "mse", "zinb", "pred"}
    assert first["loss"].item() == pytest.approx(first["mse"].item() + 0.25 * first["zinb"].item(), rel=1e-5)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        out = m.loss(b)
        out["loss"].backward()
        opt.step()
        losses.append((out["loss"].item(), out["mse"].item(), out["zinb"].item()))
    # Gradients reach the first layer (the GEM difference branch).
    assert m.gem.cdc[0].weight.grad.abs().sum() > 0
    assert losses[-1][0] < 0.3 * losses[0][0]
    assert losses[-1][1] < 0.3 * losses[0][1] and losses[-1][2] < losses[0][2]
    # The planted split is learnt (train-mode forward: BatchNorm running stats lag after 30 steps).
    pred = out["pred"].detach()
    red = torch.arange(16) % 2 == 0
    assert (pred[red, :6].mean(1) > pred[red, 6:].mean(1) + 1).all()
    assert (pred[~red, 6:].mean(1) > pred[~red, :6].mean(1) + 1).all()


def test_ham_rebuilds_hyperedges_every_pass(monkeypatch):
    calls = []
    real = hggep_mod.knn_hyperedges

    def spy(features, positions, k=3, **kw):
        calls.append((tuple(features.shape), features.requires_grad, k))
        return real(features, positions, k, **kw)

    monkeypatch.setattr(hggep_mod, "knn_hyperedges", spy)
    torch.manual_seed(2)
    m = HGGEPModule(5, **SMALL)
    b = _planted_batch(9, 5, px=64)
    lstm_steps = []
    m.lstm.register_forward_hook(lambda mod, inp, out: lstm_steps.append(inp[0].shape[0]))
    m(b["patches"], b["coords"], b["positions"])
    m(b["patches"], b["coords"], b["positions"])
    assert calls == [((9, 64), False, 3)] * 2
    assert lstm_steps == [4, 4]

    calls.clear()
    lstm_steps.clear()
    no_ham = HGGEPModule(5, **SMALL, use_ham=False)
    no_ham.lstm.register_forward_hook(lambda mod, inp, out: lstm_steps.append(inp[0].shape[0]))
    no_ham(b["patches"], b["coords"])  # positions not needed without HAM
    assert calls == [] and lstm_steps == [3]


def test_ablation_switches_remove_parts():
    torch.manual_seed(3)
    full = HGGEPModule(7, **SMALL)
    n_full = _n_params(full)
    b = _planted_batch(8, 7)

    no_gem = HGGEPModule(7, **SMALL, use_gem=False)
    assert no_gem.gem is None and _n_params(no_gem) == n_full - _n_params(full.gem)
    with torch.no_grad():
        maps = no_gem.backbone(b["patches"])
    assert [tuple(s.shape[2:]) for s in maps] == [(7, 7), (4, 4), (4, 4)]  # stem max-pool keeps the sizes

    no_cbam = HGGEPModule(7, **SMALL, use_cbam=False)
    assert not any(isinstance(mod, CBAM) for mod in no_cbam.modules())
    assert sum(isinstance(mod, CBAM) for mod in full.modules()) == 3
    assert _n_params(no_cbam) == n_full - sum(_n_params(p.cbam) for p in full.stage_proj)

    no_ham = HGGEPModule(7, **SMALL, use_ham=False)
    # HAM and the LayerNorm of its LSTM step (2 * dim parameters) go
    assert no_ham.ham is None and _n_params(no_ham) == n_full - _n_params(full.ham) - 2 * 64
    assert len(no_ham.step_norms) == 3 and len(full.step_norms) == 4
    no_norm = HGGEPModule(7, **SMALL, step_norm=False)
    assert no_norm.step_norms is None and _n_params(no_norm) == n_full - 4 * 2 * 64

    no_zinb = HGGEPModule(7, **SMALL, use_zinb=False)
    assert _n_params(no_zinb) == n_full - 3 * (64 * 7 + 7)
    batch = {k: v for k, v in b.items() if k not in ("counts", "size_factors")}
    out = no_zinb.loss(batch)  # counts/size factors not needed
    assert out["zinb"].item() == 0.0 and out["loss"].item() == out["mse"].item()
    assert set(no_zinb(b["patches"], b["coords"], b["positions"])) == {"pred", "hidden"}


def test_backbone_weights_from_local_file(tmp_path):
    torch.manual_seed(4)
    ref = torchvision.models.shufflenet_v2_x0_5()
    path = tmp_path / "shufflenet.pt"
    torch.save(ref.state_dict(), path)
    m = HGGEPModule(3, **SMALL, backbone_weights=str(path))
    torch.testing.assert_close(m.backbone.stage3[0].branch1[0].weight, ref.stage3[0].branch1[0].weight)
    torch.testing.assert_close(m.backbone.conv5[0].weight, ref.conv5[0].weight)
    torch.testing.assert_close(m.backbone.stem[1].running_mean, ref.conv1[1].running_mean)
    fresh = HGGEPModule(3, **SMALL)
    assert not torch.allclose(fresh.backbone.conv5[0].weight, ref.conv5[0].weight)

    trunk = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    torch.save({"state_dict": trunk}, tmp_path / "trunk.pth")
    m2 = HGGEPModule(3, **SMALL, backbone_weights=tmp_path / "trunk.pth")
    torch.testing.assert_close(m2.backbone.conv5[0].weight, ref.conv5[0].weight)

    torch.save(torchvision.models.shufflenet_v2_x1_0().state_dict(), tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="does not match"):
        HGGEPModule(3, **SMALL, backbone_weights=str(tmp_path / "wrong.pt"))
    with pytest.raises(FileNotFoundError):
        HGGEPModule(3, **SMALL, backbone_weights=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="torchvision weights name"):
        HGGEPModule(3, **SMALL, backbone_weights="NOT_A_WEIGHT")


def test_backbone_weights_by_torchvision_name(monkeypatch):
    # No network here: serve the "download" from memory to check the name is resolved and loaded.
    torch.manual_seed(5)
    ref = torchvision.models.shufflenet_v2_x0_5()
    urls = []

    def fake_download(url, *args, **kwargs):
        urls.append(url)
        return ref.state_dict()

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake_download)
    m = HGGEPModule(3, **SMALL, backbone_weights="IMAGENET1K_V1")
    assert len(urls) == 1 and "shufflenet" in urls[0]
    torch.testing.assert_close(m.backbone.conv5[0].weight, ref.conv5[0].weight)


def test_state_dict_round_trip_through_safetensors(tmp_path):
    import safetensors.torch as safetensors_torch

    torch.manual_seed(6)
    m = HGGEPModule(5, **SMALL).eval()
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(m.state_dict(), str(path))  # fails on shared or non-contiguous tensors
    torch.manual_seed(7)
    m2 = HGGEPModule(5, **SMALL).eval()
    m2.load_state_dict(safetensors_torch.load_file(str(path)))
    b = _planted_batch(6, 5, px=64)
    with torch.no_grad():
        torch.testing.assert_close(
            m(b["patches"], b["coords"], b["positions"])["pred"], m2(b["patches"], b["coords"], b["positions"])["pred"]
        )


def test_input_validation():
    m = HGGEPModule(4, **SMALL)
    b = _planted_batch(6, 4, px=64)
    with pytest.raises(ValueError, match="coords"):
        m(b["patches"], b["coords"][:5], b["positions"])
    with pytest.raises(ValueError, match="positions"):
        m(b["patches"], b["coords"])
    with pytest.raises(ValueError, match="patches"):
        m(b["patches"][:, :1], b["coords"], b["positions"])
    with pytest.raises(ValueError, match="max_coord"):
        m(b["patches"], b["coords"] + 500, b["positions"])
    with pytest.raises(KeyError, match="size_factors"):
        m.loss({k: v for k, v in b.items() if k != "size_factors"})
    with pytest.raises(ValueError, match="target"):
        m.loss({**b, "target": b["target"][:, :2]})
    with pytest.raises(ValueError, match="dim"):
        HGGEPModule(4, **{**SMALL, "dim": 72})
    with pytest.raises(ValueError, match="backbone"):
        HGGEPModule(4, **SMALL, backbone="resnet18")


def test_step_norm_makes_the_lstm_input_scale_free():
    # The ViT/HAM residual stream can grow large; with step_norm the LSTM sees the same inputs at any scale
    # (no gate saturation), without it the representation changes.
    torch.manual_seed(0)
    x, coords, pos = torch.randn(12, 3, 112, 112), torch.randint(0, 30, (12, 2)), torch.rand(12, 2) * 100
    for step_norm in (True, False):
        cfg = {**HGGEP_BENCH["cpu_small"]["config"], "use_ham": False, "step_norm": step_norm}
        m = HGGEPModule(5, **cfg).eval()
        h = m(x, coords, pos)["hidden"]
        for vit in m.vits:
            vit.register_forward_hook(lambda _, __, out: out * 50.0)
        h_big = m(x, coords, pos)["hidden"]
        if step_norm:
            torch.testing.assert_close(h_big, h, atol=1e-4, rtol=1e-3)
        else:
            assert (h_big - h).abs().max() > 1e-2


def test_bf16_autocast_forward_and_loss():
    # Mixed precision (the GPU benchmark's bf16 runs): the LSTM is kept in float32 (oneDNN has no bf16 LSTM).
    torch.manual_seed(5)
    m = HGGEPModule(7, **SMALL)
    b = _planted_batch(8, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.loss(b)
    assert out["pred"].dtype == torch.bfloat16 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in m.parameters())


def _distinct_step_norms(m, gen):
    """Give each LSTM-step LayerNorm its own affine weights (at init they are all identical)."""
    with torch.no_grad():
        for norm in m.step_norms:
            norm.weight.copy_(torch.rand(norm.weight.shape, generator=gen) * 2 + 0.5)
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=gen))


def test_forward_matches_the_pipeline_written_out_by_hand():
    """Eval mode: forward = the documented pipeline recomputed from the submodules (stage projections, one coordinate
    embedding for the three ViTs, HAM on z3 + z4 + z5 with the spot positions, one LayerNorm per LSTM step in
    order, LSTM over the steps with spots as the batch, mean over the steps, heads)."""
    from scst.nn._hypergraph import knn_hyperedges

    torch.manual_seed(8)
    gen = torch.Generator().manual_seed(8)
    m = HGGEPModule(6, **SMALL).eval()
    _distinct_step_norms(m, gen)
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for proj in m.stage_proj:
            proj.norm.running_mean.copy_(torch.randn(proj.norm.running_mean.shape, generator=gen))
            proj.norm.running_var.copy_(torch.rand(proj.norm.running_var.shape, generator=gen) + 0.5)
    b = _planted_batch(10, 6)  # 112 px: stage3 is 7x7, so the 4x4 average pool matters
    patches, coords, positions = b["patches"], b["coords"], b["positions"]
    # positions that disagree with the grid coordinates: the hyperedges must follow ``positions``
    positions = positions[torch.randperm(10, generator=gen)]
    with torch.no_grad():
        out = m(patches, coords, positions)
        # stage projections: CBAM, BatchNorm, 1x1 conv, 4x4 average pool, flatten
        maps = m.backbone(m.gem(patches))
        tokens = []
        for proj, s in zip(m.stage_proj, maps):
            y = proj.reduce(proj.norm(proj.cbam(s)))
            tokens.append(F.adaptive_avg_pool2d(y, 4).flatten(1))
        torch.testing.assert_close(m.encode_patches(patches), torch.stack(tokens))
        # a 7x7 map that varies in space (the random-weight backbone's maps are nearly flat): average pool
        proj, s3 = m.stage_proj[0], torch.randn(4, 96, 7, 7, generator=gen)
        pooled = F.adaptive_avg_pool2d(proj.reduce(proj.norm(proj.cbam(s3))), 4).flatten(1)
        torch.testing.assert_close(proj(s3), pooled)
        pos = m.coord_embed(coords)
        z = [vit(t + pos) for vit, t in zip(m.vits, tokens)]
        fused = z[0] + z[1] + z[2]
        edges = knn_hyperedges(fused, positions, k=3)
        hg = m.ham.conv2(m.ham.norm(torch.relu(m.ham.conv1(fused, edges, num_edges=10))), edges, num_edges=10)
        steps = [norm(s) for norm, s in zip(m.step_norms, [*z, hg + fused])]
        seq = torch.stack(
            [m.lstm(torch.stack(steps)[:, i : i + 1])[0][:, 0] for i in range(10)], dim=1
        )  # spot by spot: the LSTM never mixes spots
        h = seq.mean(0)
    torch.testing.assert_close(out["hidden"], h, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["pred"], m.gene_head(h), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["zinb_mean"], torch.exp(m.zinb_mean(h)), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["zinb_disp"], F.softplus(m.zinb_disp(h)), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["zinb_pi"], torch.sigmoid(m.zinb_pi(h)), rtol=1e-4, atol=1e-6)


def test_zinb_heads_are_clamped_to_the_documented_ranges():
    torch.manual_seed(9)
    m = HGGEPModule(3, **SMALL).eval()
    b = _planted_batch(5, 3, px=64)
    # mean exp(clamped logit) in [1e-5, 1e6], dispersion softplus(.) in [1e-4, 1e4]
    for (mean_logit, mean), (disp_logit, disp) in (((60.0, 1e6), (2e4, 1e4)), ((-60.0, 1e-5), (-60.0, 1e-4))):
        with torch.no_grad():
            for head, logit in ((m.zinb_mean, mean_logit), (m.zinb_disp, disp_logit)):
                head.weight.zero_()
                head.bias.fill_(logit)
            out = m(b["patches"], b["coords"], b["positions"])
        torch.testing.assert_close(out["zinb_mean"], torch.full((5, 3), mean), rtol=1e-4, atol=0.0)
        torch.testing.assert_close(out["zinb_disp"], torch.full((5, 3), disp), rtol=1e-5, atol=0.0)


def test_loss_terms_match_their_formulas():
    """mse is the mean squared error of the returned predictions; zinb the mean ZINB NLL of the counts with the
    mean scaled by the size factors; loss = mse + zinb_weight * zinb."""
    from scst.nn._layers import zinb_nll

    torch.manual_seed(10)
    m = HGGEPModule(4, **SMALL, zinb_weight=0.7).eval()
    b = _planted_batch(8, 4, px=64)
    b["size_factors"] = torch.linspace(0.25, 4.0, 8)  # far from 1: dropping them changes the NLL
    with torch.no_grad():
        out = m(b["patches"], b["coords"], b["positions"])
        got = m.loss(b)
    torch.testing.assert_close(got["pred"], out["pred"])
    torch.testing.assert_close(got["mse"], ((out["pred"] - b["target"]) ** 2).mean())
    expected = zinb_nll(b["counts"], out["zinb_mean"], out["zinb_disp"], out["zinb_pi"], size_factors=b["size_factors"])
    torch.testing.assert_close(got["zinb"], expected)
    torch.testing.assert_close(got["loss"], got["mse"] + 0.7 * got["zinb"])


def test_sections_with_fewer_spots_than_k():
    """Tiny inference batches (fewer spots than a hyperedge holds) use every spot: no error, one row per spot."""
    torch.manual_seed(11)
    m = HGGEPModule(3, **SMALL).eval()
    b = _planted_batch(4, 3, px=64)
    with torch.no_grad():
        for n in (1, 2):
            out = m(b["patches"][:n], b["coords"][:n], b["positions"][:n])
            assert out["pred"].shape == (n, 3) and torch.isfinite(out["pred"]).all()


@pytest.mark.parametrize("step_norm", [True, False])
def test_lstm_runs_in_float32_under_bf16_autocast(step_norm):
    torch.manual_seed(12)
    m = HGGEPModule(3, **SMALL, step_norm=step_norm)
    b = _planted_batch(6, 3, px=64)
    seen = []
    m.lstm.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].dtype, out[0].dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(b["patches"], b["coords"], b["positions"])
    assert seen == [(torch.float32, torch.float32)] and out["hidden"].dtype == torch.float32


def test_constructor_and_loss_reject_bad_arguments():
    b = _planted_batch(6, 4, px=64)
    for key, value in (("k", 0), ("k", True), ("lstm_layers", 0), ("n_genes", 2.0)):
        kw = {**SMALL, "n_genes": 4, key: value}
        with pytest.raises(ValueError, match=f"{key} must be a positive int"):
            HGGEPModule(**kw)
    with pytest.raises(ValueError, match=r"vit_heads \(6\) must divide dim \(64\)"):
        HGGEPModule(4, **{**SMALL, "vit_heads": 6})
    with pytest.raises(ValueError, match="dropout"):
        HGGEPModule(4, **{**SMALL, "dropout": 1.0})
    with pytest.raises(ValueError, match="zinb_weight"):
        HGGEPModule(4, **SMALL, zinb_weight=-0.1)
    m = HGGEPModule(4, **SMALL)
    with pytest.raises(ValueError, match="floating point"):
        m((b["patches"] * 50).to(torch.uint8), b["coords"], b["positions"])
    with pytest.raises(ValueError, match="empty"):
        m(b["patches"][:0], b["coords"][:0], b["positions"][:0])
    with pytest.raises(ValueError, match=r"positions \(n, 2\) is required when use_ham=True"):
        m(b["patches"], b["coords"])
    with pytest.raises(ValueError, match=r"positions must be a \(6, 2\) tensor"):
        m(b["patches"], b["coords"], b["positions"][:5])
    with pytest.raises(KeyError, match="positions"):
        m.loss({k: v for k, v in b.items() if k != "positions"})
    with pytest.raises(ValueError, match=r"batch\['counts'\] must have shape"):
        m.loss({**b, "counts": b["counts"][:, :3]})


def test_defaults_are_the_paper_network_and_theta_reaches_gem():
    with torch.device("meta"):
        m = HGGEPModule(9)
        paper = HGGEPModule(9, **HGGEP_BENCH["paper"]["config"])
        small = HGGEPModule(9, **HGGEP_BENCH["cpu_small"]["config"], theta=0.4)
    assert str(m) == str(paper) and (m.k, m.zinb_weight) == (3, 0.25) and m.ham.dropout.p == 0.2
    assert m.gem.cdc[0].theta == 0.7 and small.gem.cdc[0].theta == 0.4
    assert m.use_gem and m.use_cbam and m.use_ham and m.use_zinb and m.step_norms is not None
    # the CPU benchmark network: one ViT block per stage, one LSTM layer of 128
    assert all(len(v.blocks) == 1 for v in small.vits) and (small.lstm.num_layers, small.lstm.hidden_size) == (1, 128)


def test_ham_dropout_between_the_convolutions_only_in_training():
    """HAM = conv2(dropout(LayerNorm(ReLU(conv1(x))))) + x, the dropout active in training only."""
    from scst.nn._hggep import _HypergraphAssociation
    from scst.nn._hypergraph import knn_hyperedges

    torch.manual_seed(13)
    ham = _HypergraphAssociation(8, 6, dropout=0.5)
    x, pos = torch.randn(7, 8), torch.rand(7, 2) * 100
    edges = knn_hyperedges(x, pos, k=3)

    def by_hand(training):
        h = F.dropout(ham.norm(torch.relu(ham.conv1(x, edges, num_edges=7))), 0.5, training=training)
        return ham.conv2(h, edges, num_edges=7) + x

    with torch.no_grad():
        torch.manual_seed(0)
        train_out = ham.train()(x, edges)
        torch.manual_seed(0)
        torch.testing.assert_close(train_out, by_hand(True))
        torch.testing.assert_close(ham.eval()(x, edges), by_hand(False))
    assert (train_out - by_hand(False)).abs().max() > 1e-3  # the dropout did act in training


def test_float64_module_matches_float32_and_spots_are_permutation_equivariant():
    """model.double() runs (the LSTM input followed a fixed .float() → dtype error) and agrees with float32;
    permuting the spots permutes every output (the LSTM runs over the steps, the spots are its batch)."""
    torch.manual_seed(0)
    m = HGGEPModule(5, **{**SMALL, "vit_depth": 1, "lstm_layers": 1}).eval()
    n = 6
    patches, coords, pos = torch.randn(n, 3, PX, PX), torch.randint(0, 20, (n, 2)), torch.rand(n, 2) * 100
    with torch.no_grad():
        out = m(patches, coords, pos)
        perm = torch.randperm(n)
        out_p = m(patches[perm], coords[perm], pos[perm])
        m64 = copy.deepcopy(m).double()
        out64 = m64(patches.double(), coords, pos.double())
    for key, value in out.items():
        torch.testing.assert_close(out_p[key], value[perm], atol=1e-4, rtol=1e-4)
        assert out64[key].dtype == torch.float64
        torch.testing.assert_close(out64[key].float(), value, atol=1e-3, rtol=1e-3)


def test_ablated_networks_run_without_cbam_or_spot_positions():
    """use_cbam=False: a stage projection is BatchNorm, 1×1 conv and the 4×4 pool, nothing else; use_ham=False:
    ``loss`` and ``forward_windows`` need no ``positions`` and give what they give with positions (unused)."""
    torch.manual_seed(5)
    proj = HGGEPModule(7, **SMALL, use_cbam=False).eval().stage_proj[0]
    x = torch.randn(2, proj.norm.num_features, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(proj(x), F.adaptive_avg_pool2d(proj.reduce(proj.norm(x)), 4).flatten(1))
    no_ham = HGGEPModule(7, **SMALL, use_ham=False).eval()
    b = _planted_batch(8, 7)
    without = {k: v for k, v in b.items() if k != "positions"}
    with torch.no_grad():
        torch.testing.assert_close(no_ham.loss(without)["loss"], no_ham.loss(b)["loss"], rtol=0, atol=0)
        tokens = no_ham.encode_patches(b["patches"])
        windows = torch.stack([tokens[:, :4], tokens[:, 4:]], 1)
        coords = torch.stack([b["coords"][:4], b["coords"][4:]])
        many = no_ham.forward_windows(windows, coords, None)
        one = no_ham.forward_tokens(tokens[:, 4:], b["coords"][4:])
    torch.testing.assert_close(many["pred"][1], one["pred"], rtol=1e-5, atol=1e-5)
