"""datasets/ucf101.py on a fake copy of UCF101's archives: the real names and split-file formats, a few
tiny real AVIs, the three official splits (groups 1-7 / 8-14 / 15-21 are the test groups)."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from videoft.data.dataset import load_splits
from videoft.data.decode import probe

from .conftest import DATASETS, avi_bytes, load_recipe, needs_rar_tool, zip_bytes
from .rar4 import write_rar4

# two sports classes, one that is not, and the class whose files and lists disagree on case
CLASSES = {"Archery": "Archery", "ApplyEyeMakeup": "ApplyEyeMakeup", "Basketball": "Basketball",
           "HandstandPushups": "HandStandPushups"}
GROUPS = (1, 8, 15, 22)  # one test group of each split, and one always in train


def test_class_lists_are_complete_and_consistent():
    all101 = load_recipe("fetch").read_class_list(DATASETS / "ucf101_classes.txt")
    sports = load_recipe("fetch").read_class_list(DATASETS / "ucf101_sports.txt")
    assert len(all101) == len(set(all101)) == 101
    assert len(sports) == len(set(sports)) == 50 and set(sports) <= set(all101)
    named_in_issue = {"Archery", "BalanceBeam", "BaseballPitch", "Basketball", "BasketballDunk", "BenchPress",
                      "Biking", "Billiards", "Bowling", "BoxingPunchingBag", "BoxingSpeedBag", "Diving", "Fencing",
                      "GolfSwing", "HighJump", "HorseRace", "HorseRiding", "JavelinThrow", "LongJump", "PoleVault",
                      "Rowing", "Shotput", "SkyDiving", "SoccerJuggling", "SoccerPenalty", "SumoWrestling",
                      "Surfing", "TennisSwing", "ThrowDiscus", "VolleyballSpiking"}
    assert named_in_issue <= set(sports)
    header = (DATASETS / "ucf101_sports.txt").read_text().split("\n\n")[0]
    for excluded in set(all101) - set(sports) - {"ApplyEyeMakeup"}:  # every sport-like exclusion is explained
        if excluded in ("PullUps", "PushUps", "Rafting", "Skijet", "TrampolineJumping", "FrisbeeCatch"):
            assert excluded in header, excluded


def fake_ucf101(root: Path) -> tuple[Path, Path]:
    """UCF101.rar (RAR 4, stored) and UCF101TrainTestSplits-RecognitionTask.zip in the official layout."""
    video = avi_bytes()
    entries: dict[str, bytes | None] = {"UCF-101": None}
    for folder, stem in CLASSES.items():
        entries[f"UCF-101/{folder}"] = None
        for g in GROUPS:
            for c in (1, 2):
                entries[f"UCF-101/{folder}/v_{stem}_g{g:02d}_c{c:02d}.avi"] = video
    all101 = (DATASETS / "ucf101_classes.txt").read_text().split()
    splits: dict[str, bytes | None] = {
        "ucfTrainTestlist/": None,
        "ucfTrainTestlist/classInd.txt": "".join(f"{i} {c}\r\n" for i, c in enumerate(all101, 1)).encode()}
    for k, test_groups in ((1, range(1, 8)), (2, range(8, 15)), (3, range(15, 22))):
        train, test = [], []
        for folder, stem in CLASSES.items():
            listed = "HandstandPushups/v_HandstandPushups" if stem == "HandStandPushups" else f"{folder}/v_{stem}"
            for g in GROUPS:
                for c in (1, 2):
                    name = f"{listed}_g{g:02d}_c{c:02d}.avi"
                    if g in test_groups:
                        test.append(f"{name}\r\n")
                    else:
                        train.append(f"{name} {all101.index(folder) + 1}\r\n")
        splits[f"ucfTrainTestlist/trainlist0{k}.txt"] = "".join(train).encode()
        splits[f"ucfTrainTestlist/testlist0{k}.txt"] = "".join(test).encode()
    rar = write_rar4(root / "UCF101.rar", entries)
    (root / "UCF101TrainTestSplits-RecognitionTask.zip").write_bytes(zip_bytes(splits))
    return rar, root / "UCF101TrainTestSplits-RecognitionTask.zip"


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@needs_rar_tool
def test_sports_subset_from_the_archives_all_three_splits(tmp_path, capsys):
    fake_ucf101(tmp_path)
    recipe = load_recipe("ucf101")
    assert recipe.main(["--out", str(tmp_path), "--subset", "sports"]) == 0
    lists = tmp_path / "lists" / "sports"
    assert (lists / "classes.txt").read_text().split() == ["Archery", "Basketball"]
    for k, test_group in ((1, 1), (2, 8), (3, 15)):
        test, train = rows(lists / f"test_split{k}.csv"), rows(lists / f"train_split{k}.csv")
        assert {r["label"] for r in test} == {r["label"] for r in train} == {"Archery", "Basketball"}
        assert {r["path"].split("_g")[1][:2] for r in test} == {f"{test_group:02d}"}
        assert len(test) == 2 * 2 and len(train) == 2 * 6
        for r in test + train:
            path = (lists / r["path"]).resolve()
            assert path.is_file() and path.parent.name == r["label"] and probe(path).num_frames == 6
    splits, classes = load_splits(lists / "train_split1.csv", val_fraction=0.3, seed=0)
    assert classes == ["Archery", "Basketball"] and sum(map(len, splits.values())) == 12
    assert "train_split1.csv: 12 videos, 2 classes" in capsys.readouterr().out


@needs_rar_tool
def test_idempotent_and_all_classes(tmp_path, capsys):
    fake_ucf101(tmp_path)
    recipe = load_recipe("ucf101")
    assert recipe.main(["--out", str(tmp_path), "--subset", "all"]) == 0
    first = {p.name: p.read_bytes() for p in (tmp_path / "lists" / "all").iterdir()}
    capsys.readouterr()
    assert recipe.main(["--out", str(tmp_path), "--subset", "all"]) == 0
    err = capsys.readouterr().err
    assert "UCF101.rar: already extracted" in err and "RecognitionTask.zip: already extracted" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "lists" / "all").iterdir()} == first
    test1 = rows(tmp_path / "lists" / "all" / "test_split1.csv")
    assert {r["label"] for r in test1} == set(CLASSES)
    # listed as v_HandstandPushups, stored as v_HandStandPushups: found case-insensitively
    assert sum(r["label"] == "HandstandPushups" for r in test1) == 2


def test_extracted_folders_and_a_custom_class_list(tmp_path, capsys):
    """--videos / --splits-dir: folders someone already extracted (no archive, no RAR tool needed)."""
    videos = tmp_path / "UCF-101"
    for folder, stem in CLASSES.items():
        for g in GROUPS:
            (videos / folder).mkdir(parents=True, exist_ok=True)
            (videos / folder / f"v_{stem}_g{g:02d}_c01.avi").write_bytes(avi_bytes(3))
    splits = tmp_path / "ucfTrainTestlist"
    splits.mkdir()
    (splits / "classInd.txt").write_text("1 Archery\n2 Basketball\n3 ApplyEyeMakeup\n4 HandstandPushups\n")
    for k in (1, 2, 3):
        (splits / f"trainlist0{k}.txt").write_text(
            "Archery/v_Archery_g22_c01.avi 1\nBasketball/v_Basketball_g22_c01.avi 2\n")
        (splits / f"testlist0{k}.txt").write_text("Archery/v_Archery_g01_c01.avi\nArchery/v_Archery_g09_c09.avi\n")
    (tmp_path / "mine.txt").write_text("# my classes\nArchery\n")
    recipe = load_recipe("ucf101")
    assert recipe.main(["--out", str(tmp_path / "out"), "--videos", str(videos), "--splits-dir", str(splits),
                        "--subset", str(tmp_path / "mine.txt")]) == 0
    out = capsys.readouterr().out
    assert "test_split1.csv: 1 videos, 1 classes; 1 listed but missing (first: Archery/v_Archery_g09_c09.avi)" in out
    assert [r["label"] for r in rows(tmp_path / "out" / "lists" / "mine" / "train_split2.csv")] == ["Archery"]
    (tmp_path / "bad.txt").write_text("Archery\nCurling\n")
    assert recipe.main(["--out", str(tmp_path / "out"), "--videos", str(videos), "--splits-dir", str(splits),
                        "--subset", str(tmp_path / "bad.txt")]) == 2
    assert "not UCF101 classes: ['Curling']" in capsys.readouterr().err


def test_offline_without_archives_says_what_to_fetch(tmp_path, capsys):
    assert load_recipe("ucf101").main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "UCF101.rar does not exist. Download https://www.crcv.ucf.edu/data/UCF101/UCF101.rar" in err
    assert f"put it at {(tmp_path / 'UCF101.rar').resolve()}" in err and "--download" in err


@pytest.mark.parametrize("name", ["ucf101", "hmdb51", "ucf_sports", "kinetics", "events_to_list"])
def test_every_recipe_has_a_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        load_recipe(name).parse_args(["--help"])
    assert exc.value.code == 0 and "python datasets/" in capsys.readouterr().out
