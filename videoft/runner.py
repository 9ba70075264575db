"""A training run: the recipe for a config (`build_recipe`) and the whole run around it (`run`, for
tools/train.py and the sweep's trials): out_dir, process group, logging, setup, fit."""
from __future__ import annotations

from pathlib import Path

from videoft.config import Config, ConfigError
from videoft.engine.distributed import DistInfo, barrier, cleanup_distributed, setup_distributed
from videoft.probe_recipe import SolvedProbeRecipe
from videoft.recipe import EpochHook, FineTuneRecipe, setup_logging


def build_recipe(cfg: Config, dist: DistInfo, out_dir: Path) -> FineTuneRecipe:
    """SolvedProbeRecipe for the linear probe solved on cached features (train.linear_probe with
    train.probe_solver=lbfgs), FineTuneRecipe for everything trained by steps."""
    t = cfg.train
    solved = t.linear_probe and t.cache_features and t.probe_solver == "lbfgs"
    return (SolvedProbeRecipe if solved else FineTuneRecipe)(cfg, dist, out_dir)


def run(cfg: Config, on_epoch_end: EpochHook | None = None) -> dict:
    """Train and validate as configured; returns the final summary (best metric, paths).

    `on_epoch_end`: see `FineTuneRecipe.fit`."""
    dist = setup_distributed()
    out_dir = Path(cfg.out_dir)
    try:  # on every rank (exist_ok), so a failure is every rank's error and none waits at the barrier
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError([f"out_dir: {out_dir} cannot be created ({exc.strerror or exc})"]) from None
    barrier()
    setup_logging(dist, out_dir)
    try:
        recipe = build_recipe(cfg, dist, out_dir)
        recipe.setup()
        return recipe.fit(on_epoch_end)
    finally:
        cleanup_distributed()
