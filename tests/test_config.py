"""Config loading: YAML + key=value overrides, type coercion, every problem reported at once."""
from __future__ import annotations

from pathlib import Path

import pytest

from videoft.config import ConfigError, from_dict, load_config, to_dict

REPO = Path(__file__).resolve().parents[1]


def test_overrides_are_parsed_as_yaml_and_coerced():
    cfg = load_config(REPO / "configs" / "demo.yaml",
                      ["data.root=/x", "data.scale_jitter=[1.0, 1.5]", "optim.lr=1e-4", "train.epochs=2"])
    assert cfg.data.root == "/x"
    assert cfg.data.scale_jitter == (1.0, 1.5)
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 2
    assert from_dict(to_dict(cfg)) == cfg  # the round trip a checkpoint relies on


def test_demo_config_geometry():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.data.scale_jitter == (1.0, 1.2)
    assert cfg.data.crop_size <= cfg.data.short_side * cfg.data.scale_jitter[0]


@pytest.mark.parametrize("value", ["[1.2, 1.0]", "[0, 1.0]", "[1.0]", "fast"])
def test_bad_scale_jitter_is_rejected(value):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.root=/x", f"data.scale_jitter={value}"])
    assert "data.scale_jitter" in str(err.value)


def test_all_problems_are_reported_together():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.root=/x", "data.bogus=1", "optim.lr=-1", "train.amp=fp8", "nokey"])
    text = str(err.value)
    for needle in ("data.bogus", "optim.lr", "train.amp", "nokey"):
        assert needle in text
