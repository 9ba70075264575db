"""tools/sweep.py end to end on tiny generated videos: real trial processes, real SQLite storage, a real kill -9."""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from tests.conftest import TINY_TRAIN_OVERRIDES
from videoft.config import load_config

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.yaml"
TINY = [*(o for o in TINY_TRAIN_OVERRIDES if not o.startswith("optim.lr=")),  # the LR is searched
        "optim.name=sgd", "train.precise_bn_batches=0", "train.max_steps_per_epoch=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
LR_SPACE = "optim.lr: {low: 1.0e-4, high: 1.0e12, log: true}\n"


def sweep_cmd(data: Path, out: Path, space: Path, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "tools" / "sweep.py"), str(DEMO), f"data.root={data}", *TINY,
            "--space", str(space), "--out", str(out), *args]


def load_study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name=out.name, storage=f"sqlite:///{out}/sweep.db")


def trials_so_far(out: Path, log: Path) -> list:
    """The study's trials, once the sweep (logging to `log`) has created it."""
    return load_study(out).get_trials() if "trials done" in log.read_text() else []


def metric_epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


class OpenedFiles:
    """Files opened in some folders by any process (Linux inotify sees C decoders and subprocesses too)."""

    IN_OPEN, IN_ISDIR, IN_NONBLOCK = 0x20, 0x40000000, 0o4000

    def __init__(self, folders: list[Path]):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(self.IN_NONBLOCK) if sys.platform.startswith("linux") else -1
        if self.fd < 0:
            pytest.skip("needs Linux inotify")
        self.folders = {self.libc.inotify_add_watch(self.fd, str(f).encode(), self.IN_OPEN): f for f in folders}
        self.seen: set[Path] = set()

    def opened(self) -> set[Path]:
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return self.seen
            i = 0
            while i < len(data):  # struct inotify_event: int wd, uint32 mask, cookie, len; char name[len]
                wd, mask, _, size = (int.from_bytes(data[i + 4 * k:i + 4 * k + 4], sys.byteorder) for k in range(4))
                name = data[i + 16:i + 16 + size].rstrip(b"\0").decode()
                if not mask & self.IN_ISDIR and name:  # listing a folder is not reading a video
                    self.seen.add(self.folders[wd] / name)
                i += 16 + size

    def close(self) -> None:
        os.close(self.fd)


def test_sweep_runs_records_failures_writes_outputs_and_never_reads_test(tmp_path, tiny_motion_dataset):
    space = tmp_path / "space.yaml"
    space.write_text(LR_SPACE + "train.linear_probe: [false, true]\nfreeze.unfreeze.every: [0, 1]\n")
    out = tmp_path / "sweep"
    watch = OpenedFiles([d for split in ("val", "test") for d in sorted((tiny_motion_dataset / split).iterdir())])
    good, nan, bad_config = ("optim.lr=0.01,train.linear_probe=false,freeze.unfreeze.every=0",
                             "optim.lr=1e12,train.linear_probe=false,freeze.unfreeze.every=0",  # NaN loss
                             "optim.lr=0.01,train.linear_probe=true,freeze.unfreeze.every=1")  # invalid together
    proc = subprocess.run(sweep_cmd(tiny_motion_dataset, out, space, "--trials", "3", "--trial-epochs", "2",
                                    *[a for spec in (good, nan, bad_config) for a in ("--enqueue", spec)]),
                          capture_output=True, text=True, env=ENV, timeout=300)
    opened = watch.opened()
    watch.close()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    trials = load_study(out).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
    assert trials[1].user_attrs["error"].startswith("NonFiniteLossError: loss is nan")
    assert trials[2].user_attrs["error"].startswith("ConfigError: train.linear_probe")
    run = out / "trial_0000"  # an ordinary run in its own folder
    cfg = load_config(run / "config.yaml")
    assert cfg.optim.lr == 0.01 and cfg.out_dir == str(run) and cfg.train.epochs == 2
    assert metric_epochs(run) == [1, 2] and (run / "best.pt").is_file() and (run / "last.pt").is_file()
    assert trials[0].intermediate_values.keys() == {1, 2}
    assert trials[0].value == max(trials[0].intermediate_values.values())

    rows = (out / "summary.csv").read_text().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == ["complete", "failed", "failed"]
    best = load_config(out / "best_config.yaml")
    assert best.optim.lr == 0.01 and not best.train.linear_probe and best.out_dir == str(out / "best_run")
    for name in ("history.png", "curves.png", "slices.png", "sweep.html"):
        assert (out / name).stat().st_size > 1000, name
    assert "best: trial 0" in proc.stdout and "NonFiniteLossError" in proc.stdout

    # the test split: never opened (while validation videos were: the watch works), never in train/val
    test_files = {p for p in (tiny_motion_dataset / "test").rglob("*.mp4")}
    assert opened & test_files == set()
    assert {p for p in opened if p.parent.parent.name == "val"}, "the watch saw no validation video opened"
    splits = json.loads((out / "trial_0000" / "splits.json").read_text())
    assert not {Path(p) for p in splits["train"] + splits["val"]} & test_files


@pytest.mark.slow
def test_killed_sweep_restarts_with_only_the_remaining_trials(tmp_path, tiny_motion_dataset):
    space = tmp_path / "space.yaml"
    space.write_text(LR_SPACE.replace("1.0e12", "0.1"))
    out = tmp_path / "sweep"
    # 3 epochs a trial: the kill lands after trial 1's first checkpoint and, whatever the machine's speed,
    # before its last epoch, so the retry has epochs left to train
    cmd = sweep_cmd(tiny_motion_dataset, out, space, "--trials", "3", "--trial-epochs", "3", "--seed", "0")
    log = tmp_path / "first.log"
    with open(log, "w") as log_file:
        first = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=ENV)
    try:
        # kill -9 once trial 0 is recorded and trial 1 has a checkpoint after its first epoch
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.1)
            trials = trials_so_far(out, log)
            if (len(trials) == 2 and trials[0].state == TrialState.COMPLETE and trials[1].intermediate_values
                    and (out / "trial_0001" / "last.pt").is_file()):
                break
        assert first.poll() is None, "the sweep ended before it could be killed: " + log.read_text()[-3000:]
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    killed = load_study(out).get_trials()
    assert [t.state for t in killed] == [TrialState.COMPLETE, TrialState.RUNNING]
    assert wait_for_no_trial_process(out), "the trial process outlived its sweep"
    trial0 = (out / "trial_0000" / "metrics.jsonl").read_bytes()

    again = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=240)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "1 of 3 trials done, 0 running elsewhere: 2 to run here" in again.stdout
    trials = load_study(out).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                                         TrialState.COMPLETE]
    retry = trials[2]
    assert retry.user_attrs["retry_of"] == 1 and retry.params == killed[1].params
    assert metric_epochs(out / "trial_0002")[0] >= 2  # resumed from trial 1's checkpoint, not from scratch
    assert retry.intermediate_values.keys() == {1, 2, 3}  # the epochs before the checkpoint carried over
    assert (out / "trial_0000" / "metrics.jsonl").read_bytes() == trial0  # finished work is not redone
    assert sorted(p.name for p in out.glob("trial_*")) == [f"trial_{i:04d}" for i in range(4)]
    assert "retried as trial 2" in again.stdout


def wait_for_no_trial_process(out: Path, timeout: float = 15) -> bool:
    """True once no `videoft.sweep.trial` process for this sweep is left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "videoft.sweep.trial" in cmdline and str(out) in cmdline:
                alive.append(proc.name)
        if not alive:
            return True
        time.sleep(0.2)
    return False


def test_hopeless_trial_is_pruned_after_its_first_epoch(tmp_path, tiny_motion_dataset):
    space = tmp_path / "space.yaml"
    space.write_text(LR_SPACE)
    out = tmp_path / "sweep"
    out.mkdir()
    # an earlier trial in the study reached 1.0 at every epoch: any trial below it is pruned by the median rule
    study = optuna.create_study(storage=f"sqlite:///{out}/sweep.db", study_name=out.name, direction="maximize")
    study.add_trial(create_trial(params={"optim.lr": 0.01}, value=1.0,
                                 intermediate_values={e: 1.0 for e in range(1, 13)},
                                 distributions={"optim.lr": optuna.distributions.FloatDistribution(1e-4, 1e12,
                                                                                                   log=True)}))
    # 12 epochs: the sweep reads metrics every 0.5 s and a tiny epoch takes about that long, so the run is stopped
    # a few epochs after the first (3 epochs were sometimes all done by the time it looked: a flaky test)
    proc = subprocess.run(sweep_cmd(tiny_motion_dataset, out, space, "--trials", "2", "--trial-epochs", "12",
                                    "--pruner", "median", "--prune-startup", "1", "--prune-warmup", "0",
                                    "--enqueue", "optim.lr=1e-4"),
                          capture_output=True, text=True, env=ENV, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pruned = load_study(out).get_trials()[1]
    assert pruned.state == TrialState.PRUNED
    assert list(pruned.intermediate_values) == [1] and pruned.intermediate_values[1] < 1.0
    assert metric_epochs(out / "trial_0001")[-1] < 12  # stopped before its last epoch
    assert "pruned at epoch 1" in (out / "summary.csv").read_text()


def test_grid_sweep_runs_each_point_once_however_many_trials_are_asked(tmp_path, tiny_motion_dataset):
    space = tmp_path / "space.yaml"
    space.write_text("model.dropout: [0.0, 0.4]\n")
    out = tmp_path / "sweep"
    proc = subprocess.run(sweep_cmd(tiny_motion_dataset, out, space, "--trials", "10", "--sampler", "grid",
                                    "--trial-epochs", "1", "--pruner", "none"),
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "the grid has 2 points, so the sweep is 2 trials" in proc.stdout
    trials = load_study(out).get_trials()
    assert sorted(t.params["model.dropout"] for t in trials) == [0.0, 0.4]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    space.write_text(LR_SPACE)
    refused = subprocess.run(sweep_cmd(tiny_motion_dataset, tmp_path / "other", space, "--trials", "3",
                                       "--sampler", "grid"), capture_output=True, text=True, env=ENV, timeout=120)
    assert refused.returncode == 2 and "--sampler grid needs choices or a step for every key; continuous: optim.lr" \
        in refused.stderr
    assert not (tmp_path / "other").exists()
