"""Features: a trained encoder's features of an image set, and the input checks that the k-NN
and the linear probe share.

    extract_features(encoder, images)  -> (N, D) float32 features, in batches, eval mode
    project(head, features)            -> a head (the projector) applied to cached features
    autocast_dtype(precision, device)  -> what a precision setting (Config.precision) runs in there
"""

from __future__ import annotations

import numpy as np
import torch

from .pixels import normalize

# ---------------------------------------------------------------------------------------------
# Inputs: numpy or torch, checked once (knn and probe use these)


def default_device(*tensors) -> torch.device:
    """The device of the first tensor among ``tensors``, else CUDA when available, else CPU."""
    for t in tensors:
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def as_tensor(x, device, name: str) -> torch.Tensor:
    """x (numpy or torch) as a tensor on device."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(device)


def float_features(x: torch.Tensor, name: str) -> torch.Tensor:
    """(N, D) features as float32 (float64 stays); a one-line ValueError naming `name` otherwise."""
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (N, D) array of features, got shape {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"{name}: expected numeric features, got {x.dtype}")
    if x.dtype != torch.float64:
        x = x.float()  # half / bfloat16 / integer features are compared in float32
    return x


def int_labels(y, device, n: int, name: str) -> torch.Tensor:
    """(n,) integer labels as int64 on device; a one-line ValueError naming `name` otherwise."""
    y = as_tensor(y, device, name)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name}: expected {n} labels in a 1-D array, got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex():
        raise ValueError(f"{name}: expected integer class labels, got {y.dtype}")
    return y.long()


def accuracy(pred, labels) -> float:
    """Fraction of ``pred`` equal to ``labels`` (both (N,), numpy or torch)."""
    pred = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return float((pred == labels).mean()) if len(labels) else float("nan")


def to_numpy(x) -> np.ndarray:
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ---------------------------------------------------------------------------------------------
# Precision: one resolution for training and for extraction, so features are computed the way the
# run was trained


def autocast_dtype(precision: str, device) -> torch.dtype | None:
    """The autocast dtype of a precision setting ("auto", "bf16", "fp16", "fp32") on `device`
    (None: fp32). auto: bf16 on CUDA cards that compute in bf16 (compute capability 8.0, Ampere,
    and newer), fp16 with a gradient scaler on older ones (T4, V100 only emulate bf16, slowly);
    on the CPU bf16 where it has bf16 matrix units (AMX: Xeon Sapphire Rapids and newer; measured
    there 1.1-2.2x the fp32 step; val 5-NN after 15 epochs of the real-image convnet -0.6 +- 1.5
    points against fp32 in 10 seeds, benchmarks/RESULTS.md), else fp32 (emulated bf16 is slower)."""
    if precision == "auto":
        if torch.device(device).type != "cuda":
            return torch.bfloat16 if cpu_bf16_units() else None
        precision = "bf16" if native_bf16() else "fp16"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def cpu_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX tiles), which oneDNN uses for
    convolutions and matmuls under autocast."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch 2.3+
    return bool(probe and probe() and torch.backends.mkldnn.is_available())


def native_bf16() -> bool:
    """Whether the current CUDA card computes in bf16 natively. torch.cuda.is_bf16_supported()
    alone also says True for cards that only emulate it (its including_emulation defaults to True)."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch without the argument: native bf16 is compute capability 8.0 and up
        return torch.cuda.get_device_capability()[0] >= 8


# ---------------------------------------------------------------------------------------------
# Feature extraction


@torch.no_grad()
def extract_features(
    encoder: torch.nn.Module, images, batch_size: int = 512, device=None, precision: str = "auto"
) -> torch.Tensor:
    """Encoder features of a whole image set, in batches.

    images: uint8 numpy (N, H, W, 3) or uint8 tensor (N, 3, H, W) on any device; only one batch at
        a time is converted to float (the whole set as float32 would be 4x the uint8 size).
    device: where to run; default: the encoder's device. The encoder is moved there (in place).
    precision: the run's setting (Config.precision), resolved as training resolves it
        (autocast_dtype): auto is bf16 on recent CUDA cards, fp16 on older ones, float32 on CPU.
    Returns (N, D) float32 on ``device``. The encoder runs in eval mode (BatchNorm running
    statistics) and is put back in its previous mode afterwards. On CUDA: channels_last inputs.
    """
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images: expected a (N, H, W, 3) uint8 array, got shape {images.shape}")
        channels_first = False
    elif isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected a (N, 3, H, W) uint8 tensor, got shape {tuple(images.shape)}")
        channels_first = True
    else:
        raise TypeError(f"images: expected a numpy array or torch tensor, got {type(images).__name__}")
    if images.dtype not in (np.uint8, torch.uint8):
        raise ValueError(f"images: expected uint8 pixels, got {images.dtype}")
    if device is None:
        param = next(iter(encoder.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    encoder.to(device)
    cuda = device.type == "cuda"
    amp = autocast_dtype(precision, device)

    was_training = encoder.training
    encoder.eval()
    out = None
    try:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            if not channels_first:
                batch = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
            x = normalize(batch.to(device, non_blocking=True))  # (B, 3, H, W) float32
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                f = encoder(x)
            f = f.float().flatten(1)
            if out is None:
                out = torch.empty(len(images), f.shape[1], dtype=torch.float32, device=device)
            out[start : start + len(f)] = f
    finally:
        encoder.train(was_training)
    if out is None:  # no images: run one dummy image through to learn D
        raise ValueError("images: empty image set")
    return out


@torch.no_grad()
def project(head: torch.nn.Module, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Apply a head (e.g. the projector) to cached (N, D) features in eval mode -> (N, D') float32."""
    was_training = head.training
    head.eval()
    try:
        param = next(iter(head.parameters()), None)
        device = param.device if param is not None else features.device
        return torch.cat(
            [head(features[i : i + batch_size].to(device)).float() for i in range(0, len(features), batch_size)]
        )
    finally:
        head.train(was_training)
