"""Batched two-view augmentation with per-image random parameters, on any device.

`TwoViews(recipe, size)(x)` turns a uint8 batch (B, 3, H, W) into two float32
views (B, 3, size, size), normalised with MEAN/STD. Every image draws its own
parameters for every op (torchvision's batched v2 transforms draw once per call,
pytorch/vision#8484), and there is no per-image Python: the whole batch goes
through a handful of batched tensor ops, the same code on CPU and CUDA.

The ops follow the SimCLR (Chen et al. 2020, appendix A) and BYOL (Grill et al.
2020, table 6) / Barlow Twins (facebookresearch/barlowtwins `main.py` Transform)
pipelines, in their order:

    RandomResizedCrop(size, scale, ratio=(3/4, 4/3), bilinear) -> RandomHorizontalFlip(0.5)
    -> RandomApply(ColorJitter(b, c, s, h), p=0.8) -> RandomGrayscale(0.2)
    -> GaussianBlur(kernel ~10% of size, odd; sigma ~ U(0.1, 2.0), p per view)
    -> Solarize(0.5, p per view)
    -> Normalize(MEAN, STD)

How it is computed (per batch, both views at once):

1. crop + flip + resize: one bilinear `grid_sample` on a per-image affine grid
   (built by broadcasting; equal to `affine_grid` of the per-image theta).
2. colour jitter (in each image's own random order) + grayscale: one 4x4 affine
   colour matrix per image on homogeneous [r, g, b, 1], applied with one `baddbmm`,
   then one clamp to [0, 1].
3. blur: separable Gaussian with per-image sigma (two batched matmuls with
   per-image banded matrices), on the images drawn for it (see below).
4. solarize on the images drawn for it, then normalise in place.

Where it differs from torchvision's per-image pipeline (same ops, same parameter
distributions — the tests check both):

- Float arithmetic throughout: no rounding to uint8 between ops.
- Colour jitter clamps to [0, 1] once, after the whole colour transform, instead
  of after each of brightness / contrast / saturation / hue. Colours that leave
  the cube mid-way (e.g. brightness 1.4 then contrast 0.6) differ.
- Hue is a rotation by 2*pi*hue_factor about the gray axis (1, 1, 1) in RGB — a
  linear approximation of torchvision's HSV hue shift, exact for the primaries at
  multiples of 120 degrees and for grays. It turns colours the same way (red
  towards green for positive factors) but keeps the distance from the gray axis
  where HSV keeps max(r, g, b): at |hue_factor| = 0.1 the mean absolute error is
  0.065 on uniformly random colours (the shift itself moves pixels by 0.10) and
  0.025 on smooth half-saturated images (shift 0.036). A YIQ rotation, the other
  common choice, is further off (0.085 on random colours).
- Contrast blends with the mean gray level of the image as it is at that point
  of the jitter sequence, as torchvision does; we get it analytically from the
  crop's mean colour pushed through the matrices composed so far, so it is the
  unclamped image's mean (torchvision's differs only where an earlier op clipped).
- Grayscale uses torchvision's weights (0.2989, 0.587, 0.114), ITU-R 601.
- The crop is resampled straight from the full image, so bilinear taps at the
  crop's outer half-pixel read the neighbouring pixels outside the box, where
  torchvision (crop, then resize) repeats the box's edge pixel. There is no
  antialiasing when the crop is larger than `size` (never at 64 -> 64, since a
  crop is at most the image); torchvision's v2 antialiases downscaling.
- Solarize inverts values >= 0.5 of the float image (uint8 torchvision/PIL: >= 128,
  the same pixels for uint8 input but applied here after float ops).
- Randomness comes from one torch.Generator (or the global RNG) in a fixed draw
  order, so the streams differ from torchvision's; the distributions do not.

Host syncs: none on CUDA. Constants (MEAN/STD, gray weights, identity matrices,
the blur's tap matrices, pixel-centre grids) are made once per device and dtype
and cached: `torch.tensor(..., device="cuda")` copies from pageable host memory,
which synchronises. Blur and solarize know each view's probability p: p = 0
skips the op, p = 1 applies it to every image of that view, no mask; for
0 < p < 1 CUDA computes the op on every image of the view and keeps the drawn
ones with `torch.where` (no sync; the GPU has the room), while the CPU computes
only the drawn subset, found with `nonzero` (nothing to sync with there; a whole
TwoViews call, batch 256 at 64x64, one thread, measured 1.7x faster that way
with the SimCLR recipe and 1.3-1.5x with the asymmetric one).
The parameters drawn, and so the random stream, do not depend on the path.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ImageNet statistics, the usual choice for SSL on ImageNet subsets.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma, 0.299 rounded as torchvision does).
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)

# SimCLR: blur kernel side is 10% of the image side (BYOL: 23 at 224), made odd.
BLUR_KERNEL_FRACTION = 0.1

# RandomResizedCrop draws up to this many (scale, ratio) candidates before falling back.
CROP_ATTEMPTS = 10


# Devices where blur and solarize at 0 < p < 1 compute only the drawn subset (indexed with
# `nonzero`, a host sync on an accelerator); elsewhere every image, then torch.where.
SUBSET_DEVICES = frozenset({"cpu"})

# Constant matrices of the colour transform, as nested tuples for _constant.
_EYE4 = tuple(tuple(float(i == j) for j in range(4)) for i in range(4))
_EYE3 = tuple(row[:3] for row in _EYE4[:3])
_ONES3 = ((1.0,) * 3,) * 3  # J
_CROSS = ((0, -1, 1), (1, 0, -1), (-1, 1, 0))  # K = sqrt(3) [u]x for u = (1, 1, 1) / sqrt(3)


@functools.lru_cache(maxsize=None)
def _constant(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A small constant tensor, made once per device and dtype: torch.tensor(..., device="cuda")
    copies from pageable host memory, which synchronises the stream on every call. Read-only."""
    return torch.tensor(values, device=device, dtype=dtype)


@functools.lru_cache(maxsize=None)
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


@dataclass(frozen=True)
class ViewRecipe:
    """The random ops of one view, as probabilities and ranges (torchvision's conventions)."""

    crop_scale: tuple[float, float] = (0.2, 1.0)  # fraction of the image area
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # width / height
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4  # factor ~ U(1 - b, 1 + b)
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1  # factor ~ U(-h, h), in turns of the colour wheel
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0


# SimCLR: colour strength s = 0.5 -> jitter (0.8s, 0.8s, 0.8s, 0.2s); blur p=0.5 on both views.
_SIMCLR = ViewRecipe(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, blur_p=0.5)
# BYOL / Barlow Twins: jitter (0.4, 0.4, 0.2, 0.1); blur 1.0 vs 0.1, solarize 0 vs 0.2.
_ASYM = ViewRecipe(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)

RECIPES: dict[str, tuple[ViewRecipe, ViewRecipe]] = {
    "simclr": (_SIMCLR, _SIMCLR),
    "asymmetric": (
        dataclasses.replace(_ASYM, blur_p=1.0, solarize_p=0.0),
        dataclasses.replace(_ASYM, blur_p=0.1, solarize_p=0.2),
    ),
}


def blur_kernel_size(size: int) -> int:
    """Odd kernel side ~10% of the image side: 7 at 64, 23 at 224 (SimCLR / BYOL)."""
    return int(size * BLUR_KERNEL_FRACTION) // 2 * 2 + 1


# ---------------------------------------------------------------------------
# Parameter sampling
# ---------------------------------------------------------------------------


def _uniform(shape, low, high, generator, device):
    return torch.rand(shape, generator=generator, device=device).mul_(high - low).add_(low)


def _bernoulli(n, p, generator, device):
    return torch.rand(n, generator=generator, device=device) < p


def sample_crops(batch, in_size, scale, ratio, generator=None, device=None):
    """torchvision's RandomResizedCrop.get_params, vectorised over the batch.

    Each image draws CROP_ATTEMPTS (area, log-ratio) candidates and keeps the first
    that fits; if none does it falls back to torchvision's central crop.
    Returns (top, left, height, width), each int64 (batch,), in input pixels.
    """
    height, width = in_size
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    target = _uniform((batch, CROP_ATTEMPTS), scale[0], scale[1], generator, device) * area
    aspect = _uniform((batch, CROP_ATTEMPTS), *log_ratio, generator, device).exp_()
    # torch.round is round-half-to-even, like Python's round() in torchvision.
    w = torch.sqrt(target * aspect).round_().long()
    h = torch.sqrt(target / aspect).round_().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # (batch, attempts)
    first = fits.long().argmax(dim=1, keepdim=True)  # index of the first True (0 if none)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)

    # Fallback: torchvision's central crop with the ratio clipped to the allowed range.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    found = fits.any(dim=1)
    w = torch.where(found, w, fw)
    h = torch.where(found, h, fh)

    # randint(0, H - h + 1) per image, as floor(U * n); the fallback is centred instead.
    u = torch.rand((2, batch), generator=generator, device=device)
    top = (u[0] * (height - h + 1)).long().clamp_(max=height - h)
    left = (u[1] * (width - w + 1)).long().clamp_(max=width - w)
    top = torch.where(found, top, (height - h) // 2)
    left = torch.where(found, left, (width - w) // 2)
    return top, left, h, w


def sample_params(batch, view, in_size, generator=None, device=None):
    """Draw every random parameter of one view for `batch` images.

    view: a ViewRecipe. in_size: (H, W) of the input images. generator: a
    torch.Generator on `device` (or None for the global RNG). Returns a dict of
    tensors of leading size `batch`:
      top, left, height, width  int64  crop box in input pixels
      flip                      bool   horizontal flip
      jitter                    bool   colour jitter applied
      brightness, contrast, saturation  float  multiplicative factors
      hue                       float  in turns, [-view.hue, view.hue]
      order                     int64 (batch, 4)  jitter op order: 0=b, 1=c, 2=s, 3=h
      gray, blur, solarize      bool
      sigma                     float  blur sigma
    """
    if generator is not None:
        device = generator.device
    g, d = generator, device
    top, left, height, width = sample_crops(batch, in_size, view.crop_scale, view.crop_ratio, g, d)
    factors = {
        name: _uniform(batch, max(0.0, 1 - amount), 1 + amount, g, d)
        for name, amount in (("brightness", view.brightness), ("contrast", view.contrast),
                             ("saturation", view.saturation))
    }
    return dict(
        top=top, left=left, height=height, width=width,
        flip=_bernoulli(batch, view.flip_p, g, d),
        jitter=_bernoulli(batch, view.jitter_p, g, d),
        **factors,
        hue=_uniform(batch, -view.hue, view.hue, g, d),
        # argsort of iid uniforms is a uniformly random permutation, one per image.
        order=torch.rand((batch, 4), generator=g, device=d).argsort(dim=1),
        gray=_bernoulli(batch, view.gray_p, g, d),
        blur=_bernoulli(batch, view.blur_p, g, d),
        sigma=_uniform(batch, *view.blur_sigma, g, d),
        solarize=_bernoulli(batch, view.solarize_p, g, d),
    )


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
    return torch.stack([gx.unsqueeze(1).expand(batch, size, size),
                        gy.unsqueeze(2).expand(batch, size, size)], dim=3)


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
    brightness = torch.diag_embed(torch.cat([params["brightness"].view(-1, 1).expand(batch, 3),
                                             torch.ones(batch, 1, device=device, dtype=dtype)], dim=1))
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


@functools.lru_cache(maxsize=None)
def _squared_offsets(kernel_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(kernel_size,) squared tap offsets from the kernel's centre. Read-only."""
    return (torch.arange(kernel_size, device=device, dtype=dtype) - kernel_size // 2) ** 2


@functools.lru_cache(maxsize=None)
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


def blur_subset(x, flags, sigma, kernel_size, p=None):
    """Blur in place the images of x (B, C, H, W) where flags (B,) is True (drawn with probability p)."""
    return apply_drawn(x, flags, p, functools.partial(gaussian_blur, kernel_size=kernel_size), sigma)


def solarize_subset(x, flags, threshold=0.5, p=None):
    """In place on the images of x (B, C, H, W) in [0, 1] where flags: v -> 1 - v for v >= threshold."""
    return apply_drawn(x, flags, p, functools.partial(solarize, threshold=threshold))


# ---------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------


def _by_view(x, flags, probabilities, op, *per_image):
    """apply_drawn on the equal row blocks of x, one per view, each with its view's probability;
    one call over all rows when the views agree (or are unknown: [None]). In place; returns x."""
    if len(set(probabilities)) == 1:
        return apply_drawn(x, flags, probabilities[0], op, *per_image)
    n = x.shape[0] // len(probabilities)
    for i, p in enumerate(probabilities):
        rows = slice(i * n, (i + 1) * n)  # a view of x: apply_drawn writes through it
        apply_drawn(x[rows], flags[rows], p, op, *(t[rows] for t in per_image))
    return x


def apply_params(x, params, size, views=None):
    """Augment a uint8 batch with drawn parameters.

    x: uint8 (B, 3, H, W); params: from sample_params for B images (or several
    views' params concatenated). views: the ViewRecipe of each equal block of rows,
    in order (TwoViews passes its two), so that ops drawn with p = 0 or 1 skip their
    flags; None: flags only. Returns float32 (B, 3, size, size), normalised.
    """
    # Work in 0..255 floats: the 1/255 is folded into the colour matrix.
    out = resized_crop(x.float(), params, size)
    mean_colour = out.mean(dim=(2, 3))  # (B, 3), for contrast
    out = apply_colour(out, colour_matrix(params, mean_colour, scale=255.0)).clamp_(0, 1)
    blur_p = [v.blur_p for v in views] if views else [None]
    solarize_p = [v.solarize_p for v in views] if views else [None]
    blur = functools.partial(gaussian_blur, kernel_size=blur_kernel_size(size))
    _by_view(out, params["blur"], blur_p, blur, params["sigma"])
    _by_view(out, params["solarize"], solarize_p, solarize)
    return normalize_(out)  # `out` is ours: no copy


class TwoViews:
    """Two augmented views of a uint8 batch, each image with its own random parameters.

    recipe: a key of RECIPES ("simclr" or "asymmetric") or a pair of ViewRecipe.
    size: output side. crop_scale: RandomResizedCrop area range, overrides the recipe's.

    __call__(x, generator=None) -> (v1, v2): x uint8 (B, 3, H, W) on any device;
    v1, v2 float32 (B, 3, size, size) on x's device, normalised with MEAN/STD.
    generator: a torch.Generator on x's device drawing all randomness (None: global RNG).
    """

    def __init__(self, recipe="simclr", size=64, crop_scale=(0.2, 1.0)):
        views = RECIPES[recipe] if isinstance(recipe, str) else tuple(recipe)
        if len(views) != 2:
            raise ValueError(f"a recipe has two views, got {len(views)}")
        self.views = tuple(dataclasses.replace(v, crop_scale=tuple(crop_scale)) for v in views)
        self.size = size

    def sample(self, batch, in_size, generator=None, device=None):
        """Parameters of both views, concatenated: view 1 is rows [:batch], view 2 [batch:]."""
        p1, p2 = (sample_params(batch, v, in_size, generator, device) for v in self.views)
        return {k: torch.cat([p1[k], p2[k]]) for k in p1}

    def __call__(self, x, generator=None):
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a uint8 batch (B, 3, H, W), got {x.dtype} {tuple(x.shape)}")
        if generator is not None and generator.device.type != x.device.type:
            raise ValueError(f"generator is on {generator.device}, images on {x.device}")
        batch = x.shape[0]
        params = self.sample(batch, tuple(x.shape[-2:]), generator, x.device)
        views = apply_params(torch.cat([x, x]), params, self.size, self.views)
        return views[:batch], views[batch:]

    def __repr__(self):
        return f"TwoViews(views={self.views}, size={self.size})"
