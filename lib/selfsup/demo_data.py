"""The synthetic demo set that `make demo` trains on: dark shapes with fill patterns on a light ground.

A class is a (shape, fill pattern) pair -- content that survives SimCLR's
augmentations (crop, flip, colour jitter, grayscale, blur). Everything else is
a random nuisance those augmentations teach an encoder to ignore: colours,
exposure, background brightness, gradient and blotches, position, size,
pattern phase, noise. Every shape and pattern is mirror-symmetric, so a
horizontal flip never changes the class.

Sized for `make demo` on a 2-core CPU (32x32 images; benchmarks/demo_story.py):
every method's k-NN accuracy must rise clearly above its random-init floor in
a few CPU epochs, with 3 seeds. What that took, measured there:
- Coarse patterns (about two periods across an object) and large objects: at
  32 px finer ones are blurred away, and the encoders learned the shapes only.
  Horizontal "bands" instead of dots, which were still confused at 32 px.
- One polarity (dark objects on a light ground): no augmentation turns
  light-on-dark into dark-on-light, so with both the trained features split
  every class in two (t-SNE) and k-NN lost 10-15 points.
- A random exposure, which colour jitter removes: it lowers the random-init
  floor and its spread over seeds (a random network's features follow image
  brightness), so the floor's interval over 3 seeds is narrower.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import SPLITS, DataError, Dataset, Split, save_npz

DEMO_SHAPES = ("disc", "square", "triangle", "cross", "ring", "star")
DEMO_PATTERNS = ("solid", "stripes", "checker", "bands")  # stripes vertical, bands horizontal


def _demo_order() -> list[tuple[str, str]]:
    cells = [(i, j) for i in range(5) for j in range(len(DEMO_PATTERNS))]
    even = [(DEMO_SHAPES[i], DEMO_PATTERNS[j]) for i, j in cells if (i + j) % 2 == 0]
    odd = [(DEMO_SHAPES[i], DEMO_PATTERNS[j]) for i, j in cells if (i + j) % 2 == 1]
    return even + [("star", p) for p in DEMO_PATTERNS] + odd


def demo_classes(n_id: int = 10, n_ood: int = 10) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(shape, pattern) pairs for the ID and OOD classes of the demo.

    A checkerboard over the first five shapes x four patterns: ID takes the
    even cells, OOD the odd ones, so with the defaults every OOD class is an
    unseen combination of a seen shape and a seen pattern. "star" sits in
    between: asked for more classes, ID gets it first, then OOD (an unseen shape).
    """
    order = _demo_order()  # ID from the front, OOD from the back
    if n_id < 1 or n_ood < 0 or n_id + n_ood > len(order):
        raise ValueError(f"demo has {len(order)} classes; asked for {n_id} ID (>= 1) + {n_ood} OOD (>= 0)")
    return order[:n_id], order[len(order) - n_ood :]


def _hsv_to_rgb(h, s, v):
    """(n,) hue, saturation, value in [0, 1] -> (n, 3) RGB in [0, 1]."""
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack(
        [np.stack(c, -1) for c in [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]]
    )  # (6, n, 3)
    return table[i, np.arange(len(h))]


DEMO_MAX_SATURATION = 0.35
# Nuisances are those the augmentations remove (position and scale: crops; colour, brightness:
# jitter and grayscale; left-right: flips). Nuisances no augmentation removes -- object and pattern
# rotation, a per-image noise level, strong blotches, light-vs-dark polarity -- were measured to
# stall k-NN on this data (instance discrimination encodes them instead of the class), so they are
# off or weak.
DEMO_BG_VALUE = (0.55, 0.85)  # range of the background's brightness (HSV value): a light ground
DEMO_DARKEN = ((0.3, 0.35), (0.9, 1.0))  # the two foreground colours take away these fractions of it
DEMO_GRADIENT = 0.08  # the background gradient's other end: another hue, brightness within +-0.08
DEMO_BLOTCH_STD = 0.02  # low-frequency colour blotches
DEMO_NOISE_STD = 0.03  # pixel noise, the same level for every image
DEMO_EXPOSURE = (0.5, 1.0)  # a per-image brightness factor (colour jitter's brightness covers 0.6-1.4)
DEMO_ROTATE = 0.0  # 1: random object and pattern angles; 0: upright
DEMO_RADIUS = (0.32, 0.44)  # object radius, as a fraction of the image side
DEMO_PERIOD = (0.8, 1.1)  # pattern period, as a fraction of the object radius


def _demo_colours(rng, n):
    """Background colours a, b and foreground colours 1, 2, each (n, 3): random
    hues and saturations, but value (brightness) contrast is guaranteed so the
    shape and its pattern stay visible after grayscale: both foreground colours
    are darker than the background, one a little (near), one almost black (far)."""
    bg_v = rng.uniform(*DEMO_BG_VALUE, n)
    near = rng.uniform(*DEMO_DARKEN[0], n)
    far = rng.uniform(*DEMO_DARKEN[1], n)
    swap = rng.random(n) < 0.5  # which one the solid fill / pattern base uses
    fg_v = [bg_v * (1 - np.where(swap, far, near)), bg_v * (1 - np.where(swap, near, far))]

    def colour(v):
        # Muted colours (saturation <= 0.35): hue and saturation jitter and grayscale scramble them,
        # so colour cannot identify an image across views -- otherwise instance discrimination
        # latches onto each image's palette (a shortcut) instead of its shape and pattern.
        return _hsv_to_rgb(rng.random(n), rng.uniform(0.0, DEMO_MAX_SATURATION, n), np.clip(v, 0, 1))

    bg_b_v = bg_v + rng.uniform(-DEMO_GRADIENT, DEMO_GRADIENT, n)  # gradient end
    return colour(bg_v), colour(bg_b_v), colour(fg_v[0]), colour(fg_v[1])


def _shape_mask(shape, u, v):
    """Inside-mask of a shape of radius ~1 in object coordinates u, v (n, H, W)."""
    if shape == "disc":
        return u * u + v * v <= 1.0
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.45**2)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.82
    if shape == "triangle":  # equilateral, inradius 0.58
        dist = [u * np.cos(a) + v * np.sin(a) for a in np.pi / 2 + 2 * np.pi / 3 * np.arange(3)]
        return np.maximum.reduce(dist) <= 0.58
    if shape == "cross":  # plus sign, arm half-width 0.34
        au, av = np.abs(u), np.abs(v)
        return ((au <= 1) & (av <= 0.34)) | ((av <= 1) & (au <= 0.34))
    if shape == "star":  # five points: fold the angle into one half-spike, test against its edge
        outer, inner, half = 1.1, 0.48, np.pi / 5
        ang = np.mod(np.arctan2(v, u), 2 * half)
        ang = np.minimum(ang, 2 * half - ang)
        r = np.hypot(u, v)
        px, py = r * np.cos(ang) - outer, r * np.sin(ang)
        ex, ey = inner * np.cos(half) - outer, inner * np.sin(half)
        return ex * py - ey * px >= 0
    raise ValueError(f"unknown demo shape {shape!r}")


def _pattern_mask(pattern, a, b):
    """Where the second foreground colour goes; a, b (n, H, W) in pattern periods."""
    if pattern == "solid":
        return np.zeros(a.shape, bool)
    if pattern == "stripes":
        return np.mod(a, 1.0) < 0.5
    if pattern == "bands":
        return np.mod(b, 1.0) < 0.5
    if pattern == "checker":
        return (np.floor(a) + np.floor(b)) % 2 == 1
    raise ValueError(f"unknown demo pattern {pattern!r}")


def _render(shape: str, pattern: str, n: int, size: int, rng) -> np.ndarray:
    """n images (n, size, size, 3) uint8 of one class, each with its own nuisances."""
    f32 = np.float32

    def per_image(x):  # (n,) -> (n, 1, 1) for broadcasting over pixels
        return np.asarray(x, f32)[:, None, None]

    yy, xx = np.mgrid[0:size, 0:size].astype(f32) + 0.5  # pixel centres, (H, W) each
    radius = rng.uniform(*DEMO_RADIUS, n) * size  # object spans ~65-90% of the side
    cx = radius * 0.8 + rng.random(n) * (size - 1.6 * radius)  # may poke a little out of frame
    cy = radius * 0.8 + rng.random(n) * (size - 1.6 * radius)
    dx, dy = xx - per_image(cx), yy - per_image(cy)  # (n, H, W), pixels from the centre

    theta = rng.uniform(0, 2 * np.pi, n) * DEMO_ROTATE
    cos, sin, r = per_image(np.cos(theta)), per_image(np.sin(theta)), per_image(radius)
    inside = _shape_mask(shape, (cos * dx + sin * dy) / r, (cos * dy - sin * dx) / r)

    # The pattern has its own angle, period (relative to the object, as a crop
    # rescales both) and phase, so only its kind carries the class.
    phi = rng.uniform(0, np.pi, n) * DEMO_ROTATE
    period = per_image(radius * rng.uniform(*DEMO_PERIOD, n))
    cos, sin = per_image(np.cos(phi)), per_image(np.sin(phi))
    a = (cos * dx + sin * dy) / period + per_image(rng.random(n))
    b = (cos * dy - sin * dx) / period + per_image(rng.random(n))
    second = _pattern_mask(pattern, a, b)

    bg_a, bg_b, fg_1, fg_2 = (c.astype(f32)[:, None, None, :] for c in _demo_colours(rng, n))  # (n, 1, 1, 3)
    psi = rng.uniform(0, 2 * np.pi, n)  # background gradient direction
    ramp = (np.cos(psi)[:, None, None] * (xx - size / 2) + np.sin(psi)[:, None, None] * (yy - size / 2)) / size + 0.5
    background = bg_a + (bg_b - bg_a) * ramp.astype(f32)[..., None]
    foreground = np.where(second[..., None], fg_2, fg_1)
    img = np.where(inside[..., None], foreground, background)  # (n, H, W, 3)

    # Low-frequency colour blotches (a 5x5 random field, bilinearly upsampled) and pixel noise.
    grid = np.clip((np.arange(size, dtype=f32) + 0.5) / size * 4, 0, 4)  # pixel -> position on the 5-point grid
    lo = np.floor(np.minimum(grid, 3.999)).astype(int)
    up = np.zeros((size, 5), f32)
    up[np.arange(size), lo] = 1 - (grid - lo)
    up[np.arange(size), lo + 1] = grid - lo
    field = rng.normal(0, DEMO_BLOTCH_STD, (n, 3, 5, 5)).astype(f32)
    img += (up @ field @ up.T).transpose(0, 2, 3, 1)  # (n, 3, H, W) -> (n, H, W, 3)
    img *= per_image(rng.uniform(*DEMO_EXPOSURE, n))[..., None]
    # One noise level for all images: a per-image level would survive every augmentation but blur
    # and give instance discrimination a cue that says nothing about the class.
    img += rng.standard_normal(img.shape, dtype=f32) * f32(DEMO_NOISE_STD)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


# The size of `make demo`'s data (`selfsup data demo` options; make_demo's defaults).
# 32x32 costs a quarter of 64x64 per image; 1000 val and 1500 OOD images (300 OOD probe-test) keep one
# run's binomial error near 1.5 and 2.5 points; k-NN on them costs little.
DEMO_DEFAULTS = dict(size=32, train_per_class=200, val_per_class=100, ood_per_class=150)


def make_demo(
    dest,
    seed: int = 0,
    n_id_classes: int = 10,
    n_ood_classes: int = 10,
    train_per_class: int = DEMO_DEFAULTS["train_per_class"],
    val_per_class: int = DEMO_DEFAULTS["val_per_class"],
    ood_per_class: int = DEMO_DEFAULTS["ood_per_class"],
    size: int = DEMO_DEFAULTS["size"],
) -> Dataset:
    """Generate the synthetic demo set into ``dest``/{train,val,ood}.npz and return it.

    Images (N, size, size, 3) uint8; classes are "shape+pattern" (see
    :func:`demo_classes`), balanced, grouped by label. Fully determined by the
    arguments: the same seed gives the same arrays. With ``n_ood_classes=0`` no
    ood.npz is written (and an old one in ``dest`` is removed).
    """
    if min(train_per_class, val_per_class) < 1 or (n_ood_classes and ood_per_class < 1) or size < 16:
        raise DataError(
            f"demo data: need >= 1 image per class and size >= 16, got size {size}, {train_per_class} "
            f"train, {val_per_class} val, {ood_per_class} OOD a class"
        )
    id_combos, ood_combos = demo_classes(n_id_classes, n_ood_classes)
    catalogue = _demo_order()  # a fixed index per class, whatever the counts

    def build(combos, per_class, split_no):
        # Each (split, class) has its own stream, so changing one count leaves the other classes unchanged.
        images = [
            _render(s, p, per_class, size, np.random.default_rng([seed, split_no, catalogue.index((s, p))]))
            for s, p in combos
        ]
        labels = np.repeat(np.arange(len(combos), dtype=np.int64), per_class)
        return Split(np.concatenate(images), labels, [f"{s}+{p}" for s, p in combos])

    dest = Path(dest)
    ds = Dataset(
        build(id_combos, train_per_class, 0),
        build(id_combos, val_per_class, 1),
        build(ood_combos, ood_per_class, 2) if ood_combos else None,
    )
    for name in SPLITS:
        split = getattr(ds, name)
        if split is None:
            (dest / f"{name}.npz").unlink(missing_ok=True)
            continue
        split.source = str(dest / f"{name}.npz")
        save_npz(split, split.source)
    return ds


def is_synthetic(dataset: Dataset) -> bool:
    """True for the generated demo data (its classes are the demo's shape+pattern names)."""
    demo = {f"{s}+{p}" for s in DEMO_SHAPES for p in DEMO_PATTERNS}
    names = list(dataset.train.class_names) + (list(dataset.ood.class_names) if dataset.ood is not None else [])
    return bool(names) and set(names) <= demo
