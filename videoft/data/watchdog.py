"""Decoding with a time limit: a child process decodes, and is killed when a video takes too long.

decord can hang inside C code while holding the GIL (a frame count that the header over-reports),
so neither a thread nor a signal in the decoding process can stop it. Instead each process that
decodes (a DataLoader worker, or the main process with `num_workers=0`) forks one decode child and
asks it for frames over a pipe. A request that has not returned within the limit gets the child
killed (SIGKILL) and the video reported as a :class:`VideoDecodeError`, like any undecodable file;
the next request starts a fresh child. A decoder that crashes (segfault) is reported the same way
instead of taking the DataLoader worker, and with it the run, down.

The child is forked, not spawned, so starting one costs milliseconds, not a Python start-up; where
`os.fork` does not exist (Windows), videos are decoded in process with no time limit (logged once).
"""
from __future__ import annotations

import ctypes
import faulthandler
import gc
import logging
import mmap
import os
import pickle
import signal
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, Pipe
from typing import Any

import numpy as np
import torch

from videoft.data.decode import VideoDecodeError, VideoReader

log = logging.getLogger(__name__)
_no_fork_logged = False
# frames come back through memory shared with the child (one copy each way), not pickled through the
# pipe (four copies and two syscalls per MB): 1.6 ms per 16-frame clip at 128x170 measured, ~0.3 ms
# shared. Virtual size; only the pages a clip uses are touched. Larger answers go through the pipe.
SHARED_BYTES = 64 << 20


class _InShared:
    """Answer marker: the frames are in the shared buffer, with this shape (uint8)."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape


class DecodeProcess:
    """A forked child that opens and decodes videos on request, killed and restarted on a timeout.

    One per process that decodes: a copy inherited through fork (a DataLoader worker) or unpickled
    (a spawned worker) starts its own child on first use and never touches its parent's.
    """

    def __init__(self, timeout: float):
        if timeout <= 0:
            raise ValueError(f"decode timeout must be > 0 seconds, got {timeout}")
        self.timeout = float(timeout)
        self._owner: int | None = None  # pid of the process whose child this is
        self._pid: int | None = None
        self._conn: Connection | None = None
        self._shared: mmap.mmap | None = None  # created by the owner, inherited by each child it forks

    def __getstate__(self) -> dict:
        return {"timeout": self.timeout}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["timeout"])

    def open(self, path: str | os.PathLike, *, short_side: int | None, backend: str) -> VideoReader | GuardedReader:
        """A reader of `path` whose opening and decoding are subject to the time limit."""
        if not hasattr(os, "fork"):  # pragma: no cover - Windows
            _log_no_fork()
            return VideoReader(path, short_side=short_side, backend=backend)
        return GuardedReader(self, path, short_side=short_side, backend=backend)

    def call(self, path: str | os.PathLike, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` run in the child under the time limit (`fn` about `path`, named in a timeout)."""
        return self.request(str(path), ("call", str(path), None, None, fn, args))

    def start(self) -> None:
        """Fork the child now if this process has none (it is also started on the first request)."""
        if self._owner != os.getpid() or self._pid is None:
            self._start()

    def request(self, path: str, message: tuple) -> Any:
        """Send one request to the child and wait at most `timeout` seconds for its answer."""
        self.start()
        try:
            self._conn.send(message)
        except OSError:  # the child died since the last answer: start another one
            self._stop()
            self._start()
            self._conn.send(message)
        if not self._conn.poll(self.timeout):
            self._stop()
            raise VideoDecodeError(path, f"opening or decoding took longer than {self.timeout:g} s "
                                         "(data.decode_timeout); abandoned")
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            status = self._stop()
            raise VideoDecodeError(path, f"the decoder crashed on this file ({status})") from None
        if kind == "ok" and isinstance(payload, tuple) and payload and isinstance(payload[0], _InShared):
            frames = np.ndarray(payload[0].shape, np.uint8, buffer=self._shared).copy()
            return (frames, *payload[1:])
        if kind == "ok":
            return payload
        if kind == "decode_error":
            raise VideoDecodeError(path, payload)
        raise payload  # any other exception: a bug, re-raised as it was in the child

    def close(self) -> None:
        """Stop the child (it would also exit by itself when this process goes away)."""
        if self._owner == os.getpid():
            self._stop()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: modules may already be gone
            pass

    def _start(self) -> None:
        parent = os.getpid()
        if self._owner != parent:  # a copy made by fork: drop our copy of the pipe, leave its child alone
            if self._conn is not None:
                self._conn.close()
            self._conn = self._pid = self._shared = None
        if self._shared is None:  # never the buffer of the process this object was copied from
            self._shared = mmap.mmap(-1, SHARED_BYTES)
        parent_end, child_end = Pipe()
        pid = os.fork()
        if pid == 0:  # the child: serve until the parent closes its end or dies, never return
            code = 0
            try:
                # objects inherited from the parent are never collected here: a garbage cycle holding a decord
                # reader would run its destructor, which joins a decoder thread that does not exist in a fork
                # (the child hung there, seen in the tests, where the parent process decodes too)
                gc.freeze()
                parent_end.close()
                _die_with_parent(parent)
                _serve(child_end, self._shared)
            except BaseException:  # noqa: BLE001 - nothing may escape into the parent's code
                code = 1
            finally:
                os._exit(code)
        child_end.close()
        self._owner, self._pid, self._conn = os.getpid(), pid, parent_end

    def _stop(self) -> str:
        """Kill and reap the child; returns how it ended, in words."""
        pid, conn = self._pid, self._conn
        self._pid = self._conn = None
        if conn is not None:
            conn.close()
        if pid is None:
            return "no decoder running"
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return "exit status unknown"
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            return f"killed by {signal.Signals(sig).name}" if sig in signal.valid_signals() else f"signal {sig}"
        return f"exit code {os.WEXITSTATUS(status)}"


_processes: dict[tuple[int, float], DecodeProcess] = {}


def decode_process(timeout: float) -> DecodeProcess:
    """This process's decode child for this time limit: one per process, shared by all its datasets.

    The child is a fork of its parent and keeps the parent's memory as it was at the fork alive for
    as long as it runs, so fewer children, forked early (`decode_process(t).start()` before the model
    is built, when the main process decodes itself), mean less memory.
    """
    key = (os.getpid(), float(timeout))
    if key not in _processes:  # a forked DataLoader worker has another pid: it gets its own
        _processes[key] = DecodeProcess(timeout)
    return _processes[key]


class GuardedReader:
    """:class:`VideoReader`'s interface (`path`, `info`, `backend`, `get_frames`), decoded in a
    :class:`DecodeProcess` with its time limit on the opening, on every `get_frames` and `apply`."""

    def __init__(self, process: DecodeProcess, path: str | os.PathLike, *, short_side: int | None, backend: str):
        self.process, self.path = process, str(path)
        self.short_side, self.requested_backend = short_side, backend
        self.info, self.backend = process.request(self.path, ("open", self.path, short_side, backend))

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:  # [T, H, W, C] uint8
        """Decode exactly the frames at `indices` in the child (it re-opens the file if it was restarted)."""
        frames, self.info, self.backend = self.process.request(
            self.path, ("frames", self.path, self.short_side, self.requested_backend, [int(i) for i in indices]))
        return torch.from_numpy(frames)

    def apply(self, fn: Callable[..., tuple], *args: Any, **kwargs: Any) -> tuple:
        """`fn(reader, *args, **kwargs)` run in the child on this video's reader, under the time limit; `fn`
        (picklable: a module-level function) answers a tuple whose first item is a uint8 tensor. What a
        caller would otherwise build from the frames (e.g. evaluation views) is built where they are decoded,
        and only it comes back (through the shared memory)."""
        first, rest, self.info, self.backend = self.process.request(
            self.path, ("apply", self.path, self.short_side, self.requested_backend, fn, args, kwargs))
        return (torch.from_numpy(first), *rest)


def _serve(conn: Connection, shared: mmap.mmap) -> None:
    """The child's loop: one request in, one answer out, the current video kept open between them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    faulthandler.disable()  # a decoder crash is reported by the parent in one line, not as a stack dump
    torch.set_num_threads(1)  # as in a DataLoader worker: the parent's OpenMP pool does not survive fork
    reader: VideoReader | None = None
    key = None
    while True:
        try:
            op, path, short_side, backend, *rest = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        try:
            if op == "call":
                fn, args = rest
                conn.send(("ok", fn(*args)))
                continue
            if op == "open" or reader is None or key != (path, short_side, backend):
                reader, key = None, (path, short_side, backend)
                reader = VideoReader(path, short_side=short_side, backend=backend)
            if op == "open":
                answer = ("ok", (reader.info, reader.backend))
            elif op == "apply":
                fn, args, kwargs = rest
                first, *others = fn(reader, *args, **kwargs)
                answer = ("ok", (_to_shared(first.numpy(), shared), others, reader.info, reader.backend))
            else:
                answer = ("ok", (_to_shared(reader.get_frames(rest[0]).numpy(), shared), reader.info, reader.backend))
        except VideoDecodeError as err:
            answer = ("decode_error", err.reason)
        except Exception as err:  # noqa: BLE001 - a bug: sent back to be raised in the parent
            answer = ("error", _portable(err))
        conn.send(answer)


def _to_shared(array: np.ndarray, shared: mmap.mmap) -> np.ndarray | _InShared:
    """A uint8 answer that fits goes back through the shared buffer (a marker with its shape is sent)."""
    if array.dtype != np.uint8 or array.nbytes > len(shared):
        return array
    np.ndarray(array.shape, np.uint8, buffer=shared)[...] = array
    return _InShared(array.shape)


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel SIGKILL this child when its parent dies. A child stuck in a hung decode
    reads no pipe, so it would otherwise outlive a run that was stopped (Ctrl-C, a crash, kill)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux: the child exits on EOF instead
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def _portable(err: Exception) -> Exception:
    """`err` if it survives pickling, else a RuntimeError carrying its traceback."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # noqa: BLE001
        return RuntimeError("".join(traceback.format_exception(err)))


def _log_no_fork() -> None:  # pragma: no cover - Windows
    global _no_fork_logged
    if not _no_fork_logged:
        _no_fork_logged = True
        log.warning("no os.fork on this platform: videos are decoded without data.decode_timeout")


__all__ = ["DecodeProcess", "GuardedReader", "decode_process"]
