"""Batched pixel operations on (B, 3, H, W) images with per-image parameters: resized crop with
flip (one grid_sample), the colour-jitter/grayscale matrix, Gaussian blur and solarize, and the
standardisation. Deterministic: selfsup.augment draws the parameters and calls these.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

# ImageNet statistics, the usual choice for SSL on ImageNet subsets.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma, 0.299 rounded as torchvision does).
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)

# Devices where blur and solarize at 0 < p < 1 compute only the drawn subset (indexed with
# `nonzero`, a host sync on an accelerator); elsewhere every image, then torch.where.
SUBSET_DEVICES = frozenset({"cpu"})

# Constant matrices of the colour transform, as nested tuples for _constant.
_EYE4 = tuple(tuple(float(i == j) for j in range(4)) for i in range(4))
_EYE3 = tuple(row[:3] for row in _EYE4[:3])
_ONES3 = ((1.0,) * 3,) * 3  # J
_CROSS = ((0, -1, 1), (1, 0, -1), (-1, 1, 0))  # K = sqrt(3) [u]x for u = (1, 1, 1) / sqrt(3)


@functools.cache
def _constant(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A small constant tensor, made once per device and dtype: torch.tensor(..., device="cuda")
    copies from pageable host memory, which synchronises the stream on every call. Read-only."""
    return torch.tensor(values, device=device, dtype=dtype)


@functools.cache
def _pixel_centres(size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(size,) output pixel centres in [-1, 1] (align_corners=False): (2i + 1) / size - 1. Read-only."""
    return (torch.arange(size, device=device, dtype=dtype) * 2 + 1) / size - 1


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 1] float images (B, 3, H, W) -> float32 standardised with MEAN/STD."""
    if x.dtype == torch.uint8:
        return normalize_(x.float().div_(255))
    return normalize_(x.clone())


def normalize_(x: torch.Tensor) -> torch.Tensor:
    """In-place `normalize` of float images (B, 3, H, W) in [0, 1]; returns x."""
    mean = _constant(MEAN, x.device, x.dtype).view(1, 3, 1, 1)
    std = _constant(STD, x.device, x.dtype).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


# ---------------------------------------------------------------------------
# Geometry: crop + flip + resize in one resampling
# ---------------------------------------------------------------------------


def crop_theta(params, in_size):
    """Affine matrices (B, 2, 3) mapping output coords in [-1, 1] to the crop box.

    With align_corners=False, pixel edges sit at -1 and 1, so the box [left, left+w)
    spans [2*left/W - 1, 2*(left+w)/W - 1]: scale w/W, centre (2*left + w)/W - 1.
    A flip negates the x scale.
    """
    height, width = in_size
    w, h = params["width"].float(), params["height"].float()
    sx = (w / width) * (1 - 2 * params["flip"].float())
    sy = h / height
    tx = (2 * params["left"].float() + w) / width - 1
    ty = (2 * params["top"].float() + h) / height - 1
    zero = torch.zeros_like(sx)
    return torch.stack([sx, zero, tx, zero, sy, ty], dim=1).view(-1, 2, 3)


def crop_grid(theta, size):
    """F.affine_grid(theta, (B, C, size, size), align_corners=False) for axis-aligned theta.

    Our thetas have no rotation or shear, so x depends on the column only and y on the
    row only: two (B, size) vectors broadcast into the (B, size, size, 2) grid. Same
    values as affine_grid, without its (B, size*size, 3) @ (B, 3, 2) matmul (which cost
    more than the grid_sample itself on CPU).
    """
    # Output pixel centres in [-1, 1] (align_corners=False): (2i + 1) / size - 1.
    base = _pixel_centres(size, theta.device, theta.dtype)
    gx = theta[:, 0, 0:1] * base + theta[:, 0, 2:3]  # (B, size), by column
    gy = theta[:, 1, 1:2] * base + theta[:, 1, 2:3]  # (B, size), by row
    batch = theta.shape[0]
    return torch.stack([gx.unsqueeze(1).expand(batch, size, size), gy.unsqueeze(2).expand(batch, size, size)], dim=3)


def resized_crop(x, params, size):
    """Float images (B, 3, H, W) -> crops resized to (B, 3, size, size), flipped where drawn.

    One bilinear grid_sample with a per-image affine grid (crop, flip and resize together).
    """
    theta = crop_theta(params, x.shape[-2:]).to(x.dtype)
    # border padding: output edge taps that fall half a pixel outside the image repeat
    # the edge pixel, as interpolate (torchvision's resize) does.
    return F.grid_sample(x, crop_grid(theta, size), mode="bilinear", padding_mode="border", align_corners=False)


# ---------------------------------------------------------------------------
# Colour: jitter (random order) + grayscale as one affine matrix per image
# ---------------------------------------------------------------------------


def _eye4(batch, device, dtype):
    return _constant(_EYE4, device, dtype).expand(batch, 4, 4).clone()


def _gray_rows(device, dtype):
    """(3, 3) matrix whose every row is the luma weights: rgb -> (y, y, y)."""
    return _constant(GRAY_WEIGHTS, device, dtype).expand(3, 3)


def _blend_with(factor, target):
    """factor * I + (1 - factor) * target, batched: factor (B,), target (B or 1, 3, 3) or a number
    -> (B, 4, 4)."""
    m = _eye4(factor.shape[0], factor.device, factor.dtype)
    f = factor.view(-1, 1, 1)
    m[:, :3, :3] = f * m[:, :3, :3] + (1 - f) * target
    return m


def _hue_rotation(hue):
    """Rotation by 2*pi*hue about the gray axis (1,1,1)/sqrt(3) (Rodrigues), (B,) -> (B, 4, 4).

    R = cos t I + sin t [u]x + (1 - cos t) u u^T; with u = (1,1,1)/sqrt(3),
    u u^T = J/3 (J all ones) and [u]x = K/sqrt(3), K = [[0,-1,1],[1,0,-1],[-1,1,0]].
    Positive hue turns red towards green, as torchvision's HSV shift does.
    """
    t = 2 * math.pi * hue
    cos, sin = torch.cos(t).view(-1, 1, 1), torch.sin(t).view(-1, 1, 1)
    eye, ones, cross = (_constant(c, hue.device, hue.dtype) for c in (_EYE3, _ONES3, _CROSS))
    m = _eye4(hue.shape[0], hue.device, hue.dtype)
    m[:, :3, :3] = cos * eye + sin * cross / math.sqrt(3) + (1 - cos) * ones / 3
    return m


def colour_matrix(params, mean_colour, scale=1.0):
    """Per-image affine colour transform on homogeneous [r, g, b, 1], (B, 4, 4).

    mean_colour: (B, 3) mean colour of each (cropped) image, in the input's units.
    scale: input units per [0, 1] (255 for uint8-valued floats); folded in first.
    Jitter ops are composed in each image's own order (params["order"]). Contrast
    blends with the mean gray of the image at that point of the sequence, which is
    the luma of the mean colour pushed through the matrices composed so far.
    """
    batch, device, dtype = mean_colour.shape[0], mean_colour.device, mean_colour.dtype
    weights = _constant(GRAY_WEIGHTS, device, dtype)
    gray = _gray_rows(device, dtype)
    start = _eye4(batch, device, dtype)
    start[:, :3, :3] /= scale
    mean_h = torch.cat([mean_colour, torch.ones(batch, 1, device=device, dtype=dtype)], dim=1)  # (B, 4)

    # Brightness, saturation and hue do not depend on the image: build them once.
    brightness = torch.diag_embed(
        torch.cat(
            [params["brightness"].view(-1, 1).expand(batch, 3), torch.ones(batch, 1, device=device, dtype=dtype)], dim=1
        )
    )
    saturation = _blend_with(params["saturation"], gray)
    hue = _hue_rotation(params["hue"])
    contrast = params["contrast"]
    contrast_scale = _blend_with(contrast, 0.0)  # f * I; the offset column depends on the step
    rows = torch.arange(batch, device=device)

    m = start
    for step in range(4):
        # Mean gray level (B,) of the image as transformed so far.
        level = ((m @ mean_h.unsqueeze(2)).squeeze(2)[:, :3] * weights).sum(dim=1)
        contrast_m = contrast_scale.clone()
        contrast_m[:, :3, 3] = ((1 - contrast) * level).unsqueeze(1)
        ops = torch.stack([brightness, contrast_m, saturation, hue], dim=1)  # (B, 4, 4, 4)
        m = ops[rows, params["order"][:, step]] @ m

    m = torch.where(params["jitter"].view(-1, 1, 1), m, start)
    to_gray = _eye4(1, device, dtype)
    to_gray[:, :3, :3] = gray
    return torch.where(params["gray"].view(-1, 1, 1), to_gray @ m, m)


def apply_colour(x, matrix):
    """x (B, 3, H, W) float, matrix (B, 4, 4) -> matrix applied per pixel, (B, 3, H, W)."""
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w)
    out = torch.baddbmm(matrix[:, :3, 3:], matrix[:, :3, :3], flat)
    return out.view(b, c, h, w)


# ---------------------------------------------------------------------------
# Blur and solarize, on the images drawn for them
# ---------------------------------------------------------------------------


@functools.cache
def _squared_offsets(kernel_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(kernel_size,) squared tap offsets from the kernel's centre. Read-only."""
    return (torch.arange(kernel_size, device=device, dtype=dtype) - kernel_size // 2) ** 2


@functools.cache
def _tap_matrix(kernel_size: int, side: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(kernel_size, side * side): entry [t, i * side + j] is 1 where tap t of the kernel centred on
    pixel i reads pixel j, with torchvision's reflect padding (tap i + t outside [0, side) reads
    pixel -(i + t) or 2(side - 1) - (i + t)). Fixed per size, so made once. Read-only."""
    r = kernel_size // 2
    taps = torch.arange(side, device=device).view(side, 1) + torch.arange(kernel_size, device=device) - r
    taps = taps.abs()
    taps = torch.where(taps > side - 1, 2 * (side - 1) - taps, taps)  # (side, k): source pixel of each tap
    return F.one_hot(taps.t(), side).to(dtype).view(kernel_size, side * side)


def gaussian_kernels(sigma, kernel_size):
    """(n,) sigmas -> (n, kernel_size) normalised 1-D Gaussians (torchvision's kernel)."""
    offsets2 = _squared_offsets(kernel_size, sigma.device, sigma.dtype)
    return torch.softmax(-offsets2 / (2 * sigma.view(-1, 1) ** 2), dim=1)


def blur_matrices(sigma, kernel_size, side):
    """Per-image 1-D blur along an axis of length `side` as (n, side, side) matrices.

    Row i holds the kernel centred on i, with torchvision's reflect padding folded in
    (see _tap_matrix); near the edges two taps can land on one pixel and add up.
    """
    # A matmul with the (k, side * side) tap matrix (no atomics) sums the taps.
    taps = _tap_matrix(kernel_size, side, sigma.device, sigma.dtype)
    return (gaussian_kernels(sigma, kernel_size) @ taps).view(-1, side, side)


def gaussian_blur(x, sigma, kernel_size):
    """Separable Gaussian blur, reflect-padded like torchvision, one sigma per image.

    x: (n, C, H, W) float, sigma: (n,). Returns (n, C, H, W).
    Each pass is one batched matmul with per-image banded matrices: at 64x64 on CPU this
    beats a depthwise conv with n*C groups by ~2x despite the extra zero multiplies.
    """
    n, c, h, w = x.shape
    sigma = sigma.to(x.dtype)
    along_w = blur_matrices(sigma, kernel_size, w)  # (n, w, w)
    along_h = along_w if h == w else blur_matrices(sigma, kernel_size, h)
    rows = torch.bmm(x.reshape(n, c * h, w), along_w.transpose(1, 2))  # (n, C*H, W): blurred along W
    cols = rows.view(n, c, h, w).transpose(1, 2).reshape(n, h, c * w)  # (n, H, C*W)
    out = torch.bmm(along_h, cols)  # (n, H, C*W): blurred along H
    return out.view(n, h, c, w).transpose(1, 2)


def apply_drawn(x, flags, p, op, *per_image):
    """In place: x[i] <- op(x, *per_image)[i] where flags[i]; returns x.

    x: (B, ...) float; flags: (B,) bool, drawn with probability p (None: unknown);
    per_image: tensors (B, ...) that op takes alongside the images (e.g. sigma).
    p == 0 does nothing and p == 1 applies op to all, without looking at flags (a uniform in
    [0, 1) is never < 0 and always < 1). Otherwise, on SUBSET_DEVICES op runs on the flagged
    images only (`nonzero`: a host sync on an accelerator); elsewhere on every image, and
    torch.where keeps the flagged ones (no sync).
    """
    if p == 0:
        return x
    if p == 1:
        return x.copy_(op(x, *per_image))
    if x.device.type in SUBSET_DEVICES:
        idx = flags.nonzero().squeeze(1)
        if idx.numel():
            x.index_copy_(0, idx, op(x[idx], *(t[idx] for t in per_image)))
        return x
    keep = flags.view(-1, *([1] * (x.dim() - 1)))
    return x.copy_(torch.where(keep, op(x, *per_image), x))


def solarize(x, threshold=0.5):
    """Images in [0, 1]: v -> 1 - v for v >= threshold (torchvision's solarize on floats)."""
    return torch.where(x >= threshold, 1 - x, x)
