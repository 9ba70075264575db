"""Decode exactly the requested frames of a video file: decord first, PyAV as fallback.

This is the only module that imports decord. Every way a file can be undecodable
ends in one exception, :class:`VideoDecodeError`, carrying the path and the reason.
Frames come out upright: a rotation in the file's display matrix (phone footage) is applied.
"""
from __future__ import annotations

import bisect
import dataclasses
import errno
import functools
import hashlib
import logging
import math
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch  # imported before decord: its torch bridge would otherwise import torch lazily (~1.3 s)
from torch.utils.data import get_worker_info

try:  # decord has no wheel for every platform (e.g. aarch64, macOS arm): PyAV covers those
    import decord

    decord.bridge.set_bridge("torch")
except ImportError:  # pragma: no cover - depends on the platform
    decord = None

import av

from videoft.cache import cache_dir, write_text_atomically
from videoft.choices import DECODERS
from videoft.data.prepared import FrameFolder, is_frame_folder, resized_shape

log = logging.getLogger(__name__)

_fallback_logged: set[str] = set()
# output sizes at which decord 0.6's resize-on-decode fails ("Check failed: from_size == to_size",
# e.g. 48x36): decode those at the native size and resize with torch instead
_decord_bad_sizes: set[tuple[int, int]] = set()


class VideoDecodeError(Exception):
    """A video file that cannot be decoded; `path` and `reason` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep (path, reason) across DataLoader worker pickling
        return (type(self), (self.path, self.reason))


# containers that can carry a display matrix (rotation); others skip the first-frame decode that reads it
_ROTATING_CONTAINERS = ("mov", "mp4", "matroska", "webm", "3gp")


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about the video stream (frame count checked when decoding).

    `width` x `height` is the size as displayed (after `rotation`), which is also the size of the
    decoded frames before any resize.
    """

    num_frames: int
    fps: float
    width: int
    height: int
    rotation: int = 0  # degrees counterclockwise the stored frames are turned to display them: 0, 90, 180, 270
    codec: str = field(default="", compare=False)      # FFmpeg's names, e.g. "h264", "hevc", "mpeg4"
    container: str = field(default="", compare=False)  # e.g. "mov,mp4,m4a,3gp,3g2,mj2", "avi"

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read the stream header with PyAV (about 1-2 ms): frame count, fps and size."""
    path = str(path)
    if is_frame_folder(path):  # a prepared video in frame form (tools/prepare.py)
        folder = _open_folder(path, None)
        return VideoInfo(folder.num_frames, folder.fps, folder.width, folder.height)
    _check_file(path)
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "no video stream in the file")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
            num_frames = stream.frames
            if not num_frames and stream.duration and stream.time_base:
                num_frames = int(round(float(stream.duration * stream.time_base) * fps))
            if not num_frames and container.duration:
                num_frames = int(round(container.duration / av.time_base * fps))
            width, height = stream.codec_context.width, stream.codec_context.height
            codec, container_name = stream.codec_context.name, container.format.name
            rotation = _rotation(container, stream) if num_frames else 0
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise VideoDecodeError(path, f"not a readable video ({_short(exc)})") from None
    if not width or not height:
        raise VideoDecodeError(path, "video stream has no frame size")
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(num_frames=int(num_frames), fps=fps, width=width, height=height, rotation=rotation,
                     codec=codec, container=container_name)


def cached_probe(path: str) -> VideoInfo:
    """`probe`, remembered in this process per file (path, size, modification time): a DataLoader worker
    (persistent by default) opens the same videos epoch after epoch, and the header costs a container open
    and, for MP4/MOV/Matroska, one decoded frame (the display rotation): 15 ms of a 720p training clip's
    96 ms, measured. A changed file is read again; a failure is not remembered."""
    try:
        st = os.stat(path)
    except OSError:
        return probe(path)  # says why, in one line
    return _probe_once(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1 << 16)
def _probe_once(path: str, size: int, mtime_ns: int) -> VideoInfo:
    return probe(path)


def _rotation(container: av.container.InputContainer, stream: av.VideoStream) -> int:
    """The display rotation (0/90/180/270, counterclockwise) from the first frame's display matrix.

    PyAV 18 exposes the matrix only on decoded frames, so this decodes one frame, and only for the
    containers that can carry one (MP4/MOV/Matroska; not AVI). A file whose first frame does not
    decode reports 0 here and fails later, when its frames are asked for.
    """
    if not any(name in _ROTATING_CONTAINERS for name in container.format.name.split(",")):
        return 0
    try:
        frame = next(container.decode(stream), None)
    except (av.FFmpegError, OSError, ValueError):
        return 0
    return int(round((frame.rotation if frame is not None else 0) / 90)) % 4 * 90


class VideoReader:
    """An open video: `info` gives the stream facts, `get_frames(indices)` decodes exactly those frames.

    Args:
        path: the video file.
        short_side: resize on decode so the shorter side has this many pixels (aspect kept);
            None decodes at the native size.
        backend: "auto" (decord, PyAV where decord is missing or fails), "decord" or "pyav".
        num_threads: decoder threads per reader; 1 is fastest inside DataLoader workers.
    """

    def __init__(self, path: str | os.PathLike, *, short_side: int | None = None,
                 backend: str = "auto", num_threads: int = 1):
        if backend not in DECODERS:
            raise ValueError(f"decoder backend {backend!r} is not one of {DECODERS}")
        self.path = str(path)
        self.short_side = short_side
        self.num_threads = num_threads
        self.frames_decoded = 0  # frames PyAV has decoded so far (what a seek saves is visible here)
        self._numbering: _FrameNumbering | None = None  # PyAV: frame index <-> timestamp, once known
        self._seekable = True  # PyAV: False once this file's timestamps proved irregular
        self._folder: FrameFolder | None = None
        self._vr = None
        if is_frame_folder(self.path):  # prepared frames (JPEG or uint8): read directly, no decoder
            self._folder = _open_folder(self.path, short_side)
            self.rotation, self.backend = 0, "frames"
            self.out_width, self.out_height = self._folder.out_width, self._folder.out_height
            self.info = VideoInfo(self._folder.num_frames, self._folder.fps, self._folder.width, self._folder.height)
            return
        header = cached_probe(self.path)
        self.rotation = header.rotation
        # decoded as stored, then turned: the stored (coded) size is the displayed one, unrotated
        stored = (header.height, header.width) if header.rotation in (90, 270) else (header.width, header.height)
        self.out_width, self.out_height = resized_shape(*stored, short_side)
        self._vr = None
        self._resize_after = False
        self.backend = "pyav"
        if header.rotation and backend != "pyav":
            # decord 0.6 turns some rotated videos itself but gets the size wrong (squashed frames when
            # resizing, a 4-channel buffer at the native size): PyAV decodes them as stored, we turn them.
            # Expected for phone footage, so not a warning (the audit lists rotated files)
            log.debug("%s: rotated %d degrees (display matrix); decoding with PyAV", self.path, header.rotation)
        elif backend == "auto" and decord is not None and not decord_seeks_right(self.path, header):
            # decord misplaces frames after a seek in some formats (HEVC with B-frames, H.264 in AVI, ...)
            log.debug("%s: decord's frames after a seek differ from PyAV's; decoding with PyAV", self.path)
        elif backend != "pyav" and decord is not None:
            try:
                self._resize_after = (self.out_width, self.out_height) in _decord_bad_sizes
                self._vr = self._open_decord()
                self.backend = "decord"
                header = dataclasses.replace(header, num_frames=len(self._vr),
                                             fps=float(self._vr.get_avg_fps()) or header.fps)
            except Exception as exc:  # decord raises RuntimeError or its own DECORDError
                if backend == "decord":
                    raise VideoDecodeError(self.path, f"decord cannot open it ({_short(exc)})") from None
                self._log_fallback(f"decord cannot open it ({_short(exc)})")
        elif backend == "decord" and decord is None:
            raise VideoDecodeError(self.path, "decord is not installed")
        if header.num_frames <= 0:
            raise VideoDecodeError(self.path, "the video has no frames")
        self.info = header

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:  # [T, H, W, C] uint8
        """Decode exactly the frames at `indices` (any order, repeats allowed)."""
        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError("no frame indices requested")
        if min(indices) < 0:
            raise ValueError(f"negative frame index in {indices}")
        indices = [min(i, self.info.num_frames - 1) for i in indices]
        if self._folder is not None:
            try:
                return self._folder.get_frames(indices)
            except ValueError as err:
                raise VideoDecodeError(self.path, str(err)) from None
        if self._vr is not None:
            try:
                return self._decord_batch(indices)
            except Exception as exc:
                if "from_size == to_size" in str(exc) and not self._resize_after:
                    # decord's scaler bug at this output size: native decode + torch resize
                    if (self.out_width, self.out_height) not in _decord_bad_sizes:
                        # DataLoader workers restart every epoch and would repeat this: say it at debug level
                        level = logging.INFO if get_worker_info() is None else logging.DEBUG
                        log.log(level, "decord cannot resize to %dx%d; decoding at native size and "
                                "resizing with torch", self.out_width, self.out_height)
                    _decord_bad_sizes.add((self.out_width, self.out_height))
                    self._resize_after = True
                    try:
                        self._vr = self._open_decord()
                        return self._decord_batch(indices)
                    except Exception as exc2:
                        exc = exc2
                # decord over-reports the frame count of some files (truncated, broken index):
                # retry once through PyAV, which clamps to the frames that really decode
                self._log_fallback(f"decord failed on frames {min(indices)}..{max(indices)} ({_short(exc)})")
                self._vr = None
                self.backend = "pyav"
        return self._upright(self._pyav_frames(indices))

    def iter_frames(self, indices: Sequence[int]) -> Iterator[tuple[int, torch.Tensor]]:  # (index, [H, W, C] uint8)
        """The frames at `indices`, each index once and in ascending order, one at a time: a caller can let
        go of a frame as soon as it has used it instead of holding them all. With decord a forward read that
        seeks only where a keyframe lies between one wanted frame and the next (what `get_batch` does, at
        its cost: measured equal); with the other backends one `get_frames` call, its frames handed out."""
        wanted = sorted({int(i) for i in indices})
        if not wanted:
            raise ValueError("no frame indices requested")
        if wanted[0] < 0:
            raise ValueError(f"negative frame index in {wanted}")
        if self._vr is None or self._resize_after:
            yield from zip(wanted, self.get_frames(wanted))
            return
        keyframes, position = None, None  # position: the frame decord's next() returns
        for n, index in enumerate(min(i, self.info.num_frames - 1) for i in wanted):
            try:
                if position is None or index < position or self._keyframe_between(keyframes, position, index):
                    keyframes = self._vr.get_key_indices() if keyframes is None else keyframes
                    self._vr.seek_accurate(index)
                elif index > position:
                    self._vr.skip_frames(index - position)
                frame = self._vr.next()
                if frame.shape != (self.out_height, self.out_width, 3):
                    # decord 0.6 at the sizes where get_batch fails "from_size == to_size": next() hands out
                    # the unconverted 4-byte buffer instead of failing (get_frames decodes those another way)
                    raise RuntimeError(f"decord returned a {tuple(frame.shape)} frame")
            except Exception:  # noqa: BLE001 - decord's errors vary: get_frames retries, falls back and says why
                rest = wanted[n:]
                yield from zip(rest, self.get_frames(rest))
                return
            position = index + 1
            yield wanted[n], frame

    @staticmethod
    def _keyframe_between(keyframes: list[int] | None, position: int, index: int) -> bool:
        """A keyframe after `position` and at or before `index`: seeking there decodes less than reading on."""
        return keyframes is not None and \
            bisect.bisect_right(keyframes, index) > bisect.bisect_right(keyframes, position)

    def _upright(self, frames: torch.Tensor) -> torch.Tensor:  # [T, H, W, C] as stored -> as displayed
        """Turn stored frames by the display rotation (counterclockwise, as FFmpeg's autorotate does)."""
        if not self.rotation:
            return frames
        return torch.rot90(frames, self.rotation // 90, dims=(1, 2)).contiguous()

    def _open_decord(self):
        if self._resize_after:
            return decord.VideoReader(self.path, num_threads=self.num_threads)
        return decord.VideoReader(self.path, width=self.out_width, height=self.out_height,
                                  num_threads=self.num_threads)

    def _decord_batch(self, indices: list[int]) -> torch.Tensor:  # [T, H, W, C] uint8
        frames = self._vr.get_batch(indices)
        if self._resize_after and frames.shape[1:3] != (self.out_height, self.out_width):
            x = frames.permute(0, 3, 1, 2).float()
            x = torch.nn.functional.interpolate(x, size=(self.out_height, self.out_width), mode="bilinear",
                                                antialias=True, align_corners=False)
            frames = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        return frames

    def _pyav_frames(self, indices: list[int]) -> torch.Tensor:  # [T, H, W, C] uint8
        """Decode the wanted frames with PyAV: seek to the keyframe before the first one and decode
        forward, numbering frames by their timestamps; where the timestamps are irregular (missing,
        gaps, a seek that lands late), decode from the start and count instead, so frame t is
        always the t-th frame of the stream."""
        margin = 0
        while self._seekable and 0 < min(indices) - margin:
            try:
                return self._pyav_decode(indices, seek=True, margin=margin)
            except _SeekLanded as late:  # some containers (AVI with B-frames) index keyframes by decode time
                margin = 2 * (margin + late.overshoot)
            except _IrregularTimestamps as why:
                log.debug("%s: %s; decoding from the start from now on", self.path, why)
                self._seekable = False
        return self._pyav_decode(indices, seek=False)

    def _pyav_decode(self, indices: list[int], *, seek: bool, margin: int = 0) -> torch.Tensor:  # [T, H, W, C]
        """Decode `indices` from the start, or (`seek`) from the keyframe before frame min(indices) - margin."""
        wanted, last = set(indices), max(indices)
        got: dict[int, np.ndarray] = {}
        last_frame = None
        count = 0  # frames of the stream up to and including the last one decoded
        try:
            with av.open(self.path) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                number = self._frame_numbering(container, stream) if seek else None
                if number is not None:  # after reading the first frame's timestamp: seek from there
                    container.seek(number.pts_of(min(indices) - margin), stream=stream, backward=True,
                                   any_frame=False)
                for frame in container.decode(stream):
                    self.frames_decoded += 1
                    index = count if number is None else number.index_of(
                        frame.pts, previous=None if last_frame is None else count - 1, first_wanted=min(indices))
                    if index in wanted:
                        got[index] = self._to_array(frame)
                    last_frame, count = frame, index + 1
                    if count > last:
                        break
        except (av.FFmpegError, OSError, ValueError) as exc:
            if count == 0:
                if seek:
                    raise _IrregularTimestamps(f"seeking failed ({_short(exc)})") from None
                raise VideoDecodeError(self.path, f"no frame decodes ({_short(exc)})") from None
            log.warning("%s: decoding stopped after %d frames (%s)", self.path, count, _short(exc))
        if count == 0:
            if seek:
                raise _IrregularTimestamps("no frame decodes after seeking")
            raise VideoDecodeError(self.path, "no frame decodes (empty or truncated video stream)")
        if count <= last:
            # the header over-reported the frame count: clamp to the last frame that decodes
            log.warning("%s: the header says %d frames but only %d decode; clamping to those",
                        self.path, self.info.num_frames, count)
            self.info = VideoInfo(count, self.info.fps, self.info.width, self.info.height, self.info.rotation)
            got.setdefault(count - 1, self._to_array(last_frame))
        return torch.from_numpy(np.stack([got[min(i, count - 1)] for i in indices]))

    def _to_array(self, frame: av.VideoFrame) -> np.ndarray:  # [H, W, C] uint8
        return frame.to_ndarray(format="rgb24", width=self.out_width, height=self.out_height)

    def _frame_numbering(self, container: av.container.InputContainer,
                         stream: av.video.stream.VideoStream) -> _FrameNumbering:
        """Timestamp -> frame index for this stream, anchored on the first frame's own timestamp (the
        container's start time is not always it: an AVI with B-frames starts at pts 1)."""
        if self._numbering is None:
            rate, time_base = stream.average_rate or stream.guessed_rate, stream.time_base
            if not rate or not time_base:
                raise _IrregularTimestamps("the stream has no frame rate or time base")
            first = next(iter(container.decode(stream)), None)
            self.frames_decoded += first is not None
            if first is None or first.pts is None:
                raise _IrregularTimestamps("the first frame has no timestamp")
            self._numbering = _FrameNumbering(int(first.pts), Fraction(time_base), Fraction(rate))
        return self._numbering

    def _log_fallback(self, reason: str) -> None:
        if self.path not in _fallback_logged:
            _fallback_logged.add(self.path)
            log.warning("%s: %s; falling back to PyAV", self.path, reason)


class _IrregularTimestamps(Exception):
    """Frame numbers cannot be read from this stream's timestamps: decode from the start instead."""


class _SeekLanded(_IrregularTimestamps):
    """The seek landed `overshoot` frames after the first wanted frame: seek again, further back."""

    def __init__(self, overshoot: int):
        self.overshoot = overshoot
        super().__init__(f"the seek landed {overshoot} frames after the first wanted frame")


@dataclass(frozen=True)
class _FrameNumbering:
    """Frame index <-> timestamp for a constant-rate stream: index = (pts - start) * time_base * rate."""

    start: int
    time_base: Fraction
    rate: Fraction

    def pts_of(self, index: int) -> int:
        return self.start + math.floor(index / (self.rate * self.time_base))

    def index_of(self, pts: int | None, *, previous: int | None, first_wanted: int) -> int:
        """The frame index of `pts`; irregular unless it follows `previous` (the first frame after the
        seek has none, and must not be past the first wanted frame)."""
        if pts is None:
            raise _IrregularTimestamps("a frame without a timestamp")
        index = round((pts - self.start) * self.time_base * self.rate)
        if previous is None and index > first_wanted:
            raise _SeekLanded(index - first_wanted)
        if previous is not None and index != previous + 1:
            raise _IrregularTimestamps(f"frame {index} follows frame {previous} (variable frame rate?)")
        return index


# (codec, container) pairs whose frames decord placed right after seeks, bit for bit against a sequential decode
# (generated files, session 8: H.264 in MP4 and Matroska with and without B-frames, VP9 in WebM): not checked
_DECORD_SEEKS_RIGHT = {("h264", "mov,mp4,m4a,3gp,3g2,mj2"), ("h264", "matroska,webm"), ("vp9", "matroska,webm")}


def decord_seeks_right(path: str, header: VideoInfo) -> bool:
    """Whether decord's frames after a seek are the right ones in this file. It returns other frames for
    some formats (measured: HEVC with B-frames in MP4, H.264 in AVI, MPEG-4 Part 2 with B-frames): those
    are decoded with PyAV. Formats known to be right are not checked; others are checked once per file
    (a few frames just after three keyframes, decord against PyAV at the native size, where the same
    FFmpeg decoder gives equal pixels), the answer kept in this process (like the header) and on disk
    under cache_dir() for every other process and run. At 1280x720 a file's first opening with the check
    took 136-168 ms (HEVC) and 80-89 ms (H.264 in AVI), against 21-30 ms for a trusted MP4 and 53-65 ms for a
    16x2 clip: every DataLoader worker of every run would otherwise pay it again for every file."""
    if (header.codec, header.container) in _DECORD_SEEKS_RIGHT:
        return True
    try:
        st = os.stat(path)
    except OSError:
        return True  # the reader says why
    return _decord_seek_check(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1 << 16)
def _decord_seek_check(path: str, size: int, mtime_ns: int) -> bool:
    record = _seek_check_record(path, size, mtime_ns)
    try:
        return record.read_text() == "1"
    except OSError:  # not checked on this machine yet (or the cache cannot be read)
        pass
    try:
        right = _decord_seeks_match_pyav(path)
    except Exception:  # noqa: BLE001 - a file either decoder cannot read: the reader's own fallbacks decide
        return True
    try:  # another process may be checking the same file
        write_text_atomically(record, "1" if right else "0")
    except OSError:
        pass
    return right


def _seek_check_record(path: str, size: int, mtime_ns: int) -> Path:
    """The file holding one check's answer: keyed by the file (path, size, mtime) and decord's version."""
    key = hashlib.sha1(f"{path}|{size}|{mtime_ns}|decord {decord.__version__}".encode()).hexdigest()
    return cache_dir() / "decord_seek_check" / key[:2] / key


def _decord_seeks_match_pyav(path: str) -> bool:
    vr = decord.VideoReader(path, num_threads=1)
    keys = [k for k in vr.get_key_indices() if 0 < k < len(vr) - 1]
    groups = [[k, k + 1] for k in sorted({keys[0], keys[len(keys) // 2], keys[-1]})] if keys else []
    got = [vr.get_batch(g) for g in groups]
    del vr
    pyav = VideoReader(path, backend="pyav")
    return all(torch.equal(d, pyav.get_frames(g)) for d, g in zip(got, groups))


def read_frames(path: str | os.PathLike, indices: Sequence[int], *, short_side: int | None = None,
                backend: str = "auto") -> torch.Tensor:  # [T, H, W, C] uint8
    """Open `path` and decode exactly the frames at `indices` (see :class:`VideoReader`)."""
    return VideoReader(path, short_side=short_side, backend=backend).get_frames(indices)


def _open_folder(path: str, short_side: int | None) -> FrameFolder:
    try:
        return FrameFolder(path, short_side)
    except ValueError as err:
        raise VideoDecodeError(path, f"prepared frame folder: {err}") from None


def _check_file(path: str) -> None:
    """A regular, readable, non-empty file, or a VideoDecodeError saying which of those it is not."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise VideoDecodeError(path, _stat_reason(path, exc)) from None
    if stat.S_ISDIR(st.st_mode):
        raise VideoDecodeError(path, "is a directory, not a video file")
    if not stat.S_ISREG(st.st_mode):
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
        raise VideoDecodeError(path, f"is {kind}, not a regular file")
    if st.st_size == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise VideoDecodeError(path, _stat_reason(path, exc)) from None


def _stat_reason(path: str, exc: OSError) -> str:
    """Why os.stat/open failed, in words: a missing file, a dangling link, a link loop, no permission..."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (following its links never reaches a file)"
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return f"dangling symbolic link (its target {os.readlink(path)} does not exist)"
    if exc.errno == errno.ENOENT:
        return "file does not exist"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (the file or a folder above it is not readable by this user)"
    if exc.errno == errno.ENOTDIR:
        return "a part of the path is a file, not a folder"
    return f"cannot be read ({os.strerror(exc.errno) if exc.errno else exc})"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


__all__ = ["VideoDecodeError", "VideoInfo", "VideoReader", "probe", "read_frames", "resized_shape"]
