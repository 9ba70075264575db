"""The real 2-process torchrun paths under a harness that enforces NCCL's rule for collectives on CPU.

The harness (nccl_guard/nccl_guard_harness.py, loaded into every torchrun worker by the
sitecustomize.py beside it, which the test puts on PYTHONPATH) tracks which tensors were placed on
the process's device, as CUDA would, and refuses a collective given a host tensor (NCCL: "No
backend type associated with device type cpu"), a collective called outside
videoft/engine/distributed.py, or an object collective carrying device tensors. Before the fix,
training died at the end of its first epoch on the CPU float64 totals tensor; these tests fail
on that code (checked against commit 7b2772d) and pass now.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_TRAIN_OVERRIDES
from tests.tools.tool_helpers import build_controlled_model, free_port, make_checkpoint, write_grey_video

REPO = Path(__file__).resolve().parents[2]
GUARD = Path(__file__).resolve().parent / "nccl_guard"
TRAIN = ["tools/train.py", "configs/demo.yaml"]

pytestmark = pytest.mark.distributed


def guarded_torchrun(nproc: int, args: list[str], report_dir: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node nproc ARGS` with the guard loaded into every worker."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NCCL_GUARD_REPORT": str(report_dir),
           "PYTHONPATH": os.pathsep.join(p for p in (str(GUARD), os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def guard_reports(report_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(report_dir.glob("rank*.json"))]


def assert_guard_passed(proc: subprocess.CompletedProcess, report_dir: Path, *, nproc: int = 2) -> dict[str, int]:
    """No rank broke NCCL's rule, every rank was guarded and ran; returns the collectives checked (summed)."""
    reports = guard_reports(report_dir)
    violations = [v for r in reports for v in r["violations"]]
    assert not violations, "NCCL rule broken:\n" + "\n".join(violations)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert sorted(r["rank"] for r in reports) == list(range(nproc))  # the guard saw every rank's collectives
    checked: dict[str, int] = {}
    for r in reports:
        for name, n in r["checked"].items():
            checked[name] = checked.get(name, 0) + n
    return checked


def test_guard_refuses_exactly_host_tensors(tmp_path):
    """The harness itself: host tensors refused, placed and computed-from-placed tensors accepted."""
    script = tmp_path / "cases.py"
    script.write_text('''
import json, torch, torch.distributed as dist
from videoft.engine.distributed import all_reduce_sum, setup_distributed
setup_distributed()
def outcome(fn):
    try:
        fn()
        return "ok"
    except RuntimeError as err:
        return "host" if "on the host" in str(err) else "device-object" if "unpickle" in str(err) else "elsewhere"
placed = torch.zeros(3, device="cpu")
bn = torch.nn.BatchNorm1d(3).to(torch.device("cpu"))
host = torch.zeros(3)
moved = host.to("cpu")
cases = {
    "host tensor": lambda: dist.all_reduce(torch.zeros(3, dtype=torch.float64)),
    "host tensor, summed into": lambda: dist.all_reduce(host + torch.ones(3)),
    "factory with device": lambda: dist.all_reduce(placed),
    "computed from placed": lambda: dist.all_reduce(placed * 2 + host),
    "module buffer": lambda: dist.all_reduce(bn.running_mean),
    "moved copy": lambda: dist.all_reduce(moved),
    "source of a move": lambda: dist.all_reduce(host),
    "brought back with cpu()": lambda: dist.all_reduce(placed.cpu()),
    "object with device tensor": lambda: dist.gather_object({"x": placed}, [None], dst=0),
    "through the helper": lambda: all_reduce_sum(torch.zeros(3)),
}
print("CASES " + json.dumps({name: outcome(fn) for name, fn in cases.items()}))
dist.destroy_process_group()
''')
    proc = guarded_torchrun(1, [str(script)], tmp_path / "guard")
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("CASES "))
    assert json.loads(line[6:]) == {
        "host tensor": "host", "host tensor, summed into": "host", "factory with device": "elsewhere",
        "computed from placed": "elsewhere", "module buffer": "elsewhere", "moved copy": "elsewhere",
        "source of a move": "host", "brought back with cpu()": "host", "object with device tensor": "device-object",
        "through the helper": "ok"}  # "elsewhere": on the device, but called outside engine/distributed.py


def test_training_with_validation_checkpoint_and_resume(tmp_path, tiny_motion_dataset):
    """2 ranks: an epoch with precise BN, validation, early-stopping bookkeeping and checkpoints, then a resume."""
    out = tmp_path / "run"
    common = [*TRAIN, f"data.root={tiny_motion_dataset}", f"out_dir={out}", *TINY_TRAIN_OVERRIDES,
              "train.max_steps_per_epoch=2", "train.precise_bn_batches=1", "train.checkpoint_every_steps=1",
              "train.early_stop_patience=3"]
    first = guarded_torchrun(2, [*common, "train.epochs=1"], tmp_path / "guard1")
    checked = assert_guard_passed(first, tmp_path / "guard1")
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()
    assert checked.get("all_reduce", 0) >= 2 * 2 and checked.get("barrier", 0) >= 2  # totals + BN statistics
    assert "all_gather_object" not in checked  # results reach rank 0 only, never every rank
    resumed = guarded_torchrun(2, [*common, "train.epochs=2", "resume=auto"], tmp_path / "guard2")
    assert_guard_passed(resumed, tmp_path / "guard2")
    assert "resumed from" in resumed.stdout
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_evaluate_tool(tmp_path):
    """tools/evaluate.py on 2 ranks: 3 videos (one rank gets 2, the other 1) and one undecodable file."""
    ckpt = tmp_path / "controlled.pt"
    make_checkpoint(build_controlled_model()).save(ckpt)
    for name, value in (("a", 30), ("b", 90), ("c", 210)):
        write_grey_video(tmp_path / "data" / "test" / {"a": "alpha", "b": "bravo", "c": "delta"}[name] / f"{name}.mp4",
                         [value] * 20)
    (tmp_path / "data" / "test" / "alpha" / "broken.mp4").write_text("not a video")
    proc = guarded_torchrun(2, ["tools/evaluate.py", str(ckpt), "--data", str(tmp_path / "data"), "--out",
                                str(tmp_path / "eval"), "--workers", "0", "--bootstrap", "0"], tmp_path / "guard")
    checked = assert_guard_passed(proc, tmp_path / "guard")
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["num_videos"] == 3 and report["num_failed"] == 1
    assert "all_gather_object" not in checked  # results reach rank 0 only, never every rank


def test_linear_probe_with_feature_cache(tmp_path, tiny_motion_dataset):
    """2 ranks cache their shards of the backbone features, then train the head on the whole cache."""
    out = tmp_path / "run"
    proc = guarded_torchrun(2, [*TRAIN, f"data.root={tiny_motion_dataset}", f"out_dir={out}", *TINY_TRAIN_OVERRIDES,
                                "train.epochs=1", "train.linear_probe=true", "train.probe_solver=sgd"],
                            tmp_path / "guard")
    checked = assert_guard_passed(proc, tmp_path / "guard")
    assert "cached features of 12 training videos" in proc.stdout
    assert (out / "last.pt").is_file() and checked.get("all_reduce", 0) >= 2


def test_linear_probe_solver_with_feature_caches(tmp_path, tiny_motion_dataset):
    """2 ranks cache their shards of the training and validation features; rank 0 solves, every rank validates."""
    from videoft.engine.probe import L2_GRID
    out = tmp_path / "run"
    proc = guarded_torchrun(2, [*TRAIN, f"data.root={tiny_motion_dataset}", f"out_dir={out}", *TINY_TRAIN_OVERRIDES,
                                "train.linear_probe=true", "train.min_val_videos=8"], tmp_path / "guard")
    assert_guard_passed(proc, tmp_path / "guard")
    assert proc.stdout.count("linear probe: L2") == 1  # one solver, on rank 0
    assert "chosen by validation (8 videos)" in proc.stdout  # both ranks' halves of the validation cache
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["probe_l2"] in L2_GRID and "val_video_top1" in row
