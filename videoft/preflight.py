"""Checks before anything heavy: all that can be known about a run without building its model.

`FineTuneRecipe.validate_setup` runs `check_run` after the data is listed and before the model is
built (so before any weights download): the backbone's clip geometry, the runtime (device,
processes), the data (classes, splits) and the checkpoint the run resumes or starts from. Every
problem found is reported at once, in one error; what is legal but probably not what the user
wants (a class that validation never sees) is logged as a warning. `load_config` has already
checked what the config alone can tell.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from videoft.checkpoint import RunCheckpoint, read_run_checkpoint, resume_problems
from videoft.config import Config
from videoft.data.audit import (
    AuditCache,
    AuditSettings,
    audit_videos,
    class_table,
    default_cache_path,
    format_class_table,
    quarantine,
    write_audit,
)
from videoft.data.clip_indices import clip_span
from videoft.data.dataset import VideoSample, group_of
from videoft.data.transforms import Preprocessing
from videoft.engine.distributed import DistInfo, broadcast_from_main, gather_to_main
from videoft.errors import CheckpointError, ConfigError, DataError, UserError
from videoft.models.backbones import (
    BackboneSpec,
    drop_path_problem,
    feature_stage_problem,
    geometry_problem,
    through_stage,
)

log = logging.getLogger("videoft")


@dataclass
class Findings:
    """Problems (each with the kind of user error it is) and warnings, gathered over every check."""

    problems: list[tuple[type[UserError], str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    resume: RunCheckpoint | None = None      # read once here, reused by the recipe's resume
    init_from: RunCheckpoint | None = None

    def add(self, kind: type[UserError], messages: list[str]) -> None:
        self.problems += [(kind, m) for m in messages]

    def raise_if_any(self) -> None:
        """One error for all problems: of their kind when they share one, else a ConfigError."""
        if not self.problems:
            return
        kinds = {k for k, _ in self.problems}
        texts = [m for _, m in self.problems]
        kind = kinds.pop() if len(kinds) == 1 else ConfigError
        if kind is ConfigError:
            raise ConfigError(texts, header="cannot start this run")
        raise kind(texts[0] if len(texts) == 1 else "cannot start this run:\n  - " + "\n  - ".join(texts))


def check_run(cfg: Config, spec: BackboneSpec, pre: Preprocessing, dist: DistInfo,
              splits: dict[str, list[VideoSample]], classes: list[str], resume_path: Path | None) -> Findings:
    """Every check that needs no model; raise nothing, return what was found."""
    found = Findings()
    found.add(ConfigError, geometry_problems(cfg, spec, pre))
    problems, warnings = runtime_problems(cfg, dist)
    found.add(ConfigError, problems)
    found.warnings += warnings
    problems, warnings = data_problems(cfg, splits, classes)
    found.add(DataError, problems)
    found.warnings += warnings
    check_checkpoints(found, cfg, pre, classes, resume_path)
    return found


def geometry_problems(cfg: Config, spec: BackboneSpec, pre: Preprocessing) -> list[str]:
    """The resolved clip geometry against the backbone, and the freezing depth against its stages."""
    problems = []
    geometry = geometry_problem(spec, pre.clip_len, pre.crop_size)
    if geometry:
        problems.append(f"model.backbone: {geometry} (set data.clip_len / data.crop_size)")
    low = cfg.data.scale_jitter[0]
    if pre.crop_size > pre.short_side * low and (cfg.data.crop_size is None or cfg.data.short_side is None):
        problems.append(f"data.crop_size {pre.crop_size} is larger than the frames it is cut from (short side "
                        f"{pre.short_side} x data.scale_jitter low {low}; {spec.name}'s default where not set): "
                        "lower data.crop_size or raise data.short_side")
    drop_path = drop_path_problem(spec, cfg.model.drop_path)
    if drop_path:
        problems.append(drop_path)
    stage = feature_stage_problem(spec, cfg.model.feature_stage)
    if stage:
        problems.append(stage)
        return problems
    spec = through_stage(spec, cfg.model.feature_stage)
    total = len(spec.stages)
    if cfg.freeze.stages > total:
        problems.append(f"freeze.stages: {cfg.freeze.stages}, but {spec.name} has {total} stages "
                        f"(0..{total}, or -1 for the whole backbone)")
    if cfg.freeze.unfreeze.min_frozen > total:
        problems.append(f"freeze.unfreeze.min_frozen: {cfg.freeze.unfreeze.min_frozen}, but {spec.name} has "
                        f"{total} stages")
    return problems


def runtime_problems(cfg: Config, dist: DistInfo) -> tuple[list[str], list[str]]:
    """Batch size against the number of processes; SyncBatchNorm against the device."""
    problems, warnings = [], []
    if cfg.data.batch_size % dist.world_size:
        problems.append(f"data.batch_size {cfg.data.batch_size} (the global batch) must be divisible by the "
                        f"number of processes {dist.world_size}")
    if cfg.train.sync_bn and dist.device.type != "cuda" and dist.world_size > 1:
        problems.append(f"train.sync_bn: SyncBatchNorm needs CUDA devices; this run is on {dist.device.type} "
                        "(gloo): set train.sync_bn=false")
    elif cfg.train.sync_bn and dist.world_size == 1:
        warnings.append("train.sync_bn has no effect with one process (it synchronises BatchNorm statistics "
                        "across torchrun processes)")
    return problems, warnings


def data_problems(cfg: Config, splits: dict[str, list[VideoSample]], classes: list[str]) -> tuple[list, list]:
    """Classes a classifier cannot be trained or measured on: refused, or (held-out splits) warned about."""
    problems, warnings = [], []
    train = splits.get("train", [])
    if not train:
        return [f"data.root {cfg.data.root}: no training videos found"], warnings
    if len(classes) < 2:
        problems.append(f"data.root {cfg.data.root} has {len(classes)} class ({', '.join(classes)}): a classifier "
                        "needs at least two (data.root is the folder that holds one folder per class)")
    trained = {s.label for s in train}
    untrained = [c for i, c in enumerate(classes) if i not in trained]
    if untrained:
        problems.append(f"class(es) {untrained} have no training videos (only in the other splits): the model "
                        "could never predict them; add training videos or remove them")
    for split in ("val", "test"):
        if split in splits:
            warnings += _held_out_warnings(split, splits, classes)
    return problems, warnings


def _held_out_warnings(split: str, splits: dict[str, list[VideoSample]], classes: list[str]) -> list[str]:
    """Classes a held-out split has no video of, and why (one video, one group, none given)."""
    held = splits[split]
    if not held:
        return [f"the {split} split is empty: nothing is {'validated' if split == 'val' else 'tested'}"
                + ("; best.pt is not written" if split == "val" else "")]
    present = {s.label for s in held}
    missing = []
    for i, name in enumerate(classes):
        if i in present:
            continue
        videos = [s.path for rows in splits.values() for s in rows if s.label == i]
        groups = {group_of(p) for p in videos}
        if len(videos) == 1:
            missing.append(f"{name} (a single video)")
        elif len(groups) == 1:
            missing.append(f"{name} (all {len(videos)} videos in one group, {groups.pop()}, kept on one side)")
        else:
            missing.append(f"{name} (none in the {split} split)")
    if not missing:
        return []
    return [f"the {split} split has no video of {len(missing)} class(es): {'; '.join(missing)}. They train but "
            f"are never {'validated' if split == 'val' else 'tested'}, and mean-class accuracy averages over the "
            f"other {len(classes) - len(missing)} classes only; add videos from other groups, or give a "
            f"{split}/ folder"]


def check_checkpoints(found: Findings, cfg: Config, pre: Preprocessing, classes: list[str],
                      resume_path: Path | None) -> None:
    """Read the resume and init_from checkpoints now, so a wrong one is refused before the model is built."""
    if resume_path is not None and resume_path.is_file():
        try:
            found.resume = read_run_checkpoint(resume_path)
        except CheckpointError as err:
            found.add(CheckpointError, [f"resume: {err}"])
        else:
            problems = resume_problems(found.resume, cfg, classes, pre)
            if problems:
                found.add(CheckpointError, [f"cannot resume from {resume_path}: " + "; ".join(problems)
                                            + ". Start a new run (another out_dir), or use model.init_from "
                                              "to fine-tune from it"])
    if cfg.model.init_from:
        try:
            found.init_from = read_run_checkpoint(cfg.model.init_from)
        except CheckpointError as err:
            found.add(CheckpointError, [f"model.init_from: {err}"])
        else:
            if found.init_from.backbone != cfg.model.backbone:
                found.add(CheckpointError, [
                    f"model.init_from {cfg.model.init_from}: its backbone is {found.init_from.backbone}, this run "
                    f"builds {cfg.model.backbone} (set model.backbone={found.init_from.backbone})"])


def audit_splits(splits: dict[str, list[VideoSample]], classes: list[str], pre: Preprocessing, dist: DistInfo,
                 out_dir: Path, *, root: str, workers: int, timeout: float | None, backend: str = "auto",
                 ) -> tuple[dict[str, list[VideoSample]], dict[str, str]]:
    """`data.audit`: probe every video (shared over ranks, cached), write out_dir/audit/ on rank 0, and
    return the splits without the quarantined files and those files with their reasons."""
    items = sorted((s.path, classes[s.label], split) for split, rows in splits.items() for s in rows)
    settings = AuditSettings(short_side=pre.short_side, timeout=timeout or 60.0, backend=backend)
    cache = AuditCache(default_cache_path(root))
    mine = audit_videos(items[dist.rank::dist.world_size], settings, workers=max(1, workers), cache=cache,
                        show_progress=dist.is_main)
    parts = gather_to_main(mine)  # every rank needs the verdicts: rank 0 merges them and sends them back
    records = broadcast_from_main(sorted((r for part in parts for r in part), key=lambda r: r.path)
                                  if parts is not None else None)
    span = clip_span(pre.clip_len, pre.frame_stride)
    bad = {r.path: f"quarantined by data.audit: {r.error}" for r in quarantine(records)}
    if dist.is_main:
        for record in records:
            cache.put(record, settings)
        cache.save()
        paths = write_audit(out_dir / "audit", records, clip_span=span, settings=settings, root=root)
        log.info("data.audit: %d videos\n%s", len(records), format_class_table(class_table(records, span)))
        if bad:
            shown = "\n".join(f"  {p}: {r}" for p, r in list(bad.items())[:10])
            log.warning("data.audit: %d of %d videos cannot be used and are left out (all in %s):\n%s%s",
                        len(bad), len(records), paths["quarantine.txt"], shown,
                        f"\n  ... {len(bad) - 10} more" if len(bad) > 10 else "")
    kept = {split: [s for s in rows if s.path not in bad] for split, rows in splits.items()}
    return kept, bad


__all__ = ["Findings", "audit_splits", "check_run"]
