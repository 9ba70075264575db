"""tools/evaluate.py end to end: a real checkpoint whose predictions are known in advance
(see tool_helpers.py) on lossless grey videos, so every number in the report is hand-computed.

The evaluation set (EVAL_VIDEOS), with what the controlled checkpoint predicts:

    video          true     3 clips (frames 0-3, 8-11, 16-19)   clip level   video level
    alpha/a1       alpha    alpha alpha alpha                    alpha        alpha
    alpha/a2       alpha    alpha alpha alpha                    alpha        alpha
    bravo/b1       bravo    bravo bravo bravo                    bravo        bravo
    bravo/mixed    bravo    delta BRAVO delta                    bravo        delta
    charlie/c1     charlie  alpha alpha alpha                    alpha        alpha
    charlie/c2     charlie  alpha alpha alpha                    alpha        alpha
    delta/d1       delta    delta delta delta                    delta        delta

Clip level uses the centre clip only; video level averages the softmax of the three clips.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from videoft.engine.report import REPORT_FILES, validate_report

from .tool_helpers import CLASSES, CLIP_FRAMES, EVAL_VIDEOS, LOGIT_SCALE, REPO, free_port, load_tool, write_grey_video

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Hand-computed from the table above (rows: true class, columns: predicted; order alpha..delta).
EXPECTED = {
    "clip_level": {
        "confusion_matrix": [[2, 0, 0, 0],
                             [0, 2, 0, 0],   # mixed: its centre clip is bravo
                             [2, 0, 0, 0],   # charlie is always taken for alpha
                             [0, 0, 0, 1]],
        "per_class_accuracy": [1.0, 1.0, 0.0, 1.0],
        "support": [2, 2, 2, 1],
        "top1": 5 / 7,
        "mean_class_accuracy": (1 + 1 + 0 + 1) / 4,
        "most_confused": [("charlie", "alpha", 2, 1.0)],
    },
    "video_level": {
        "confusion_matrix": [[2, 0, 0, 0],
                             [0, 1, 0, 1],   # mixed: two delta clips out-vote one bravo clip
                             [2, 0, 0, 0],
                             [0, 0, 0, 1]],
        "per_class_accuracy": [1.0, 0.5, 0.0, 1.0],
        "support": [2, 2, 2, 1],
        "top1": 4 / 7,
        "mean_class_accuracy": (1 + 0.5 + 0 + 1) / 4,
        "most_confused": [("charlie", "alpha", 2, 1.0), ("bravo", "delta", 1, 0.5)],
    },
}


def run_evaluate(argv: list[str]) -> tuple[int, str, str]:
    """tools/evaluate.py main(argv) in this process; (exit code, stdout, stderr)."""
    evaluate = load_tool("evaluate")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = evaluate.main(argv)
    return rc, out.getvalue(), err.getvalue()


def read_report(out_dir: Path) -> dict:
    return json.loads((out_dir / "report.json").read_text())


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def assert_hand_computed(report: dict) -> None:
    """The report's metrics equal EXPECTED exactly (fractions up to float rounding)."""
    assert report["class_names"] == CLASSES
    assert report["num_videos"] == len(EVAL_VIDEOS)
    for level, want in EXPECTED.items():
        got = report[level]
        assert got["num_videos"] == len(EVAL_VIDEOS)
        assert got["confusion_matrix"] == want["confusion_matrix"], level
        assert [c["class"] for c in got["per_class"]] == CLASSES
        assert [c["accuracy"] for c in got["per_class"]] == pytest.approx(want["per_class_accuracy"]), level
        assert [c["support"] for c in got["per_class"]] == want["support"], level
        assert got["top1"] == pytest.approx(want["top1"]), level
        assert got["top5"] == pytest.approx(1.0)  # top-4 of 4 classes
        assert got["mean_class_accuracy"] == pytest.approx(want["mean_class_accuracy"]), level
        pairs = [(p["true"], p["predicted"], p["count"]) for p in got["most_confused"]]
        assert pairs == [pair[:3] for pair in want["most_confused"]], level
        assert [p["fraction_of_true"] for p in got["most_confused"]] == \
            pytest.approx([pair[3] for pair in want["most_confused"]]), level


def assert_predictions_csv(out_dir: Path, data_root: Path) -> None:
    """Video-level predictions per video; `mixed` averages softmax, not logits, over its clips."""
    rows = {Path(r["video"]).relative_to(data_root / "test").as_posix(): r
            for r in read_csv(out_dir / "predictions.csv")}
    expected_pred = {"alpha/a1.mp4": "alpha", "alpha/a2.mp4": "alpha", "bravo/b1.mp4": "bravo",
                     "bravo/mixed.mp4": "delta", "charlie/c1.mp4": "alpha", "charlie/c2.mp4": "alpha",
                     "delta/d1.mp4": "delta"}
    assert {k: r["predicted"] for k, r in rows.items()} == expected_pred
    assert {k: r["true"] for k, r in rows.items()} == {f"{c}/{n}.mp4": c for c, n, _ in EVAL_VIDEOS}
    one_hot = 1 / (1 + 3 * 2.718281828459045 ** -LOGIT_SCALE)  # softmax of LOGIT_SCALE * onehot
    assert float(rows["alpha/a1.mp4"]["confidence"]) == pytest.approx(one_hot, abs=1e-4)
    # mean of softmax over clips: 2/3 delta (averaging logits instead would give ~0.96)
    assert float(rows["bravo/mixed.mp4"]["confidence"]) == pytest.approx(2 / 3 * one_hot, abs=1e-3)


@pytest.fixture(scope="module")
def clean_run(controlled_checkpoint, eval_data, tmp_path_factory) -> tuple[Path, int, str]:
    """One in-process evaluation of the grey set: (report folder, exit code, stdout)."""
    out = tmp_path_factory.mktemp("eval_clean")
    rc, stdout, _ = run_evaluate([str(controlled_checkpoint), "--data", str(eval_data), "--split", "test",
                                  "--out", str(out), "--workers", "0", "--bootstrap", "200"])
    return out, rc, stdout


@pytest.fixture(scope="module")
def broken_data(tmp_path_factory) -> Path:
    """The grey set plus two undecodable files: a text file named .mp4 and a truncated mp4.

    Sorted, the text file is video 1 (rank 1 of 2) and the truncated one video 8 (rank 0),
    so under torchrun the ranks find them in the opposite order to one process.
    """
    root = tmp_path_factory.mktemp("greydata_broken")
    for cls, name, values in EVAL_VIDEOS:
        write_grey_video(root / "test" / cls / f"{name}.mp4", values)
    (root / "test" / "alpha" / "a15_text.mp4").write_text("this is not a video\n")
    good = write_grey_video(root / "spare.mp4", [30] * 20).read_bytes()
    (root / "test" / "delta" / "truncated.mp4").write_bytes(good[: len(good) // 2])  # index at the end: lost
    (root / "spare.mp4").unlink()
    return root


@pytest.fixture(scope="module")
def broken_run(controlled_checkpoint, broken_data, tmp_path_factory) -> tuple[Path, int, str]:
    out = tmp_path_factory.mktemp("eval_broken")
    rc, stdout, _ = run_evaluate([str(controlled_checkpoint), "--data", str(broken_data), "--out", str(out),
                                  "--workers", "0", "--bootstrap", "200"])
    return out, rc, stdout


def test_in_process_report_equals_hand_computed_metrics(clean_run, eval_data):
    out, rc, stdout = clean_run
    assert rc == 0
    report = read_report(out)
    assert_hand_computed(report)
    assert report["failed"] == [] and report["num_failed"] == 0
    assert report["views"]["clips"] == 3 and report["views"]["crops"] == 1
    assert_predictions_csv(out, eval_data)
    # the terminal summary carries the same numbers
    assert "71.4%" in stdout and "57.1%" in stdout and "62.5%" in stdout


def test_subprocess_report_equals_hand_computed_metrics(controlled_checkpoint, eval_data, subprocess_env,
                                                        tmp_path):
    """The script as users run it (DataLoader workers included)."""
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "tools/evaluate.py", str(controlled_checkpoint), "--data",
                           str(eval_data), "--out", str(out), "--workers", "2", "--bootstrap", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=subprocess_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = read_report(out)
    assert_hand_computed(report)
    assert report["video_level"]["top1_ci95"] is None  # --bootstrap 0
    assert_predictions_csv(out, eval_data)
    assert f"report: {out / 'report.html'}" in proc.stdout


def test_single_clip_makes_clip_and_video_level_equal(controlled_checkpoint, eval_data, tmp_path):
    """With one view per video both levels see only the centre clip: mixed is right at both."""
    rc, _, err = run_evaluate([str(controlled_checkpoint), "--data", str(eval_data), "--out", str(tmp_path),
                               "--clips", "1", "--workers", "0", "--bootstrap", "0"])
    assert rc == 0, err
    report = read_report(tmp_path)
    assert report["views"]["clips"] == 1
    for level in ("clip_level", "video_level"):
        assert report[level]["confusion_matrix"] == EXPECTED["clip_level"]["confusion_matrix"], level
    assert all(v["frame_indices"] == [CLIP_FRAMES[1]] for v in report["per_video"])  # the centre clip


def test_report_files(clean_run):
    out, rc, _ = clean_run
    assert rc == 0
    for name in REPORT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in ("confusion_matrix.png", "per_class_accuracy.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE, name
    report = read_report(out)
    assert validate_report(report) == []
    # every video's frame indices: 3 clips of 4 consecutive frames spread over its 20 frames
    assert len(report["per_video"]) == len(EVAL_VIDEOS)
    for video in report["per_video"]:
        assert video["frame_indices"] == CLIP_FRAMES, video["path"]
        assert video["crops"] == 1
    per_class = read_csv(out / "per_class.csv")
    assert [r["class"] for r in per_class] == CLASSES
    assert [float(r["video_accuracy"]) for r in per_class] == EXPECTED["video_level"]["per_class_accuracy"]
    assert [float(r["clip_accuracy"]) for r in per_class] == EXPECTED["clip_level"]["per_class_accuracy"]
    assert len(read_csv(out / "predictions.csv")) == len(EVAL_VIDEOS)
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # both figures embedded
    assert all(name in page for name in CLASSES)


def test_undecodable_videos_are_listed_and_excluded(broken_run, broken_data):
    out, rc, stdout = broken_run
    assert rc == 0
    report = read_report(out)
    bad = {str(broken_data / "test" / "alpha" / "a15_text.mp4"),
           str(broken_data / "test" / "delta" / "truncated.mp4")}
    assert {f["path"] for f in report["failed"]} == bad
    assert all("not a readable video" in f["reason"] for f in report["failed"])
    assert report["num_failed"] == 2
    assert report["num_videos"] == len(EVAL_VIDEOS)  # the failures are not counted as videos
    assert not bad & {v["path"] for v in report["per_video"]}
    assert_hand_computed(report)  # and the metrics are those of the 7 good videos
    assert validate_report(report) == []
    assert "2 video(s) could not be decoded" in stdout
    assert all(path in stdout for path in bad)
    page = (out / "report.html").read_text()
    assert all(path in page for path in bad)  # the HTML's failed-videos table


def test_unknown_class_is_a_clear_error(controlled_checkpoint, tmp_path):
    root = tmp_path / "data"
    write_grey_video(root / "test" / "alpha" / "a.mp4", [30] * 20)
    write_grey_video(root / "test" / "zulu" / "z.mp4", [30] * 20)
    rc, stdout, stderr = run_evaluate([str(controlled_checkpoint), "--data", str(root),
                                       "--out", str(tmp_path / "out"), "--workers", "0"])
    assert rc == 2
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'zulu'" in errors[0], stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.distributed
def test_torchrun_report_equals_single_process(controlled_checkpoint, broken_data, broken_run, subprocess_env,
                                               tmp_path):
    """2 ranks on 9 files (7 good: ranks take 4 and 3, no padding) give the one-process report."""
    single_out, rc, _ = broken_run
    assert rc == 0
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
         str(free_port()), "tools/evaluate.py", str(controlled_checkpoint), "--data", str(broken_data),
         "--out", str(out), "--workers", "0", "--batch-size", "2", "--bootstrap", "200"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=subprocess_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single, multi = read_report(single_out), read_report(out)
    assert multi["num_videos"] == len(EVAL_VIDEOS) == len(multi["per_video"])
    assert len({v["path"] for v in multi["per_video"]}) == len(EVAL_VIDEOS)  # nobody twice
    for key in ("per_video", "clip_level", "video_level", "failed", "num_failed"):
        assert multi[key] == single[key], key
    assert multi == single  # and everything else too
    single_pred, multi_pred = read_csv(single_out / "predictions.csv"), read_csv(out / "predictions.csv")
    assert [(r["video"], r["true"], r["predicted"]) for r in multi_pred] == \
        [(r["video"], r["true"], r["predicted"]) for r in single_pred]
    # other batch shapes may change the float summation order, not the 6-digit confidence
    assert [float(r["confidence"]) for r in multi_pred] == \
        pytest.approx([float(r["confidence"]) for r in single_pred], abs=2e-6)


def test_a_pool_folder_is_evaluated_through_the_runs_own_split(tmp_path, make_class_folder):
    """A folder without split folders was split by the run: --split means the run's split, and scoring
    videos the model trained on is refused instead of reported as accuracy."""
    from videoft.errors import DataError

    evaluate = load_tool("evaluate")
    pool = make_class_folder(tmp_path / "pool", {"a": 4, "b": 4}, num_frames=8)
    videos = sorted(str(p) for p in pool.rglob("*.mp4"))
    test, val, train = videos[:2], videos[2:4], videos[4:]
    run_splits = tmp_path / "run" / "splits.json"
    run_splits.parent.mkdir()
    # written from another working directory: entries are compared by real path
    rel = [str(Path("..") / Path(v).relative_to(tmp_path)) for v in test]
    run_splits.write_text(json.dumps({"train": train, "val": val, "test": rel}))
    cwd = os.getcwd()
    os.chdir(run_splits.parent)
    try:
        assert [s.path for s in evaluate.read_samples(str(pool), "test", ["a", "b"], run_splits)] == test
    finally:
        os.chdir(cwd)
    assert [s.path for s in evaluate.read_samples(str(pool), "val", ["a", "b"], run_splits)] == val
    run_splits.write_text(json.dumps({"train": train, "val": val + test}))  # no test split held out
    with pytest.raises(DataError, match=r"no 'test' split here, and 8 of its 8 videos trained or validated"):
        evaluate.read_samples(str(pool), "test", ["a", "b"], run_splits)
    assert len(evaluate.read_samples(str(pool), "test", ["a", "b"], None)) == 8  # new videos: the whole pool


def test_several_checkpoints_are_fused_by_the_mean_of_their_probabilities(controlled_checkpoint, eval_data,
                                                                           tmp_path):
    """A second model that knows charlie, surer of itself (logits 20 x one-hot): averaged with the controlled
    model's probabilities, charlie's videos become right at both levels; `mixed` stays as each model says."""
    from .tool_helpers import build_controlled_model, make_checkpoint

    sure = tmp_path / "sure" / "last.pt"
    sure.parent.mkdir()
    make_checkpoint(build_controlled_model({c: c for c in CLASSES}, scale=20.0)).save(sure)
    out = tmp_path / "fused"
    rc, stdout, err = run_evaluate([str(controlled_checkpoint), str(sure), "--data", str(eval_data), "--out", str(out),
                                    "--workers", "0", "--bootstrap", "0", "--no-gallery"])
    assert rc == 0, err
    report = read_report(out)
    assert report["checkpoint"] == f"{controlled_checkpoint} + {sure} (late fusion: the mean of their probabilities)"
    assert len(report["views"]["models"]) == 2
    assert report["clip_level"]["confusion_matrix"] == [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]
    assert report["video_level"]["confusion_matrix"] == [[2, 0, 0, 0], [0, 1, 0, 1], [0, 0, 2, 0], [0, 0, 0, 1]]
    rows = {Path(r["video"]).name: r for r in read_csv(out / "predictions.csv")}
    e = 2.718281828459045
    charlie = (1 / (e ** 10 + 3) + 1 / (1 + 3 * e ** -20)) / 2  # mean of the two models' charlie probability
    assert float(rows["c1.mp4"]["confidence"]) == pytest.approx(charlie, abs=1e-4)
    # models of other classes are refused in one line, before anything is written
    other = tmp_path / "other.pt"
    ckpt = make_checkpoint(build_controlled_model())
    ckpt.classes = ["alpha", "bravo", "charlie", "echo"]
    ckpt.save(other)
    rc, _, err = run_evaluate([str(controlled_checkpoint), str(other), "--data", str(eval_data), "--out",
                               str(tmp_path / "refused"), "--workers", "0"])
    assert rc == 2 and "only models of the same classes can be fused" in err and "Traceback" not in err
    assert not (tmp_path / "refused").exists()
