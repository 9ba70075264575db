"""A decode that hangs (in C, holding the GIL, as decord can) or crashes is abandoned and reported, and
training goes on. The hang is real: a C `sleep` called through ctypes.PyDLL, which keeps the GIL, so
no thread or signal in the decoding process could interrupt it; only killing the decode child can."""
from __future__ import annotations

import ctypes
import gc
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_TRAIN_OVERRIDES
from videoft.config import load_config
from videoft.data import decode, watchdog
from videoft.data.dataset import decode_views
from videoft.data.decode import VideoDecodeError, VideoReader
from videoft.data.transforms import EvalPreset
from videoft.data.watchdog import DecodeProcess, GuardedReader
from videoft.engine.distributed import DistInfo
from videoft.recipe import FineTuneRecipe

REPO = Path(__file__).resolve().parents[2]
_real_get_frames = VideoReader.get_frames


def _misbehaving_get_frames(self, indices):
    """Hang (holding the GIL) on files named *hang*, crash on files named *crash*; decode the rest."""
    name = os.path.basename(self.path)
    if "hang" in name:
        ctypes.PyDLL(None).sleep(3600)  # C code that keeps the GIL for an hour
    if "crash" in name:
        os.kill(os.getpid(), signal.SIGSEGV)
    return _real_get_frames(self, indices)


@pytest.fixture
def misbehaving_decoder(monkeypatch):
    """Patched before any decode child is forked, so the children (and DataLoader workers) inherit it."""
    monkeypatch.setattr(decode.VideoReader, "get_frames", _misbehaving_get_frames)


@pytest.mark.parametrize("shared_bytes", [watchdog.SHARED_BYTES, 1])  # frames in shared memory / the pipe
def test_guarded_reader_gives_the_frames_videoreader_gives(lossless_video, shared_bytes, monkeypatch):
    monkeypatch.setattr(watchdog, "SHARED_BYTES", shared_bytes)
    process = DecodeProcess(30)
    try:
        guarded = process.open(lossless_video, short_side=32, backend="auto")
        direct = VideoReader(lossless_video, short_side=32)
        assert isinstance(guarded, GuardedReader)
        assert guarded.info == direct.info and guarded.backend == direct.backend == "decord"
        indices = [0, 7, 7, 29, 3]
        assert torch.equal(guarded.get_frames(indices), direct.get_frames(indices))
        with pytest.raises(ValueError, match="negative frame index"):  # a caller's bug comes back as itself
            guarded.get_frames([-1])
    finally:
        process.close()


@pytest.mark.parametrize("shared_bytes", [watchdog.SHARED_BYTES, 1])  # views in shared memory / the pipe
def test_evaluation_views_are_made_in_the_decode_child(lossy_video, shared_bytes, monkeypatch):
    """Under the time limit, an evaluation item's views are built where the frames are decoded: the views
    that come back equal those made in process, and no frames are fetched into the caller."""
    monkeypatch.setattr(watchdog, "SHARED_BYTES", shared_bytes)
    process = DecodeProcess(30)
    try:
        guarded = process.open(lossy_video, short_side=32, backend="auto")
        monkeypatch.setattr(GuardedReader, "get_frames", lambda *a: pytest.fail("frames fetched into the caller"))
        args = {"clip_len": 4, "stride": 2, "num_clips": 5, "transform": EvalPreset(crop_size=32, short_side=32)}
        views, clips = decode_views(guarded, **args)
        direct_views, direct_clips = decode_views(VideoReader(lossy_video, short_side=32), **args)
        assert views.shape == (5, 3, 4, 32, 32) and views.dtype == torch.uint8
        assert torch.equal(views, direct_views) and clips == direct_clips
        assert guarded.backend == "decord"
    finally:
        process.close()


def test_a_decord_reader_left_in_garbage_by_the_parent_does_not_hang_the_child(lossless_video):
    """A decord reader in a garbage cycle of the parent, inherited by the forked child: collecting it there
    would run its destructor, which joins a decoder thread the fork does not have (a hang). The child leaves
    what it inherited alone: a full collection in the child returns at once."""
    gc.collect()  # from here to the fork, too few allocations for an automatic collection in this process
    reader = VideoReader(lossless_video, backend="decord")
    reader.get_frames([0, 5])  # decord's decoder thread is running
    cycle = [reader]
    cycle.append(cycle)
    del reader, cycle  # garbage, not yet collected when the child is forked below
    process = DecodeProcess(10)
    try:
        assert process.call(lossless_video, gc.collect) >= 0  # hung for the 10 s limit before gc.freeze
    finally:
        process.close()
        gc.collect()


def test_a_decode_that_blocks_holding_the_gil_is_abandoned(tmp_path, lossless_video, misbehaving_decoder):
    hang = shutil.copy(lossless_video, tmp_path / "hang.mp4")
    process = DecodeProcess(1.5)
    try:
        reader = process.open(hang, short_side=None, backend="auto")  # opening works; decoding hangs
        start = time.monotonic()
        with pytest.raises(VideoDecodeError) as err:
            reader.get_frames([0, 1])
        assert 1.5 <= time.monotonic() - start < 10
        assert err.value.path == str(hang)
        assert err.value.reason == "opening or decoding took longer than 1.5 s (data.decode_timeout); abandoned"
        # the next video gets a fresh child
        assert process.open(lossless_video, short_side=None, backend="auto").get_frames([5]).shape == (1, 48, 64, 3)
    finally:
        process.close()


def test_a_decoder_crash_is_reported_not_fatal(tmp_path, lossless_video, misbehaving_decoder):
    crash = shutil.copy(lossless_video, tmp_path / "crash.mp4")
    process = DecodeProcess(30)
    try:
        with pytest.raises(VideoDecodeError, match=r"crash.mp4: the decoder crashed on this file \(killed by "
                                                   r"SIGSEGV\)"):
            process.open(crash, short_side=None, backend="auto").get_frames([0])
        assert process.open(lossless_video, short_side=None, backend="auto").get_frames([0]).shape[0] == 1
    finally:
        process.close()


_ORPHAN_SCRIPT = """
import ctypes, sys
from videoft.data import decode, watchdog
from videoft.data.watchdog import DecodeProcess
decode.VideoReader.get_frames = lambda self, indices: ctypes.PyDLL(None).sleep(3600)
process = DecodeProcess(3600)
reader = process.open(sys.argv[1], short_side=None, backend="auto")
print(process._pid, flush=True)
reader.get_frames([0])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux")
def test_a_hung_child_dies_with_its_parent(tmp_path, lossless_video):
    """A run that is killed while a decode hangs must not leave the hung child behind."""
    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(lossless_video)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    child = int(proc.stdout.readline())
    time.sleep(0.5)  # the child is now in its hour-long sleep
    assert _alive(child)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_copy_in_another_process_starts_its_own_child(lossless_video):
    process = DecodeProcess(30)
    try:
        process.open(lossless_video, short_side=None, backend="auto")
        clone = pickle.loads(pickle.dumps(process))  # what a spawned DataLoader worker gets
        assert clone.timeout == 30 and clone._pid is None and clone._conn is None
    finally:
        process.close()


def test_training_goes_on_past_a_hung_video(tmp_path, tiny_motion_dataset, misbehaving_decoder):
    """In the DataLoader worker (forked, so the hang is inherited), the hung video is abandoned after
    data.decode_timeout, reported with the reason, replaced by another video, and the run finishes."""
    data = tmp_path / "data"
    shutil.copytree(tiny_motion_dataset, data)
    hang = data / "train" / "spin" / "hang.mp4"
    shutil.copy(next((data / "train" / "spin").glob("*.mp4")), hang)
    out = tmp_path / "run"
    out.mkdir()
    cfg = load_config(REPO / "configs" / "demo.yaml",
                      [f"data.root={data}", f"out_dir={out}", *TINY_TRAIN_OVERRIDES, "data.num_workers=1",
                       "data.decode_timeout=2", "train.epochs=1", "data.batch_size=13"])
    before = torch.get_num_threads()
    recipe = FineTuneRecipe(cfg, DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu")), out)
    try:
        start = time.monotonic()
        recipe.setup()
        summary = recipe.fit()
        assert time.monotonic() - start < 120
    finally:
        torch.set_num_threads(before)
    assert summary["epochs_run"] == 1 and (out / "last.pt").is_file()
    skipped = json.loads((out / "skipped_videos.json").read_text())
    assert skipped == {str(hang): "opening or decoding took longer than 2 s (data.decode_timeout); abandoned"}
    assert recipe.state.history[0]["train_acc"] >= 0  # the epoch's 13 clips were trained on
