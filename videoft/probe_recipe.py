"""The linear probe solved on cached features (train.linear_probe with train.probe_solver=lbfgs).

    recipe = build_recipe(cfg, dist_info, out_dir)   # videoft.runner: picks this class for such configs
    recipe.setup()      # as FineTuneRecipe's, with the validation views' features cached too
    summary = recipe.fit()  # one solve (engine/probe.py) as one 'epoch': validated and saved

The whole backbone is frozen, so its features are computed once (training and validation views) and the
head is solved to convergence on them. With `model.feature_stage: auto` the cache holds every stage's
features side by side (StageFeatures), the probe is solved on each stage's, and the model is cut at the
stage with the lowest held-out log loss.
"""
from __future__ import annotations

import math

from videoft.checkpoint import read_run_checkpoint
from videoft.choices import AUTO_STAGE
from videoft.engine.distributed import broadcast_from_main
from videoft.engine.evaluate import centre_view_index, predict_from_features
from videoft.engine.features import cache_eval_features
from videoft.engine.logger import RunLogger
from videoft.engine.probe import ProbeFit, StageChoice, load_into_head, solve_linear_probe, solve_probe_over_stages
from videoft.models.backbones import get_backbone_spec, through_stage
from videoft.models.classifier import StageFeatures
from videoft.models.freezing import freeze_stages
from videoft.recipe import EpochHook, FineTuneRecipe, val_columns


class SolvedProbeRecipe(FineTuneRecipe):
    """FineTuneRecipe's setup, then the head solved on the cached features instead of trained by steps."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.val_features = None  # the validation views' features (FeatureStore)
        # model.feature_stage=auto: the cached features are every stage's (StageFeatures); the probe keeps one
        self.stage_features: StageFeatures | None = None
        self.feature_columns: slice | None = None  # the kept stage's columns of the cached features

    # ---- setup ------------------------------------------------------------------------------------------
    def feature_extractor(self):
        """The backbone's features, or with feature_stage=auto every stage's side by side."""
        if self.cfg.model.feature_stage != AUTO_STAGE:
            return super().feature_extractor()
        self.stage_features = StageFeatures(self.raw_model, self.spec.stages, clip_len=self.pre.clip_len,
                                            crop_size=self.pre.crop_size)
        return self.stage_features

    def setup_loaders(self) -> None:
        """FineTuneRecipe's (training views cached), then the validation views cached the same way."""
        super().setup_loaders()
        if self.val_loader is not None:
            self.val_features, failures = cache_eval_features(
                self.stage_features or super().feature_extractor(), self.val_loader, self.dist,
                self.out_dir / "feature_cache" / "val", amp_dtype=self.amp_dtype,
                ram_limit_mb=self.cfg.train.feature_cache_ram_mb)
            self.state.failures.update(failures)

    def maybe_resume(self) -> bool:
        """A finished auto probe resumed: cut where it chose before its weights are loaded."""
        if self.cfg.model.feature_stage == AUTO_STAGE:
            path = self.resume_path()
            ckpt = self.resume_checkpoint or (read_run_checkpoint(path) if path and path.is_file() else None)
            if ckpt is not None and ckpt.config.model.feature_stage not in (None, AUTO_STAGE):
                self.keep_stage(ckpt.config.model.feature_stage)
        return super().maybe_resume()

    # ---- the solve --------------------------------------------------------------------------------------
    def fit(self, on_epoch_end: EpochHook | None = None) -> dict:
        """The linear probe solved on the cache (engine/probe.py) as one 'epoch': validated and saved."""
        state = self.state
        logger = RunLogger(self.out_dir, self.classes, enabled=self.dist.is_main)
        try:
            if state.epoch == 0:  # a resumed, finished probe has nothing left to do
                fit, stages = broadcast_from_main(self.solve_probe() if self.dist.is_main else None)
                if stages is not None:
                    self.keep_stage(stages.stage)
                load_into_head(self.raw_model.head, fit)
                row = {"epoch": 1, "step": 0, "train_loss": fit.train_loss, "train_acc": fit.train_acc, "lr": 0.0,
                       "clips_per_s": 0.0, "probe_l2": fit.l2, "probe_selection": fit.selection,
                       "probe_grid": fit.grid, "probe_iterations": fit.iterations, "probe_seconds": fit.seconds}
                if stages is not None:
                    row.update(probe_stage=stages.stage, probe_stages=stages.table)
                if self.val_loader is not None:
                    metrics = self.validate_cached()
                    row.update(val_columns(metrics))
                    logger.confusion(metrics, 0)
                metric = self.cfg.train.best_metric
                state.best = {"metric": metric, "value": row.get(f"val_{metric}", math.nan), "epoch": 1}
                state.history.append(row)
                logger.epoch(row)
                state.epoch = self.cfg.train.epochs  # done: a resume does not solve again
                self.save("last.pt")
                self.save("best.pt")
                self.hook_says_stop(on_epoch_end, row)
        finally:
            logger.close(state.history)
        return self.finish()

    def solve_probe(self) -> tuple[ProbeFit, StageChoice | None]:
        """(the solved probe, the StageChoice or None): on the cached features; over every stage with auto."""
        train = self.train_loader.dataset
        x, y = train.features.arrays(train.labels)
        val = self.val_features.arrays([s.label for s in self.splits["val"]]) if self.val_features else None
        options = {"val": val, "min_val_videos": self.cfg.train.min_val_videos, "seed": self.cfg.seed}
        if self.stage_features is None:
            return solve_linear_probe(x, y, len(self.classes), **options), None
        columns = {stage: self.stage_features.columns(stage) for stage in self.stage_features.stages}
        choice = solve_probe_over_stages(x, y, columns, len(self.classes), **options)
        return choice.fit, choice

    def keep_stage(self, stage: str) -> None:
        """model.feature_stage=auto, once the stage is known (chosen, or read from the checkpoint resumed): the
        model cut there, every kept stage frozen, the optimizer over what is left; checkpoints name the stage."""
        cfg = self.cfg
        self.raw_model.cut_at(stage, clip_len=self.pre.clip_len, crop_size=self.pre.crop_size)
        self.spec = through_stage(get_backbone_spec(cfg.model.backbone), stage)
        freeze_stages(self.raw_model, self.spec, len(self.spec.stages), bn=cfg.freeze.bn)
        self.state.frozen_stages = len(self.spec.stages)
        self.raw_model.to(self.dist.device)
        self.setup_optimizer()
        cfg.model.feature_stage = stage
        if self.stage_features is not None:
            self.feature_columns = self.stage_features.columns(stage)
        if self.trained is not None:  # wrapped already: the head it wraps has a new layer
            self.trained = self.raw_model.head
            self.model = self._ddp(self.trained)

    def validate_cached(self) -> dict:
        """`validate` for the solved linear probe: the head on the validation views' cached features (the
        backbone is frozen, so they are what decoding the videos again would give); same return as validate."""
        pred = None
        if self.dist.is_main:
            store = self.val_features
            x, y = store.arrays([s.label for s in self.splits["val"]])
            if self.feature_columns is not None:
                x = x[..., self.feature_columns]
            pred = predict_from_features(
                self.raw_model.head, x, y, store.indices().tolist(), device=self.dist.device,
                centre_view=centre_view_index(self.cfg.data.eval_clips, self.cfg.data.eval_crops))
        return self.shared_metrics(pred)
