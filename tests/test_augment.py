"""selfsup.augment: shapes, per-image randomness, determinism, parameter
distributions against torchvision's samplers, and each op against
torchvision.transforms.v2.functional on the same parameters."""

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF

from selfsup import augment as A
from selfsup import pixels as P

N_DRAWS = 4000  # parameter draws per distribution test


def images(batch=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)


def smooth_images(batch=4, size=32, low=0.0, high=1.0, seed=0):
    """Float images in [low, high] with spatial structure (upsampled noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 6, 6, generator=g)
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return low + (high - low) * x


DEFAULT_VIEW = A.ViewRecipe()


def params_for(batch, view=DEFAULT_VIEW, in_size=(32, 32), seed=0, **overrides):
    g = torch.Generator().manual_seed(seed)
    p = A.sample_params(batch, view, in_size, g)
    for key, value in overrides.items():
        p[key] = value if torch.is_tensor(value) else torch.full_like(p[key], value)
    return p


def ks_statistic(a, b):
    """Two-sample Kolmogorov-Smirnov statistic: sup |F_a - F_b|."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / len(a)
    fb = np.searchsorted(b, grid, side="right") / len(b)
    return np.abs(fa - fb).max()


def ks_critical(n, m, alpha=1e-3):
    """Asymptotic two-sample KS critical value: c(alpha) * sqrt((n + m) / (n m))."""
    return math.sqrt(-0.5 * math.log(alpha / 2)) * math.sqrt((n + m) / (n * m))


def assert_frequency(flags, p):
    """Empirical rate of a bool tensor within 5 binomial standard deviations of p."""
    n = flags.numel()
    tol = 5 * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-9
    assert abs(flags.float().mean().item() - p) <= tol, (flags.float().mean().item(), p)


# --- the public call -----------------------------------------------------------


@pytest.mark.parametrize("recipe", sorted(A.RECIPES))
def test_shapes_dtype_device(recipe):
    x = images(batch=5, size=40)
    v1, v2 = A.TwoViews(recipe, size=24)(x)
    for v in (v1, v2):
        assert v.shape == (5, 3, 24, 24) and v.dtype == torch.float32 and v.device == x.device
        assert torch.isfinite(v).all()
    # Normalised from [0, 1]: values lie within the MEAN/STD image of [0, 1].
    lo = min(-m / s for m, s in zip(P.MEAN, P.STD))
    hi = max((1 - m) / s for m, s in zip(P.MEAN, P.STD))
    assert v1.min() >= lo - 1e-5 and v1.max() <= hi + 1e-5


def test_non_square_input():
    x = torch.randint(0, 256, (3, 3, 30, 50), dtype=torch.uint8)
    v1, v2 = A.TwoViews("asymmetric", size=16)(x)
    assert v1.shape == v2.shape == (3, 3, 16, 16)


def test_each_image_draws_its_own_views():
    x = images(batch=1).expand(16, 3, 32, 32).contiguous()
    v1, v2 = A.TwoViews("simclr", size=32)(x, torch.Generator().manual_seed(0))
    flat = torch.cat([v1, v2]).flatten(1)
    dist = torch.cdist(flat, flat)
    off_diagonal = dist[~torch.eye(32, dtype=torch.bool)]
    assert off_diagonal.min() > 1e-3  # all 32 views of the one image differ


def test_seeded_generator_is_deterministic():
    x = images(batch=6)
    aug = A.TwoViews("asymmetric", size=32)
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    torch.manual_seed(3)
    d = aug(x)
    torch.manual_seed(3)
    e = aug(x)
    assert torch.equal(d[0], e[0]) and torch.equal(d[1], e[1])


def test_rejects_bad_input():
    aug = A.TwoViews("simclr", size=16)
    with pytest.raises(ValueError):
        aug(images().float())
    if torch.cuda.is_available():
        with pytest.raises(ValueError):
            aug(images(), torch.Generator(device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_matches_device():
    x = images(batch=8).cuda()
    aug = A.TwoViews("asymmetric", size=32)
    a = aug(x, torch.Generator(device="cuda").manual_seed(1))
    b = aug(x, torch.Generator(device="cuda").manual_seed(1))
    assert a[0].device.type == "cuda" and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_recipes_follow_the_papers():
    simclr1, simclr2 = A.RECIPES["simclr"]
    assert simclr1 == simclr2
    assert (simclr1.brightness, simclr1.contrast, simclr1.saturation, simclr1.hue) == (0.4, 0.4, 0.4, 0.1)
    assert (simclr1.blur_p, simclr1.solarize_p) == (0.5, 0.0)
    byol1, byol2 = A.RECIPES["asymmetric"]
    assert (byol1.brightness, byol1.contrast, byol1.saturation, byol1.hue) == (0.4, 0.4, 0.2, 0.1)
    assert (byol1.blur_p, byol2.blur_p, byol1.solarize_p, byol2.solarize_p) == (1.0, 0.1, 0.0, 0.2)
    for v in (simclr1, byol1, byol2):
        assert (v.flip_p, v.jitter_p, v.gray_p, v.blur_sigma) == (0.5, 0.8, 0.2, (0.1, 2.0))
    assert A.blur_kernel_size(64) == 7 and A.blur_kernel_size(224) == 23
    assert A.TwoViews("simclr", 64, crop_scale=(0.08, 1.0)).views[0].crop_scale == (0.08, 1.0)


# --- parameter distributions ---------------------------------------------------


def torchvision_crops(n, in_size, scale, ratio, seed=0):
    torch.manual_seed(seed)
    img = torch.empty(3, *in_size)
    return np.array([T.RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)])


@pytest.mark.parametrize("in_size,scale", [((64, 64), (0.2, 1.0)), ((48, 80), (0.08, 1.0))])
def test_crop_distribution_matches_torchvision(in_size, scale):
    ratio = (3 / 4, 4 / 3)
    top, left, h, w = (
        t.numpy() for t in A.sample_crops(N_DRAWS, in_size, scale, ratio, torch.Generator().manual_seed(0))
    )
    ref = torchvision_crops(N_DRAWS, in_size, scale, ratio)  # (n, 4): i, j, h, w
    H, W = in_size
    assert (h >= 1).all() and (w >= 1).all() and (top + h <= H).all() and (left + w <= W).all()
    crit = ks_critical(N_DRAWS, N_DRAWS)
    assert ks_statistic(h * w / (H * W), ref[:, 2] * ref[:, 3] / (H * W)) < crit  # area fraction
    assert ks_statistic(w / h, ref[:, 3] / ref[:, 2]) < crit  # aspect ratio
    # Offsets are uniform over the free room: compare the position within it.
    assert ks_statistic((top + 0.5) / (H - h + 1), (ref[:, 0] + 0.5) / (H - ref[:, 2] + 1)) < crit
    assert ks_statistic((left + 0.5) / (W - w + 1), (ref[:, 1] + 0.5) / (W - ref[:, 3] + 1)) < crit


@pytest.mark.parametrize("in_size", [(64, 64), (32, 96)])
def test_crop_fallback_matches_torchvision(in_size):
    # scale (1, 1): at 32x96 no candidate fits (central crop with ratio 4/3); at 64x64 every
    # fitting candidate and the fallback are the whole image.
    ours = torch.stack(A.sample_crops(200, in_size, (1.0, 1.0), (3 / 4, 4 / 3)), dim=1).numpy()
    ref = torchvision_crops(200, in_size, (1.0, 1.0), (3 / 4, 4 / 3))
    assert (ours == ref).all()


def test_jitter_factors_are_uniform_in_range():
    view = A.RECIPES["asymmetric"][0]
    p = A.sample_params(N_DRAWS, view, (32, 32), torch.Generator().manual_seed(0))
    crit = ks_critical(N_DRAWS, N_DRAWS)
    reference = np.random.default_rng(0).uniform(size=N_DRAWS)
    for key, low, high in [
        ("brightness", 1 - view.brightness, 1 + view.brightness),
        ("contrast", 1 - view.contrast, 1 + view.contrast),
        ("saturation", 1 - view.saturation, 1 + view.saturation),
        ("hue", -view.hue, view.hue),
        ("sigma", *view.blur_sigma),
    ]:
        values = p[key].numpy()
        assert values.min() >= low and values.max() <= high, key
        assert ks_statistic((values - low) / (high - low), reference) < crit, key
    # Each image's order is a permutation of the 4 ops; each op is equally likely at each step.
    order = p["order"]
    assert (order.sort(dim=1).values == torch.arange(4)).all()
    for step in range(4):
        for op in range(4):
            assert_frequency(order[:, step] == op, 0.25)


@pytest.mark.parametrize("recipe", sorted(A.RECIPES))
def test_flag_frequencies_match_probabilities(recipe):
    g = torch.Generator().manual_seed(0)
    for view in A.RECIPES[recipe]:
        p = A.sample_params(N_DRAWS, view, (32, 32), g)
        assert_frequency(p["flip"], view.flip_p)
        assert_frequency(p["jitter"], view.jitter_p)
        assert_frequency(p["gray"], view.gray_p)
        assert_frequency(p["blur"], view.blur_p)
        assert_frequency(p["solarize"], view.solarize_p)


# --- each op against torchvision -------------------------------------------------


def only_colour(batch, **overrides):
    """Params with jitter on for every image and neutral factors unless overridden."""
    neutral = dict(jitter=True, gray=False, brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0)
    return params_for(batch, **{**neutral, **overrides})


def colour(x, params):
    return P.apply_colour(x, P.colour_matrix(params, x.mean(dim=(2, 3)))).clamp(0, 1)


@pytest.mark.parametrize(
    "key,tv_fn",
    [
        ("brightness", TF.adjust_brightness),
        ("contrast", TF.adjust_contrast),
        ("saturation", TF.adjust_saturation),
    ],
)
def test_single_jitter_op_matches_torchvision(key, tv_fn):
    x = smooth_images(batch=6)
    factors = torch.tensor([0.0, 0.5, 0.8, 1.0, 1.3, 1.6])
    ours = colour(x, only_colour(6, **{key: factors}))
    ref = torch.stack([tv_fn(x[i], float(f)) for i, f in enumerate(factors)])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_grayscale_matches_torchvision():
    x = smooth_images(batch=3)
    ours = colour(x, only_colour(3, jitter=False, gray=True))
    torch.testing.assert_close(ours, TF.rgb_to_grayscale(x, num_output_channels=3), atol=1e-5, rtol=0)


def test_jitter_order_and_contrast_mean_track_torchvision():
    # Mid-range images and mild factors: no intermediate clamp, so composing the
    # matrices in each image's order must equal torchvision's op-by-op result.
    x = smooth_images(batch=8, low=0.35, high=0.65)
    view = A.ViewRecipe(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.0)
    p = params_for(8, view, jitter=True, gray=False)
    ours = colour(x, p)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation]
    keys = ["brightness", "contrast", "saturation"]
    for i in range(8):
        ref = x[i]
        for op in p["order"][i].tolist():
            if op < 3:
                ref = ops[op](ref, float(p[keys[op]][i]))
        torch.testing.assert_close(ours[i], ref, atol=1e-5, rtol=0)
    assert len({tuple(o) for o in p["order"].tolist()}) > 1  # several orders were exercised


def test_hue_rotation_approximates_torchvision():
    # Exact where HSV and the gray-axis rotation agree: grays, and primaries turned by 1/3.
    primaries = torch.eye(3).view(3, 3, 1, 1).expand(3, 3, 2, 2)
    grays = torch.linspace(0, 1, 3).view(3, 1, 1, 1).expand(3, 3, 2, 2)
    x = torch.cat([primaries, grays])
    ours = colour(x, only_colour(6, hue=1 / 3))
    torch.testing.assert_close(ours, TF.adjust_hue(x, 1 / 3), atol=1e-5, rtol=0)
    # Elsewhere an approximation: same direction, error below the size of the shift.
    x = smooth_images(batch=16, seed=1)
    ours = colour(x, only_colour(16, hue=0.1))
    ref = TF.adjust_hue(x, 0.1)
    shift, err = (ref - x).abs().mean(), (ours - ref).abs().mean()
    assert err < shift
    cosine = torch.nn.functional.cosine_similarity((ours - x).flatten(), (ref - x).flatten(), dim=0)
    assert cosine > 0.8


@pytest.mark.parametrize("shape,k", [((24, 24), 7), ((10, 17), 9)])
def test_blur_matches_torchvision(shape, k):
    x = smooth_images(batch=5, size=shape, seed=2)
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0])
    ours = P.gaussian_blur(x, sigma, k)
    ref = torch.stack([TF.gaussian_blur(x[i], [k, k], [float(s), float(s)]) for i, s in enumerate(sigma)])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("subset", [True, False], ids=["cpu-subset", "accelerator-where"])
def test_blur_and_solarize_touch_only_flagged_images(subset, monkeypatch):
    if not subset:  # the path CUDA takes: every image computed, flagged ones kept by torch.where
        monkeypatch.setattr(P, "SUBSET_DEVICES", frozenset())
    x = smooth_images(batch=6)
    flags = torch.tensor([True, False, True, False, False, True])
    sigma = torch.full((6,), 1.5)
    blurred = P.apply_drawn(x.clone(), flags, None, functools.partial(P.gaussian_blur, kernel_size=7), sigma)
    assert torch.equal(blurred[~flags], x[~flags]) and not torch.equal(blurred[flags], x[flags])
    solarized = P.apply_drawn(x.clone(), flags, None, P.solarize)
    assert torch.equal(solarized[~flags], x[~flags])
    torch.testing.assert_close(solarized[flags], TF.solarize(x[flags], 0.5), atol=0, rtol=0)


def full_box(batch, size, flip=False):
    return dict(
        top=torch.zeros(batch, dtype=torch.long),
        left=torch.zeros(batch, dtype=torch.long),
        height=torch.full((batch,), size),
        width=torch.full((batch,), size),
        flip=torch.full((batch,), flip),
    )


def test_full_box_crop_is_identity_and_flip_mirrors():
    x = smooth_images(batch=3)
    torch.testing.assert_close(P.resized_crop(x, full_box(3, 32), 32), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(P.resized_crop(x, full_box(3, 32, flip=True), 32), x.flip(-1), atol=1e-5, rtol=0)
    # Upscaling the whole image is torchvision's bilinear resize, edges included.
    ref = TF.resize(x, [56, 56], antialias=False)
    torch.testing.assert_close(P.resized_crop(x, full_box(3, 32), 56), ref, atol=1e-5, rtol=0)


def test_crop_grid_equals_affine_grid():
    p = A.sample_params(6, A.ViewRecipe(), (40, 56), torch.Generator().manual_seed(0))
    theta = P.crop_theta(p, (40, 56))
    ref = torch.nn.functional.affine_grid(theta, [6, 3, 24, 24], align_corners=False)
    torch.testing.assert_close(P.crop_grid(theta, 24), ref, atol=1e-6, rtol=0)


def test_crop_box_coordinates():
    x = smooth_images(batch=2, size=48)
    box = dict(
        top=torch.tensor([5, 10]),
        left=torch.tensor([12, 0]),
        height=torch.tensor([20, 20]),
        width=torch.tensor([20, 20]),
        flip=torch.tensor([False, True]),
    )
    # Same size: the crop is a plain slice.
    ours = P.resized_crop(x, box, 20)
    torch.testing.assert_close(ours[0], x[0, :, 5:25, 12:32], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours[1], x[1, :, 10:30, 0:20].flip(-1), atol=1e-5, rtol=0)
    # Upscaled 2x: torchvision's bilinear resized_crop, away from the box's outer half-pixel.
    ours = P.resized_crop(x, box, 40)
    ref = TF.resized_crop(x[0], 5, 12, 20, 20, [40, 40], antialias=False)
    torch.testing.assert_close(ours[0, :, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], atol=1e-5, rtol=0)


def test_pipeline_matches_torchvision_ops_end_to_end():
    # uint8 in, no clamp or edge effects: full box, flip, brightness, blur, solarize.
    x = (smooth_images(batch=4, low=0.3, high=0.7) * 255).round().to(torch.uint8)
    p = only_colour(4, brightness=torch.tensor([0.9, 1.0, 1.1, 1.2]))
    p.update(full_box(4, 32, flip=True))
    p["blur"] = torch.tensor([True, False, True, False])
    p["solarize"] = torch.tensor([True, True, False, False])
    ours = A.apply_params(x, p, 32)
    for i in range(4):
        ref = TF.hflip(x[i].float() / 255)
        ref = TF.adjust_brightness(ref, float(p["brightness"][i]))
        if p["blur"][i]:
            s = float(p["sigma"][i])
            ref = TF.gaussian_blur(ref, [A.blur_kernel_size(32)] * 2, [s, s])
        if p["solarize"][i]:
            ref = TF.solarize(ref, 0.5)
        ref = TF.normalize(ref, P.MEAN, P.STD)
        torch.testing.assert_close(ours[i], ref, atol=1e-4, rtol=0)


def test_normalize_contract():
    x = torch.rand(2, 3, 4, 4)
    mean, std = torch.tensor(P.MEAN).view(1, 3, 1, 1), torch.tensor(P.STD).view(1, 3, 1, 1)
    before = x.clone()
    torch.testing.assert_close(P.normalize(x), (x - mean) / std)
    assert torch.equal(x, before)  # not in place
    u = (x * 255).to(torch.uint8)
    torch.testing.assert_close(P.normalize(u), (u.float() / 255 - mean) / std)


def test_view_recipe_is_data():
    view = dataclasses.replace(A.RECIPES["simclr"][0], blur_p=0.0, gray_p=1.0)
    p = A.sample_params(100, view, (16, 16))
    assert not p["blur"].any() and p["gray"].all()


# --- host synchronisation --------------------------------------------------------

# Ops that wait for the device on CUDA (nonzero also backs boolean-mask indexing), and ops that
# build constants, which must come from the per-device cache instead (torch.tensor on CUDA syncs).
SYNC_OPS = {"aten::nonzero", "aten::item", "aten::_local_scalar_dense"}
BUILD_OPS = {"aten::eye", "aten::one_hot", "aten::lift_fresh"}


def ops_run_by(fn):
    """Names of the aten ops (nested ones too) that fn() runs, from the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events()}


def test_ops_drawn_with_p_0_or_1_never_look_at_their_flags():
    views = (A.ViewRecipe(blur_p=1.0, solarize_p=0.0), A.ViewRecipe(blur_p=0.0, solarize_p=1.0))
    aug, x = A.TwoViews(views, size=32), images(batch=6)
    aug(x)  # constants made and cached
    ops = ops_run_by(lambda: aug(x, torch.Generator().manual_seed(0)))
    assert ops & {"aten::bmm", "aten::grid_sampler_2d"}  # the profiler saw the pipeline
    assert not ops & (SYNC_OPS | BUILD_OPS), ops & (SYNC_OPS | BUILD_OPS)
    # Skipping (p = 0) and applying to all (p = 1) give what following the flags gives.
    params = aug.sample(6, (32, 32), torch.Generator().manual_seed(0))
    assert params["blur"][:6].all() and not params["blur"][6:].any()
    assert params["solarize"][6:].all() and not params["solarize"][:6].any()
    by_view = A.apply_params(torch.cat([x, x]), params, 32, aug.views)
    by_flags = A.apply_params(torch.cat([x, x]), params, 32)
    torch.testing.assert_close(by_view, by_flags, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.cat(aug(x, torch.Generator().manual_seed(0))), by_view, atol=0, rtol=0)


@pytest.mark.parametrize("recipe", sorted(A.RECIPES))
def test_accelerator_path_has_no_host_sync(recipe, monkeypatch):
    # The CUDA path, run on the CPU: no nonzero / item / boolean indexing, no constant rebuilt;
    # and the same views as the CPU's subset path from the same generator.
    aug, x = A.TwoViews(recipe, size=32), images(batch=8)
    subset = aug(x, torch.Generator().manual_seed(3))
    monkeypatch.setattr(P, "SUBSET_DEVICES", frozenset())
    aug(x)
    ops = ops_run_by(lambda: aug(x, torch.Generator().manual_seed(3)))
    assert ops & {"aten::bmm", "aten::where"}
    assert not ops & (SYNC_OPS | BUILD_OPS), ops & (SYNC_OPS | BUILD_OPS)
    where = aug(x, torch.Generator().manual_seed(3))
    for a, b in zip(subset, where):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("recipe", sorted(A.RECIPES))
def test_cuda_two_views_never_sync(recipe):
    aug, x = A.TwoViews(recipe, size=64), images(batch=64, size=64).cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    aug(x, g)  # first call: constants copied to the device once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        v1, v2 = aug(x, g)
        aug(x)  # the global RNG too
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert v1.is_cuda and torch.isfinite(v1).all() and torch.isfinite(v2).all()
