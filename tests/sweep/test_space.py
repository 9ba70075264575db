"""The search-space file: types from the config, every problem at once, overrides that parse back exactly."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from videoft.config import ConfigError, load_config
from videoft.sweep.space import load_space, overrides_for

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.yaml"
BASE = ["data.root=somewhere"]
WIDE = [*BASE, "data.short_side=128"]  # room for the crops these spaces search


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_ranges_follow_the_config_field_types(tmp_path):
    space = load_space(write(tmp_path, """
optim.lr: {low: 1e-4, high: 0.1, log: true}   # YAML reads 1e-4 as a string: still a float
optim.weight_decay: {low: 0, high: 1}          # a float key with int bounds: a float range
freeze.stages: {low: 0, high: 4}
data.crop_size: {low: 64, high: 112, step: 16}
data.scale_jitter: [[1.0, 1.25], [1.0, 1.5]]
model.pretrained: {choices: [null, kinetics400]}
"""), DEMO, WIDE)
    d = space.distributions()
    assert d["optim.lr"] == optuna.distributions.FloatDistribution(1e-4, 0.1, log=True)
    assert d["optim.weight_decay"] == optuna.distributions.FloatDistribution(0.0, 1.0)
    assert d["freeze.stages"] == optuna.distributions.IntDistribution(0, 4)
    assert d["data.crop_size"] == optuna.distributions.IntDistribution(64, 112, step=16)
    assert d["data.scale_jitter"].choices == ("[1.0, 1.25]", "[1.0, 1.5]")  # lists stored as YAML text
    assert d["model.pretrained"].choices == (None, "kinetics400")


def test_sampled_values_become_overrides_that_load_back_exactly(tmp_path):
    space = load_space(write(tmp_path, """
optim.lr: {low: 1e-4, high: 0.1, log: true}
data.scale_jitter: [[1.0, 1.25], [1.0, 1.5]]
model.pretrained: [null]
optim.name: [sgd, adamw]
"""), DEMO, BASE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    values = space.suggest(study.ask())
    cfg = load_config(DEMO, [*BASE, *overrides_for(values)])
    assert cfg.optim.lr == values["optim.lr"]  # full float precision survives the round trip
    assert cfg.data.scale_jitter == tuple(values["data.scale_jitter"]) and cfg.model.pretrained is None
    assert cfg.optim.name == values["optim.name"]
    assert overrides_for({"a": "true", "b": None, "c": (1.0, 1.5)}) == ["a='true'", "b=null", "c=[1.0, 1.5]"]


def test_a_grid_visits_every_combination_once_and_refuses_a_continuous_range(tmp_path):
    space = load_space(write(tmp_path, """
optim.weight_decay: {low: 0.0, high: 0.3, step: 0.1}
data.crop_size: {low: 64, high: 112, step: 16}
data.scale_jitter: [[1.0, 1.25], [1.0, 1.5]]
"""), DEMO, WIDE)
    grid = space.grid()
    assert grid == {"optim.weight_decay": [0.0, 0.1, 0.2, 0.3], "data.crop_size": [64, 80, 96, 112],
                    "data.scale_jitter": ["[1.0, 1.25]", "[1.0, 1.5]"]}
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))
    seen = []

    def objective(trial: optuna.Trial) -> float:
        values = space.suggest(trial)
        seen.append((values["optim.weight_decay"], values["data.crop_size"], tuple(values["data.scale_jitter"])))
        return 0.0
    study.optimize(objective, n_trials=40)  # the sampler stops the study when the grid is done
    assert len(seen) == len(set(seen)) == 32  # 4 x 4 x 2, each once
    with pytest.raises(ValueError, match="continuous: optim.lr"):
        load_space(write(tmp_path, "optim.lr: {low: 1e-4, high: 0.1, log: true}\nfreeze.stages: [0, 1]\n"),
                   DEMO, BASE).grid()


def test_every_problem_in_the_file_is_reported_at_once(tmp_path):
    path = write(tmp_path, """
optim.lr: {low: 0, high: 0.1, log: true}
freeze.stagez: {low: 0, high: 4}
data.crop_size: {low: 64, high: 112, step: 15}
optim.name: [sgd, adam]
data.batch_size: {low: 0.5, high: 8}
out_dir: [a, b]
model.dropout: {low: 0.1, high: 0.5, foo: 1}
data.hflip: {low: 0, high: 1}
data.eval_crops: [1, 2]
optim.momentum: {low: 0.9, high: 0.5}
""")
    with pytest.raises(ConfigError) as err:
        load_space(path, DEMO, BASE)
    problems = err.value.problems
    expected = ["optim.lr: log scale needs low > 0", "freeze.stagez: not a config key",
                "data.crop_size: high - low (48) is not a multiple of step 15",
                "optim.name: value 'adam'", "data.batch_size: low=0.5: not a valid int",
                "out_dir: cannot be searched", "model.dropout: unknown field(s) ['foo']",
                "data.hflip: a bool key takes choices", "data.eval_crops: value 2",
                "optim.momentum: needs low < high"]
    assert len(problems) == len(expected)
    for want in expected:
        assert any(want in p for p in problems), (want, problems)


def test_shipped_space_is_valid_against_the_demo_config():
    space = load_space(REPO / "configs" / "sweep_space_small_data.yaml", DEMO, [*BASE, "data.short_side=null"])
    assert {"optim.lr", "optim.backbone_lr", "freeze.stages", "freeze.unfreeze.every", "optim.mixup_alpha",
            "data.crop_size", "train.epochs", "data.batch_size"} <= set(space.keys)


def test_contains_checks_enqueued_values(tmp_path):
    space = load_space(write(tmp_path, "optim.lr: {low: 1e-4, high: 0.1, log: true}\n"
                                       "data.crop_size: {low: 64, high: 112, step: 16}\n"
                                       "data.scale_jitter: [[1.0, 1.25]]\n"), DEMO, WIDE)
    lr, crop, jitter = space.params
    assert lr.contains(lr.coerce("1e-3")) and not lr.contains(1.0) and not lr.contains("fast")
    assert crop.contains(80) and not crop.contains(81) and not crop.contains(80.0)
    assert jitter.contains([1.0, 1.25]) and not jitter.contains([1.0, 1.5])


def test_a_value_the_base_config_refuses_is_reported_unless_its_partner_is_searched(tmp_path):
    crop_only = write(tmp_path, "data.crop_size: {low: 32, high: 112, step: 16}\n")
    with pytest.raises(ConfigError) as err:
        load_space(crop_only, DEMO, BASE)  # demo short side 36: a 112 crop can never be cut
    assert "value 112" in str(err.value) and "value 32" not in str(err.value)
    both = write(tmp_path, "data.crop_size: {low: 32, high: 112, step: 16}\ndata.short_side: [36, 128]\n")
    assert load_space(both, DEMO, BASE).keys == ["data.crop_size", "data.short_side"]  # the trial decides
