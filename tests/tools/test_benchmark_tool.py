"""tools/benchmark.py --quick: every figure of the suite is produced, with its ratio, in the table and in
benchmark.json (no timing is asserted: the machine's speed is not the code's)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_suite_produces_every_figure(tmp_path):
    out = tmp_path / "benchmark.json"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "benchmark.py"), "--quick", "--out", str(out),
                           "--work", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    names = [f["figure"] for f in result["figures"]]
    for dataset in ("320x240 GOP 16", "1280x720 GOP 16"):
        for figure in ("training sampling vs pytorchvideo", "training sampling vs decode lower bound",
                       "training sampling, 2 clips per video decode (data.train_clips=2) vs 1",
                       "10-clip eval sampling vs pytorchvideo", *(f"prepared {fmt} vs raw, training sampling"
                                                                  for fmt in ("h264", "mjpeg", "jpeg", "uint8"))):
            assert f"{dataset}: {figure}" in names
    for needle in ("worker USS, training vs pytorchvideo", "worker USS, 10-clip eval vs training",
                   "worker USS growth", "end to end (raw) vs compute only", "end to end (prepared h264)",
                   "CPU step format auto",
                   "frozen (all but last stage + head) vs full training step"):
        assert any(needle in n for n in names), needle
    for f in result["figures"]:
        assert math.isfinite(f["ratio"]) and f["ratio"] > 0, f
        assert f["figure"] in proc.stdout  # the table shows it
    assert all(f["disk_ratio"] > 0 for f in result["figures"] if "vs raw" in f["figure"])
    assert all(f["rss_gb"] > 0 for f in result["figures"] if "worker USS," in f["figure"])
    assert proc.stdout.splitlines()[0].split()[0] == "ratio"  # ratios first
