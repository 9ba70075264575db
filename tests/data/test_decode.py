"""Decoding: exact frames by pixel value on lossless videos, both backends, resize, bad files."""
from __future__ import annotations

import errno
import logging
import os
import pickle
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tests.conftest import mux_frames, textured_frames
from videoft.data import decode
from videoft.data.decode import (
    VideoDecodeError,
    VideoInfo,
    VideoReader,
    _stat_reason,
    cached_probe,
    probe,
    read_frames,
    resized_shape,
)

BACKENDS = ("decord", "pyav")


def frame_value(t: int) -> int:
    """The value that tests/conftest.py fills frame t of a lossless video with."""
    return (5 * t) % 256


def assert_frames(frames: torch.Tensor, indices: list[int]) -> None:
    """Every pixel of frames[k] holds frame_value(indices[k]) exactly."""
    assert frames.dtype == torch.uint8
    for k, i in enumerate(indices):
        values = frames[k].unique().tolist()
        assert values == [frame_value(i)], f"position {k}: wanted frame {i} ({frame_value(i)}), got {values}"


# ---------------------------------------------------------------------------- exact frames

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("indices", [
    [0, 1, 2, 3],
    [29],                      # last frame
    [0, 29],                   # first and last
    [17, 3, 25, 0, 11],        # unsorted
    [5, 5, 2, 5, 2],           # repeats
    list(range(29, -1, -1)),   # every frame, backwards
])
def test_exact_frames(lossless_video, backend, indices):
    reader = VideoReader(lossless_video, backend=backend)
    frames = reader.get_frames(indices)
    assert frames.shape == (len(indices), 48, 64, 3)
    assert_frames(frames, indices)
    assert reader.backend == backend  # decord really decoded them: no silent fallback


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("indices", [
    [0, 3, 9, 10, 25, 33],     # across several keyframes (one every 8 frames): seeks and forward reads
    [17, 3, 3, 0, 17],         # unsorted, repeats: each once, ascending
    [36, 39, 45, 50],          # past the end: clamped to the last frame
])
def test_iter_frames_hands_out_what_get_frames_decodes(make_video, backend, indices):
    """A forward read (decord: skip_frames / next, a seek where a keyframe lies between) gives the very
    frames one get_frames call gives, one at a time, in ascending index order."""
    path = make_video(num_frames=40, lossless=False)  # 64x48 H.264, a keyframe every 8 frames
    reader = VideoReader(path, backend=backend)
    got = list(reader.iter_frames(indices))
    wanted = sorted(set(indices))
    assert [i for i, _ in got] == wanted
    assert reader.backend == backend
    assert torch.equal(torch.stack([f for _, f in got]), VideoReader(path, backend=backend).get_frames(wanted))


def test_iter_frames_at_a_size_decord_garbles_gives_the_right_frames(make_video):
    """At 48x32 decord 0.6's get_batch fails ("from_size == to_size") and its next() hands out a 4-byte-per-
    pixel buffer instead of failing: the forward read must notice and give what get_frames gives."""
    path = make_video(num_frames=20, width=48, height=32)
    got = list(VideoReader(path).iter_frames([1, 4, 9]))
    assert [tuple(f.shape) for _, f in got] == [(32, 48, 3)] * 3
    assert_frames(torch.stack([f for _, f in got]), [1, 4, 9])


def test_iter_frames_finishes_through_get_frames_when_decord_fails_midway(lossless_video):
    """decord failing after a few frames (as on a file whose index over-reports): the rest comes from
    get_frames, which falls back to PyAV; every frame still the one asked for."""
    reader = VideoReader(lossless_video, backend="auto")
    assert reader.backend == "decord"
    real_next, calls = reader._vr.next, []

    def failing_next():
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("injected decord failure")
        return real_next()

    reader._vr.next = failing_next
    reader._vr.get_batch = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("injected decord failure"))
    got = list(reader.iter_frames([2, 5, 8, 11, 14, 20]))
    assert [i for i, _ in got] == [2, 5, 8, 11, 14, 20]
    assert_frames(torch.stack([f for _, f in got]), [2, 5, 8, 11, 14, 20])
    assert reader.backend == "pyav"  # the rest came from PyAV


def _encode(path: Path, fmt: str, codec: str, options: dict, num_frames: int = 60) -> Path:
    frames = textured_frames(num_frames, 96, 64)
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt, stream.options = 96, 64, "yuv420p", options
        mux_frames(out, stream, frames)
    return path


def _sequential(path: Path) -> torch.Tensor:  # every frame, decoded from the start: the reference
    with av.open(str(path)) as container:
        return torch.stack([torch.from_numpy(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)])


@pytest.mark.parametrize("fmt,codec,options,backend", [
    ("mp4", "libx265", {"x265-params": "keyint=10:bframes=3:log-level=error"}, "pyav"),  # phone HEVC: decord wrong
    ("avi", "libx264", {"g": "10", "bf": "0"}, "pyav"),                                 # H.264 in AVI: decord wrong
    ("avi", "mpeg4", {"g": "10", "bf": "2"}, "pyav"),                                   # MPEG-4 Part 2, B-frames
    ("mp4", "libx264", {"g": "10", "bf": "2"}, "decord"),                               # decord right: kept
    ("avi", "mpeg4", {"g": "10", "bf": "0"}, "decord"),                                 # checked, right: kept
])
def test_files_where_decord_misplaces_frames_after_a_seek_are_decoded_with_pyav(tmp_path, fmt, codec, options,
                                                                                  backend):
    """decord returns other frames than asked after a seek in some formats; the reader notices (once per file)
    and decodes those with PyAV: every frame read equals a sequential decode of the file."""
    path = _encode(tmp_path / f"v.{fmt}", fmt, codec, options)
    reference = _sequential(path)
    reader = VideoReader(path)
    indices = list(range(0, 60, 7)) + [59, 31, 12]
    assert torch.equal(reader.get_frames(indices), reference[indices])
    assert reader.backend == backend
    assert torch.equal(torch.stack([f for _, f in VideoReader(path).iter_frames(indices)]),
                       reference[sorted(set(indices))])


def test_the_seek_check_runs_once_per_file_for_every_process(tmp_path, monkeypatch):
    """A check's answer is kept on disk (cache_dir()) by file and decord version: another process, or this one
    once its memory of it is gone, reads it instead of checking again; a changed file is checked again."""
    path = _encode(tmp_path / "v.avi", "avi", "libx264", {"g": "10", "bf": "0"})  # H.264 in AVI: decord wrong
    assert VideoReader(path).backend == "pyav"
    decode._decord_seek_check.cache_clear()  # as a new process starts
    monkeypatch.setattr(decode, "_decord_seeks_match_pyav", lambda p: pytest.fail("checked again"))
    assert VideoReader(path).backend == "pyav"
    checks = []
    monkeypatch.setattr(decode, "_decord_seeks_match_pyav", lambda p: checks.append(p) or True)
    os.utime(path, ns=(0, 12345))  # the file changed
    assert VideoReader(path).backend == "decord" and checks == [str(path)]


def test_read_frames_helper(lossless_video):
    assert_frames(read_frames(lossless_video, [7, 2]), [7, 2])


def test_index_past_the_end_clamps_to_last_frame(lossless_video):
    assert_frames(VideoReader(lossless_video).get_frames([28, 40]), [28, 29])


@pytest.mark.parametrize("bad", [[], [-1, 3]])
def test_bad_indices_are_value_errors(lossless_video, bad):
    with pytest.raises(ValueError):
        VideoReader(lossless_video).get_frames(bad)


def test_unknown_backend_is_value_error(lossless_video):
    with pytest.raises(ValueError, match="ffmpeg"):
        VideoReader(lossless_video, backend="ffmpeg")


@pytest.mark.parametrize("short_side", [None, 32])
def test_pyav_matches_decord_on_lossy_video(lossy_video, short_side):
    indices = [9, 0, 29, 9, 14]
    by_pyav = VideoReader(lossy_video, backend="pyav", short_side=short_side).get_frames(indices)
    decord_reader = VideoReader(lossy_video, backend="decord", short_side=short_side)
    every_frame = decord_reader.get_frames(list(range(30))).int()  # [30, H, W, C]
    assert decord_reader.backend == "decord"
    assert by_pyav.shape == (len(indices),) + tuple(every_frame.shape[1:])
    if short_side is None:  # same decoder, same colour conversion: bit-exact
        assert torch.equal(by_pyav.int(), every_frame[indices])
    # resized, the two scalers interpolate slightly differently; still, decord's frame
    # closest to each PyAV frame must be the very frame that was asked for
    for k, i in enumerate(indices):
        distance = (every_frame - by_pyav[k].int()).abs().float().mean(dim=(1, 2, 3))  # [30]
        assert distance.argmin().item() == i
        assert distance[i] < 3


@pytest.mark.parametrize("fmt,codec,name", [("avi", "mpeg4", "xvid_like.avi"), ("matroska", "libx264", "h264.mkv"),
                                             ("webm", "libvpx-vp9", "vp9.webm")])
def test_other_containers_and_codecs(tmp_path, fmt, codec, name):
    """UCF101-like MPEG-4 AVI, Matroska (no frame count in the header), VP9 WebM."""
    path = tmp_path / name
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"qscale": "2"} if codec == "mpeg4" else {}
        for t in range(30):
            image = np.full((48, 64, 3), frame_value(t), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    indices = [29, 0, 15]
    decoded = {}
    for backend in BACKENDS:
        reader = VideoReader(path, backend=backend)
        assert reader.info.num_frames == 30 and reader.backend == backend
        decoded[backend] = reader.get_frames(indices)
    assert torch.equal(decoded["decord"], decoded["pyav"])
    for k, i in enumerate(indices):  # lossy (and limited-range YUV): close to the frame's value
        assert abs(decoded["pyav"][k].float().mean().item() - frame_value(i)) < 6


# ---------------------------------------------------------------------------- resize on decode

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("width,height,short_side", [(64, 48, 32), (64, 48, 100), (40, 56, 20), (40, 56, 32),
                                                     (40, 40, 33)])
def test_resize_on_decode_keeps_aspect(make_video, backend, width, height, short_side):
    path = make_video(num_frames=6, width=width, height=height)
    reader = VideoReader(path, backend=backend, short_side=short_side)
    frames = reader.get_frames([0, 5])
    out_w, out_h = resized_shape(width, height, short_side)
    assert frames.shape == (2, out_h, out_w, 3)
    assert min(out_w, out_h) == short_side
    assert (out_w > out_h, out_w < out_h) == (width > height, width < height)  # orientation kept
    assert out_w / out_h == pytest.approx(width / height, rel=0.05)
    assert reader.info.width == width and reader.info.height == height  # info is the source size
    assert_frames(frames, [0, 5])  # constant frames stay exact through the scaler
    assert reader.backend == backend


@pytest.mark.parametrize("width,height,short_side,expected", [
    (320, 240, 128, (170, 128)),
    (240, 320, 128, (128, 170)),
    (64, 48, 48, (64, 48)),
    (1920, 1080, 112, (200, 112)),
    (64, 48, None, (64, 48)),
    (64, 64, 32, (32, 32)),
    (64, 64, 33, (33, 33)),  # square stays square with an odd short side
    (101, 100, 51, (52, 51)),
])
def test_resized_shape(width, height, short_side, expected):
    assert resized_shape(width, height, short_side) == expected


def test_auto_falls_back_to_pyav_where_decord_cannot_decode(make_video, caplog):
    # decord 0.6 fails get_batch on some frame widths (8, 12, 16, 24, 48, 72 ... seen here):
    # a 48-pixel-wide portrait video is one of them; "auto" must still decode it
    path = make_video(num_frames=10, width=48, height=64)
    reader = VideoReader(path, backend="auto")
    with caplog.at_level(logging.WARNING, logger="videoft.data.decode"):
        frames = reader.get_frames([9, 0])
    assert frames.shape == (2, 64, 48, 3)
    assert_frames(frames, [9, 0])
    if reader.backend == "pyav":  # the fallback is never silent
        assert any(str(path) in r.getMessage() and "PyAV" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------- info

@pytest.mark.parametrize("backend", BACKENDS)
def test_video_info(make_video, backend):
    path = make_video(num_frames=24, width=64, height=48, fps=12)
    reader = VideoReader(path, backend=backend)
    assert reader.info == VideoInfo(num_frames=24, fps=12.0, width=64, height=48)
    assert reader.info.duration == pytest.approx(2.0)
    assert probe(path) == reader.info


def test_a_header_is_read_once_per_file_until_the_file_changes(tmp_path, make_video):
    """cached_probe (what VideoReader opens with): a worker reading the same file again pays no container open
    or rotation decode; a rewritten file (new size or time) is read again."""
    path = make_video(tmp_path / "v.mp4", num_frames=24)
    first = cached_probe(str(path))
    assert cached_probe(str(path)) is first and VideoReader(path).info.num_frames == 24
    make_video(tmp_path / "v.mp4", num_frames=36)  # the same name, other content
    os.utime(path, ns=(1, 1))  # a modification time the first file did not have, whatever the clock's grain
    assert cached_probe(str(path)).num_frames == 36 == VideoReader(path, backend="pyav").info.num_frames
    with pytest.raises(VideoDecodeError, match="does not exist|No such file"):
        cached_probe(str(tmp_path / "missing.mp4"))


def test_duration_without_fps():
    assert VideoInfo(num_frames=10, fps=0.0, width=4, height=4).duration == 0.0


# ---------------------------------------------------------------------------- bad files

def _audio_only(path: Path) -> Path:
    try:
        with av.open(str(path), "w", format="mp4") as out:
            stream = out.add_stream("aac", rate=16000)
            stream.layout = "mono"
            for i in range(8):
                frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 16000, i * 1024
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
    except (av.FFmpegError, ValueError) as exc:  # pragma: no cover - depends on the FFmpeg build
        pytest.skip(f"no AAC encoder in this PyAV build ({exc})")
    return path


def _zero_frame_video(path: Path) -> Path:
    """An AVI with a declared MPEG-4 video stream and no frames (mp4 drops an empty stream)."""
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("mpeg4", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()
    with av.open(str(path)) as check:
        if not check.streams.video:  # pragma: no cover - depends on the FFmpeg build
            pytest.skip("this FFmpeg build writes no stream header for an empty AVI")
    return path


def _truncated_no_index(path: Path, make_video) -> Path:
    """Cut before the end of a normal mp4: its index (at the end) is lost."""
    full = make_video(path.with_name("full_" + path.name), num_frames=40)
    data = full.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.7)])
    return path


BAD_FILES = {
    "missing": (lambda p, mv: p, "does not exist"),
    "zero_bytes": (lambda p, mv: (p.write_bytes(b""), p)[1], "empty"),
    "text": (lambda p, mv: (p.write_text("this is not a video\n" * 20), p)[1], "not a readable video"),
    "directory": (lambda p, mv: (p.mkdir(), p)[1], "directory"),
    "truncated_no_index": (_truncated_no_index, "not a readable video"),
    "audio_only": (lambda p, mv: _audio_only(p), "no video stream"),
    "zero_frames": (lambda p, mv: _zero_frame_video(p.with_suffix(".avi")), "no frames"),
}


@pytest.mark.parametrize("backend", ("auto",) + BACKENDS)
@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_file_raises_video_decode_error(tmp_path, make_video, kind, backend):
    build, reason = BAD_FILES[kind]
    path = build(tmp_path / f"bad_{kind}.mp4", make_video)
    with pytest.raises(VideoDecodeError) as err:
        VideoReader(path, backend=backend).get_frames([0])
    assert err.value.path == str(path)
    assert str(path) in str(err.value)
    assert err.value.reason and err.value.reason in str(err.value)
    if backend != "decord":  # decord may refuse first, with its own words
        assert reason in err.value.reason


@pytest.mark.parametrize("kind", sorted(set(BAD_FILES) - {"zero_frames"}))
def test_probe_bad_file_raises_video_decode_error(tmp_path, make_video, kind):
    build, reason = BAD_FILES[kind]
    path = build(tmp_path / f"bad_{kind}.mp4", make_video)
    with pytest.raises(VideoDecodeError, match=reason) as err:
        probe(path)
    assert err.value.path == str(path)


def test_probe_zero_frame_video_reports_zero_frames(tmp_path):
    assert probe(_zero_frame_video(tmp_path / "empty.avi")).num_frames == 0


class _ErrorDataset(torch.utils.data.Dataset):
    """Hands back the error a worker caught, as the clip dataset hands back failures."""

    def __init__(self, path):
        self.path = path

    def __len__(self):
        return 1

    def __getitem__(self, index):
        try:
            VideoReader(self.path)
        except VideoDecodeError as err:
            return err


def _keep(batch):
    return batch


def test_decode_error_survives_a_dataloader_worker(tmp_path):
    path = tmp_path / "not_there.mp4"
    (err,) = next(iter(torch.utils.data.DataLoader(_ErrorDataset(path), num_workers=1, collate_fn=_keep)))
    assert isinstance(err, VideoDecodeError)
    assert err.path == str(path) and err.reason == "file does not exist"


def test_decode_error_survives_pickling(tmp_path):
    with pytest.raises(VideoDecodeError) as err:
        VideoReader(tmp_path / "nope.mp4")
    clone = pickle.loads(pickle.dumps(err.value))
    assert type(clone) is VideoDecodeError
    assert (clone.path, clone.reason, str(clone)) == (err.value.path, err.value.reason, str(err.value))


# ---------------------------------------------------------------------------- truncated, index kept

@pytest.fixture(scope="module")
def truncated_video(tmp_path_factory, make_video) -> tuple[Path, int]:
    """A faststart mp4 (index first) cut at 70%: the header still says 60 frames."""
    folder = tmp_path_factory.mktemp("truncated")
    full = make_video(folder / "full.mp4", num_frames=60, faststart=True)
    data = full.read_bytes()
    cut = folder / "truncated.mp4"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    return cut, 60


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_truncated_file_clamps_to_decodable_frames(truncated_video, backend):
    path, header_frames = truncated_video
    assert probe(path).num_frames == header_frames  # the header over-reports
    reader = VideoReader(path, backend=backend)
    frames = reader.get_frames([0, header_frames - 1])  # no exception
    real = reader.info.num_frames
    assert 0 < real < header_frames
    assert frames.shape == (2, 48, 64, 3)
    assert_frames(frames, [0, real - 1])  # the last header frame became the last real one
    # every frame below the new count really decodes, exactly
    assert_frames(reader.get_frames(list(range(real))), list(range(real)))
    assert reader.info.duration == pytest.approx(real / 25)


def test_truncated_file_with_decord_only_is_a_decode_error_or_clamped(truncated_video):
    path, header_frames = truncated_video
    try:
        reader = VideoReader(path, backend="decord")
    except VideoDecodeError as err:  # decord 0.6 refuses this file outright
        assert err.path == str(path) and "decord" in err.reason
        return
    frames = reader.get_frames([header_frames - 1])  # pragma: no cover - a decord that opens it
    assert reader.info.num_frames < header_frames
    assert_frames(frames, [reader.info.num_frames - 1])


# ---------------------------------------------------------------------------- what the OS says about a path

def _os_cases(tmp_path: Path, video: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "loop.mp4").symlink_to("loop.mp4")
    (tmp_path / "a.mp4").symlink_to("b.mp4")
    (tmp_path / "b.mp4").symlink_to("a.mp4")
    (tmp_path / "dangling.mp4").symlink_to("gone.mp4")
    os.mkfifo(tmp_path / "fifo.mp4")
    (tmp_path / "file").write_text("x")
    return {
        "symlink loop": (tmp_path / "loop.mp4", "symbolic link loop (following its links never reaches a file)"),
        "two-link cycle": (tmp_path / "a.mp4", "symbolic link loop (following its links never reaches a file)"),
        "dangling link": (tmp_path / "dangling.mp4", "dangling symbolic link (its target gone.mp4 does not exist)"),
        "fifo": (tmp_path / "fifo.mp4", "is a named pipe (FIFO), not a regular file"),
        "under a file": (tmp_path / "file" / "v.mp4", "a part of the path is a file, not a folder"),
        "missing": (tmp_path / "missing.mp4", "file does not exist"),
    }


@pytest.mark.parametrize("case", ["symlink loop", "two-link cycle", "dangling link", "fifo", "under a file",
                                  "missing"])
def test_os_level_problems_have_their_own_reason(tmp_path, lossless_video, case):
    """Issue #11 case 8: a symlink loop was reported as "file does not exist" (os.path.exists is False for
    it). A FIFO must be refused at once, not opened (opening one blocks until someone writes to it)."""
    path, reason = _os_cases(tmp_path, lossless_video)[case]
    with pytest.raises(VideoDecodeError) as err:
        VideoReader(path)
    assert (err.value.path, err.value.reason) == (str(path), reason)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file: no permission error to provoke")
def test_unreadable_file_is_permission_denied(tmp_path, lossless_video):
    path = tmp_path / "locked.mp4"
    path.write_bytes(lossless_video.read_bytes())
    path.chmod(0)
    with pytest.raises(VideoDecodeError, match="permission denied"):
        VideoReader(path)


@pytest.mark.parametrize("code, reason", [
    (errno.EACCES, "permission denied (the file or a folder above it is not readable by this user)"),
    (errno.EPERM, "permission denied (the file or a folder above it is not readable by this user)"),
    (errno.EIO, "cannot be read (Input/output error)"),
])
def test_other_os_errors_are_named(tmp_path, code, reason):
    """The errno -> reason mapping for errors a test cannot provoke as root (or at all)."""
    assert _stat_reason(str(tmp_path / "x.mp4"), OSError(code, os.strerror(code))) == reason
