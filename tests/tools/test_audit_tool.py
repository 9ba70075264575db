"""tools/audit.py and `data.audit: true`: every video probed with the training decoders, in parallel and
under a time limit, cached by size and mtime; the table, the quarantine and the files it writes."""
from __future__ import annotations

import csv
import ctypes
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_TRAIN_OVERRIDES, textured_frames, write_test_video
from tests.data.test_rotation import write_rotated
from videoft.config import load_config
from videoft.data import decode
from videoft.engine.distributed import DistInfo
from videoft.recipe import FineTuneRecipe

from .tool_helpers import REPO, load_tool

_real_get_frames = decode.VideoReader.get_frames


def _hanging_get_frames(self, indices):
    if "hang" in os.path.basename(self.path):
        ctypes.PyDLL(None).sleep(3600)  # a decode stuck in C, holding the GIL
    return _real_get_frames(self, indices)


@pytest.fixture
def messy_data(tmp_path) -> Path:
    """alpha: 3 good videos; bravo: 2 good, a 5-frame one (shorter than a 4x2 clip), one rotated 90 degrees (6 frames),
    a truncated one decord refuses (PyAV decodes what is there), a text file, an empty file, a symlink loop
    and one whose decode hangs (with the patch below)."""
    root = tmp_path / "data"
    frames = textured_frames(30, 64, 48)
    for name in ("a1", "a2", "a3"):
        write_test_video(root / "alpha" / f"{name}.mp4", frames, lossless=False)
    for name in ("b1", "b2", "hang"):
        write_test_video(root / "bravo" / f"{name}.mp4", frames, lossless=False)
    write_test_video(root / "bravo" / "short.mp4", frames[:5], lossless=False)
    write_rotated(root / "bravo" / "phone.mp4", 90)  # 6 frames: also too short
    full = write_test_video(tmp_path / "full.mp4", textured_frames(60, 64, 48), faststart=True)
    (root / "bravo" / "truncated.mp4").write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.7)])
    (root / "bravo" / "notes.mp4").write_text("not a video")
    (root / "bravo" / "empty.mp4").write_bytes(b"")
    (root / "bravo" / "loop.mp4").symlink_to("loop.mp4")
    return root


@pytest.fixture
def hanging_decoder(monkeypatch):
    monkeypatch.setattr(decode.VideoReader, "get_frames", _hanging_get_frames)


def test_audit_table_quarantine_and_files(tmp_path, messy_data, hanging_decoder, capsys):
    audit = load_tool("audit")
    out, cache = tmp_path / "audit", tmp_path / "cache.json"
    args = [str(messy_data), "--clip-len", "4", "--stride", "2", "--out", str(out), "--cache", str(cache),
            "--workers", "2", "--timeout", "3", "--short-side", "32"]
    assert audit.main(args) == 1  # files were quarantined
    text = capsys.readouterr().out
    b = messy_data / "bravo"
    assert "12 videos in " in text and "(12 probed, 0 from the cache), clip 4x2 = 7 frames" in text
    table = text[text.index("class "):text.index("\n\n", text.index("class "))].splitlines()
    assert table == [
        "class  videos   hours  too short  unreadable  needs fallback  rotated",
        "alpha       3    0.00          0           0               0        0",
        "bravo       9    0.00          2           4               1        1",
        "total      12    0.00          2           4               1        1"]
    assert f"\nquarantine: 4 file(s) (left out of training with data.audit=true)\n" \
           f"  {b / 'empty.mp4'}: file is empty (0 bytes)\n" \
           f"  {b / 'hang.mp4'}: opening or decoding took longer than 3 s (data.decode_timeout); abandoned\n" \
           f"  {b / 'loop.mp4'}: symbolic link loop (following its links never reaches a file)\n" \
           f"  {b / 'notes.mp4'}: not a readable video (" in text
    assert "1 video(s) whose header claims another frame count than decodes" in text

    report = json.loads((out / "audit.json").read_text())
    videos = {Path(v["path"]).name: v for v in report["videos"]}
    assert videos["a1.mp4"] | {"size_bytes": 0} == {
        "class": "alpha", "path": str(messy_data / "alpha" / "a1.mp4"), "split": "train", "size_bytes": 0,
        "container": "mov,mp4,m4a,3gp,3g2,mj2", "codec": "h264", "width": 64, "height": 48, "fps": 25.0,
        "rotation": 0, "frames_claimed": 30, "frames_decodable": 30, "duration_s": 1.2, "decoder": "decord",
        "needs_fallback": False, "error": "", "too_short": False, "quarantined": False}
    assert videos["phone.mp4"]["rotation"] == 90 and (videos["phone.mp4"]["width"], videos["phone.mp4"]["height"]) \
        == (48, 64) and videos["phone.mp4"]["decoder"] == "pyav" and not videos["phone.mp4"]["needs_fallback"]
    truncated = videos["truncated.mp4"]
    assert truncated["needs_fallback"] and truncated["decoder"] == "pyav"
    assert truncated["frames_claimed"] == 60 and 0 < truncated["frames_decodable"] < 60
    assert videos["short.mp4"]["too_short"] and not videos["short.mp4"]["quarantined"]
    assert [q["path"] for q in report["quarantine"]] == [str(b / n) for n in ("empty.mp4", "hang.mp4", "loop.mp4",
                                                                              "notes.mp4")]
    with open(out / "audit.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and rows[0].keys() == videos["a1.mp4"].keys()
    assert (out / "quarantine.txt").read_text().count("\n") == 4

    # the second audit probes only what the cache cannot vouch for: files that do not stat (the loop)
    # and timeouts (a busy machine is not a broken file); a changed file is probed again
    os.utime(messy_data / "alpha" / "a2.mp4", ns=(1, 1))
    assert audit.main(args) == 1
    assert "12 videos in " in (again := capsys.readouterr().out) and "(3 probed, 9 from the cache)" in again


def test_data_audit_leaves_quarantined_files_out_of_training(tmp_path, messy_data, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("hang.mp4", "loop.mp4"):  # covered above; keep this run quick
        (messy_data / "bravo" / name).unlink()
    out = tmp_path / "run"
    out.mkdir()
    cfg = load_config(REPO / "configs" / "demo.yaml",
                      [f"data.root={messy_data}", f"out_dir={out}", *TINY_TRAIN_OVERRIDES, "data.audit=true",
                       "train.epochs=1", "train.max_steps_per_epoch=1", "data.val_fraction=0",
                       "train.precise_bn_batches=0"])
    before = torch.get_num_threads()
    recipe = FineTuneRecipe(cfg, DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu")), out)
    try:
        recipe.setup()
        recipe.fit()
    finally:
        torch.set_num_threads(before)
    kept = {Path(s.path).name for s in recipe.splits["train"]}
    assert kept == {"a1.mp4", "a2.mp4", "a3.mp4", "b1.mp4", "b2.mp4", "short.mp4", "phone.mp4", "truncated.mp4"}
    skipped = json.loads((out / "skipped_videos.json").read_text())
    assert skipped == {str(messy_data / "bravo" / "empty.mp4"): "quarantined by data.audit: file is empty (0 bytes)",
                       str(messy_data / "bravo" / "notes.mp4"): skipped[str(messy_data / "bravo" / "notes.mp4")]}
    assert skipped[str(messy_data / "bravo" / "notes.mp4")].startswith("quarantined by data.audit: not a readable")
    assert json.loads((out / "audit" / "audit.json").read_text())["classes"][-1]["unreadable"] == 2
    assert list((tmp_path / "cache" / "videoft" / "audit").glob("*.json"))  # cached for the next run
    shutil.rmtree(out)
