"""The objective of a sweep: each trial is an ordinary videoft run in its own process and out_dir.

The trial process (`python -m videoft.sweep.trial`) trains as tools/train.py would; this side reads its
metrics.jsonl as it grows, reports each validated epoch to Optuna, and stops the process when the pruner
says so (SIGINT, then SIGKILL). The per-trial time budget is kept by the trial process itself (it stops
at an epoch boundary and keeps what it reached); a hard limit here catches a process that hangs.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from videoft.config import ConfigError, load_config
from videoft.sweep.space import SearchSpace, overrides_for
from videoft.sweep.study import worker_id
from videoft.sweep.trial import read_status

log = logging.getLogger("videoft.sweep")


class TrialFailed(Exception):
    """A trial that failed by its own fault (bad config, NaN loss, crash); recorded as FAIL with the reason."""


@dataclass
class SweepSettings:
    """What every trial shares."""

    config: str                     # base config file
    overrides: list[str]            # base overrides (the command line's, --trial-epochs, --metric)
    sweep_dir: Path
    metric: str                     # train.best_metric of the trials: the objective, maximised
    score_last: int = 0             # 0: a trial scores its best validated epoch; K: the mean of its last K
    trial_seconds: float | None = None  # per-trial wall-clock budget
    deadline: float | None = None   # time.monotonic() at which the whole sweep must end (--timeout)
    poll_s: float = 0.5             # how often metrics.jsonl is read
    kill_grace_s: float = 30.0      # after SIGINT, before SIGKILL
    python: str = sys.executable

    @property
    def metric_key(self) -> str:
        return f"val_{self.metric}"  # the column of metrics.jsonl

    def trial_dir(self, number: int) -> Path:
        return self.sweep_dir / f"trial_{number:04d}"


@dataclass
class Watch:
    """What watching one trial process found."""

    values: dict[int, float] = field(default_factory=dict)  # epoch -> validation metric
    last_epoch: int = 0             # the last epoch the run finished
    last_reported: int = 0          # the last epoch reported to Optuna (validated)
    returncode: int | None = None
    pruned: bool = False
    killed: str | None = None       # why this side stopped the process (hard time limit)


class Objective:
    """Optuna objective: sample, write the trial's overrides, run it in a subprocess, return its best metric."""

    def __init__(self, settings: SweepSettings, space: SearchSpace):
        self.s, self.space = settings, space

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self.run_trial(trial)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: not the trial's fault, so it is retried on the next start
            trial.set_user_attr("interrupted", True)
            raise

    def run_trial(self, trial: optuna.Trial) -> float:
        s = self.s
        values = self.space.suggest(trial)
        out_dir = s.trial_dir(trial.number)
        overrides = [*s.overrides, *overrides_for(values), f"out_dir={out_dir}"]
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr("out_dir", str(out_dir))
        trial.set_user_attr("command", shlex.join(["python", "tools/train.py", s.config, *overrides]))
        try:
            load_config(s.config, overrides)
        except ConfigError as err:
            raise _fail(trial, "ConfigError: " + "; ".join(err.problems)) from None
        log.info("trial %d: %s", trial.number, " ".join(overrides_for(values)) or "(no parameters)")
        resume, carried = self.resume_retry(trial)
        budget = self.budget_s()
        out_dir.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        watch = self.run_process(trial, overrides + resume, out_dir, budget, Watch(values=carried))
        trial.set_user_attr("minutes", round((time.monotonic() - start) / 60, 2))
        return self.outcome(trial, watch, out_dir)

    def budget_s(self) -> float | None:
        """This trial's budget: --trial-minutes, cut to what is left of --timeout."""
        left = None if self.s.deadline is None else max(1.0, self.s.deadline - time.monotonic())
        budgets = [b for b in (self.s.trial_seconds, left) if b is not None]
        return min(budgets) if budgets else None

    def resume_retry(self, trial: optuna.Trial) -> tuple[list[str], dict[int, float]]:
        """A retry of an interrupted trial resumes from its last checkpoint and carries the epochs it reported:
        returns the resume override and those {epoch: value}."""
        number = trial.user_attrs.get("retry_of")
        last = None if number is None else self.s.trial_dir(number) / "last.pt"
        if last is None or not last.is_file():
            return [], {}
        old = trial.study.get_trials(deepcopy=False)[number]
        carried = {int(epoch): value for epoch, value in old.intermediate_values.items()}
        # the run's own metrics.jsonl also holds epochs validated after the sweep's last look (killed in between)
        for row in _Rows(self.s.trial_dir(number) / "metrics.jsonl").new():
            value = row.get(self.s.metric_key)
            if value is not None and math.isfinite(value):
                carried.setdefault(int(row["epoch"]), value)
        carried = dict(sorted(carried.items()))
        for epoch, value in carried.items():
            trial.report(value, epoch)
        log.info("trial %d: retry of trial %d, resuming from %s", trial.number, number, last)
        return [f"resume={last}"], carried

    def run_process(self, trial: optuna.Trial, overrides: list[str], out_dir: Path, budget: float | None,
                    found: Watch) -> Watch:
        """Start the trial process and watch it to the end (killing it if pruned, interrupted or hung)."""
        s = self.s
        cmd = [s.python, "-m", "videoft.sweep.trial", s.config, *overrides, "--parent-pid", str(os.getpid())]
        if budget is not None:
            cmd += ["--time-budget", f"{budget:.1f}"]
        hard_limit = None if budget is None else budget + max(60.0, 0.25 * budget)
        with open(out_dir / "console.log", "ab") as console:
            # from the main thread: the trial's parent-death signal fires when the thread that started it ends
            proc = subprocess.Popen(cmd, stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    preexec_fn=_interruptible)
        try:
            return self.watch(trial, proc, _Rows(out_dir / "metrics.jsonl"), hard_limit, found)
        finally:
            if proc.poll() is None:
                _stop(proc, s.kill_grace_s)

    def watch(self, trial: optuna.Trial, proc: subprocess.Popen, rows: _Rows, hard_limit: float | None,
              found: Watch) -> Watch:
        """Report each validated epoch as it appears; stop the process when pruned or past the hard limit."""
        start = time.monotonic()
        while True:
            returncode = proc.poll()
            for row in rows.new():
                found.last_epoch = max(found.last_epoch, row["epoch"])
                value = row.get(self.s.metric_key)
                if value is None or not math.isfinite(value):
                    continue
                found.values[row["epoch"]] = value
                found.last_reported = row["epoch"]
                trial.report(value, row["epoch"])
                log.info("trial %d epoch %d: %s %.4f", trial.number, row["epoch"], self.s.metric, value)
                if trial.should_prune():
                    found.pruned = True
                    _stop(proc, self.s.kill_grace_s)
                    return found
            if returncode is not None:
                found.returncode = returncode
                return found
            if hard_limit is not None and time.monotonic() - start > hard_limit:
                found.killed = f"killed at the hard time limit ({hard_limit:.0f} s; budget + margin)"
                _stop(proc, self.s.kill_grace_s)
                found.returncode = proc.returncode
                return found
            time.sleep(self.s.poll_s)

    def outcome(self, trial: optuna.Trial, found: Watch, out_dir: Path) -> float:
        """The trial's value (its best validation metric, or the mean of its last `score_last` validated
        epochs), or TrialPruned / TrialFailed."""
        values = found.values
        trial.set_user_attr("epochs", max(found.last_epoch, *values, 0))
        if found.pruned:
            epoch = found.last_reported
            raise optuna.TrialPruned(f"{self.s.metric} {values[epoch]:.4f} at epoch {epoch}")
        status = read_status(out_dir)
        if found.returncode != 0 and not found.killed:
            raise _fail(trial, status.get("error") or _exit_reason(found.returncode, out_dir / "console.log"))
        if not values:
            raise _fail(trial, found.killed or f"no validation {self.s.metric} was reported (is there a "
                        "validation split? data.val_fraction > 0 or root/val)")
        stopped = found.killed or status.get("stopped")
        if stopped:
            trial.set_user_attr("stopped", stopped)
        best_epoch = max(values, key=lambda e: (values[e], -e))
        trial.set_user_attr("best_epoch", best_epoch)
        if not self.s.score_last:
            return values[best_epoch]
        last = sorted(values)[-self.s.score_last:]
        trial.set_user_attr("scored_epochs", f"{last[0]}-{last[-1]}")
        return sum(values[e] for e in last) / len(last)


def _fail(trial: optuna.Trial, reason: str) -> TrialFailed:
    trial.set_user_attr("error", reason[:2000])
    log.warning("trial %d failed: %s", trial.number, reason)
    return TrialFailed(reason)


def _interruptible() -> None:
    """In the trial process before it starts: SIGINT back to its default. A sweep started in the background
    (`nohup`, `cmd &` in a script) inherits SIGINT ignored, and Python then never turns it into
    KeyboardInterrupt: a pruned trial would run on to its last epoch (seen in CI)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGINT (the run closes its logs), then SIGKILL if it is still there after `grace_s`."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _exit_reason(returncode: int | None, console: Path) -> str:
    """How the process ended, with the last lines it printed."""
    how = (f"killed by {signal.Signals(-returncode).name}" if returncode is not None and returncode < 0
           else f"exited with code {returncode}")
    try:
        lines = [ln.strip() for ln in console.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    tail = " | ".join(ln[-300:] for ln in lines[-3:])
    return f"the trial process {how}" + (f": {tail}" if tail else "")


class _Rows:
    """The complete lines appended to a JSON-lines file since the last call."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def new(self) -> Iterator[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next call
        self.offset += end
        for line in data[:end].splitlines():
            if line.strip():
                yield json.loads(line)
