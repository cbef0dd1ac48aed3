import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from scst.nn._layers import (
    CBAM,
    GEM,
    CDCConv2d,
    CoordEmbedding,
    SpotTransformer,
    ViTBlock,
    ZINBLoss,
    zinb_nll,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cdc_by_hand(x, w, theta, stride=1):
    """Eq. 2 literally: sum over the 3x3 neighbourhood minus theta * centre pixel * sum of the kernel."""
    n, c, h, wd = x.shape
    o = w.shape[0]
    xp = F.pad(x, (1, 1, 1, 1))
    hs, ws = range(0, h, stride), range(0, wd, stride)
    out = torch.zeros(n, o, len(hs), len(ws), dtype=x.dtype)
    for oi, i in enumerate(hs):
        for oj, j in enumerate(ws):
            window = xp[:, :, i : i + 3, j : j + 3]  # centred on input pixel (i, j)
            centre = x[:, :, i, j]
            for q in range(o):
                out[:, q, oi, oj] = (window * w[q]).sum((1, 2, 3)) - theta * (centre * w[q].sum((1, 2))).sum(1)
    return out


@pytest.mark.parametrize("stride", [1, 2])
def test_cdc_matches_hand_formula(stride):
    torch.manual_seed(0)
    conv = CDCConv2d(2, 3, 3, stride=stride, theta=0.7).double()
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    expected = _cdc_by_hand(x, conv.weight.detach(), 0.7, stride)
    torch.testing.assert_close(conv(x), expected)
    # The authors' two-convolution form: plain conv minus theta * 1x1 conv with the summed kernel.
    w = conv.weight.detach()
    two_conv = F.conv2d(x, w, stride=stride, padding=1) - 0.7 * F.conv2d(x, w.sum((2, 3), keepdim=True), stride=stride)
    torch.testing.assert_close(conv(x), two_conv)


def test_cdc_theta_zero_is_plain_conv():
    torch.manual_seed(1)
    conv = CDCConv2d(3, 4, 3, theta=0.0)
    x = torch.randn(1, 3, 9, 9)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, padding=1))


def test_cdc_constant_image_known_output():
    conv = CDCConv2d(1, 1, 3, theta=0.7).double()
    with torch.no_grad():
        conv.weight.copy_(torch.arange(1.0, 10.0, dtype=torch.float64).reshape(1, 1, 3, 3))
    x = torch.full((1, 1, 5, 5), 2.0, dtype=torch.float64)
    out = conv(x)[0, 0]
    # Interior: (1 - theta) * c * sum(w) = 0.3 * 2 * 45 = 27; the gradient of a flat image vanishes.
    torch.testing.assert_close(out[1:-1, 1:-1], torch.full((3, 3), 27.0, dtype=torch.float64))
    # Top-left corner sees only taps 5, 6, 8, 9 (zero padding): 2 * 28 - 0.7 * 2 * 45 = -7.
    assert out[0, 0].item() == pytest.approx(-7.0)


def test_cdc_cross_kernel_ignores_corners():
    torch.manual_seed(2)
    conv = CDCConv2d(2, 2, 3, theta=0.7, cross=True)
    x = torch.randn(1, 2, 6, 6)
    conv(x).sum().backward()
    corners = conv.weight.grad[:, :, [0, 0, 2, 2], [0, 2, 0, 2]]
    assert torch.all(corners == 0)
    assert conv.weight.grad[:, :, 1, 1].abs().sum() > 0
    masked = conv.weight.detach() * torch.tensor([[0.0, 1, 0], [1, 1, 1], [0, 1, 0]])
    expected = F.conv2d(x, masked, padding=1) - 0.7 * F.conv2d(x, masked.sum((2, 3), keepdim=True))
    torch.testing.assert_close(conv(x), expected)


def test_cdc_rejects_bad_arguments():
    with pytest.raises(ValueError, match="padding"):
        CDCConv2d(1, 1, 3, padding=0)
    with pytest.raises(ValueError, match="kernel_size"):
        CDCConv2d(1, 1, 4)
    with pytest.raises(ValueError, match="theta"):
        CDCConv2d(1, 1, 3, theta=1.5)


def test_gem_shapes_and_gradient_branch():
    torch.manual_seed(3)
    gem = GEM()
    x = torch.randn(2, 3, 112, 112)
    assert gem(x).shape == (2, 3, 56, 56)
    assert gem.cdc[0].theta == 0.7
    assert gem.mix[0].in_channels == 6  # 3 + 3 concatenated: "3 -> 6 -> 3"
    wide = GEM(branch_channels=6)
    assert wide.mix[0].in_channels == 12 and wide(x).shape == (2, 3, 56, 56)
    # Output is post-ReLU6: bounded in [0, 6].
    out = gem(x)
    assert out.min() >= 0 and out.max() <= 6


def test_cbam_shapes_attention_range_and_composition():
    torch.manual_seed(4)
    cbam = CBAM(32)
    assert cbam.channel_attention.mlp[0].out_channels == 2  # 32 / 16
    assert cbam.spatial_attention.conv.kernel_size == (7, 7)
    x = torch.randn(3, 32, 8, 8) * 5
    ca = cbam.channel_attention(x)
    assert ca.shape == (3, 32, 1, 1)
    sa = cbam.spatial_attention(x * ca)
    assert sa.shape == (3, 1, 8, 8)
    for att in (ca, sa):
        assert att.min() >= 0 and att.max() <= 1
    torch.testing.assert_close(cbam(x), x * ca * sa)
    # The spatial map follows the input: zeroing a region of a positive map changes the attention there.
    pos = x.abs()
    masked = pos.clone()
    masked[:, :, :4] = 0
    a1, a2 = cbam.spatial_attention(pos), cbam.spatial_attention(masked)
    assert not torch.allclose(a1[:, :, :4], a2[:, :, :4])


def test_zinb_pi_zero_equals_scipy_nbinom():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, size=(6, 5)).astype(float)
    x[0, :3] = 0
    mu = rng.uniform(0.5, 10, size=x.shape)
    theta = rng.uniform(0.3, 5, size=x.shape)
    expected = -stats.nbinom.logpmf(x, theta, theta / (theta + mu))
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    got = zinb_nll(t(x), t(mu), t(theta), torch.zeros_like(t(x)), eps=0.0, reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)
    assert zinb_nll(t(x), t(mu), t(theta), torch.zeros_like(t(x)), eps=0.0).item() == pytest.approx(expected.mean())


def test_zinb_zero_inflation_and_size_factors_direct_formula():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 6, size=(4, 7)).astype(float)
    mu, theta, pi = rng.uniform(0.5, 4, x.shape), rng.uniform(0.5, 3, x.shape), rng.uniform(0.05, 0.6, x.shape)
    sf = np.array([0.5, 1.0, 2.0, 1.5])
    mu_s = mu * sf[:, None]
    nb = stats.nbinom.pmf(x, theta, theta / (theta + mu_s))
    expected = np.where(x == 0, -np.log(pi + (1 - pi) * nb), -np.log((1 - pi) * nb))
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    got = zinb_nll(t(x), t(mu), t(theta), t(pi), eps=0.0, size_factors=t(sf), reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9)
    assert ZINBLoss(eps=0.0, reduction="sum")(t(x), t(mu), t(theta), t(pi), t(sf)).item() == pytest.approx(
        expected.sum()
    )


def test_zinb_zero_counts_float32_large_dispersion():
    # P(0) = pi + (1 - pi) (theta / (theta + mu))^theta; with theta up to the heads' clamp (1e4) and beyond, the
    # exponent must not come from log(theta) - log(theta + mu), which cancels in float32.
    theta = np.array([1e2, 1e3, 1e4, 1e4, 1e6])
    mu = np.array([0.1, 0.5, 0.1, 2.0, 1.0])
    pi = np.full_like(mu, 0.1)
    nb0 = stats.nbinom.pmf(0, theta, theta / (theta + mu))
    expected = -np.log(pi + (1 - pi) * nb0)
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)[None]  # noqa: E731
    got = zinb_nll(t(np.zeros_like(mu)), t(mu), t(theta), t(pi), reduction="none")[0]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4)


def test_zinb_lower_for_true_parameters():
    gen = torch.Generator().manual_seed(5)
    n, g = 3000, 4
    mu = torch.tensor([0.5, 2.0, 8.0, 20.0]).expand(n, g)
    theta = torch.tensor([1.0, 2.0, 0.5, 5.0]).expand(n, g)
    pi = torch.tensor([0.3, 0.1, 0.5, 0.2]).expand(n, g)
    sf = torch.empty(n).uniform_(0.5, 2.0, generator=gen)
    # NB as a Gamma-Poisson mixture, then structural zeros with probability pi.
    rate = torch._standard_gamma(theta.contiguous(), generator=gen) / theta * mu * sf[:, None]
    x = torch.poisson(rate, generator=gen) * (torch.rand(n, g, generator=gen) >= pi)
    true = zinb_nll(x, mu, theta, pi, size_factors=sf).item()
    assert math.isfinite(true)
    for wrong in [
        (mu * 2, theta, pi),
        (mu / 2, theta, pi),
        (mu, theta * 5, pi),
        (mu, theta / 5, pi),
        (mu, theta, torch.zeros_like(pi)),
        (mu, theta, (pi + 0.3).clamp(max=0.95)),
    ]:
        assert zinb_nll(x, *wrong, size_factors=sf).item() > true
    # Ignoring the size factors is also worse.
    assert zinb_nll(x, mu, theta, pi).item() > true


def test_zinb_validates_shapes():
    z = torch.ones(2, 3)
    with pytest.raises(ValueError, match="same shape"):
        zinb_nll(z, torch.ones(2, 2), z, z)
    with pytest.raises(ValueError, match="size_factors"):
        zinb_nll(z, z, z, z * 0.1, size_factors=torch.ones(3))
    with pytest.raises(ValueError, match="reduction"):
        zinb_nll(z, z, z, z * 0.1, reduction="median")


def test_vit_block_is_prenorm_formula():
    torch.manual_seed(6)
    block = ViTBlock(16, heads=4).eval()
    x = torch.randn(1, 5, 16)
    h = block.norm1(x)
    x1 = x + block.self_attn(h, h, h, need_weights=False)[0]
    expected = x1 + block.linear2(F.gelu(block.linear1(block.norm2(x1))))
    torch.testing.assert_close(block(x), expected)
    assert block.linear1.out_features == 16  # 2-layer feed-forward, hidden = dim by default


def test_spot_transformer_permutation_and_coordinate_embedding():
    torch.manual_seed(7)
    plain = SpotTransformer(32, depth=2, heads=8, max_coord=None).eval()
    x = torch.randn(10, 32)
    perm = torch.randperm(10)
    # Self-attention without positions is permutation-equivariant over spots.
    torch.testing.assert_close(plain(x)[perm], plain(x[perm]), rtol=1e-5, atol=1e-5)
    assert len(plain.blocks) == 2

    tr = SpotTransformer(32, depth=1, heads=8, max_coord=20).eval()
    same = torch.randn(1, 32).expand(4, 32)
    coords = torch.tensor([[0, 0], [0, 1], [5, 0], [0, 0]])
    out = tr(same, coords)
    assert out.shape == (4, 32)
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[0], out[2])
    torch.testing.assert_close(out[0], out[3])  # same features, same coordinates
    assert tr(same.unsqueeze(0), coords.unsqueeze(0)).shape == (1, 4, 32)
    with pytest.raises(ValueError, match="max_coord"):
        tr(same, torch.tensor([[0, 0], [0, 1], [20, 0], [0, 0]]))
    with pytest.raises(ValueError, match="coords is required"):
        tr(same)


def test_coord_embedding_is_row_plus_col():
    emb = CoordEmbedding(8, 4)
    c = torch.tensor([[2, 5]])
    torch.testing.assert_close(emb(c), emb.row_embed.weight[2:3] + emb.col_embed.weight[5:6])
    with pytest.raises(ValueError, match="integer"):
        emb(c.float())


def test_cbam_attentions_by_hand_and_gem_uses_its_cdc_branch():
    """Identity MLP: channel weights sigmoid(avg + max) per channel; spatial conv reading only the mean channel:
    sigmoid(mean over channels). GEM's output depends on its central-difference branch."""
    from scst.nn._layers import GEM, ChannelAttention, SpatialAttention

    ca = ChannelAttention(2, reduction=1)
    with torch.no_grad():
        for conv in (ca.mlp[0], ca.mlp[2]):
            conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
    x = torch.tensor([[[[0.0, 0.0], [0.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]]]])  # avg (1, 1), max (4, 1)
    torch.testing.assert_close(ca(x).flatten(), torch.sigmoid(torch.tensor([5.0, 2.0])))
    sa = SpatialAttention(kernel_size=1)
    with torch.no_grad():
        sa.conv.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
        sa.conv.bias.zero_()
    y = torch.tensor([[[[0.0]], [[4.0]]]])  # mean 2, max 4
    torch.testing.assert_close(sa(y).flatten(), torch.sigmoid(torch.tensor([2.0])))
    torch.manual_seed(0)
    gem = GEM(3).eval()
    img = torch.randn(1, 3, 8, 8)
    before = gem(img)
    with torch.no_grad():
        gem.cdc[0].weight.mul_(-1.0)
    assert (gem(img) - before).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("build", "match"),
    [(lambda: CDCConv2d(2, 2, kernel_size=5, cross=True), r"cross=True needs kernel_size=3, got 5"),
     (lambda: CBAM(8, reduction=2, kernel_size=4), r"kernel_size must be odd, got 4"),
     (lambda: CoordEmbedding(0, 4), r"max_coord must be positive, got 0"),
     (lambda: ViTBlock(30, heads=8), r"heads \(8\) must divide dim \(30\)"),
     (lambda: SpotTransformer(8, depth=0, heads=2), r"depth must be at least 1, got 0")],
)  # fmt: skip
def test_bad_layer_settings_are_named(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_spot_transformer_bad_shapes_are_named():
    tr = SpotTransformer(8, depth=1, heads=2, max_coord=10)
    with pytest.raises(ValueError, match=r"x must have shape \(n, dim\) or \(b, n, dim\), got \(1, 2, 3, 8\)"):
        tr(torch.zeros(1, 2, 3, 8), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"coords must have one row per token \(3\), got \(2, 2\)"):
        tr(torch.zeros(3, 8), torch.zeros(2, 2, dtype=torch.long))
