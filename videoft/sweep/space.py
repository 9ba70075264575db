"""The search space of a sweep: a YAML file of config keys with ranges or choices, checked in full up front.

    optim.lr:        {low: 1.0e-4, high: 0.1, log: true}   # float key: a float range (log scale)
    freeze.stages:   {low: 0, high: 4}                      # int key: an int range (step 1)
    data.crop_size:  {low: 64, high: 112, step: 16}         # int range with a step
    optim.name:      {choices: [sgd, adamw]}                # any key: a list of values
    data.clip_len:   [8, 16]                                # shorthand for choices

A key is a dotted config key (as in `key=value` overrides); whether a range is int or float follows the
config field's type. Every bound and choice must be a valid value of that key with the base config; every
problem in the file is reported at once (`ConfigError`) before any trial runs.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from videoft.config import Config, ConfigError, load_config, to_dict

SPEC_KEYS = ("low", "high", "log", "step", "choices")
RESERVED_KEYS = ("out_dir", "resume")  # the sweep sets them for each trial


@dataclass(frozen=True)
class Param:
    """One searched key: a range (low/high, log, step) or a list of choices."""

    key: str
    kind: str                       # "float" | "int" | "choices"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.kind == "float":
            return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return optuna.distributions.IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        # Optuna stores None/bool/int/float/str choices; a list value (e.g. scale_jitter) is stored as YAML text
        return optuna.distributions.CategoricalDistribution([_encode(c) for c in self.choices])

    def to_config_value(self, optuna_value: Any) -> Any:
        """The config value of a sampled Optuna value (decodes list choices)."""
        if self.kind == "choices" and any(isinstance(c, (list, tuple)) for c in self.choices):
            return yaml.safe_load(optuna_value) if isinstance(optuna_value, str) else optuna_value
        return optuna_value

    def coerce(self, value: Any) -> Any:
        """A value typed for this parameter (a float range takes 1e-3 written without a dot, or an int)."""
        return _as_float(value) if self.kind == "float" else value

    def contains(self, value: Any) -> bool:
        """Is `value` (a config value) one this parameter can take?"""
        if self.kind == "choices":
            return repr(_encode(value)) in {repr(_encode(c)) for c in self.choices}
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (self.kind == "int" and
                                                                               not isinstance(value, int)):
            return False
        return self.low <= value <= self.high and (self.step is None or _fits_steps(self.low, value, self.step))

    def grid_values(self) -> list | None:
        """Every value this parameter can take, as Optuna stores them (--sampler grid); None for a continuous
        range (a float range without a step)."""
        if self.kind == "choices":
            return [_encode(c) for c in self.choices]
        if self.kind == "int":
            return list(range(self.low, self.high + 1, self.step or 1))
        if self.step is None:
            return None
        n = int(round((self.high - self.low) / self.step))
        return [round(self.low + i * self.step, 12) for i in range(n + 1)]

    def describe(self) -> str:
        if self.kind == "choices":
            return f"one of {yaml_scalar(list(self.choices))}"
        extra = (", log scale" if self.log else "") + (f", step {self.step}" if self.step else "")
        return f"{self.kind} in [{self.low}, {self.high}]{extra}"


@dataclass(frozen=True)
class SearchSpace:
    """The searched keys in file order; builds Optuna distributions and `key=value` overrides."""

    params: tuple[Param, ...]

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {p.key: p.distribution() for p in self.params}

    def grid(self) -> dict[str, list]:
        """{key: every value} for Optuna's GridSampler; ValueError naming a continuous range."""
        continuous = [p.key for p in self.params if p.grid_values() is None]
        if continuous:
            raise ValueError(f"--sampler grid needs choices or a step for every key; continuous: "
                             f"{', '.join(continuous)}")
        return {p.key: p.grid_values() for p in self.params}

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample every key for `trial`; returns config values by key."""
        return {p.key: p.to_config_value(_suggest(trial, p)) for p in self.params}

    def config_values(self, optuna_params: dict[str, Any]) -> dict[str, Any]:
        """Config values of a trial's stored params (keys outside this space are dropped)."""
        by_key = {p.key: p for p in self.params}
        return {k: by_key[k].to_config_value(v) for k, v in optuna_params.items() if k in by_key}

    def to_optuna_params(self, values: dict[str, Any]) -> dict[str, Any]:
        """Config values -> the values Optuna stores (for enqueueing a trial)."""
        by_key = {p.key: p for p in self.params}
        return {k: _encode(v) if by_key[k].kind == "choices" else v for k, v in values.items()}

    def values_from(self, spec: str, cfg: Config) -> dict[str, Any]:
        """`k=v,k=v` (values as YAML) or `base` (the base config's values) -> values of searched keys, checked."""
        if spec == "base":
            values = {key: _get(to_dict(cfg), key) for key in self.keys}
        else:
            values = {}
            for item in filter(None, (s.strip() for s in spec.split(","))):
                key, sep, value = item.partition("=")
                if not sep:
                    raise ValueError(f"--enqueue {spec!r}: {item!r} is not key=value")
                values[key.strip()] = yaml.safe_load(value)
        by_key = {p.key: p for p in self.params}
        values = {k: by_key[k].coerce(v) if k in by_key else v for k, v in values.items()}
        bad = [f"{k}={v!r} ({'not searched' if k not in by_key else by_key[k].describe()})"
               for k, v in values.items() if k not in by_key or not by_key[k].contains(v)]
        if bad:
            raise ValueError(f"--enqueue {spec!r}: outside the space: {'; '.join(bad)}")
        return values

    def as_dict(self) -> dict:
        """Plain form, stored with the study so a restart can check it searches the same space."""
        plain = {p.key: {k: v for k, v in dataclasses.asdict(p).items()
                         if k != "key" and v is not None and v is not False and v != ()} for p in self.params}
        return json.loads(json.dumps(plain))  # tuples -> lists: equal to what the storage gives back


def _get(d: dict, key: str) -> Any:
    for part in key.split("."):
        d = d[part]
    return d


def overrides_for(values: dict[str, Any]) -> list[str]:
    """`key=value` overrides whose YAML parses back to exactly these values."""
    return [f"{key}={yaml_scalar(value)}" for key, value in values.items()]


def yaml_scalar(value: Any) -> str:
    """One value as inline YAML ('adamw', 0.001, null, [1.0, 1.25], 'true' for the string true)."""
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump([value], default_flow_style=True, width=10**6).strip()[1:-1]


def _encode(value: Any) -> Any:
    return yaml_scalar(value) if isinstance(value, (list, tuple)) else value


def _suggest(trial: optuna.Trial, p: Param) -> Any:
    if p.kind == "float":
        return trial.suggest_float(p.key, p.low, p.high, log=p.log, step=p.step)
    if p.kind == "int":
        return trial.suggest_int(p.key, p.low, p.high, log=p.log, step=p.step or 1)
    return trial.suggest_categorical(p.key, [_encode(c) for c in p.choices])


def field_type(key: str) -> Any | None:
    """The type hint of a dotted config key (Optional unwrapped), or None when there is no such key."""
    cls: Any = Config
    *sections, leaf = key.split(".")
    for name in sections:
        hint = typing.get_type_hints(cls).get(name) if dataclasses.is_dataclass(cls) else None
        if hint is None or not dataclasses.is_dataclass(hint):
            return None
        cls = hint
    hint = typing.get_type_hints(cls).get(leaf) if dataclasses.is_dataclass(cls) else None
    if hint is None or dataclasses.is_dataclass(hint):
        return None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else hint
    return hint


def load_space(path: str | Path, config: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
               ) -> SearchSpace:
    """Read and check a space file against the base config (CONFIG + overrides); ConfigError lists every problem."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"cannot read search space {path}: {exc}"]) from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError([f"{path}: expected a mapping of config keys to ranges or choices, got {raw!r}"])
    problems: list[str] = []
    params = []
    searched = {str(k) for k in raw}
    for key, spec in raw.items():
        param, key_problems = _parse_param(str(key), spec)
        if not key_problems and param is not None:
            key_problems = _check_values(param, config, overrides, searched - {param.key})
        problems += [f"{path}: {key}: {p}" for p in key_problems]
        if param is not None:
            params.append(param)
    if problems:
        raise ConfigError(problems)
    return SearchSpace(tuple(params))


def _parse_param(key: str, spec: Any) -> tuple[Param | None, list[str]]:
    """A Param from one entry of the file, or the problems with it."""
    if key in RESERVED_KEYS:
        return None, [f"cannot be searched (the sweep sets {', '.join(RESERVED_KEYS)} for each trial)"]
    hint = field_type(key)
    if hint is None:
        return None, ["not a config key (see videoft/config.py; sections: data, model, freeze, optim, train)"]
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        return None, [f"expected {{low, high[, log, step]}}, {{choices: [...]}} or a list, got {spec!r}"]
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        return None, [f"unknown field(s) {unknown} (allowed: {', '.join(SPEC_KEYS)})"]
    if "choices" in spec:
        return _parse_choices(key, spec)
    return _parse_range(key, spec, hint)


def _parse_choices(key: str, spec: dict) -> tuple[Param | None, list[str]]:
    choices = spec["choices"]
    extra = [k for k in spec if k != "choices"]
    if extra:
        return None, [f"choices cannot be combined with {extra}"]
    if not isinstance(choices, list) or not choices:
        return None, [f"choices must be a non-empty list, got {choices!r}"]
    encoded = [_encode(c) for c in choices]
    if len(set(map(repr, encoded))) != len(encoded):
        return None, [f"choices repeat a value: {choices}"]
    if any(isinstance(c, dict) for c in choices):
        return None, ["a choice cannot be a mapping"]
    return Param(key, "choices", choices=tuple(tuple(c) if isinstance(c, list) else c for c in choices)), []


def _parse_range(key: str, spec: dict, hint: Any) -> tuple[Param | None, list[str]]:
    if hint not in (int, float):
        return None, [f"a {getattr(hint, '__name__', hint)} key takes choices, not a range"]
    missing = [k for k in ("low", "high") if k not in spec]
    if missing:
        return None, [f"a range needs {' and '.join(missing)} (or use choices)"]
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
    problems = []
    if hint is float:
        low, high, step = (_as_float(v) for v in (low, high, step))
    bad = [f"{name}={value!r}" for name, value in (("low", low), ("high", high), ("step", step))
           if value is not None and not _is_number(value, hint)]
    if bad:
        return None, [f"{', '.join(bad)}: not a valid {hint.__name__} (the key holds a {hint.__name__})"]
    if not isinstance(log, bool):
        problems.append(f"log must be true or false, got {log!r}")
    if not low < high:
        problems.append(f"needs low < high, got low={low}, high={high} (one value: use choices: [{low}])")
    if log and low <= 0:
        problems.append(f"log scale needs low > 0, got {low}")
    if step is not None and step <= 0:
        problems.append(f"step must be > 0, got {step}")
    if log and step not in (None, 1):
        problems.append("log scale and step cannot be combined")
    if step is not None and step > 0 and low < high and not _fits_steps(low, high, step):
        problems.append(f"high - low ({high - low:g}) is not a multiple of step {step}")
    if problems:
        return None, problems
    return Param(key, "float" if hint is float else "int", low=low, high=high, log=log,
                 step=None if hint is int and step == 1 else step), []


def _check_values(param: Param, config: str | Path | None, overrides: list[str] | tuple[str, ...],
                  others: set[str]) -> list[str]:
    """Each bound and choice applied alone to the base config: the problems the config validation finds.

    A problem that also names another searched key (crop against short side) depends on what the trial
    draws for that key: it is left to the trial, which fails with the reason and the sweep goes on.
    """
    values = list(param.choices) if param.kind == "choices" else [param.low, param.high]
    problems = []
    for value in values:
        try:
            load_config(config, [*overrides, *overrides_for({param.key: value})])
        except ConfigError as err:
            mine = [p for p in err.problems if param.key in p and not any(o in p for o in others)]
            problems += [f"value {value!r}: {p}" for p in mine]
    return problems


def _as_float(value: Any) -> Any:
    """YAML 1.1 reads 1e-4 (no dot) as a string: accept it as the float it means."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _is_number(value: Any, hint: type) -> bool:
    if isinstance(value, bool):
        return False
    if hint is int:
        return isinstance(value, int)
    return isinstance(value, float) and math.isfinite(value)


def _fits_steps(low: float, high: float, step: float) -> bool:
    n = (high - low) / step
    return abs(n - round(n)) < 1e-6
