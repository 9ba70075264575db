"""Atomic checkpoint writes and weights_only loads."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from videoft.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from videoft.errors import CheckpointError


def test_round_trip_with_weights_only(tmp_path):
    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "classes": ["a", "b"], "epoch": 3,
             "config": {"data": {"root": "x", "clip_len": None}}, "rng": rng_state()}
    save_checkpoint(state, tmp_path / "ck.pt")
    loaded = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["classes"] == ["a", "b"] and loaded["config"] == state["config"]
    assert not [p for p in tmp_path.iterdir() if p.name != "ck.pt"], "temp file left behind"


def test_rng_state_restores_every_generator(tmp_path):
    import random

    import numpy as np

    save_checkpoint({"model": {}, "rng": rng_state()}, tmp_path / "ck.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(load_checkpoint(tmp_path / "ck.pt")["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}}, path)

    def exploding_save(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(OSError):
        save_checkpoint({"model": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_sigkill_during_writes_never_leaves_a_torn_file(tmp_path):
    """A process killed at a random moment while rewriting a 40 MB checkpoint in a loop."""
    path = tmp_path / "last.pt"
    script = textwrap.dedent(f"""
        import torch
        from videoft.engine.checkpoint import save_checkpoint
        i = 0
        while True:
            save_checkpoint({{"model": {{"w": torch.full((10_000_000,), float(i))}}, "step": i}}, {str(path)!r})
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.7)  # somewhere in the middle of a later write
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    state = load_checkpoint(path)
    assert torch.all(state["model"]["w"] == state["step"])


def test_load_rejects_non_checkpoints(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x00\x01junk")
    with pytest.raises(ValueError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a videoft checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
