"""One sweep trial in its own process: an ordinary videoft run, stopped cleanly by a wall-clock budget.

    python -m videoft.sweep.trial CONFIG [key=value ...] [--time-budget S] [--parent-pid PID]

tools/sweep.py starts one per trial, so a crash, a memory leak or a hung decoder stays inside it. The run
is `videoft.runner.run`, as tools/train.py runs it, with a per-epoch hook that stops at an epoch boundary
when another epoch would not fit in the budget. The outcome (the error, or why the run stopped early) is
written to out_dir/trial_status.json for the sweep; the metrics are the run's own metrics.jsonl.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from videoft.config import ConfigError, load_config

STATUS_FILE = "trial_status.json"


class TimeBudget:
    """Per-epoch hook: stop when the time used plus one more epoch (as long as the last) would pass the budget.

    The clock starts when the hook is made (before setup), so the first epoch's estimate includes setup:
    a budget errs on the side of stopping early rather than overrunning.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.clock = seconds, clock
        self.start = self.last = clock()
        self.reason: str | None = None

    def __call__(self, row: dict) -> bool:
        now = self.clock()
        used, epoch_s = now - self.start, now - self.last
        self.last = now
        if used + epoch_s <= self.seconds:
            return False
        self.reason = (f"time budget: {used:.0f} s of {self.seconds:.0f} s used after epoch {row['epoch']}, "
                       f"another epoch (~{epoch_s:.0f} s) would not fit")
        return True


def die_with_parent(parent_pid: int) -> None:
    """Linux: get SIGTERM when the sweep process dies, even by SIGKILL, so no trial runs on orphaned."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent_pid:  # it died before prctl took effect
        raise SystemExit(f"the sweep process {parent_pid} is gone")


def write_status(out_dir: Path, status: dict) -> None:
    tmp = out_dir / (STATUS_FILE + ".tmp")
    tmp.write_text(json.dumps(status, indent=1))
    tmp.replace(out_dir / STATUS_FILE)


def read_status(out_dir: Path) -> dict:
    try:
        return json.loads((Path(out_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds for the whole run")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process dies")
    args = parser.parse_args(argv)
    if args.parent_pid:
        die_with_parent(args.parent_pid)
    budget = TimeBudget(args.time_budget) if args.time_budget else None
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from videoft.runner import run  # heavy imports after the config is read

    try:
        summary = run(cfg, on_epoch_end=budget)
    except Exception as err:  # the sweep records the reason and goes on with the next trial
        traceback.print_exc()
        write_status(out_dir, {"error": f"{type(err).__name__}: {err}"})
        return 1
    write_status(out_dir, {"stopped": budget.reason if budget else None, "epochs_run": summary["epochs_run"],
                           "best_metric": summary["best_metric"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
