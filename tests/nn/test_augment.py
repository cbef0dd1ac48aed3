"""H&E augmentations: HED round trip, stain jitter bounds, dihedral group, blur and scale crops (hand-checkable)."""

from __future__ import annotations

import math

import pytest
import torch

from scst.nn._augment import (
    _OD_EPS,
    RGB_FROM_HED,
    HEAugment,
    gaussian_blur,
    hed_jitter,
    hed_to_rgb,
    random_dihedral,
    random_resized_crop,
    rgb_to_hed,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rgb_of_stains(conc: torch.Tensor) -> torch.Tensor:
    """RGB (B, 3, 1, 1) of stain concentrations (B, 3) by hand: OD = conc @ M, rgb = exp(-OD)(1 + eps) - eps."""
    od = conc.double() @ RGB_FROM_HED
    return (torch.exp(-od) * (1 + _OD_EPS) - _OD_EPS).view(-1, 3, 1, 1)


def test_hed_of_white_and_pure_stains():
    # White glass has no stain; an image made of haematoxylin only deconvolves to (c, 0, 0), and so on.
    white = torch.ones(1, 3, 2, 2, dtype=torch.float64)
    assert torch.allclose(rgb_to_hed(white), torch.zeros(1, 3, 2, 2, dtype=torch.float64), atol=1e-12)
    conc = torch.tensor([[0.6, 0.0, 0.0], [0.0, 0.4, 0.0], [0.3, 0.2, 0.0]], dtype=torch.float64)
    hed = rgb_to_hed(_rgb_of_stains(conc)).view(3, 3)
    assert torch.allclose(hed, conc, atol=1e-9)
    # Haematoxylin's OD vector (0.65, 0.70, 0.29) absorbs green most and blue least: a blue-purple pixel.
    rgb_h = _rgb_of_stains(conc[:1]).view(3)
    assert rgb_h[2] > rgb_h[0] > rgb_h[1]


def test_hed_round_trip_is_identity_and_zero_jitter_changes_nothing():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 16, 16), generator=g).float() / 255
    assert torch.allclose(hed_to_rgb(rgb_to_hed(x)), x, atol=1e-5)
    assert torch.allclose(hed_jitter(x, sigma=0.0, bias=0.0, generator=g), x, atol=1e-5)


def test_hed_jitter_bfloat16_zero_jitter_changes_at_most_one_rounding():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    y = hed_jitter(x, sigma=0.0, bias=0.0)
    assert y.dtype == torch.bfloat16
    # the log/exp round trip runs in float32: only the final rounding to bfloat16 remains (< 1 ulp at 1 = 2**-8)
    assert float((y.float() - x.float()).abs().max()) < 2**-8


def test_hed_jitter_changes_only_stain_intensities_within_bounds():
    # Tissue-like pixels (no clipping): after jitter, each image's stain concentrations must be an affine function
    # hed' = a * hed + b of the original, per stain channel, with a in [1 - sigma, 1 + sigma], b in [-bias, bias].
    g = torch.Generator().manual_seed(1)
    lo, span = torch.tensor([0.1, 0.1, 0.1], dtype=torch.float64), torch.tensor([0.7, 0.5, 0.05], dtype=torch.float64)
    conc = lo + torch.rand(8 * 64, 3, generator=g, dtype=torch.float64) * span  # no channel clips at 0 or 1
    x = _rgb_of_stains(conc).view(8, 64, 3).permute(0, 2, 1).reshape(8, 3, 8, 8).float()
    sigma, bias = 0.2, 0.05
    y = hed_jitter(x, sigma=sigma, bias=bias, generator=g)
    assert not torch.allclose(y, x, atol=1e-3)
    h0, h1 = rgb_to_hed(x.double()).flatten(2), rgb_to_hed(y.double()).flatten(2)  # (8, 3, 64)
    for i in range(8):
        for c in range(2):  # H and E vary across pixels; DAB is near 0 here, fit only its shift
            A = torch.stack([h0[i, c], torch.ones_like(h0[i, c])], 1)
            a, b = torch.linalg.lstsq(A, h1[i, c]).solution
            assert 1 - sigma - 1e-3 <= a <= 1 + sigma + 1e-3
            assert -bias - 2e-3 <= b <= bias + 2e-3
            assert torch.allclose(a * h0[i, c] + b, h1[i, c], atol=5e-3)  # nothing but an affine stain change
    # Pixels are not moved: the jitter is pointwise (a spatially constant image stays constant).
    flat = _rgb_of_stains(torch.tensor([[0.5, 0.3, 0.0]])).float().expand(1, 3, 5, 5).contiguous()
    out = hed_jitter(flat, 0.2, 0.05, generator=g)
    assert torch.allclose(out, out[..., :1, :1].expand_as(out), atol=1e-6)


def test_random_dihedral_gives_the_eight_group_elements():
    x = torch.arange(2 * 16, dtype=torch.float32).view(1, 2, 4, 4)
    x = torch.cat([x, x + 100], 1)[:, :3]  # (1, 3, 4, 4), all values distinct
    xb = x.expand(64, 3, 4, 4).contiguous()
    y = random_dihedral(xb, generator=torch.Generator().manual_seed(0))
    group = [torch.rot90(v, k, (2, 3)) for v in (x, x.flip(-1)) for k in range(4)]
    hits = [next(j for j, gx in enumerate(group) if torch.equal(y[i : i + 1], gx)) for i in range(64)]  # noqa: B023
    assert sorted(set(hits)) == list(range(8))
    with pytest.raises(ValueError, match="square"):
        random_dihedral(torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match=r"batch of images \(B, C, H, W\)"):
        random_dihedral(torch.zeros(3, 4, 4))
    # uint8 patches move exactly like floats (the multimodal loader flips uint8 patches)
    yu = random_dihedral(xb.to(torch.uint8), generator=torch.Generator().manual_seed(0))
    assert yu.dtype == torch.uint8 and torch.equal(yu.float(), y)


def test_gaussian_blur_per_image_sigma():
    x = torch.zeros(3, 1, 41, 41)
    x[:, :, 20, 20] = 1.0
    y = gaussian_blur(x, torch.tensor([0.0, 1.0, 3.0]))
    assert torch.equal(y[0], x[0])  # sigma 0: untouched
    r = (torch.arange(41) - 20.0) ** 2
    for i, s in ((1, 1.0), (2, 3.0)):
        assert y[i].sum().item() == pytest.approx(1.0, abs=1e-5)  # mass kept
        var = (y[i, 0].sum(0) * r).sum().item()  # variance of the blurred impulse along x = sigma²
        assert var == pytest.approx(s**2, rel=0.02)
    const = torch.full((2, 3, 9, 9), 0.7)
    assert torch.allclose(gaussian_blur(const, 2.0), const, atol=1e-6)


def test_random_resized_crop_scale():
    ramp = torch.arange(32, dtype=torch.float32).view(1, 1, 1, 32).expand(4, 3, 32, 32).contiguous()
    same = random_resized_crop(ramp, scale=(1.0, 1.0))
    assert torch.allclose(same, ramp, atol=1e-4)
    # A crop of a quarter of the area has half the edge: the ramp rises by 1/2 per output pixel, inside the image.
    g = torch.Generator().manual_seed(0)
    y = random_resized_crop(ramp, scale=(0.25, 0.25), generator=g)
    step = y[:, 0, 5, 1:] - y[:, 0, 5, :-1]
    assert torch.allclose(step, torch.full_like(step, 0.5), atol=1e-4)
    assert y.min() >= 0 and y.max() <= 31
    assert not torch.allclose(y[0], y[1])  # one random position per image
    with pytest.raises(ValueError, match="scale"):
        random_resized_crop(ramp, scale=(0.0, 1.0))


def test_he_augment_views():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 24, 24, generator=g)
    aug = HEAugment()
    a = aug(x, generator=torch.Generator().manual_seed(3))
    b = aug(x, generator=torch.Generator().manual_seed(3))
    c = aug(x, generator=torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.allclose(a, c)
    with pytest.raises(ValueError, match="RGB batch"):
        aug(torch.rand(3, 24, 24))
    assert math.isfinite(float(a.sum()))


def test_optical_density_of_black_and_clipping_back_to_rgb():
    # black: OD = -log((0 + 1/255) / (1 + 1/255)) = log(256) in every channel
    black = torch.zeros(1, 3, 1, 1, dtype=torch.float64)
    od = torch.full((1, 3), math.log(256.0), dtype=torch.float64)
    torch.testing.assert_close(rgb_to_hed(black).view(1, 3), od @ torch.linalg.inv(RGB_FROM_HED))
    # negative concentrations (brighter than glass) give RGB above 1: clipped to white; huge ones to black
    conc = torch.tensor([[-1.0, -0.5, 0.0], [50.0, 50.0, 50.0]], dtype=torch.float64).view(2, 3, 1, 1)
    rgb = hed_to_rgb(conc)
    assert torch.equal(rgb[0], torch.ones(3, 1, 1, dtype=torch.float64))
    assert torch.equal(rgb[1], torch.zeros(3, 1, 1, dtype=torch.float64))


def test_hed_jitter_draws_centred_scales_and_shifts():
    # two pixels per image with different stain amounts: scale a and shift b of each stain follow from the pair
    conc = torch.tensor([[0.2, 0.1, 0.05], [0.9, 0.6, 0.05]], dtype=torch.float64)
    x = _rgb_of_stains(conc).view(1, 2, 3).permute(0, 2, 1).reshape(1, 3, 1, 2).expand(64, 3, 1, 2).contiguous()
    sigma, bias = 0.2, 0.05
    h = rgb_to_hed(hed_jitter(x, sigma, bias, generator=torch.Generator().manual_seed(0)))[:, :2, 0]  # (64, 2, 2)
    h0 = conc[:, :2].T  # (stain, pixel)
    a = (h[..., 1] - h[..., 0]) / (h0[:, 1] - h0[:, 0])
    b = h[..., 0] - a * h0[:, 0]
    assert (a >= 1 - sigma - 1e-6).all() and (a <= 1 + sigma + 1e-6).all()
    assert (b.abs() <= bias + 1e-6).all()
    # U(1 - sigma, 1 + sigma) and U(-bias, bias): both sides of 1 and of 0 are drawn (128 draws each)
    assert a.min() < 1 - sigma / 2 and a.max() > 1 + sigma / 2
    assert b.min() < -bias / 2 and b.max() > bias / 2
    with pytest.raises(ValueError, match="non-negative"):
        hed_jitter(x, sigma=-0.1)
    with pytest.raises(ValueError, match="non-negative"):
        hed_jitter(x, bias=-0.1)


def _blur_reference(x: torch.Tensor, sigma: float, k: int) -> torch.Tensor:
    """Separable Gaussian blur by hand: numpy-style reflect padding (no edge repeat), rows then columns."""
    p = (k - 1) // 2
    t = torch.arange(k, dtype=torch.float64) - p
    kern = torch.exp(-0.5 * (t / sigma) ** 2)
    kern = kern / kern.sum()
    img = x.double()[0, 0]
    h, w = img.shape
    refl = lambda i, n: -i if i < 0 else 2 * (n - 1) - i if i >= n else i  # noqa: E731
    tmp = torch.zeros(h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            tmp[i, j] = sum(kern[u] * img[i, refl(j + u - p, w)] for u in range(k))
    out = torch.zeros(h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            out[i, j] = sum(kern[u] * tmp[refl(i + u - p, h), j] for u in range(k))
    return out


def test_gaussian_blur_matches_reflect_reference_at_the_border():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 6, 7, generator=g, dtype=torch.float64)
    x[0, 0, 0, 0] = 5.0  # a bright corner: its mirror images decide the border values
    torch.testing.assert_close(gaussian_blur(x, 1.0)[0, 0], _blur_reference(x, 1.0, 7))  # k = 2 * ceil(3) + 1
    # a 3x3 image and sigma 2: the 13-wide kernel is cut to 5 (reflect padding needs pad < size)
    small = torch.rand(1, 1, 3, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(small, 2.0)[0, 0], _blur_reference(small, 2.0, 5))
    with pytest.raises(ValueError, match="kernel_size"):
        gaussian_blur(x, 1.0, kernel_size=4)


def test_random_resized_crop_rejects_area_above_one():
    with pytest.raises(ValueError, match="scale"):
        random_resized_crop(torch.zeros(1, 3, 8, 8), scale=(0.5, 2.0))
    with pytest.raises(ValueError, match="scale"):
        random_resized_crop(torch.zeros(1, 3, 8, 8), scale=(0.8, 0.5))


def test_he_augment_steps_known_answers():
    quiet = {"hed_sigma": 0.0, "hed_bias": 0.0}
    # a 9x9 grey image with a dark centre: the dihedral group leaves it as it is
    x = torch.full((4, 3, 9, 9), 0.8)
    x[:, :, 4, 4] = 0.2
    gen = torch.Generator().manual_seed(0)
    same = HEAugment(crop_scale=(1.0, 1.0), p_blur=0.0, **quiet)(x, generator=gen)
    torch.testing.assert_close(same, x, atol=1e-4, rtol=0)
    blurred = HEAugment(crop_scale=(1.0, 1.0), blur_sigma=(1.0, 1.0), p_blur=1.0, **quiet)(x, generator=gen)
    torch.testing.assert_close(blurred, gaussian_blur(x, 1.0), atol=1e-4, rtol=0)  # p_blur = 1: every image
    # stain jitter with hed_sigma only: a pure scale of each stain (same ratio at the centre and elsewhere)
    y = HEAugment(crop_scale=(1.0, 1.0), hed_sigma=0.3, hed_bias=0.0, p_blur=0.0)(x, generator=gen)
    h0, h1 = rgb_to_hed(x.double()), rgb_to_hed(y.double())
    ratio_c, ratio_o = h1[:, :2, 4, 4] / h0[:, :2, 4, 4], h1[:, :2, 0, 0] / h0[:, :2, 0, 0]
    torch.testing.assert_close(ratio_c, ratio_o, atol=2e-3, rtol=0)
    assert (ratio_c - 1).abs().max() > 0.02  # the scale did change
    # the crop comes first: a quarter-area crop of a horizontal ramp halves its slope (along x or, rotated, y)
    ramp = (0.2 + 0.6 * torch.arange(32.0) / 31).view(1, 1, 1, 32).expand(8, 3, 32, 32).contiguous()
    z = HEAugment(crop_scale=(0.25, 0.25), p_blur=0.0, **quiet)(ramp, generator=gen)
    slope = torch.maximum(
        (z[..., :, 1:] - z[..., :, :-1]).abs().mean((1, 2, 3)), (z[..., 1:, :] - z[..., :-1, :]).abs().mean((1, 2, 3))
    )
    torch.testing.assert_close(slope, torch.full((8,), 0.5 * 0.6 / 31), atol=2e-4, rtol=0)
    with pytest.raises(ValueError, match="blur_sigma"):
        HEAugment(blur_sigma=(2.0, 1.0))
    with pytest.raises(ValueError, match="p_blur"):
        HEAugment(p_blur=1.5)


def test_random_resized_crop_positions_cover_the_image_and_stay_inside():
    g = torch.Generator().manual_seed(0)
    # crops of a constant image are constant: no sample reaches outside the image (border pixels are replicated)
    ones = torch.ones(256, 3, 8, 8)
    torch.testing.assert_close(random_resized_crop(ones, scale=(0.25, 0.81), generator=g), ones)
    # half-edge crops of a 32 px ramp start anywhere in [0, 16] px: both halves of the range are drawn, along x and y
    ramp = torch.arange(32, dtype=torch.float32).view(1, 1, 1, 32).expand(64, 3, 32, 32)
    for img, first in ((ramp, lambda y: y[:, 0, 5, 0]), (ramp.transpose(2, 3), lambda y: y[:, 0, 0, 5])):
        start = first(random_resized_crop(img.contiguous(), scale=(0.25, 0.25), generator=g))  # ~ left edge
        assert start.min() >= 0 and start.max() <= 16
        assert start.min() < 4 and start.max() > 12


def test_random_resized_crop_keeps_a_non_square_shape_and_he_augment_refuses_it():
    """A 8 × 12 batch came back 8 × 8 (squeezed) from random_resized_crop and from HEAugment, which promises the
    input's shape; now the crop keeps (H, W) and HEAugment (90° rotations) names the non-square input."""
    ramp = torch.arange(12, dtype=torch.float32).view(1, 1, 1, 12).expand(2, 3, 8, 12).contiguous()
    same = random_resized_crop(ramp, scale=(1.0, 1.0))
    assert same.shape == (2, 3, 8, 12) and torch.allclose(same, ramp, atol=1e-4)
    assert random_resized_crop(ramp, out_px=6).shape == (2, 3, 6, 6)
    with pytest.raises(ValueError, match="out_px"):
        random_resized_crop(ramp, out_px=0)
    with pytest.raises(ValueError, match="square"):
        HEAugment()(ramp / 12)


def test_gaussian_blur_refuses_integer_batches():
    """A uint8 batch cast sigma 0.5 to 0 and came back unblurred, silently (larger sigmas failed inside conv2d)."""
    x = torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8)
    with pytest.raises(ValueError, match="x: expected a float batch"):
        gaussian_blur(x, 0.5)
    assert not torch.equal(gaussian_blur(x.float(), 0.5), x.float())


def test_even_or_zero_kernel_and_unbatched_crop_are_named():
    x = torch.rand(2, 3, 8, 8)
    for bad in (4, 0, -3):  # 0 was taken as "the default width" and blurred silently
        with pytest.raises(ValueError, match=f"kernel_size: expected an odd positive integer, got {bad}"):
            gaussian_blur(x, 1.0, kernel_size=bad)
    assert gaussian_blur(x, 0.0) is x  # sigma 0 for every image: the batch itself
    with pytest.raises(ValueError, match=r"x: expected a batch \(B, C, H, W\), got shape \(3, 8, 8\)"):
        random_resized_crop(x[0])
