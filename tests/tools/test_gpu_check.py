"""tools/gpu_check.py: its list of checks, summary and exit status; without CUDA it runs nothing; its CPU
rehearsal runs every step the GPU run takes (only the CUDA-specific lines cannot be exercised here)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from .tool_helpers import REPO, load_tool

gpu_check = load_tool("gpu_check")


def test_checks_cover_what_the_gpu_run_must_show():
    assert [name for name, _ in gpu_check.CHECKS] == [
        "environment", "demo data", "bf16 channels_last", "torchrun epoch", "resume", "evaluate", "export",
        "throughput", "feeding", "step formats"]
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
    assert "10 of 10 checks passed" in proc.stdout and "backend gloo" in proc.stdout
    for name in ("torchrun/best.pt", "torchrun/last.pt", "eval/report.json", "model.onnx", "model.torchscript"):
        assert (tmp_path / name).is_file(), name
    feeding = json.loads((tmp_path / "feeding.json").read_text())["results"]
    assert list(feeding) == ["raw", "prepared h264", "prepared uint8"]
    assert all(r["end_to_end"]["median"] > 0 and r["compute_only"]["median"] > 0 for r in feeding.values())
    formats = json.loads((tmp_path / "step_formats.json").read_text())
    assert {(r["format"], r["cudnn_benchmark"]) for r in formats} == {
        (f, b) for f in ("fp32", "bf16", "bf16 + channels_last") for b in (False, True)}


def test_only_runs_the_named_checks_and_refuses_unknown_names(tmp_path):
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--cpu-rehearsal", "--only", "environment",
                           "--work-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "1 of 1 checks passed" in proc.stdout, proc.stdout
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--cpu-rehearsal", "--only", "environment,nope"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown check(s) ['nope']" in proc.stderr


@pytest.mark.slow
def test_feeding_reads_real_videos_when_given(tmp_path, make_class_folder):
    data = make_class_folder(tmp_path / "real", {"a": 2, "b": 2}, num_frames=24)
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--cpu-rehearsal", "--only", "feeding",
                           "--feeding-data", str(data), "--work-dir", str(tmp_path / "work")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "1 of 1 checks passed" in proc.stdout, proc.stdout[-3000:]
    assert f"4 source videos in {data}" in proc.stdout
    assert not (tmp_path / "work" / "feeding" / "src").exists()  # nothing generated
    assert list(json.loads((tmp_path / "work" / "feeding.json").read_text())["results"]) == [
        "raw", "prepared h264", "prepared uint8"]
