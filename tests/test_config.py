from pathlib import Path

import pytest

from selfsup import config
from selfsup.config import Config, ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_presets_load():
    course = config.load(ROOT / "configs/course.yaml")
    assert (course.method, course.temperature, course.optimizer, course.lr) == ("simclr", 0.1, "adamw", 4e-3)
    assert (course.batch_size, course.backbone, course.epochs) == (1024, "resnet18", 300)
    baseline = config.load(ROOT / "configs/baseline.yaml")
    assert (baseline.temperature, baseline.lr) == (0.5, 0.6)
    demo = config.load(ROOT / "configs/demo.yaml")
    assert demo.backbone == "convnet"


def test_overrides_are_parsed_and_typed():
    cfg = config.load(None, config.parse_overrides(["lr=0.1", "method=byol", "epochs=3", "compile=true"]))
    assert (cfg.lr, cfg.method, cfg.epochs, cfg.compile) == (0.1, "byol", 3, True)
    assert isinstance(cfg.lr, float)
    assert config.load(None, {"lr": 1}).lr == 1.0
    assert (
        config.load(None, config.parse_overrides(["lr=4e-3"])).lr == 4e-3
    )  # YAML 1.1 reads it as a string  # an int where a float is expected is fine


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"methd": "simclr"}, "methd"),
        ({"method": "moco"}, "method"),
        ({"epochs": "ten"}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": 2.5}, "epochs"),
    ],
)
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        config.load(None, overrides)


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml"):
        config.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="bad.yaml.*mapping"):
        config.load(bad)
    bad.write_text("lr: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml.*YAML"):
        config.load(bad)
    with pytest.raises(ConfigError, match="key=value"):
        config.parse_overrides(["lr"])


def test_hash_tracks_every_field_and_heads_resolve():
    a = Config()
    assert a.hash() == Config().hash()
    assert Config(warmup_epochs=0).hash() == config.from_dict({"warmup_epochs": 0}).hash()
    assert a.hash() != a.replace(lr=a.lr * 2).hash()
    assert Config(method="byol").heads == {"proj_hidden": 4096, "proj_dim": 256, "pred_hidden": 4096}
    assert Config(method="barlow", proj_hidden=64).heads["proj_hidden"] == 64
    assert "pred_hidden" not in Config(method="barlow", pred_hidden=512).heads  # only BYOL has a predictor


def test_hash_counts_only_the_settings_the_method_reads():
    byol = Config(method="byol")
    assert byol.hash() == byol.replace(temperature=0.1, barlow_lambda=0.01).hash()  # SimCLR's, Barlow's
    assert byol.hash() != byol.replace(byol_momentum=0.9).hash()
    simclr = Config()
    assert simclr.hash() != simclr.replace(temperature=0.1).hash()
    assert simclr.hash() == simclr.replace(pred_hidden=64).hash()  # only BYOL has a predictor
    assert Config(method="byol").aug_recipe == "asymmetric" and Config().aug_recipe == "simclr"


def test_method_sections_apply_to_their_method_only(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(
        "method: simclr\nlr: 0.004\nepochs: 3\nbarlow:\n  proj_dim: 2048\n  lr: 0.001\nbyol:\n  byol_momentum: 0.9\n"
    )
    simclr = config.load(preset)
    assert (simclr.lr, simclr.proj_dim, simclr.byol_momentum) == (0.004, 0, 0.99)
    barlow = config.load(preset, {"method": "barlow"})
    assert (barlow.method, barlow.lr, barlow.proj_dim, barlow.epochs) == ("barlow", 0.001, 2048, 3)
    assert config.load(preset, {"method": "barlow", "lr": 0.5}).lr == 0.5  # overrides win over the section
    assert config.load(preset, {"method": "byol"}).byol_momentum == 0.9


@pytest.mark.parametrize(
    "text, match",
    [
        ("barlow: 3\n", "p.yaml: section 'barlow': expected a mapping"),
        ("byol:\n  lrr: 0.1\n", "p.yaml: section 'byol': unknown key 'lrr'"),  # checked though simclr is chosen
        ("barlow:\n  method: byol\n", "section 'barlow': may not set 'method'"),
    ],
)
def test_bad_method_sections_name_file_and_section(tmp_path, text, match):
    preset = tmp_path / "p.yaml"
    preset.write_text(text)
    with pytest.raises(ConfigError, match=match):
        config.load(preset)
