"""datasets/hmdb51.py, ucf_sports.py and kinetics.py on fake copies of each dataset's layout: the real
file names and split formats, a few tiny real videos."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from videoft.data.decode import VideoReader, probe

from .conftest import avi_bytes, load_recipe, needs_rar_tool, zip_bytes
from .rar4 import rar4_bytes, write_rar4


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------- HMDB51

HMDB = {  # class -> [(video name as in HMDB51, tag in split 1, 2, 3)]
    "brush_hair": [("April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "112"),
                   ("Blonde_being_brushed_f_nm_np2_ri_med_1.avi", "221"),
                   ("Aussie_Brushing!_brush_hair_h_cm_np1_le_goo_2.avi", "010")],
    "golf": [("Golf_Swing_(Iron)_golf_f_cm_np1_fr_med_0.avi", "120"), ("golf_drive_golf_u_cm_np1_ba_goo_3.avi", "212"),
             ("Tiger_&_Phil_golf_f_cm_np2_le_bad_1.avi", "001")],
}


def fake_hmdb51(root: Path) -> None:
    """hmdb51_org.rar (one RAR per class inside) and test_train_splits.rar, as published."""
    inner = {f"{cls}.rar": rar4_bytes({cls: None, **{f"{cls}/{name}": avi_bytes(4) for name, _ in videos}})
             for cls, videos in HMDB.items()}
    write_rar4(root / "hmdb51_org.rar", inner)
    splits: dict[str, bytes | None] = {"testTrainMulti_7030_splits": None}
    for cls, videos in HMDB.items():
        for k in (1, 2, 3):
            splits[f"testTrainMulti_7030_splits/{cls}_test_split{k}.txt"] = \
                "".join(f"{name} {tags[k - 1]} \n" for name, tags in videos).encode()  # the trailing space is real
    write_rar4(root / "test_train_splits.rar", splits)


@needs_rar_tool
def test_hmdb51_splits_from_the_archives(tmp_path, monkeypatch, capsys):
    fake_hmdb51(tmp_path)
    recipe = load_recipe("hmdb51")
    monkeypatch.setattr(recipe, "VIDEOS_MD5", None)  # the fakes are not the published files
    monkeypatch.setattr(recipe, "SPLITS_MD5", None)
    assert recipe.main(["--out", str(tmp_path)]) == 0
    lists = tmp_path / "lists"
    assert (lists / "classes.txt").read_text().split() == ["brush_hair", "golf"]
    for k in (1, 2, 3):
        for kind, tag in (("train", "1"), ("test", "2")):
            got = sorted((Path(r["path"]).name, r["label"]) for r in rows(lists / f"{kind}_split{k}.csv"))
            want = sorted((name, cls) for cls, videos in HMDB.items() for name, tags in videos if tags[k - 1] == tag)
            assert got == want, (kind, k)  # tag 0: in neither list
    for r in rows(lists / "train_split1.csv"):
        assert probe(lists / r["path"]).num_frames == 4  # the odd names (!, &, parentheses) survive
    capsys.readouterr()
    assert recipe.main(["--out", str(tmp_path)]) == 0  # idempotent
    assert capsys.readouterr().err.count("already extracted") == 1 + 1 + len(HMDB)


def test_hmdb51_checks_the_published_md5(tmp_path, capsys):
    (tmp_path / "test_train_splits.rar").write_bytes(rar4_bytes({"x.txt": b"x"}))
    assert load_recipe("hmdb51").main(["--out", str(tmp_path)]) == 2
    assert "is not the published 15e67781e70dcfbdce2d7dbb9b3344b5" in capsys.readouterr().err


def test_hmdb51_bad_split_line_is_named(tmp_path):
    recipe = load_recipe("hmdb51")
    (tmp_path / "golf_test_split1.txt").write_text("a.avi 1\nb.avi 7\n")
    with pytest.raises(recipe.FetchError, match=r"golf_test_split1\.txt:2: expected"):
        recipe.read_splits(tmp_path)


# ---------------------------------------------------------------------------------------------- UCF Sports

def jpeg(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((24, 33, 3), value, np.uint8)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def fake_ucf_sports(root: Path) -> Path:
    base = "ucf_sports_actions/ucf action"
    entries: dict[str, bytes | None] = {}
    for folder, seqs in {"Diving-Side": 3, "Golf-Swing-Back": 2, "Golf-Swing-Front": 1, "Kicking-Side": 3,
                         "Walk-Front": 3}.items():
        for n in range(1, seqs + 1):
            seq = f"{base}/{folder}/{n:03d}"
            if folder != "Golf-Swing-Back":  # Golf-Swing-Back comes as JPEG frames only, as in the real archive
                entries[f"{seq}/{7600 + n}-5_70{n:03d}.avi"] = avi_bytes(5)
            for t in range(4):
                entries[f"{seq}/{7600 + n}-5_70{n:03d}{t:03d}.jpg"] = jpeg(40 * t)
            entries[f"{seq}/gt/{7600 + n}-5_70{n:03d}000.tif.txt"] = b"10\t10\t20\t20\n"
    entries[f"{base}/Kicking-Side/003/broken.avi"] = b"not a video"  # unreadable avi: its JPEGs are used
    del entries[f"{base}/Kicking-Side/003/7603-5_70003.avi"]
    (root / "ucf_sports_actions.zip").write_bytes(zip_bytes(entries))
    return root / "ucf_sports_actions.zip"


def test_ucf_sports_one_video_per_sequence_and_a_seeded_split(tmp_path, capsys):
    fake_ucf_sports(tmp_path)
    recipe = load_recipe("ucf_sports")
    assert recipe.main(["--out", str(tmp_path), "--test-fraction", "0.34"]) == 0
    every = rows(tmp_path / "lists" / "all.csv")
    assert len(every) == 12
    labels = sorted({r["label"] for r in every})
    assert labels == ["Diving", "Golf-Swing", "Kicking", "Walking"]  # the 10-action names, views merged
    encoded = sorted(r["path"] for r in every if r["path"].endswith(".mp4"))
    assert encoded == ["../videos/Golf-Swing-Back_001.mp4", "../videos/Golf-Swing-Back_002.mp4",
                       "../videos/Kicking-Side_003.mp4"]
    reader = VideoReader(tmp_path / "lists" / encoded[0], backend="pyav")
    assert reader.info.num_frames == 4 and reader.info.fps == pytest.approx(10)
    values = reader.get_frames([0, 1, 2, 3])[:, 12, 16, 0].tolist()
    assert values == pytest.approx([0, 40, 80, 120], abs=6)  # the JPEGs, in order
    train, test = rows(tmp_path / "lists" / "train.csv"), rows(tmp_path / "lists" / "test.csv")
    assert sorted(r["path"] for r in train + test) == sorted(r["path"] for r in every)
    assert {r["label"] for r in test} == set(labels)  # a third of each class (rounded)
    mtime = (tmp_path / "videos" / "Golf-Swing-Back_001.mp4").stat().st_mtime_ns
    assert recipe.main(["--out", str(tmp_path), "--test-fraction", "0.34"]) == 0
    assert (tmp_path / "videos" / "Golf-Swing-Back_001.mp4").stat().st_mtime_ns == mtime  # not encoded again
    assert rows(tmp_path / "lists" / "test.csv") == test


def test_ucf_sports_views_and_a_test_list(tmp_path):
    fake_ucf_sports(tmp_path)
    (tmp_path / "lan.txt").write_text("Diving-Side/001\nWalk-Front/003\n")
    recipe = load_recipe("ucf_sports")
    assert recipe.main(["--out", str(tmp_path), "--labels", "views", "--test-list", str(tmp_path / "lan.txt")]) == 0
    test = rows(tmp_path / "lists" / "test.csv")
    assert [r["label"] for r in test] == ["Diving-Side", "Walk-Front"]
    assert "Golf-Swing-Back" in {r["label"] for r in rows(tmp_path / "lists" / "train.csv")}
    (tmp_path / "bad.txt").write_text("Curling/001\n")
    assert recipe.main(["--out", str(tmp_path), "--test-list", str(tmp_path / "bad.txt")]) == 2


# ---------------------------------------------------------------------------------------------- Kinetics

def test_kinetics_csvs_and_downloaded_clips(tmp_path, capsys):
    (tmp_path / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "playing basketball,abc123DEF_-,14,24,train\n"
        "playing basketball,zzz999yyy00,0,10,train\n"   # never downloaded
        "dunking basketball,Q-q_q-Q_q-q,120,130,train\n"
        "juggling soccer ball,soccerOnly1,3,13,train\n")
    (tmp_path / "validate.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nplaying basketball,val0000000A,5,15,validate\n")
    clips = tmp_path / "k400"
    (clips / "train" / "playing basketball").mkdir(parents=True)
    (clips / "train" / "playing basketball" / "abc123DEF_-_000014_000024.mp4").write_bytes(avi_bytes(3))
    (clips / "elsewhere").mkdir()
    (clips / "elsewhere" / "Q-q_q-Q_q-q.mkv").write_bytes(avi_bytes(3))      # named by the id only
    (clips / "elsewhere" / "soccerOnly1_000003_000013.webm").write_bytes(avi_bytes(3))
    (clips / "val0000000A_000005_000015.mp4").write_bytes(avi_bytes(3))
    (tmp_path / "classes.txt").write_text("playing basketball\ndunking basketball\n")
    recipe = load_recipe("kinetics")
    out = tmp_path / "lists"
    assert recipe.main(["--csv", str(tmp_path / "train.csv"), "--csv", str(tmp_path / "validate.csv"),
                        "--videos", str(clips), "--out", str(out), "--classes", str(tmp_path / "classes.txt")]) == 0
    train = rows(out / "train.csv")
    assert sorted((Path(r["path"]).name, r["label"]) for r in train) == [
        ("Q-q_q-Q_q-q.mkv", "dunking basketball"), ("abc123DEF_-_000014_000024.mp4", "playing basketball")]
    assert [Path(r["path"]).name for r in rows(out / "val.csv")] == ["val0000000A_000005_000015.mp4"]
    assert (out / "missing_train.txt").read_text() == "zzz999yyy00_000000_000010\n"
    assert "train.csv: 2 clips, 2 classes; 1 of 3 rows have no clip" in capsys.readouterr().out
    (tmp_path / "bad.csv").write_text("label,youtube_id,time_start,time_end,split\nx,y,0,10,holdout\n")
    assert recipe.main(["--csv", str(tmp_path / "bad.csv"), "--videos", str(clips), "--out", str(out)]) == 2
    assert "bad.csv:2: split 'holdout'" in capsys.readouterr().err
