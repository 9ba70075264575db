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


def test_out_of_range_values_are_refused_before_anything_runs():
    """Issue #11 case 4: each of these used to pass the config and fail later (eval_every=0 divided by
    zero; layer_decay, dropout, crop vs short side only after the model was built)."""
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.root=/x", "train.eval_every=0", "optim.layer_decay=1.5", "model.dropout=1.0",
                           "data.crop_size=64", "data.short_side=48", "data.decode_timeout=0"])
    assert err.value.problems == [
        "data.decode_timeout: 0.0 is out of range (allowed: > 0)",
        "model.dropout: 1.0 is out of range (allowed: [0, 1))",
        "optim.layer_decay: 1.5 is out of range (allowed: (0, 1])",
        "train.eval_every: 0 is out of range (allowed: >= 1)",
        "data.crop_size 64 is larger than the frames it is cut from (data.short_side 48 x data.scale_jitter low "
        "1.0): lower the crop or raise the short side",
    ]


def _config_file(tmp_path, model: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(f"data:\n  root: /x\nmodel:\n  backbone: x3d_xs\n{model}")
    return path


def test_weights_typed_on_the_command_line_replace_pretrained_from_the_file(tmp_path, caplog):
    """Issue #11 case 2: what the user typed last wins, with a one-line notice."""
    weights = tmp_path / "X3D_XS.pyth"
    weights.write_bytes(b"x")
    path = _config_file(tmp_path, "  pretrained: kinetics400\n")
    with caplog.at_level("WARNING", logger="videoft"):
        cfg = load_config(path, [f"model.weights={weights}"])
    assert cfg.model.weights == str(weights) and cfg.model.pretrained is None
    assert caplog.messages == [f"model.weights={weights} (command line) replaces model.pretrained=kinetics400 "
                               f"from {path}"]
    path = _config_file(tmp_path, f"  weights: {weights}\n")
    cfg = load_config(path, ["model.pretrained=kinetics400"])  # the reverse too
    assert cfg.model.pretrained == "kinetics400" and cfg.model.weights is None


@pytest.mark.parametrize("in_file, typed", [
    ("  pretrained: kinetics400\n  weights: /w.pth\n", []),                            # both in the file
    ("", ["model.pretrained=kinetics400", "model.weights=/w.pth"]),                    # both typed
])
def test_the_same_pair_in_one_place_stays_an_error(tmp_path, in_file, typed):
    with pytest.raises(ConfigError, match=r"model.pretrained \('kinetics400'\) and model.weights \('/w.pth'\): "
                                          "give one, not both"):
        load_config(_config_file(tmp_path, in_file), typed)


def test_files_the_config_names_must_exist(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.root=/x", f"model.weights={tmp_path}/nope.pth",
                           f"model.init_from={tmp_path}/run/best.pt", "model.pretrained=null"])
    assert err.value.problems == [
        f"model.init_from: {tmp_path}/run/best.pt does not exist (give a videoft best.pt/last.pt)",
        f"model.weights: {tmp_path}/nope.pth does not exist (a local file, or an http(s):// or file:// URL)"]
    cfg = load_config(None, ["data.root=/x", "model.weights=https://example.org/w.pth"])  # URLs: checked on fetch
    assert cfg.model.weights == "https://example.org/w.pth"
