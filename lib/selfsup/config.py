"""One frozen config for a training run; presets are YAML files of overrides.

Defaults follow the papers unless a comment says otherwise:
SimCLR (Chen et al. 2020), BYOL (Grill et al. 2020), Barlow Twins (Zbontar et al. 2021).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

METHODS = ("simclr", "byol", "barlow")
BACKBONES = ("resnet18", "resnet34", "resnet50", "convnet")
STEMS = ("imagenet", "cifar", "cifar_pool")
OPTIMIZERS = ("sgd", "lars", "adam", "adamw")
RECIPES = ("simclr", "asymmetric")

# Head sizes per method when the config leaves them at 0 (the papers' values).
HEAD_DEFAULTS = {
    "simclr": dict(proj_hidden=2048, proj_dim=128, pred_hidden=0),  # SimCLR: 2-layer MLP, 128-d
    "byol": dict(proj_hidden=4096, proj_dim=256, pred_hidden=4096),  # BYOL: 4096 -> 256
    "barlow": dict(proj_hidden=8192, proj_dim=8192, pred_hidden=0),  # Barlow Twins: 3 x 8192
}


class ConfigError(ValueError):
    """A bad config file, key or value. The message names which."""


@dataclass(frozen=True)
class Config:
    # --- method ---
    method: str = "simclr"
    temperature: float = 0.5  # SimCLR NT-Xent; the paper's best at batch 4096 is 0.1-0.5
    barlow_lambda: float = 5e-3  # Barlow Twins off-diagonal weight (paper: 5e-3)
    byol_momentum: float = 0.99  # BYOL EMA base rate, cosine-raised to 1 (paper: 0.996 at bs 4096)
    proj_hidden: int = 0  # 0 = HEAD_DEFAULTS[method]
    proj_dim: int = 0
    pred_hidden: int = 0
    # --- augmentation ---
    recipe: str = ""  # "" = simclr for SimCLR, asymmetric for BYOL / Barlow Twins
    crop_scale_min: float = 0.2  # RandomResizedCrop scale=(0.2, 1.0), common at small resolution
    image_size: int = 64
    # --- model ---
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
    device: str = "auto"  # auto = cuda if available, else cpu
    precision: str = "auto"  # auto = bf16 on cuda, fp32 on cpu
    compile: bool = False
    channels_last: str = "auto"  # auto = on cuda
    sync_bn: bool = False  # several processes (torchrun): BatchNorm statistics over the global batch
    # --- monitoring ---
    knn_k: int = 5  # the course protocol: KNeighborsClassifier(n_neighbors=5)
    eval_every: int = 1  # epochs between val loss / k-NN evaluations (0 = only at the end)
    knn_train_limit: int = 0  # k-NN monitor uses at most this many train images (0 = all)
    checkpoint_every: int = 1

    def __post_init__(self):
        # Config(lr=1) and from_dict({"lr": 1}) must be the same config (and hash): ints become floats.
        for f in fields(self):
            if f.type == "float" and isinstance(getattr(self, f.name), int) and not isinstance(getattr(self, f.name), bool):
                object.__setattr__(self, f.name, float(getattr(self, f.name)))
        check = {
            "method": METHODS, "backbone": BACKBONES, "stem": STEMS,
            "optimizer": OPTIMIZERS, "recipe": RECIPES + ("",),
            "precision": ("auto", "bf16", "fp32"), "channels_last": ("auto", "on", "off"),
        }
        for key, allowed in check.items():
            value = getattr(self, key)
            if value not in allowed:
                raise ConfigError(f"config key {key!r}: expected one of {list(allowed)}, got {value!r}")
        positive = ("epochs", "batch_size", "image_size", "knn_k", "width")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ConfigError(f"config key {key!r}: expected a positive number, got {getattr(self, key)!r}")
        if not 0 < self.crop_scale_min <= 1:
            raise ConfigError(f"config key 'crop_scale_min': expected 0 < value <= 1, got {self.crop_scale_min}")
        if self.temperature <= 0 or self.lr <= 0:
            raise ConfigError("config keys 'temperature' and 'lr' must be positive")

    # Derived values, resolved once so every reader agrees.
    @property
    def heads(self) -> dict:
        d = dict(HEAD_DEFAULTS[self.method])
        for k in d:
            if getattr(self, k) and (k != "pred_hidden" or self.method == "byol"):  # only BYOL predicts
                d[k] = getattr(self, k)
        return d

    @property
    def aug_recipe(self) -> str:
        return self.recipe or ("simclr" if self.method == "simclr" else "asymmetric")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Stable short hash of every field: the identity of a run's settings."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def replace(self, **overrides) -> "Config":
        return from_dict({**self.to_dict(), **overrides})


def from_dict(d: dict, source: str = "config") -> Config:
    """Build a Config, with a clear error for unknown keys or wrongly typed values."""
    types = {f.name: f.type for f in fields(Config)}
    out = {}
    for key, value in d.items():
        if key not in types:
            raise ConfigError(f"{source}: unknown key {key!r} (known: {', '.join(sorted(types))})")
        out[key] = _coerce(key, value, types[key], source)
    return Config(**out)


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
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
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
