#!/usr/bin/env python
"""Search fine-tuning hyperparameters on the validation split (Optuna), resumably.

    python tools/sweep.py CONFIG [key=value ...] --space SPACE.yaml --trials N [--out DIR]
        [--storage URL] [--study NAME] [--timeout S] [--trial-minutes M] [--trial-epochs E]
        [--metric M] [--score-last K] [--pruner median|halving|hyperband|none] [--sampler tpe|random|grid]
        [--enqueue base]

Each trial is an ordinary run of CONFIG + overrides + the sampled values (own out_dir DIR/trial_NNNN,
checkpoints, metrics.jsonl, config.yaml), in its own process; each validated epoch is reported to
Optuna and hopeless trials are pruned. The study lives in its storage (default sqlite:///DIR/sweep.db):
run the same command again to continue an interrupted sweep (only the remaining trials run; an
interrupted trial is retried from its last checkpoint), or on several machines at once with a shared
storage (an RDB URL, or journal:FILE on a shared file system). The test split is never read.
Writes DIR/summary.csv, DIR/best_config.yaml, DIR/*.png and DIR/sweep.html.
"""
from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import time
import warnings
from pathlib import Path

from videoft.choices import BEST_METRICS
from videoft.config import ConfigError, load_config
from videoft.sweep.study import PRUNERS, SAMPLERS

log = logging.getLogger("videoft.sweep")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="base YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the base config, e.g. data.root=DIR")
    p.add_argument("--space", required=True, help="search space YAML (see configs/sweep_space_small_data.yaml)")
    p.add_argument("--trials", type=int, required=True, help="trials in the study in all (complete, pruned, failed)")
    p.add_argument("--out", default="runs/sweep", help="sweep folder: trial_NNNN/, summary, plots (runs/sweep)")
    p.add_argument("--storage", default=None, help="Optuna storage: sqlite:///FILE (default DIR/sweep.db), "
                   "postgresql://..., mysql://..., or journal:FILE")
    p.add_argument("--study", default=None, help="study name (default: the name of --out)")
    p.add_argument("--timeout", type=float, default=None, help="seconds for the whole sweep (this process)")
    p.add_argument("--trial-minutes", type=float, default=None, help="wall-clock budget of each trial")
    p.add_argument("--trial-epochs", type=int, default=None, help="train.epochs of every trial")
    p.add_argument("--metric", choices=BEST_METRICS, default=None,
                   help="validation metric to maximise (default: the config's train.best_metric)")
    p.add_argument("--score-last", type=int, default=0, metavar="K",
                   help="score each trial by the mean of its last K validated epochs instead of its best epoch "
                        "(on a small validation set the best epoch is often a lucky one)")
    p.add_argument("--pruner", default="median", choices=PRUNERS, help="stops hopeless trials early (median)")
    p.add_argument("--prune-startup", type=int, default=3, help="median: complete trials before any pruning")
    p.add_argument("--prune-warmup", type=int, default=1, help="epochs a trial runs before it can be pruned")
    p.add_argument("--sampler", default="tpe", choices=SAMPLERS, help="tpe (default), random search, or grid: every "
                   "combination once (choices and stepped ranges only; --trials caps it)")
    p.add_argument("--seed", type=int, default=None, help="sampler seed (offset by the trials already in the "
                   "study; give each worker of a shared study its own)")
    p.add_argument("--enqueue", action="append", default=[], metavar="K=V,K=V|base",
                   help="run these values first (missing keys are sampled); 'base': the base config's values")
    p.add_argument("--heartbeat", type=int, default=60, help="RDB storage: seconds between heartbeats, by which "
                   "other workers detect a dead one (0: off)")
    return p.parse_args(argv)


def base_overrides(args: argparse.Namespace) -> list[str]:
    return [*args.overrides, *([f"train.epochs={args.trial_epochs}"] if args.trial_epochs else []),
            *([f"train.best_metric={args.metric}"] if args.metric else [])]


def check_sweep_inputs(args: argparse.Namespace, cfg, space) -> list[str]:
    """Problems that make the sweep meaningless; reported together."""
    problems = []
    given = {o.partition("=")[0].strip() for o in base_overrides(args)}
    both = [k for k in space.keys if k in given]
    if both:
        problems.append(f"{', '.join(both)}: both searched (--space) and fixed (override or --trial-epochs)")
    root = Path(cfg.data.root)
    if cfg.data.val_fraction <= 0 and root.is_dir() and not (root / "val").is_dir():
        problems.append(f"data.val_fraction is 0 and {root} has no val/ folder: a sweep selects on validation")
    if args.trials < 0:
        problems.append(f"--trials must be >= 0, got {args.trials}")
    if args.score_last < 0:
        problems.append(f"--score-last must be >= 0 (0: best epoch), got {args.score_last}")
    if args.sampler == "grid":
        try:
            space.grid()
        except ValueError as err:
            problems.append(str(err))
    return problems


def setup_logging(sweep_dir: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True,
                        handlers=[logging.StreamHandler(sys.stdout), logging.FileHandler(sweep_dir / "sweep.log")])
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines say what happened to each trial
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, base_overrides(args))
        from videoft.sweep.space import load_space

        space = load_space(args.space, args.config, base_overrides(args))
        problems = check_sweep_inputs(args, cfg, space)
        if problems:
            raise ConfigError(problems)
        enqueued = [space.values_from(spec, cfg) for spec in args.enqueue]
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sweep_dir = Path(args.out)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(sweep_dir)
    try:
        return run_sweep(args, cfg, space, enqueued, sweep_dir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run_sweep(args: argparse.Namespace, cfg, space, enqueued: list[dict], sweep_dir: Path) -> int:
    from videoft.sweep import study as st
    from videoft.sweep.outputs import SweepView, format_summary, write_outputs, write_summary_csv
    from videoft.sweep.runner import Objective, SweepSettings, TrialFailed

    url = args.storage or st.default_storage(sweep_dir)
    name = args.study or sweep_dir.resolve().name
    st.claim_folder(sweep_dir, name, url)
    definition = {"config": st.study_config(cfg), "space": space.as_dict(), "metric": cfg.train.best_metric,
                  **({"score_last": args.score_last} if args.score_last else {})}
    grid = space.grid() if args.sampler == "grid" else None
    trials = min(args.trials, math.prod(map(len, grid.values()))) if grid else args.trials
    study = st.open_study(
        st.open_storage(url, heartbeat_s=args.heartbeat), name, definition=definition,
        sampler=st.build_sampler(args.sampler, seed=None, trials=trials, grid=grid),
        pruner=st.build_pruner(args.pruner, startup_trials=args.prune_startup, warmup_epochs=args.prune_warmup,
                               max_epochs=cfg.train.epochs))
    if args.seed is not None:  # offset by the trials so far: a restart must not draw the first points again
        study.sampler = st.build_sampler(args.sampler, seed=args.seed + len(study.get_trials(deepcopy=False)),
                                         trials=trials, grid=grid)
    st.recover_interrupted(study)
    for values in enqueued:
        study.enqueue_trial(space.to_optuna_params(values), skip_if_exists=True)
    if args.timeout and not args.trial_minutes:
        log.info("no --trial-minutes: a trial may use all that is left of --timeout")
    done, running = st.count_done(study), st.count_running(study)
    todo = max(0, trials - done - running)
    if trials < args.trials:
        log.info("--sampler grid: the grid has %d points, so the sweep is %d trials", trials, trials)
    log.info("study %s in %s: %d of %d trials done, %d running elsewhere: %d to run here", name, url, done,
             trials, running, todo)
    settings = SweepSettings(config=args.config, overrides=base_overrides(args), sweep_dir=sweep_dir,
                             metric=cfg.train.best_metric, score_last=args.score_last,
                             trial_seconds=args.trial_minutes * 60 if args.trial_minutes else None,
                             deadline=time.monotonic() + args.timeout if args.timeout else None)

    def after_trial(study, trial) -> None:
        write_summary_csv(SweepView.of(study, settings, space), sweep_dir / "summary.csv")
        if st.count_done(study) + st.count_running(study) >= trials:
            study.stop()  # other workers of a shared study have filled it

    signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's SIGTERM: stop like Ctrl-C, the trial is retried
    code = 0
    try:
        if todo:
            study.optimize(Objective(settings, space), n_trials=todo, timeout=args.timeout, catch=(TrialFailed,),
                           callbacks=[after_trial])
    except KeyboardInterrupt:
        log.warning("interrupted: run the same command again to continue (the running trial is retried)")
        code = 130
    view = SweepView.of(study, settings, space)
    written = write_outputs(view)
    print("\n" + format_summary(view))
    print(f"\nwritten: {', '.join(str(p) for p in written.values())}")
    return code


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
