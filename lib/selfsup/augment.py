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

from .pixels import apply_colour, apply_drawn, colour_matrix, gaussian_blur, normalize_, resized_crop, solarize

# SimCLR: blur kernel side is 10% of the image side (BYOL: 23 at 224), made odd.
BLUR_KERNEL_FRACTION = 0.1

# RandomResizedCrop draws up to this many (scale, ratio) candidates before falling back.
CROP_ATTEMPTS = 10


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
        for name, amount in (
            ("brightness", view.brightness),
            ("contrast", view.contrast),
            ("saturation", view.saturation),
        )
    }
    return dict(
        top=top,
        left=left,
        height=height,
        width=width,
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
