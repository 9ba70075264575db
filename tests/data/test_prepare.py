"""tools/prepare.py: each format reads back with the same frames and numbering, training reads the copy with
only data.root changed, reruns skip what is done and redo what changed, bad files are listed, never fatal."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import constant_frames, frame_value, write_test_video
from videoft.data.audit import inspect_video
from videoft.data.dataset import load_splits, read_list_file
from videoft.data.decode import VideoDecodeError, VideoReader, probe
from videoft.data.prepare import PrepareParams
from videoft.data.prepare_dataset import prepare_dataset, rewrite_list
from videoft.data.prepared import MANIFEST_NAME, read_preparation

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Two classes of lossless 64x48 videos (frame t filled with frame_value(t)), a list file, a broken file."""
    root = tmp_path_factory.mktemp("src")
    for k, name in enumerate(("jump", "run")):
        for i in range(3):
            frames = constant_frames(24 + 2 * i, 64, 48, 40 * k)
            write_test_video(root / name / f"v_{name}_g{i + 1:02d}_c01.mp4", frames)
    (root / "trainlist.txt").write_text("jump/v_jump_g01_c01.mp4 jump\nrun/v_run_g01_c01.mp4 run 0.08 0.4\n")
    (root / "classInd.txt").write_text("1 jump\n2 run\n")
    return root


@pytest.mark.parametrize("fmt", ["h264", "mjpeg", "jpeg", "uint8"])
def test_each_format_keeps_frames_numbering_and_layout(source, tmp_path, fmt):
    bad = source.parent / f"bad_{fmt}"
    bad.mkdir()
    dst = tmp_path / fmt
    summary = prepare_dataset(source, dst, PrepareParams(format=fmt, short_side=32), workers=2, show_progress=False)
    assert len(summary.converted) == 6 and not summary.failed
    assert summary.lists == ["trainlist.txt"] and (dst / "classInd.txt").read_text() == "1 jump\n2 run\n"
    splits, classes = load_splits(dst, val_fraction=0.34)
    assert classes == ["jump", "run"] and sum(map(len, splits.values())) == 6
    manifest = json.loads((dst / MANIFEST_NAME).read_text())
    entry = manifest["videos"]["run/v_run_g02_c01.mp4"]
    assert entry["output_info"]["num_frames"] == entry["source_info"]["num_frames"] == 26
    assert (entry["output_info"]["width"], entry["output_info"]["height"]) == (42, 32)
    reader = VideoReader(dst / entry["output"])
    assert reader.info.num_frames == 26 and reader.info.fps == pytest.approx(25) and reader.backend != "pyav"
    frames = reader.get_frames([0, 25, 7])  # frame numbers unchanged: frame t still holds frame_value(t)
    assert frames.shape == (3, 32, 42, 3)
    expected = torch.tensor([frame_value(t) + 40 for t in (0, 25, 7)], dtype=torch.float32)
    tolerance = 0.6 if fmt == "uint8" else 4.0  # lossless H.264 source, resized; lossy formats a few levels
    assert torch.allclose(frames.float().mean(dim=(1, 2, 3)), expected, atol=tolerance)
    rows = read_list_file(dst / "trainlist.txt")  # the list names the copies; the span is kept as written
    assert [Path(r[0]).relative_to(dst).as_posix() for r in rows] == [
        entry["output"].replace("run/v_run_g02", "jump/v_jump_g01"), entry["output"].replace("g02", "g01")]
    assert rows[1][2] is not None and rows[0][2] is None
    assert read_preparation(dst)["format"] == fmt and read_preparation(source) == {}
    audit = inspect_video(str(dst / entry["output"]), 32, full=True)  # data.audit reads the copies too
    assert audit["frames_decodable"] == 26 and audit["container"] == ("frames" if fmt in ("jpeg", "uint8") else
                                                                      audit["container"])


def test_rerun_skips_done_redoes_changed_and_lists_failures(source, tmp_path):
    src = tmp_path / "src"
    for path in source.rglob("*.mp4"):
        (src / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
        (src / path.relative_to(source)).write_bytes(path.read_bytes())
    (src / "run" / "broken.mp4").write_bytes(b"not a video at all")
    dst = tmp_path / "dst"
    first = prepare_dataset(src, dst, PrepareParams(short_side=32), workers=1, show_progress=False)
    assert len(first.converted) == 6 and list(first.failed) == ["run/broken.mp4"]
    assert "not a readable video" in first.failed["run/broken.mp4"]
    assert not (dst / "run" / "broken.mp4").exists()
    again = prepare_dataset(src, dst, PrepareParams(short_side=32), workers=1, show_progress=False)
    assert again.converted == [] and len(again.skipped) == 6
    changed = src / "jump" / "v_jump_g01_c01.mp4"
    write_test_video(changed, constant_frames(12, 64, 48))
    third = prepare_dataset(src, dst, PrepareParams(short_side=32), workers=1, show_progress=False)
    assert third.converted == ["jump/v_jump_g01_c01.mp4"]
    assert probe(dst / "jump" / "v_jump_g01_c01.mp4").num_frames == 12
    other = prepare_dataset(src, dst, PrepareParams(short_side=32, gop=8), workers=1, show_progress=False)
    assert len(other.converted) == 6  # new parameters: everything is redone


def test_frame_folder_errors_name_the_folder(tmp_path):
    folder = tmp_path / "v.frames"
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({"format": "uint8", "num_frames": 4, "fps": 25, "width": 8,
                                                  "height": 6}))
    (folder / "frames.u8").write_bytes(bytes(4 * 6 * 8 * 3 - 1))
    with pytest.raises(VideoDecodeError, match=r"v\.frames: prepared frame folder: frames\.u8 is missing or not"):
        VideoReader(folder)
    (folder / "meta.json").write_text(json.dumps({"format": "jpeg", "num_frames": 4, "fps": 25, "width": 8,
                                                  "height": 6}))
    with pytest.raises(VideoDecodeError, match="frame 2 cannot be read"):
        VideoReader(folder).get_frames([2])


def test_rewrite_list_handles_csv_and_absolute_paths(tmp_path):
    text = "path,label,start,end\n/src/a/x.avi,a,1,2\nb/y.avi,b,0,3\nunknown.avi,a,0,1\n"
    out, changed = rewrite_list(text, {"a/x.avi": "a/x.mp4", "b/y.avi": "b/y.mp4"}, "/src", "/dst")
    assert changed and out.splitlines() == ["path,label,start,end", "/dst/a/x.mp4,a,1,2", "b/y.mp4,b,0,3",
                                            "unknown.avi,a,0,1"]


def test_tool_exit_code_and_summary(source, tmp_path, capsys):
    sys.path.insert(0, str(REPO / "tools"))
    import prepare as tool

    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "v.mp4").write_bytes((source / "jump" / "v_jump_g01_c01.mp4").read_bytes())
    (src / "a" / "w.avi").write_bytes(b"\0" * 64)
    assert tool.main([str(src), str(tmp_path / "out"), "--short-side", "32", "--workers", "1", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "prepared 1 videos" in out and "1 videos failed" in out and "a/w.avi" in out
    assert tool.main([str(src), str(tmp_path / "out2"), "--short-side", "31"]) == 2  # odd: 4:2:0 H.264 cannot
    assert "short_side 31 must be" in capsys.readouterr().err
    assert (tmp_path / "out" / "a" / "v.mp4").is_file()


def test_training_reads_a_prepared_copy_with_only_data_root_changed(tmp_path, tiny_motion_dataset):
    from tests.test_recipe import make_recipe
    from videoft.checkpoint import read_run_checkpoint

    dst = tmp_path / "prepared"
    summary = prepare_dataset(tiny_motion_dataset, dst, PrepareParams(format="uint8", short_side=36), workers=2,
                              show_progress=False)
    assert not summary.failed
    (tmp_path / "raw").mkdir()
    raw = make_recipe(tmp_path / "raw", tiny_motion_dataset)
    raw.setup_runtime()
    raw.setup_data()
    recipe = make_recipe(tmp_path, dst, "train.epochs=1", "train.max_steps_per_epoch=1")
    recipe.setup()

    def names(splits, root):
        return {k: [(Path(s.path).relative_to(root).with_suffix(""), s.label) for s in v] for k, v in splits.items()}
    assert names(recipe.splits, dst) == names(raw.splits, tiny_motion_dataset)  # same videos, same splits
    recipe.fit()
    ckpt = read_run_checkpoint(recipe.out_dir / "last.pt")
    assert ckpt.preparation["format"] == "uint8" and ckpt.preparation["short_side"] == 36
    assert ckpt.preparation["source"] == str(tiny_motion_dataset.resolve())
