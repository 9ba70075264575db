"""Loading video folders and list files, group-aware splits, and the clip dataset on real files."""
from __future__ import annotations

import os
import weakref
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from tests.conftest import frame_value
from videoft.data.clip_indices import eval_clip_indices, union_indices
from videoft.data.dataset import (
    VideoClipDataset,
    VideoSample,
    collate,
    decode_views,
    group_of,
    group_split,
    load_splits,
    read_list_file,
    split_summary,
)
from videoft.data.decode import VideoReader
from videoft.data.transforms import build_transform
from videoft.errors import DataError

CLASSES = ["archery", "bowling", "cricket", "diving"]
# clips per class; 2 clips per group: archery 3 groups, bowling 2, cricket 1, diving 4
COUNTS = {"diving": 8, "archery": 6, "cricket": 2, "bowling": 4}
CLIP_LEN, STRIDE = 4, 2


@pytest.fixture(scope="module")
def class_root(tmp_path_factory, make_class_folder) -> Path:
    return make_class_folder(tmp_path_factory.mktemp("ucf") / "videos", COUNTS)


def groups_by_class(samples: list[VideoSample]) -> set[tuple[int, str]]:
    return {(s.label, group_of(s.path)) for s in samples}


# ---------------------------------------------------------------------------- loading

def test_group_of():
    assert group_of("/x/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi") == "g8"
    assert group_of("v_Archery_G12_c3.mp4") == "g12"
    assert group_of("/x/clip_without_group.mp4") == "clip_without_group.mp4"


def test_class_folder_split_is_group_aware(class_root):
    splits, classes = load_splits(class_root, val_fraction=0.3, seed=0)
    assert classes == CLASSES  # sorted, whatever order the folders were written in
    assert set(splits) == {"train", "val"}
    every = [s for part in splits.values() for s in part]
    assert sorted(s.path for s in every) == sorted(str(p) for p in class_root.rglob("*.mp4"))  # each once
    for s in every:
        assert Path(s.path).parent.name == classes[s.label]
    assert not groups_by_class(splits["train"]) & groups_by_class(splits["val"])
    val_classes = {classes[s.label] for s in splits["val"]}
    assert val_classes == {"archery", "bowling", "diving"}  # every class with >= 2 groups
    assert {classes[s.label] for s in splits["train"]} == set(CLASSES)  # train keeps >= 1 group of each


def test_three_way_split_keeps_groups_apart(class_root):
    splits, _ = load_splits(class_root, val_fraction=0.25, test_fraction=0.25, seed=3)
    assert set(splits) == {"train", "val", "test"}
    parts = [groups_by_class(splits[s]) for s in ("train", "val", "test")]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    assert sum(len(v) for v in splits.values()) == sum(COUNTS.values())


def test_split_deterministic_per_seed(class_root):
    a, _ = load_splits(class_root, val_fraction=0.3, seed=0)
    b, _ = load_splits(class_root, val_fraction=0.3, seed=0)
    c, _ = load_splits(class_root, val_fraction=0.3, seed=1)
    assert a == b
    assert {s.path for s in a["val"]} != {s.path for s in c["val"]}


def test_group_split_single_group_class_trains_whole():
    items = [(f"/d/v_x_g01_c{i:02d}.mp4", 0) for i in range(5)]
    items += [(f"/d/v_y_g{g:02d}_c01.mp4", 1) for g in range(1, 11)]
    out = group_split(items, {"val": 0.2}, seed=0)
    assert [s for s in out["val"] if s.label == 0] == []
    assert len([s for s in out["val"] if s.label == 1]) == 2  # 20% of 10 single-clip groups


def test_split_folders_used_as_given(tmp_path, make_class_folder):
    for split, counts in {"train": {"a": 4, "b": 4}, "val": {"a": 2, "b": 1}, "test": {"b": 1, "c": 1}}.items():
        make_class_folder(tmp_path / split, counts, num_frames=6)
    splits, classes = load_splits(tmp_path, val_fraction=0.5, seed=0)
    assert classes == ["a", "b", "c"]
    assert {k: len(v) for k, v in splits.items()} == {"train": 8, "val": 3, "test": 2}
    assert all(Path(s.path).relative_to(tmp_path).parts[0] == "val" for s in splits["val"])
    assert sorted(classes[s.label] for s in splits["test"]) == ["b", "c"]


def test_train_folder_only_gets_a_group_aware_val(tmp_path, make_class_folder):
    make_class_folder(tmp_path / "train", {"a": 6, "b": 6}, num_frames=6)
    splits, classes = load_splits(tmp_path, val_fraction=0.3, seed=0)
    assert classes == ["a", "b"]
    assert {classes[s.label] for s in splits["val"]} == {"a", "b"}
    assert not groups_by_class(splits["train"]) & groups_by_class(splits["val"])
    assert len(splits["train"]) + len(splits["val"]) == 12


def test_csv_list_with_header(tmp_path, class_root):
    videos = sorted(class_root.rglob("*.mp4"))
    lines = ["path,label"] + [f"{os.path.relpath(p, tmp_path)},{p.parent.name}" for p in videos]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    rows = read_list_file(tmp_path / "list.csv")
    assert len(rows) == len(videos)  # the header is not a sample
    assert rows[0] == (str(tmp_path / os.path.relpath(videos[0], tmp_path)), videos[0].parent.name, None)
    splits, classes = load_splits(tmp_path / "list.csv", val_fraction=0.3, seed=0)
    assert classes == CLASSES
    every = [s for part in splits.values() for s in part]
    assert len(every) == len(videos)
    for s in every:
        assert os.path.exists(s.path)
        assert Path(s.path).parent.name == classes[s.label]
    assert not groups_by_class(splits["train"]) & groups_by_class(splits["val"])


def test_space_separated_list_with_integer_labels(tmp_path, class_root):
    videos = sorted(class_root.rglob("*.mp4"))
    (tmp_path / "train.txt").write_text(
        "".join(f"{p} {CLASSES.index(p.parent.name)}\n" for p in videos) + "\n# a comment\n")
    splits, classes = load_splits(tmp_path / "train.txt", val_fraction=0.0, seed=0)
    assert classes == ["0", "1", "2", "3"]
    assert sorted((s.path, s.label) for s in splits["train"]) == \
        sorted((str(p), CLASSES.index(p.parent.name)) for p in videos)
    # with the class names given (a checkpoint's order), the indices are kept
    splits, classes = load_splits(tmp_path / "train.txt", val_fraction=0.0, classes=CLASSES)
    assert classes == CLASSES
    assert all(Path(s.path).parent.name == CLASSES[s.label] for s in splits["train"])


def test_space_separated_list_with_class_names(tmp_path):
    (tmp_path / "list.txt").write_text("clips/my video 1.mp4 zebra\nclips/b.mp4 ant\nclips/c.mp4 zebra\n")
    splits, classes = load_splits(tmp_path / "list.txt", val_fraction=0.0)
    assert classes == ["ant", "zebra"]
    assert sorted((Path(s.path).name, s.label) for s in splits["train"]) == \
        [("b.mp4", 0), ("c.mp4", 1), ("my video 1.mp4", 1)]  # a path with spaces survives


def test_unknown_label_is_value_error(tmp_path):
    (tmp_path / "list.txt").write_text("a.mp4 cat\nb.mp4 dog\n")
    with pytest.raises(ValueError, match="dog"):
        load_splits(tmp_path / "list.txt", classes=["cat"])
    (tmp_path / "bad.txt").write_text("a.mp4 0 extra,x,y\n")
    with pytest.raises(ValueError):
        read_list_file(tmp_path / "bad.txt")


def test_missing_root_is_value_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_splits(tmp_path / "nowhere")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no video files"):
        load_splits(tmp_path / "empty")


def test_split_summary_counts(class_root):
    splits, classes = load_splits(class_root, val_fraction=0.3, seed=0)
    table = [line.split() for line in split_summary(splits, classes).splitlines()]
    assert table[0] == ["class", "train", "val"]
    rows = {r[0]: [int(x) for x in r[1:]] for r in table[1:]}
    for i, name in enumerate(classes):
        assert rows[name] == [sum(s.label == i for s in splits[k]) for k in ("train", "val")]
        assert sum(rows[name]) == COUNTS[name]
    assert rows["total"] == [len(splits["train"]), len(splits["val"])]


# ---------------------------------------------------------------------------- VideoClipDataset

@pytest.fixture(scope="module")
def samples(class_root) -> list[VideoSample]:
    return [VideoSample(str(p), CLASSES.index(p.parent.name)) for p in sorted(class_root.rglob("*.mp4"))]


@pytest.fixture(scope="module")
def bad_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "v_broken_g01_c01.mp4"
    path.write_text("not a video at all\n" * 10)
    return path


def train_dataset(samples, **kw) -> VideoClipDataset:
    transform = build_transform(True, crop_size=32, short_side=40)
    return VideoClipDataset(samples, clip_len=CLIP_LEN, stride=STRIDE, train=True, transform=transform,
                            short_side=40, **kw)


def eval_dataset(samples, num_clips=2, num_crops=3) -> VideoClipDataset:
    transform = build_transform(False, crop_size=32, short_side=40, num_crops=num_crops)
    return VideoClipDataset(samples, clip_len=CLIP_LEN, stride=STRIDE, train=False, transform=transform,
                            short_side=40, num_clips=num_clips)


def test_train_item(samples):
    ds = train_dataset(samples)
    assert len(ds) == len(samples)
    item = ds[5]
    assert item["video"].shape == (3, CLIP_LEN, 32, 32)  # [C, T, H, W]
    assert item["video"].dtype == torch.uint8  # pixels as decoded: the model normalises them on its device
    assert (item["label"], item["index"], item["failures"]) == (samples[5].label, 5, [])
    assert item["video"].float().std() > 5  # real picture content, not a blank clip


def test_train_item_deterministic_per_seed_epoch_index(samples):
    ds = train_dataset(samples, seed=3)
    first = ds[2]["video"]
    assert torch.equal(first, ds[2]["video"])
    ds.set_epoch(1)
    assert not torch.equal(first, ds[2]["video"])


def test_train_item_skips_and_reports_a_bad_file(samples, bad_file):
    bad_list = samples[:4] + [VideoSample(str(bad_file), 1)] + samples[4:]
    ds = train_dataset(bad_list)
    for epoch in range(3):
        ds.set_epoch(epoch)
        item = ds[4]  # never raises
        assert item["failures"], "the failure must be reported"
        for path, reason in item["failures"]:
            assert path == str(bad_file) and reason
        assert item["index"] != 4
        assert item["label"] == bad_list[item["index"]].label  # the label of the video returned
        assert item["video"].shape == (3, CLIP_LEN, 32, 32)


def test_train_gives_up_when_every_file_is_bad(bad_file):
    ds = train_dataset([VideoSample(str(bad_file), 0)] * 3, max_retries=4)
    with pytest.raises(DataError, match="5 videos in a row failed to decode") as err:
        ds[0]
    assert str(bad_file) in str(err.value) and "tools/audit.py" in str(err.value)


def test_giving_up_inside_a_dataloader_worker_is_one_line(bad_file):
    """The DataLoader re-raises a worker's exception rebuilt from its traceback text: the user
    must still get the one line (and the exit code of a user error), not the worker's traceback."""
    ds = train_dataset([VideoSample(str(bad_file), 0)] * 3, max_retries=4)
    with pytest.raises(DataError) as err:
        next(iter(DataLoader(ds, batch_size=1, num_workers=1, collate_fn=collate)))
    text = str(err.value)
    assert text.startswith("5 videos in a row failed to decode (last: ") and str(bad_file) in text
    assert "\n" not in text and "Traceback" not in text
    assert err.value.where == "in DataLoader worker process 0"


def test_eval_item(samples):
    item = eval_dataset(samples)[3]
    assert item["video"].shape == (2 * 3, 3, CLIP_LEN, 32, 32)  # [K * crops, C, T, H, W]
    assert item["valid"] and item["failures"] == [] and item["label"] == samples[3].label
    assert item["frame_indices"] == [[0, 2, 4, 6], [13, 15, 17, 19]]  # 20 frames: whole video covered
    # the views of one clip are three different crops; the two clips are different times
    assert not torch.equal(item["video"][0], item["video"][1])
    assert not torch.equal(item["video"][0], item["video"][3])


def test_eval_item_of_bad_file_is_invalid(samples, bad_file):
    ds = eval_dataset(samples[:2] + [VideoSample(str(bad_file), 2)])
    item = ds[2]
    assert item["valid"] is False and item["video"] is None and item["label"] == 2
    ((path, reason),) = item["failures"]
    assert path == str(bad_file) and "not a readable video" in reason


def test_eval_item_of_truncated_file_uses_the_frames_that_decode(tmp_path, make_video):
    full = make_video(tmp_path / "full.mp4", num_frames=60, faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.7)])
    item = eval_dataset([VideoSample(str(cut), 0)], num_clips=3, num_crops=1)[0]
    assert item["valid"] and item["video"].shape == (3, 3, CLIP_LEN, 32, 32)
    last = max(max(c) for c in item["frame_indices"])
    assert 0 < last < 59  # clamped to the real frame count, not the header's 60


def test_collate_stacks_a_batch_with_a_bad_eval_item(samples, bad_file):
    ds = eval_dataset([samples[0], VideoSample(str(bad_file), 3), samples[1]])
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch["video"].shape == (3, 6, 3, CLIP_LEN, 32, 32)
    assert batch["valid"].tolist() == [True, False, True]
    assert batch["label"].tolist() == [samples[0].label, 3, samples[1].label]
    assert batch["index"].tolist() == [0, 1, 2]
    assert torch.all(batch["video"][1] == 0)
    assert torch.equal(batch["video"][0], ds[0]["video"])
    assert batch["failures"] == [(str(bad_file), ds[1]["failures"][0][1])]
    # a batch of only bad items still collates
    assert collate([ds[1]])["video"].numel() == 0


def test_collate_train_items(samples):
    ds = train_dataset(samples)
    batch = collate([ds[0], ds[1]])
    assert batch["video"].shape == (2, 3, CLIP_LEN, 32, 32)
    assert batch["valid"].tolist() == [True, True] and batch["failures"] == []


class RecordingReader:
    """A real VideoReader that records what its frame reads ask for and how many of the frames it handed out
    one at a time are still alive (held by the caller) as each next one comes."""

    def __init__(self, reader: VideoReader):
        self.reader, self.calls, self.read, self.most_alive = reader, [], [], 0

    def __getattr__(self, name):
        return getattr(self.reader, name)

    def get_frames(self, indices):
        self.calls.append(list(indices))
        return self.reader.get_frames(indices)

    def iter_frames(self, indices):
        alive = []
        for index, frame in self.reader.iter_frames(indices):
            self.read.append(index)
            alive.append(weakref.ref(frame))
            self.most_alive = max(self.most_alive, sum(ref() is not None for ref in alive))
            yield index, frame


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_eval_views_read_the_union_once_and_each_view_holds_its_frames(make_video, backend):
    """10 overlapping clips of a 60-frame video: one forward read over their union, each frame once, in
    order; every view holds its own clip's frames; with decord a frame is let go once no later clip needs
    it (the frames alive at once stay those of the clips in progress, not the whole union)."""
    path = make_video(num_frames=60, width=32, height=32)
    reader = RecordingReader(VideoReader(path, backend=backend))
    assert reader.backend == backend
    views, clips = decode_views(reader, clip_len=4, stride=2, num_clips=10,
                                transform=lambda x: x.permute(3, 0, 1, 2).unsqueeze(0))  # [1, C, T, H, W]
    assert clips == eval_clip_indices(60, 4, 2, 10) and views.shape == (10, 3, 4, 32, 32)
    for view, clip in zip(views, clips):
        assert view[:, :, 16, 16].float().mean(0).round().tolist() == [frame_value(t) for t in clip]
    union = union_indices(clips)[0]
    assert reader.read == union and len(union) == 32
    if backend == "decord":
        assert reader.calls == [] and reader.most_alive <= 2 * 4  # two clips' frames at most, of 32


def _run_loader(ds, num_workers):
    loader = DataLoader(ds, batch_size=3, num_workers=num_workers, collate_fn=collate, shuffle=False)
    batches = list(loader)
    return (torch.cat([b["video"] for b in batches]), torch.cat([b["index"] for b in batches]),
            [f for b in batches for f in b["failures"]])


def test_dataloader_workers_same_samples_and_failures_reported(samples, bad_file):
    bad_list = samples[:6] + [VideoSample(str(bad_file), 0)]
    ds = train_dataset(bad_list, seed=7)
    videos2, index2, failures2 = _run_loader(ds, num_workers=2)
    assert videos2.shape == (7, 3, CLIP_LEN, 32, 32)
    assert failures2 and all(path == str(bad_file) for path, _ in failures2)
    assert index2[:6].tolist() == list(range(6)) and index2[6] != 6
    videos0, index0, failures0 = _run_loader(ds, num_workers=0)
    assert torch.equal(videos0, videos2)  # same (seed, epoch, index) -> same sample, any workers
    assert torch.equal(index0, index2) and failures0 == failures2
    ds.set_epoch(1)
    videos_e1, _, _ = _run_loader(ds, num_workers=2)
    assert not torch.equal(videos_e1, videos2)



def test_several_training_clips_come_from_one_decode_each_from_its_own_start(make_video, monkeypatch):
    """data.train_clips=3: one get_frames call over the union of three random clips; each clip holds the frames
    of its own start (frame t shows frame_value(t)), transformed on its own."""
    path = make_video(num_frames=60, width=32, height=32)
    ds = VideoClipDataset([VideoSample(str(path), 0)], clip_len=4, stride=2, train=True, short_side=None,
                          transform=lambda x: x.permute(3, 0, 1, 2), train_clips=3, seed=1)  # [C, T, H, W]
    readers = []
    monkeypatch.setattr(ds, "open", lambda p: readers.append(RecordingReader(VideoReader(p))) or readers[-1])
    video = ds[0]["video"]
    assert video.shape == (3, 3, 4, 32, 32)  # [K, C, T, H, W]
    values = [frame_value(t) for t in range(60)]
    starts = []
    for clip in video:
        seen = clip[:, :, 16, 16].float().mean(0).round().tolist()
        starts.append(values.index(seen[0]))
        assert seen == [values[starts[-1] + 2 * i] for i in range(4)]
    assert len(set(starts)) == 3
    clips = [[s + 2 * i for i in range(4)] for s in starts]
    assert readers[0].calls == [union_indices(clips)[0]]  # one pass over the union
    # one clip (the default) keeps its single-clip decode and shape
    ds.train_clips = 1
    assert ds[0]["video"].shape == (3, 4, 32, 32) and readers[-1].calls == [[starts[0] + 2 * i for i in range(4)]]
