"""One frozen config for a training run; presets are YAML files of overrides.

Defaults follow the papers unless a comment says otherwise: SimCLR (Chen et al. 2020), BYOL
(Grill et al. 2020), Barlow Twins (Zbontar et al. 2021). The settings only one method reads
(temperature, barlow_lambda, ...) are declared by that method (selfsup.methods), with their
defaults; Config gains them as fields, and its hash counts only those the chosen method reads.
Every key has a checked range (LIMITS), so a bad value fails here, in one line, before anything
trains.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from .methods import MAX_HEAD_WIDTH, REGISTRY

METHODS = tuple(REGISTRY)
BACKBONES = ("resnet18", "resnet34", "resnet50", "convnet")
STEMS = ("imagenet", "cifar", "cifar_pool")
OPTIMIZERS = ("sgd", "lars", "adam", "adamw")
RECIPES = ("simclr", "asymmetric")
CHOICES = {
    "method": METHODS,
    "backbone": BACKBONES,
    "stem": STEMS,
    "optimizer": OPTIMIZERS,
    "recipe": RECIPES + ("",),
    "precision": ("auto", "bf16", "fp16", "fp32"),
    "channels_last": ("auto", "on", "off"),
    "fused": ("auto", "on", "off"),
}


class ConfigError(ValueError):
    """A bad config file, key or value. The message names which."""


@dataclass(frozen=True)
class _Settings:
    # --- heads and augmentation (0 / "" = the method's own, see selfsup.methods) ---
    proj_hidden: int = 0
    proj_dim: int = 0
    recipe: str = ""
    crop_scale_min: float = 0.2  # RandomResizedCrop scale=(0.2, 1.0), common at small resolution
    image_size: int = 64
    # --- model ---
    method: str = "simclr"
    backbone: str = "resnet18"
    stem: str = "imagenet"  # imagenet: 7x7/2 + maxpool; cifar: 3x3/1; cifar_pool: 3x3/1 + maxpool
    width: int = 32  # base width of the small "convnet" backbone only
    # --- optimisation ---
    epochs: int = 100
    batch_size: int = 512
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-2  # torch's AdamW default
    momentum: float = 0.9  # SGD / LARS
    warmup_epochs: float = 10.0
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    # --- system ---
    seed: int = 0
    device: str = "auto"  # auto = cuda if available (LOCAL_RANK's under torchrun), else cpu
    precision: str = "auto"  # auto = bf16 on cuda where supported (else fp16); cpu: bf16 with AMX, else fp32
    compile: bool = False
    channels_last: str = "auto"  # auto = on cuda, and on cpu in bf16
    fused: str = "auto"  # fused optimizer kernels (SGD, Adam, AdamW); auto = on cuda
    sync_bn: bool = False  # several processes (torchrun): BatchNorm statistics over the global batch
    deterministic: bool = False  # cuDNN deterministic + torch.use_deterministic_algorithms (GPU exact resume)
    # --- monitoring ---
    knn_k: int = 5  # the course protocol: KNeighborsClassifier(n_neighbors=5)
    eval_every: int = 1  # epochs between val loss / k-NN evaluations (0 = only at the end)
    knn_train_limit: int = 0  # k-NN monitor uses at most this many train images (0 = all)
    checkpoint_every: int = 1

    def __post_init__(self):
        # Config(lr=1) and from_dict({"lr": 1}) must be the same config (and hash): ints become floats.
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "float" and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
        check(self)

    # Derived values, resolved once so every reader agrees.
    @property
    def heads(self) -> dict:
        """Head sizes as the method builds them: its own, where the config leaves them at 0."""
        d = dict(REGISTRY[self.method].heads)
        for k in d:
            if getattr(self, k, 0):
                d[k] = getattr(self, k)
        return d

    @property
    def aug_recipe(self) -> str:
        return self.recipe or REGISTRY[self.method].recipe

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Stable short hash of the settings this run reads: the identity of a run's settings.
        Another method's settings (temperature for BYOL, say) do not count."""
        unread = METHOD_SETTINGS - set(REGISTRY[self.method].settings)
        blob = json.dumps({k: v for k, v in self.to_dict().items() if k not in unread}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def replace(self, **overrides) -> Config:
        return from_dict({**self.to_dict(), **overrides})


def _method_settings() -> dict:
    out: dict = {}
    for m in REGISTRY.values():
        for key, default in m.settings.items():
            if key in out and out[key] != default:
                raise TypeError(f"method setting {key!r} declared twice with different defaults")
            out[key] = default
    return out


METHOD_SETTINGS = set(_method_settings())
# The Config: the common settings above plus every method's own, one frozen dataclass.
Config = dataclasses.make_dataclass(
    "Config",
    [(k, type(v).__name__, dataclasses.field(default=v)) for k, v in _method_settings().items()],
    bases=(_Settings,),
    frozen=True,
)
Config.__module__ = __name__

# Every key's range: (low, high), None = unbounded; a "(" / ")" marks an open end. Values must be
# finite. A method may add its own (`limits` in selfsup.methods).
LIMITS = {
    "proj_hidden": (0, MAX_HEAD_WIDTH),
    "proj_dim": (0, MAX_HEAD_WIDTH),
    "crop_scale_min": ("(", 0.0, 1.0),
    "image_size": (8, 4096),
    "width": (1, 1024),
    "epochs": (1, None),
    "batch_size": (2, None),
    "lr": ("(", 0.0, 100.0),
    "weight_decay": (0.0, 10.0),
    "momentum": (0.0, 1.0, ")"),
    "warmup_epochs": (0.0, None),
    "min_lr_ratio": (0.0, 1.0),
    "seed": (0, 2**63 - 1),
    "knn_k": (1, None),
    "eval_every": (0, None),
    "knn_train_limit": (0, None),
    "checkpoint_every": (1, None),
    **{k: v for m in REGISTRY.values() for k, v in getattr(m, "limits", {}).items()},
}


def _describe(limit) -> str:
    lo_open, hi_open = limit[0] == "(", limit[-1] == ")"
    lo, hi = [x for x in limit if x not in ("(", ")")]
    if hi is None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def _within(value, limit) -> bool:
    lo_open, hi_open = limit[0] == "(", limit[-1] == ")"
    lo, hi = [x for x in limit if x not in ("(", ")")]
    if not math.isfinite(value):
        return False
    above = value > lo if lo_open else value >= lo
    below = hi is None or (value < hi if hi_open else value <= hi)
    return above and below


def check(cfg) -> None:
    """Every key against CHOICES and LIMITS (batch_size >= 2: with one image there are no
    negatives and no batch statistics). Limits that depend on the data (batch_size and knn_k
    against the training set) are checked by the training loop before anything is written."""
    for key, allowed in CHOICES.items():
        value = getattr(cfg, key)
        if value not in allowed:
            raise ConfigError(f"config key {key!r}: expected one of {list(allowed)}, got {value!r}")
    for key, limit in LIMITS.items():
        value = getattr(cfg, key, None)
        if value is not None and not _within(value, limit):
            raise ConfigError(f"config key {key!r}: expected a value {_describe(limit)}, got {value!r}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device):
        raise ConfigError(f"config key 'device': expected auto, cpu, cuda or cuda:N, got {cfg.device!r}")


def from_dict(d: dict, source: str = "config") -> Config:
    """Build a Config, with a clear error for unknown keys or wrongly typed values."""
    types = {f.name: f.type for f in fields(Config)}
    out = {}
    for key, value in d.items():
        if key not in types:
            raise ConfigError(f"{source}: unknown key {key!r} (known: {', '.join(sorted(types))})")
        out[key] = _coerce(key, value, types[key], source)
    try:
        return Config(**out)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _coerce(key, value, typ, source):
    want = {"int": int, "float": float, "str": str, "bool": bool}[typ]
    if want is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif want is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif want is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif want is int and isinstance(value, float) and value.is_integer():
        return int(value)
    elif want is str and isinstance(value, str):
        return value
    elif want is float and isinstance(value, str) and _is_float(value):  # "4e-3": a string in YAML 1.1
        return float(value)
    elif isinstance(value, str):  # "0.1" from a command line or a papermill parameter
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if not isinstance(parsed, str):
            return _coerce(key, parsed, typ, source)
    raise ConfigError(f"{source}: key {key!r} expects {typ}, got {value!r}")


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def parse_overrides(items: list[str]) -> dict:
    """['lr=0.1', 'method=byol'] -> {'lr': 0.1, 'method': 'byol'} (values parsed as YAML scalars)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        parsed = yaml.safe_load(value) if value else ""
        out[key.strip()] = parsed if parsed is not None else value
    return out


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict:
    """A YAML file holding a mapping (an empty file is {}); any problem is a one-line ConfigError
    naming the file. `what` names the kind of file in the messages ("config", "sweep")."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
            f"save the {what} file as UTF-8"
        ) from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping of {what} keys, got {type(d).__name__}")
    return d


def load(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Load a preset YAML (a mapping of Config keys) and apply overrides on top.

    A preset may also hold one section per method (`barlow: {proj_dim: 2048}`): the section of the
    method finally chosen (by the preset or the overrides) applies over the preset's keys, and the
    overrides over both. So one preset trains every method with settings that suit it, and
    `--set method=barlow` picks up Barlow Twins' section. Every section is checked, used or not.
    """
    d, source = ({}, "overrides") if path is None else (read_yaml_mapping(path), str(path))
    d.pop("seeds", None)  # for sweeps and comparisons (preset_seeds), not a run's setting
    sections = {m: d.pop(m) for m in METHODS if m in d}
    cfg = from_dict(d, source)
    for m, section in sections.items():
        where = f"{source}: section {m!r}"
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: expected a mapping of config keys, got {type(section).__name__}")
        if "method" in section:
            raise ConfigError(f"{where}: may not set 'method' (the section is chosen by it)")
        from_dict({**d, **section, "method": m}, where)
    method = (overrides or {}).get("method", cfg.method)
    if method in sections:
        cfg = from_dict({**cfg.to_dict(), **sections[method]}, f"{source}: section {method!r}")
    if overrides:
        cfg = from_dict({**cfg.to_dict(), **overrides}, "overrides")
    return cfg


def parse_seeds(value, source: str) -> list[int] | None:
    """`seeds:` of a preset or sweep: a list of distinct seeds, or a count n (seeds 0..n-1);
    None when absent. A one-line ConfigError otherwise."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(f"{source}: key 'seeds': expected a count >= 1 or a list of seeds, got {value}")
        return list(range(value))
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
        and len(set(value)) == len(value)
    ):
        return list(value)
    raise ConfigError(f"{source}: key 'seeds': expected a count >= 1 or a list of distinct seeds >= 0, got {value!r}")


def preset_seeds(path) -> list[int] | None:
    """The `seeds:` a preset asks its comparisons and sweeps for (None: one run at its `seed`)."""
    return parse_seeds(read_yaml_mapping(path).get("seeds"), str(path))
