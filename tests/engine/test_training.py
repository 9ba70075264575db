"""The training recipe end to end: tools/train.py on tiny real videos, checkpoints, resume, early stopping."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_TRAIN_OVERRIDES
from videoft.engine.checkpoint import load_checkpoint
from videoft.engine.train import lr_factor_at

REPO = Path(__file__).resolve().parents[2]
TRAIN = [sys.executable, str(REPO / "tools" / "train.py"), str(REPO / "configs" / "demo.yaml")]


def run_train(out_dir: Path, data: Path, *extra: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = TRAIN + [f"data.root={data}", f"out_dir={out_dir}", *TINY_TRAIN_OVERRIDES, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=k)


def test_lr_schedule_warms_up_then_decays():
    f = [lr_factor_at(s, total_steps=10, warmup_steps=2, min_ratio=0.1) for s in range(11)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)
    assert f[2] == pytest.approx(1.0) and f[10] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[2:], f[3:]))


def test_smoke_run_writes_loadable_checkpoints(tmp_path, tiny_motion_dataset):
    out = tmp_path / "run"
    proc = run_train(out, tiny_motion_dataset, "train.epochs=2", "train.max_steps_per_epoch=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("last.pt", "best.pt", "config.yaml", "classes.txt", "metrics.jsonl", "train_curves.png",
                 "splits.json", "summary.json"):
        assert (out / name).is_file(), name
    state = torch.load(out / "last.pt", weights_only=True)  # plain containers only
    assert state["classes"] == ["bounce", "roll", "spin", "throw"]
    assert state["epoch"] == 2 and state["step"] == 4
    assert state["preprocessing"]["clip_len"] == 4 and state["preprocessing"]["crop_size"] == 32
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0 <= r["val_top1"] <= 1 for r in rows)
    assert list((out / "tensorboard").iterdir()), "no TensorBoard event files"
    assert "val top1" in proc.stdout  # the one-line epoch summary


def test_config_error_lists_every_problem(tmp_path):
    proc = subprocess.run(TRAIN + ["data.root=", "optim.lr=-1", "model.bogus=1", "train.amp=fp8"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    for needle in ("data.root", "optim.lr", "model.bogus", "train.amp"):
        assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_corrupt_videos_are_skipped_and_listed(tmp_path, tiny_motion_dataset):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_motion_dataset, data)
    (data / "train" / "spin" / "broken.mp4").write_text("not a video")
    (data / "train" / "roll" / "empty.mp4").write_bytes(b"")
    out = tmp_path / "run"
    proc = run_train(out, data, "train.epochs=1", "data.batch_size=14")
    assert proc.returncode == 0, proc.stderr[-3000:]
    skipped = json.loads((out / "skipped_videos.json").read_text())
    assert set(Path(p).name for p in skipped) == {"broken.mp4", "empty.mp4"}
    assert all(skipped.values())  # each with a reason
    assert "broken.mp4" in proc.stdout


def test_resume_refuses_changed_classes(tmp_path, tiny_motion_dataset):
    import shutil

    out = tmp_path / "run"
    assert run_train(out, tiny_motion_dataset, "train.epochs=1", "train.max_steps_per_epoch=1").returncode == 0
    data = tmp_path / "other"
    shutil.copytree(tiny_motion_dataset, data)
    for split in ("train", "val", "test"):
        shutil.rmtree(data / split / "spin")
    proc = run_train(out, data, "train.epochs=2", "resume=auto")
    assert proc.returncode == 2
    assert "cannot resume" in proc.stderr and "classes differ" in proc.stderr


@pytest.mark.slow
def test_kill_and_resume_gives_identical_weights(tmp_path, tiny_motion_dataset):
    """SIGKILL mid-epoch, resume from last.pt: final weights equal an uninterrupted run's."""
    # batch 2: 6 steps an epoch, the kill lands at step 7 with 5 still to run
    common = ["train.epochs=2", "train.checkpoint_every_steps=1", "model.dropout=0.3", "data.batch_size=2"]
    ref = tmp_path / "ref"
    assert run_train(ref, tiny_motion_dataset, *common).returncode == 0
    total_steps = load_checkpoint(ref / "last.pt")["step"]
    out = tmp_path / "killed"
    cmd = TRAIN + [f"data.root={tiny_motion_dataset}", f"out_dir={out}", *TINY_TRAIN_OVERRIDES, *common]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    deadline = time.time() + 240
    try:
        # wait until a mid-epoch checkpoint of the second epoch exists, then kill without warning; the process
        # is paused (SIGSTOP) while the test reads each new checkpoint, so it cannot run on meanwhile
        seen = None
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail("training ended before it could be killed")
            stamp = (out / "last.pt").stat().st_mtime_ns if (out / "last.pt").exists() else None
            if stamp is not None and stamp != seen:
                seen = stamp
                os.kill(proc.pid, signal.SIGSTOP)
                state = load_checkpoint(out / "last.pt")  # atomic writes: always a whole checkpoint
                if state["epoch"] == 1 and state["epoch_step"] >= 1:
                    break
                os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = load_checkpoint(out / "last.pt")
    assert killed_at["step"] < total_steps  # really interrupted
    resumed = run_train(out, tiny_motion_dataset, *common, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    assert_same_weights(weights(ref / "last.pt"), weights(out / "last.pt"))
    assert load_checkpoint(out / "last.pt")["step"] == total_steps == 12


@pytest.mark.slow
def test_early_stopping_and_best_checkpoint(tmp_path, tiny_motion_dataset):
    """With LR 0 the val metric cannot improve after epoch 1: stop after `patience` more epochs.
    (No precise BN: recomputing BatchNorm statistics from each epoch's clips is learning too.)"""
    out = tmp_path / "run"
    proc = run_train(out, tiny_motion_dataset, "train.epochs=10", "train.early_stop_patience=2",
                     "optim.lr=1e-12", "train.max_steps_per_epoch=1", "train.precise_bn_batches=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_early"] is True
    assert summary["epochs_run"] == 3
    assert summary["best_metric"]["epoch"] == 1
    assert load_checkpoint(out / "best.pt")["epoch"] == 1
    assert load_checkpoint(out / "last.pt")["epoch"] == 3


def _torchrun(nproc: int, out: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={port}", *TRAIN[1:], f"data.root={data}", f"out_dir={out}",
           *TINY_TRAIN_OVERRIDES, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=REPO)


@pytest.mark.distributed
@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path, tiny_motion_dataset):
    """Same global batch on 1 and 2 gloo processes: same weights (BN in eval mode, no dropout).

    The second epoch unfreezes a stage: DDP must be re-wrapped to sync its gradients, else the
    ranks drift apart and the weights differ from the 1-process run.
    """
    extra = ["train.epochs=2", "freeze.bn=all", "model.dropout=0.0", "train.max_steps_per_epoch=2",
             "freeze.stages=5", "freeze.unfreeze.head_only_epochs=1", "freeze.unfreeze.every=1",
             "train.precise_bn_batches=0",  # precise BN averages per-rank statistics: close, not equal
             "optim.name=sgd",  # Adam divides by sqrt(v): fp-rounding noise in tiny gradients is amplified
             # one step format for both (the CPU 'auto' choice is timed, and keyed by the per-rank batch)
             "train.amp=off", "train.channels_last=off"]
    one = tmp_path / "one"
    p1 = run_train(one, tiny_motion_dataset, *extra)
    assert p1.returncode == 0, p1.stderr[-3000:]
    two = tmp_path / "two"
    p2 = _torchrun(2, two, tiny_motion_dataset, *extra)
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert_same_weights(weights(one / "last.pt"), weights(two / "last.pt"), atol=1e-5)
    # rank 0 alone writes: one set of files, no rank-suffixed leftovers
    assert sorted(p.name for p in two.glob("*.pt")) == ["best.pt", "last.pt"]
    assert p2.stdout.count("val top1") == 2  # one summary line per epoch: rank 0 alone logs
    m1 = json.loads((one / "metrics.jsonl").read_text().splitlines()[-1])
    m2 = json.loads((two / "metrics.jsonl").read_text().splitlines()[-1])
    assert m1["train_loss"] == pytest.approx(m2["train_loss"], rel=1e-4)
    assert m1["val_top1"] == m2["val_top1"]


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(tmp_path, tiny_motion_dataset):
    """An absurd LR blows the loss up: the run stops with a message; last.pt of epoch 1 stays loadable."""
    out = tmp_path / "run"
    ok = run_train(out, tiny_motion_dataset, "train.epochs=1", "train.max_steps_per_epoch=1")
    assert ok.returncode == 0
    before = weights(out / "last.pt")
    proc = run_train(out, tiny_motion_dataset, "train.epochs=3", "resume=auto", "optim.lr=1e30",
                     "optim.warmup_epochs=0")
    assert proc.returncode != 0
    assert "loss is nan" in (proc.stdout + proc.stderr).lower() or "loss is inf" in (proc.stdout + proc.stderr).lower()
    assert "Traceback" not in proc.stderr
    assert_same_weights(before, weights(out / "last.pt"))


@pytest.mark.slow
def test_gradual_unfreezing_follows_schedule(tmp_path, tiny_motion_dataset):
    """Head only for 1 epoch, then one stage per epoch down to freeze.stages=4 (x3d_xs has 6)."""
    sched = ["freeze.stages=4", "freeze.unfreeze.head_only_epochs=1", "freeze.unfreeze.every=1",
             "train.max_steps_per_epoch=1"]
    head_only = tmp_path / "head_only"
    assert run_train(head_only, tiny_motion_dataset, "train.epochs=1", *sched).returncode == 0
    full = tmp_path / "full"
    proc = run_train(full, tiny_motion_dataset, "train.epochs=3", *sched)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "5 of 6 stages now frozen" in proc.stdout and "4 of 6 stages now frozen" in proc.stdout
    a, b = weights(head_only / "last.pt"), weights(full / "last.pt")
    frozen = [k for k in a if k.startswith(("backbone.blocks.0.", "backbone.blocks.3."))]
    unfrozen = [k for k in a if k.startswith(("backbone.blocks.4.", "backbone.blocks.5.pool.")) and "weight" in k]
    assert frozen and unfrozen
    assert all(torch.equal(a[k], b[k]) for k in frozen)  # weights and BN statistics never moved
    assert any(not torch.equal(a[k], b[k]) for k in unfrozen)
    assert load_checkpoint(full / "last.pt")["unfreeze"]


@pytest.mark.slow
def test_linear_probe_cache_matches_uncached(tmp_path, tiny_motion_dataset):
    """Training the head on cached (memory-mapped) backbone features equals recomputing them every epoch."""
    probe = ["train.epochs=2", "train.linear_probe=true", "train.probe_solver=sgd", "model.dropout=0.3",
             "train.amp=off", "train.channels_last=off"]  # the cached path has no 'auto' timing to match
    cached, live = tmp_path / "cached", tmp_path / "live"
    # a 0 MB RAM limit: the cache is memory-mapped from out_dir/feature_cache (deleted at the end)
    p1 = run_train(cached, tiny_motion_dataset, *probe, "train.cache_features=true", "train.feature_cache_ram_mb=0")
    assert p1.returncode == 0, p1.stderr[-3000:]
    assert "cached features of 12 training videos" in p1.stdout and "memory-mapped from" in p1.stdout
    assert not (cached / "feature_cache").exists()
    assert run_train(live, tiny_motion_dataset, *probe, "train.cache_features=false").returncode == 0
    a, b = weights(cached / "last.pt"), weights(live / "last.pt")
    assert_same_weights(a, b, atol=1e-6)
    init = tmp_path / "init"  # the backbone never moves: same as after a run with LR ~0
    assert run_train(init, tiny_motion_dataset, "train.epochs=1", "train.linear_probe=true", "train.probe_solver=sgd",
                     "optim.lr=1e-12", "train.max_steps_per_epoch=1").returncode == 0
    c = weights(init / "last.pt")
    assert all(torch.equal(a[k], c[k]) for k in a if k.startswith("backbone."))
    assert not torch.equal(a["head.1.weight"], c["head.1.weight"])


@pytest.mark.distributed
@pytest.mark.slow
def test_two_process_auto_stage_probe_matches_one_process(tmp_path, tiny_motion_dataset):
    """model.feature_stage=auto under torchrun: each rank caches its shard of every stage's features, rank 0
    solves and chooses, every rank cuts its model there; the saved probe is the one-process run's."""
    extra = ["train.linear_probe=true", "model.feature_stage=auto", "data.eval_clips=2", "train.amp=off",
             "train.channels_last=off"]
    one, two = tmp_path / "one", tmp_path / "two"
    p1 = run_train(one, tiny_motion_dataset, *extra)
    assert p1.returncode == 0, p1.stderr[-3000:]
    p2 = _torchrun(2, two, tiny_motion_dataset, *extra)
    assert p2.returncode == 0, p2.stderr[-3000:]
    m1 = json.loads((one / "metrics.jsonl").read_text().splitlines()[-1])
    m2 = json.loads((two / "metrics.jsonl").read_text().splitlines()[-1])
    assert m1["probe_stage"] == m2["probe_stage"] and len(m2["probe_stages"]) == 6
    assert load_checkpoint(two / "last.pt")["config"]["model"]["feature_stage"] == m1["probe_stage"]
    assert_same_weights(weights(one / "last.pt"), weights(two / "last.pt"), atol=1e-5)
    assert m1["val_video_top1"] == m2["val_video_top1"]
