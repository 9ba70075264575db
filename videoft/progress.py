"""Progress for long loops: a tqdm bar on a terminal, a periodic one-line log message elsewhere.

A tqdm bar redraws itself several times a second; written to a file (SLURM, nohup, CI logs) every
redraw stays, and a long run leaves megabytes of carriage returns. When stderr (where tqdm draws)
is not a terminal, `progress` logs one line every `interval` seconds instead: position, rate, the
figures the loop sets with `set_postfix`, elapsed time and an estimate of the time left.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

log = logging.getLogger("videoft")

LOG_INTERVAL_S = 60.0  # one progress line a minute when not on a terminal (VIDEOFT_PROGRESS_SECONDS overrides)


def progress(iterable: Iterable, *, desc: str, total: int | None = None, enabled: bool = True,
             interval: float | None = None, unit: str = "it") -> tqdm | LineProgress:
    """A tqdm bar when stderr is a terminal, else a LineProgress; both have set_postfix and close."""
    if enabled and sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, unit=unit)
    if interval is None:
        interval = float(os.environ.get("VIDEOFT_PROGRESS_SECONDS") or LOG_INTERVAL_S)
    return LineProgress(iterable, desc=desc, total=total, enabled=enabled, interval=interval, unit=unit)


class LineProgress:
    """Iterate `iterable`, logging `desc: n/total (pct) ... elapsed, left` at most every `interval` s."""

    def __init__(self, iterable: Iterable, *, desc: str, total: int | None = None, enabled: bool = True,
                 interval: float = LOG_INTERVAL_S, unit: str = "it"):
        self.iterable, self.desc, self.enabled, self.interval, self.unit = iterable, desc, enabled, interval, unit
        self.total = total if total is not None else _len(iterable)
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self._start = self._last = time.monotonic()

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            log.info("%s", self.line(now))

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def line(self, now: float | None = None) -> str:
        """The progress line as it would be logged now."""
        elapsed = (now or time.monotonic()) - self._start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        where = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        parts = [f"{self.desc}: {where}", f"{rate:.2f} {self.unit}/s"]
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        left = f", {_clock((self.total - self.n) / rate)} left" if self.total and rate > 0 else ""
        return " | ".join(parts) + f" | {_clock(elapsed)} elapsed{left}"

    def close(self) -> None:
        """Nothing to tidy (the loop's own summary line follows)."""


def _len(iterable: Iterable) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


__all__ = ["LOG_INTERVAL_S", "LineProgress", "progress"]
