"""tools/gpu_check.py: its list of checks, summary and exit status; without CUDA it runs nothing; its CPU
rehearsal runs every step the GPU run takes (only the CUDA-specific lines cannot be exercised here)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from .tool_helpers import REPO, load_tool

gpu_check = load_tool("gpu_check")


def test_checks_cover_what_the_gpu_run_must_show():
    assert [name for name, _ in gpu_check.CHECKS] == [
        "environment", "demo data", "bf16 channels_last", "torchrun epoch", "resume", "evaluate", "export",
        "throughput"]
    assert [name for name, *_ in gpu_check.GPU_SIZES["throughput"]] == ["x3d_xs", "slow_r50"]


def test_a_failing_check_is_reported_the_others_still_run_and_the_exit_is_1(tmp_path, capsys):
    def fails(ctx):
        raise gpu_check.CheckFailed("train.log does not say 'backend nccl'")

    def crashes(ctx):
        raise KeyError("val_top1")

    checks = [("first", lambda ctx: "fine"), ("second", fails), ("third", crashes), ("fourth", lambda ctx: "also")]
    results = gpu_check.run_checks(checks, gpu_check.Context(tmp_path, cuda=False))
    assert [r.ok for r in results] == [True, False, False, True]
    assert gpu_check.exit_code(results) == 1 and gpu_check.exit_code(results[:1]) == 0
    table = gpu_check.summary(results).splitlines()
    assert table[0].split() == ["check", "status", "seconds", "result"]
    assert table[2].split()[:2] == ["second", "FAILED"] and "backend nccl" in table[2]
    assert "KeyError" in capsys.readouterr().out  # the crash's traceback is printed
    assert table[-1] == "2 of 4 checks passed"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: `make gpu-check` runs for real")
def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--work-dir", str(tmp_path / "work")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "no CUDA device" in proc.stdout and "nothing was run" in proc.stdout
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
@pytest.mark.distributed
def test_cpu_rehearsal_runs_every_step(tmp_path):
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--cpu-rehearsal", "--work-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "8 of 8 checks passed" in proc.stdout and "backend gloo" in proc.stdout
    for name in ("torchrun/best.pt", "torchrun/last.pt", "eval/report.json", "model.onnx", "model.torchscript"):
        assert (tmp_path / name).is_file(), name
