"""Progress off a terminal: a periodic line with position, rate, the loop's figures and time left."""
from __future__ import annotations

import io
import logging

from tqdm import tqdm

from videoft.progress import LineProgress, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_and_a_file_gets_lines(monkeypatch):
    monkeypatch.setattr("sys.stderr", _Terminal())
    assert isinstance(progress(range(3), desc="x"), tqdm)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert isinstance(progress(range(3), desc="x"), LineProgress)


def test_lines_carry_position_rate_figures_and_time_left(caplog):
    bar = LineProgress(range(4), desc="epoch 2/12", interval=0.0, unit="batch")
    with caplog.at_level(logging.INFO, logger="videoft"):
        for i in bar:
            bar.set_postfix(loss=f"{1.5 - i / 10:.3f}")
    assert len(caplog.messages) == 4
    first = caplog.messages[0]
    assert first.startswith("epoch 2/12: 1/4 (25%) | ") and " batch/s | loss 1.500 | 0:00:00 elapsed" in first
    assert first.endswith(" left")
    assert caplog.messages[-1].startswith("epoch 2/12: 4/4 (100%) | ") and "loss 1.200" in caplog.messages[-1]


def test_at_most_one_line_per_interval(caplog, monkeypatch):
    monkeypatch.setenv("VIDEOFT_PROGRESS_SECONDS", "3600")
    monkeypatch.setattr("sys.stderr", io.StringIO())
    with caplog.at_level(logging.INFO, logger="videoft"):
        assert list(progress(range(1000), desc="eval")) == list(range(1000))
        assert list(progress(range(5), desc="quiet", enabled=False, interval=0.0)) == list(range(5))
    assert caplog.messages == []
