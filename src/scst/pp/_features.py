"""Hand-crafted colour, stain and texture features of spot patches: the no-deep-learning baseline encoder."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._utils import _positive_int

__all__ = ["handcrafted_features", "handcrafted_feature_names"]

# Fixed settings: the feature names (and so a fitted baseline's columns) must not depend on call arguments.
_QUANTILES = (0.1, 0.5, 0.9)
_GLCM_DISTANCES = (1, 2, 4)
_GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
_GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "entropy")
_LBP_POINTS, _LBP_RADIUS = 8, 1
# skimage.color.rgb2gray weights (ITU-R BT.709).
_GREY = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
# Haematoxylin is quantised for its GLCM on [0, _H_MAX]: above ≈ the 99th percentile of her2st spot pixels.
_H_MAX = 0.3
# A pixel with a grey level below this is tissue (not white background/glass).
_TISSUE_GREY = 0.8


def _stat_names(prefix: str) -> list[str]:
    return [f"{prefix}_mean", f"{prefix}_std", *(f"{prefix}_q{int(q * 100)}" for q in _QUANTILES)]


def handcrafted_feature_names() -> list[str]:
    """Names of the columns returned by :func:`handcrafted_features`, in order.

    Returns
    -------
    List of names: ``rgb_{r,g,b}_*``, ``grey_*`` (mean, std, 10/50/90 % quantiles), ``hsv_h_cos``/``hsv_h_sin``
    (circular hue mean), ``hsv_{s,v}_*``, ``hed_{h,e}_*`` plus ``hed_{h,e}_strong`` (fraction of strongly
    stained pixels), ``hed_d_mean``, ``hed_h_share``, ``tissue_fraction``, ``sobel_{mean,std}``,
    ``glcm_{grey,hema}_{prop}_d{d}`` and ``lbp_{0..9}``.
    """
    names = [n for c in "rgb" for n in _stat_names(f"rgb_{c}")]
    names += _stat_names("grey")
    names += ["hsv_h_cos", "hsv_h_sin", *_stat_names("hsv_s"), *_stat_names("hsv_v")]
    for c in "he":
        names += [*_stat_names(f"hed_{c}"), f"hed_{c}_strong"]
    names += ["hed_d_mean", "hed_h_share", "tissue_fraction", "sobel_mean", "sobel_std"]
    for ch in ("grey", "hema"):
        names += [f"glcm_{ch}_{p}_d{d}" for d in _GLCM_DISTANCES for p in _GLCM_PROPS]
    names += [f"lbp_{i}" for i in range(_LBP_POINTS + 2)]
    return names


def _as_unit_float(patches: np.ndarray) -> np.ndarray:
    """``(N, 3, H, W)`` uint8 / float in [0, 1] → float32 ``(N, 3, H, W)`` in [0, 1] (channels first, contiguous)."""
    x = patches
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if x.dtype.kind != "f":
        raise ValueError(f"patches: expected uint8 or float values in [0, 1], got dtype {x.dtype}.")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.size and (not np.isfinite(x).all() or x.min() < -1e-4 or x.max() > 1 + 1e-4):
        raise ValueError(
            f"patches: float patches must lie in [0, 1] (got range [{np.nanmin(x):.3g}, {np.nanmax(x):.3g}]); "
            "read them with `normalize=None` (no ImageNet normalisation) or pass uint8."
        )
    return np.clip(x, 0.0, 1.0)


def _stats(v: np.ndarray) -> np.ndarray:
    """Mean, std and quantiles over the last axis: ``(B, C, P)`` → ``(B, C, 2 + n_quantiles)``.

    Quantiles are order statistics of the sorted pixels (numpy's SIMD sort beats ``np.quantile``'s partition).
    """
    n = v.shape[-1]
    pos = np.asarray(_QUANTILES) * (n - 1)
    lo, frac = np.floor(pos).astype(np.int64), (pos - np.floor(pos)).astype(np.float32)
    srt = np.sort(v, axis=-1)
    q = srt[..., lo] * (1 - frac) + srt[..., np.minimum(lo + 1, n - 1)] * frac  # linear, as np.quantile
    return np.concatenate([v.mean(-1, keepdims=True), v.std(-1, keepdims=True), q], axis=-1)


def _hsv(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (in turns, [0, 1)), saturation, value of RGB ``(B, 3, P)`` as :func:`skimage.color.rgb2hsv`, float32."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v = x.max(1)
    delta = v - x.min(1)
    s = np.where(v > 0, delta / np.where(v > 0, v, 1), 0).astype(np.float32)
    d = np.where(delta > 0, delta, 1)
    h = np.where(v == r, (g - b) / d, np.where(v == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d))
    h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0).astype(np.float32)
    return h, s, v


def _hed(x: np.ndarray) -> np.ndarray:
    """Ruifrok–Johnston deconvolution of RGB ``(B, 3, P)`` exactly as :func:`skimage.color.rgb2hed`, float32."""
    from skimage.color import hed_from_rgb

    od = np.log(np.maximum(x, 1e-6)) / np.float32(np.log(1e-6))
    return np.maximum(np.einsum("bcp,cs->bsp", od, hed_from_rgb.astype(np.float32)), 0)


def _sobel_magnitude(g: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of ``(B, H, W)`` images (interior pixels), vectorised over the batch."""
    gx = (g[:, :-2, 2:] + 2 * g[:, 1:-1, 2:] + g[:, 2:, 2:]) - (g[:, :-2, :-2] + 2 * g[:, 1:-1, :-2] + g[:, 2:, :-2])
    gy = (g[:, 2:, :-2] + 2 * g[:, 2:, 1:-1] + g[:, 2:, 2:]) - (g[:, :-2, :-2] + 2 * g[:, :-2, 1:-1] + g[:, :-2, 2:])
    # / 8: a unit step gives 1/2 … 1; skimage.filters.sobel gives sqrt(2) × this (its sqrt((gx² + gy²) / 2) / 4)
    return np.sqrt(gx**2 + gy**2) / 8.0


# skimage's sampling points of local_binary_pattern(P=8, R=1): (row, col) offsets rounded to 5 decimals.
_LBP_ANGLES = 2 * np.pi * np.arange(_LBP_POINTS, dtype=np.float64) / _LBP_POINTS
_LBP_DR = np.round(-_LBP_RADIUS * np.sin(_LBP_ANGLES), 5)
_LBP_DC = np.round(_LBP_RADIUS * np.cos(_LBP_ANGLES), 5)


def _lbp_uniform(img: np.ndarray) -> np.ndarray:
    """Uniform LBP codes (0–9) of ``(B, H, W)`` uint8 images, vectorised over the batch.

    Equal to :func:`skimage.feature.local_binary_pattern` (8 points, radius 1, ``method="uniform"``) image by
    image: skimage's arithmetic is reproduced step by step in float64 — the sampling point ``(r + dr, c + dc)``, its
    bilinear interpolation with zeros outside the image, ``value - centre >= 0`` — so that plateaus, where the
    interpolated value equals the centre up to rounding, get the same bit. The transitions are counted without
    wrapping around (skimage's rule for ``"uniform"``): <= 2 changes → number of ones, else 9.
    """
    b, h, w = img.shape
    pad_u8 = np.zeros((b, h + 2, w + 2), dtype=np.uint8)
    pad_u8[:, 1:-1, 1:-1] = img
    pad = pad_u8.astype(np.float64)
    centre = pad[:, 1:-1, 1:-1]
    rows, cols = np.arange(h, dtype=np.float64)[:, None], np.arange(w, dtype=np.float64)[None, :]
    ones = np.zeros((b, h, w), dtype=np.uint8)
    changes = np.zeros((b, h, w), dtype=np.uint8)
    prev = None
    for dr_p, dc_p in zip(_LBP_DR, _LBP_DC):
        r, c = rows + dr_p, cols + dc_p
        r0, c0 = np.floor(r), np.floor(c)
        dr, dc = r - r0, c - c0
        # floor/ceil of (pixel + offset) are the pixel plus a constant: slices of the padded image (+1 for the pad)
        i0, i1 = int(np.floor(dr_p)) + 1, int(np.ceil(dr_p)) + 1
        j0, j1 = int(np.floor(dc_p)) + 1, int(np.ceil(dc_p)) + 1
        if i0 == i1 and j0 == j1:  # on the pixel grid: the interpolated value is the neighbour itself
            bit = pad_u8[:, i0 : i0 + h, j0 : j0 + w] >= img
        else:
            top = (1 - dc) * pad[:, i0 : i0 + h, j0 : j0 + w]
            top += dc * pad[:, i0 : i0 + h, j1 : j1 + w]
            bottom = (1 - dc) * pad[:, i1 : i1 + h, j0 : j0 + w]
            bottom += dc * pad[:, i1 : i1 + h, j1 : j1 + w]
            top *= 1 - dr
            bottom *= dr
            top += bottom
            top -= centre
            bit = top >= 0
        ones += bit
        if prev is not None:
            changes += bit != prev
        prev = bit
    return np.where(changes <= 2, ones, _LBP_POINTS + 1)


def _lbp_histogram(img: np.ndarray, chunk: int = 8) -> np.ndarray:
    """Fractions of the 10 uniform LBP codes per image of ``(B, H, W)`` uint8; ``chunk`` images at a time (cache)."""
    n_lbp = _LBP_POINTS + 2
    out = np.empty((len(img), n_lbp), dtype=np.float32)
    for s in range(0, len(img), chunk):
        codes = _lbp_uniform(img[s : s + chunk])
        k = len(codes)
        flat = (codes + n_lbp * np.arange(k)[:, None, None]).ravel()
        out[s : s + k] = np.bincount(flat, minlength=k * n_lbp).reshape(k, n_lbp) / codes[0].size
    return out


def _glcm(q: np.ndarray, levels: int) -> np.ndarray:
    """GLCM properties of quantised images ``(B, H, W)``, averaged over angles: ``(B, n_distances * n_props)``."""
    from skimage.feature import graycomatrix

    nd, na = len(_GLCM_DISTANCES), len(_GLCM_ANGLES)
    # One skimage (Cython) call per image: a batched numpy version (one bincount per distance and angle over the
    # batch, same counts) was tried and took ~3 ms per 112 px image against ~1.1 ms here.
    mats = [graycomatrix(im, _GLCM_DISTANCES, _GLCM_ANGLES, levels=levels, symmetric=True) for im in q]
    # Each (distance, angle) slice is normalised and scored on its own: stack the batch along angles.
    m = np.concatenate(mats, axis=3)  # (L, L, nd, na * B)
    props = [v.reshape(nd, len(q), na).mean(2) for v in _glcm_props(m)]  # each (nd, B)
    return np.stack(props, axis=-1).transpose(1, 0, 2).reshape(len(q), -1)  # (B, nd * n_props), distance-major


def _glcm_props(m: np.ndarray) -> list[np.ndarray]:
    """:func:`skimage.feature.graycoprops` of ``_GLCM_PROPS`` for co-occurrence counts ``(L, L, ...)``, all six at once.

    The same definitions as skimage (equal to ~1e-14 relative, float64), computed from the counts without
    normalising the whole matrix for every property: the weighted sums are one matrix product over the ``L²``
    cells, correlation comes from the marginals and ``E[ij]``, and the entropy is
    ``log n - Σ c log c / n`` with ``c log c`` looked up for the integer counts ``c`` (``n`` pairs).
    """
    levels, shape = m.shape[0], m.shape[2:]
    counts = m.reshape(levels * levels, -1)  # (L², M)
    c = counts.astype(np.float64)
    total = c.sum(0)
    n = np.where(total == 0, 1.0, total)
    i, j = np.divmod(np.arange(levels * levels, dtype=np.float64), levels)
    d2 = (i - j) ** 2
    weighted = np.stack([d2, np.abs(i - j), 1.0 / (1.0 + d2), i * j]) @ c / n  # (4, M)
    energy = np.sqrt(np.einsum("km,km->m", c, c)) / n
    lv = np.arange(levels, dtype=np.float64)[:, None]
    c3 = c.reshape(levels, levels, -1)
    p_i, p_j = c3.sum(1) / n, c3.sum(0) / n  # marginals (L, M)
    mu_i, mu_j = (lv * p_i).sum(0), (lv * p_j).sum(0)
    std_i = np.sqrt(((lv - mu_i) ** 2 * p_i).sum(0))  # two-pass: exactly 0 for a constant image
    std_j = np.sqrt(((lv - mu_j) ** 2 * p_j).sum(0))
    flat = (std_i < 1e-15) | (std_j < 1e-15)  # skimage: correlation 1 where a standard deviation vanishes
    cov = weighted[3] - mu_i * mu_j
    k = np.arange(int(counts.max(initial=0)) + 1, dtype=np.float64)
    c_log_c = k * np.log(np.maximum(k, 1.0))
    out = {
        "contrast": weighted[0],
        "dissimilarity": weighted[1],
        "homogeneity": weighted[2],
        "energy": energy,
        "correlation": np.where(flat, 1.0, cov / np.where(flat, 1.0, std_i * std_j)),
        "entropy": np.where(total == 0, 0.0, np.log(n) - np.take(c_log_c, counts.astype(np.intp)).sum(0) / n),
    }
    return [out[name].reshape(shape) for name in _GLCM_PROPS]


def handcrafted_features(
    patches: Any,
    *,
    glcm_levels: int = 32,
    stain_thresholds: tuple[float, float] = (0.1, 0.01),
    batch_size: int = 64,
    return_names: bool = False,
) -> np.ndarray | tuple[np.ndarray, list[str]]:
    """Colour, H&E-stain and texture statistics of RGB patches: 95 features (see :func:`handcrafted_feature_names`).

    Colour: per-channel mean, standard deviation and 10/50/90 % quantiles of RGB, grey level (BT.709), HSV
    saturation and value, and the circular mean of hue (cosine and sine); the fraction of tissue pixels (grey
    < 0.8). Stain: Ruifrok–Johnston colour deconvolution (:func:`skimage.color.rgb2hed`): the same statistics
    for haematoxylin and eosin, the fraction of strongly stained pixels, the mean DAB (residual) channel and the
    haematoxylin share ``H / (H + E)`` of the means. Texture: mean and standard deviation of the Sobel gradient
    magnitude; grey-level co-occurrence matrices (:func:`skimage.feature.graycomatrix`, ``glcm_levels`` levels,
    distances 1, 2, 4 px, averaged over 0°, 45°, 90°, 135°) of the grey image (on [0, 1]) and of haematoxylin (on
    [0, 0.3]): contrast, dissimilarity, homogeneity, energy, correlation, entropy; the histogram of uniform local
    binary patterns (:func:`skimage.feature.local_binary_pattern`, 8 points, radius 1) of the grey image.

    Colour, stain and LBP statistics are vectorised over ``batch_size`` patches (the LBP codes equal skimage's
    bit for bit); the GLCMs loop over patches.

    Parameters
    ----------
    patches
        ``(N, 3, H, W)`` RGB patches, uint8 or float in [0, 1] (numpy or torch; not ImageNet-normalised), or one
        ``(3, H, W)`` patch.
    glcm_levels
        Grey levels of the co-occurrence matrices (2–256).
    stain_thresholds
        Haematoxylin and eosin concentrations (``rgb2hed`` units) above which a pixel counts as strongly stained.
        The defaults lie near the 80th and 90th percentiles of her2st spot pixels.
    batch_size
        Patches processed at once (bounds memory: ~100 bytes per pixel).
    return_names
        Also return the feature names.

    Returns
    -------
    ``(N, 95)`` float32 array (and the list of names when ``return_names``).
    """
    levels = _positive_int("glcm_levels", glcm_levels, 2, floats=True, maximum=256)  # 16.7 was truncated to 16
    try:
        thr = np.asarray(stain_thresholds, dtype=np.float64)
    except (TypeError, ValueError):
        thr = np.full(0, np.nan)
    if thr.shape != (2,) or not (np.isfinite(thr).all() and (thr >= 0).all()):  # NaN counted no pixel
        raise ValueError(f"stain_thresholds: expected two non-negative numbers (H, E), got {stain_thresholds!r}.")
    batch_size = _positive_int("batch_size", batch_size, floats=True)
    names = handcrafted_feature_names()
    if hasattr(patches, "detach"):  # torch tensor
        patches = patches.detach().cpu().numpy()
    patches = np.asarray(patches)
    if patches.ndim == 3:
        patches = patches[None]
    if patches.ndim != 4 or patches.shape[1] != 3:
        raise ValueError(
            f"patches: expected shape (N, 3, H, W) (channels first, RGB), got {patches.shape}; for channels-last "
            "arrays pass `patches.transpose(0, 3, 1, 2)`."
        )
    if min(patches.shape[2:]) < 3:
        raise ValueError(f"patches: expected patches of at least 3 × 3 pixels, got {patches.shape[2:]}.")
    n = len(patches)
    out = np.empty((n, len(names)), dtype=np.float32)
    for start in range(0, n, batch_size):
        x = _as_unit_float(patches[start : start + batch_size])  # (B, 3, H, W)
        b, _, hh, ww = x.shape
        flat = x.reshape(b, 3, -1)
        grey = np.einsum("bcp,c->bp", flat, _GREY)  # (B, P)
        h, s, v = _hsv(flat)
        hed = _hed(flat)  # (B, 3, P)
        hed_stats = _stats(hed[:, :2])  # (B, 2, 5)
        strong = (hed[:, :2] > thr.astype(np.float32)[:, None]).mean(-1)  # (B, 2)
        hm, em = hed_stats[:, 0, 0], hed_stats[:, 1, 0]
        grey_img = grey.reshape(b, hh, ww)
        sob = _sobel_magnitude(grey_img).reshape(b, -1)
        q_grey = np.minimum(grey_img * levels, levels - 1).astype(np.uint8)
        hema = np.minimum(hed[:, 0], _H_MAX).reshape(b, hh, ww)
        q_hema = np.minimum(hema / _H_MAX * levels, levels - 1).astype(np.uint8)
        lbp = _lbp_histogram(np.round(grey_img * 255).astype(np.uint8))
        cols = [
            _stats(flat).reshape(b, -1),
            _stats(grey[:, None]).reshape(b, -1),
            np.cos(2 * np.pi * h).mean(1, keepdims=True),
            np.sin(2 * np.pi * h).mean(1, keepdims=True),
            _stats(np.stack([s, v], 1)).reshape(b, -1),
            hed_stats[:, 0],
            strong[:, :1],
            hed_stats[:, 1],
            strong[:, 1:],
            hed[:, 2].mean(1, keepdims=True),
            (hm / np.maximum(hm + em, 1e-12))[:, None],
            (grey < _TISSUE_GREY).mean(1, keepdims=True),
            sob.mean(1, keepdims=True),
            sob.std(1, keepdims=True),
            _glcm(q_grey, levels),
            _glcm(q_hema, levels),
            lbp,
        ]
        out[start : start + b] = np.concatenate(cols, axis=1)
    # Constant images have an undefined GLCM correlation; skimage returns 1 there, keep it finite regardless.
    np.nan_to_num(out, copy=False, nan=0.0)
    return (out, names) if return_names else out
