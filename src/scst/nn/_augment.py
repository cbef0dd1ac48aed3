"""H&E augmentations on batches (torch only): HED stain jitter, flips/90° rotations, Gaussian blur, scale crops.

Every function takes float RGB batches ``(B, 3, H, W)`` in ``[0, 1]`` and draws one random setting per image
(vectorised: no Python loop over the batch); pass a :class:`torch.Generator` for reproducible draws.

Stain jitter follows Tellez et al. (2018, "Whole-slide mitosis detection in H&E breast histology using PHH3 as a
reference to train distilled stain-invariant convolutional networks"): RGB → optical density (Beer–Lambert) →
haematoxylin/eosin/DAB concentrations with the Ruifrok–Johnston colour-deconvolution matrix (the one of
``skimage.color.rgb2hed``), each concentration scaled by ``1 + U(-sigma, sigma)`` and shifted by
``U(-bias, bias)``, then back to RGB.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "RGB_FROM_HED",
    "rgb_to_hed",
    "hed_to_rgb",
    "hed_jitter",
    "random_dihedral",
    "gaussian_blur",
    "random_resized_crop",
    "HEAugment",
]

#: Ruifrok & Johnston (2001) stain vectors (rows: haematoxylin, eosin, DAB; columns: optical density in R, G, B),
#: as in ``skimage.color.rgb_from_hed``. OD = concentrations @ RGB_FROM_HED.
RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64
)  # fmt: skip
_HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
#: Offset of the optical density: OD = -log((rgb * 255 + 1) / 256), so black (0) stays finite and white (1) is 0.
_OD_EPS = 1.0 / 255.0


def _check(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a float RGB batch (B, 3, H, W) in [0, 1], got {got}.")


def _uniform(n: int, lo: float, hi: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(n, generator=generator, device=like.device if generator is None else generator.device)
    return (lo + (hi - lo) * u).to(device=like.device, dtype=like.dtype)


def rgb_to_hed(x: torch.Tensor) -> torch.Tensor:
    """Stain concentrations ``(B, 3, H, W)`` (haematoxylin, eosin, DAB) of RGB ``x`` in ``[0, 1]``.

    Optical density ``OD = -log((x + 1/255) / (1 + 1/255))`` (white → 0), then ``OD @ inv(RGB_FROM_HED)``.
    Concentrations are not clipped (slightly negative values occur off the stain plane), so
    :func:`hed_to_rgb` inverts this exactly.
    """
    _check(x)
    od = -torch.log((x.clamp(0, 1) + _OD_EPS) / (1 + _OD_EPS))
    return torch.einsum("bchw,cd->bdhw", od, _HED_FROM_RGB.to(x))


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """RGB in ``[0, 1]`` of stain concentrations ``(B, 3, H, W)``; the inverse of :func:`rgb_to_hed`."""
    od = torch.einsum("bdhw,dc->bchw", hed, RGB_FROM_HED.to(hed))
    return (torch.exp(-od) * (1 + _OD_EPS) - _OD_EPS).clamp(0, 1)


def hed_jitter(
    x: torch.Tensor, sigma: float = 0.05, bias: float = 0.01, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random stain-intensity change per image: ``hed' = hed * (1 + U(-sigma, sigma)) + U(-bias, bias)``.

    One scale and one shift per image and stain channel (haematoxylin, eosin, DAB). With ``sigma = bias = 0``
    the image is returned unchanged up to float rounding. Optical densities of H&E tissue are ~0.1–1.5, so
    ``bias`` = 0.01 tints the glass only faintly.

    Parameters
    ----------
    x
        RGB batch ``(B, 3, H, W)`` in ``[0, 1]``.
    sigma, bias
        Half-widths of the uniform scale (around 1) and shift (around 0) of each stain concentration.
    generator
        Random generator.
    """
    _check(x)
    if sigma < 0 or bias < 0:
        raise ValueError(f"sigma, bias: expected non-negative numbers, got {sigma}, {bias}.")
    b = x.shape[0]
    # log/exp round trip in float32 at least: in bfloat16 it alone moves pixels by ~5 ulps (0.02), more than the jitter.
    hed = rgb_to_hed(x.float() if x.element_size() < 4 else x)
    alpha = _uniform(3 * b, 1 - sigma, 1 + sigma, hed, generator).view(b, 3, 1, 1)
    beta = _uniform(3 * b, -bias, bias, hed, generator).view(b, 3, 1, 1)
    return hed_to_rgb(hed * alpha + beta).to(x.dtype)


def random_dihedral(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image under a random element of the dihedral group: horizontal flip (p = 1/2) × rot90 by k·90°.

    Square images only (a 90° rotation keeps the shape). Pixel values are moved, never interpolated, so any dtype
    works (uint8 patches as well as float batches).
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected a batch of images (B, C, H, W), got {got}.")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"x: random_dihedral needs square images, got {tuple(x.shape[-2:])}.")
    r = torch.randint(0, 8, (x.shape[0],), generator=generator, device="cpu" if generator is None else generator.device)
    r = r.to(x.device)
    out = torch.where((r >= 4).view(-1, 1, 1, 1), x.flip(-1), x)
    k = (r % 4).view(-1, 1, 1, 1)
    rots = [out, out.rot90(1, (2, 3)), out.rot90(2, (2, 3)), out.rot90(3, (2, 3))]
    res = rots[0]
    for i in (1, 2, 3):
        res = torch.where(k == i, rots[i], res)
    return res


def gaussian_blur(
    x: torch.Tensor, sigma: torch.Tensor | float, kernel_size: int | None = None
) -> torch.Tensor:  # fmt: skip
    """Separable Gaussian blur with one ``sigma`` (pixels) per image; reflect padding; ``sigma = 0`` is a no-op.

    Parameters
    ----------
    x
        Float batch ``(B, C, H, W)``.
    sigma
        Standard deviation(s) in pixels: a number or a ``(B,)`` tensor.
    kernel_size
        Odd kernel width; default ``2 * ceil(3 * max(sigma)) + 1``.
    """
    if x.ndim != 4 or not x.is_floating_point():  # uint8: sigma was cast to uint8 (0.5 → 0: silently no blur)
        raise ValueError(f"x: expected a float batch (B, C, H, W), got {x.dtype} of shape {tuple(x.shape)}.")
    b, c, h, w = x.shape
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(b).clamp_min(0)
    smax = float(sigma.max()) if b else 0.0
    if smax == 0.0:
        return x
    k = 2 * math.ceil(3 * smax) + 1 if kernel_size is None else kernel_size  # 0 is no default: refused
    if k % 2 == 0 or k < 1:
        raise ValueError(f"kernel_size: expected an odd positive integer, got {kernel_size}.")
    k = min(k, 2 * (min(h, w) - 1) + 1 if min(h, w) > 1 else 1)  # reflect padding needs pad < size
    t = torch.arange(k, dtype=x.dtype, device=x.device) - (k - 1) / 2
    kern = torch.exp(-0.5 * (t[None] / sigma.clamp_min(1e-6)[:, None]) ** 2)
    kern = torch.where(sigma[:, None] > 0, kern, (t[None] == 0).to(x.dtype))  # sigma 0: identity kernel
    kern = kern / kern.sum(1, keepdim=True)  # (B, k)
    kern = kern.repeat_interleave(c, 0)  # (B*C, k)
    y = x.reshape(1, b * c, h, w)
    p = (k - 1) // 2
    y = F.conv2d(F.pad(y, (p, p, 0, 0), mode="reflect"), kern.view(b * c, 1, 1, k), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, p, p), mode="reflect"), kern.view(b * c, 1, k, 1), groups=b * c)
    return y.view(b, c, h, w)


def random_resized_crop(
    x: torch.Tensor,
    scale: tuple[float, float] = (0.5, 1.0),
    out_px: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random crop per image covering a fraction ``U(scale)`` of its area, resized to ``out_px``.

    The crop has the image's shape (a square for square images) and lies inside the image; bilinear resampling
    (``grid_sample``) of all crops in one call. ``scale = (1, 1)`` returns the image itself (resized to
    ``out_px``). ``out_px``: edge of the square output; default None: the input's ``(H, W)``.
    """
    if x.ndim != 4:
        raise ValueError(f"x: expected a batch (B, C, H, W), got shape {tuple(x.shape)}.")
    lo, hi = float(scale[0]), float(scale[1])
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"scale: expected 0 < min <= max <= 1 (area fractions), got {scale}.")
    if out_px is not None and not (  # torch-only module: scst._utils._positive_int's rule, written out
        isinstance(out_px, numbers.Real) and not isinstance(out_px, bool) and math.isfinite(out_px)
        and float(out_px).is_integer() and out_px >= 1
    ):  # fmt: skip
        raise ValueError(f"out_px: expected None or a positive integer, got {out_px!r}.")
    b, _, h, w = x.shape
    oh, ow = (int(out_px), int(out_px)) if out_px is not None else (h, w)  # (h, h) squeezed a non-square image
    side = _uniform(b, lo, hi, x, generator).sqrt()  # crop edge / image edge
    cx = (1 - side) * (2 * _uniform(b, 0, 1, x, generator) - 1)  # centre in [-(1 - side), 1 - side]
    cy = (1 - side) * (2 * _uniform(b, 0, 1, x, generator) - 1)
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = side, side, cx, cy
    grid = F.affine_grid(theta, [b, x.shape[1], oh, ow], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class HEAugment(nn.Module):
    """One random H&E view per image: scale crop → flip/rot90 → HED stain jitter → Gaussian blur (prob. ``p_blur``).

    Parameters
    ----------
    crop_scale
        Area fraction range of the random crop (the crop is resized back to the input size).
    hed_sigma, hed_bias
        Stain jitter, see :func:`hed_jitter`.
    blur_sigma
        Range of the blur's standard deviation, in pixels of the output.
    p_blur
        Probability of blurring an image.
    """

    def __init__(
        self,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        hed_sigma: float = 0.05,
        hed_bias: float = 0.01,
        blur_sigma: tuple[float, float] = (0.1, 1.5),
        p_blur: float = 0.5,
    ) -> None:
        super().__init__()
        if not 0.0 <= p_blur <= 1.0:
            raise ValueError(f"p_blur: expected a probability in [0, 1], got {p_blur}.")
        if not 0 <= blur_sigma[0] <= blur_sigma[1]:
            raise ValueError(f"blur_sigma: expected 0 <= min <= max, got {blur_sigma}.")
        self.crop_scale, self.hed_sigma, self.hed_bias = tuple(crop_scale), float(hed_sigma), float(hed_bias)
        self.blur_sigma, self.p_blur = tuple(blur_sigma), float(p_blur)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augmented float RGB batch in ``[0, 1]``, same shape as ``x`` (square images: 90° rotations)."""
        _check(x)
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"x: HEAugment needs square images (90° rotations), got {tuple(x.shape[-2:])}.")
        x = random_resized_crop(x, self.crop_scale, generator=generator)
        x = random_dihedral(x, generator=generator)
        x = hed_jitter(x, self.hed_sigma, self.hed_bias, generator=generator)
        if self.p_blur > 0:
            b = x.shape[0]
            sigma = _uniform(b, *self.blur_sigma, x, generator)
            on = _uniform(b, 0, 1, x, generator) < self.p_blur
            x = gaussian_blur(x, torch.where(on, sigma, torch.zeros_like(sigma)))
        return x.clamp(0, 1)
