"""User errors: mistakes in a config, the data, a checkpoint or the weights, that the user can fix.

Every tool catches `UserError` and prints it as one line `error: ...` (exit code 2), the remedy
included where there is one; any other exception is a bug and keeps its traceback. `UserError`
is a `ValueError`, so callers that catch ValueError keep working. No imports beyond the standard
library: every layer (data, models, engine, config) may raise these.
"""
from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from typing import TypeVar

# what torch's DataLoader makes of an exception raised in a worker: the class rebuilt from the text
# "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last): ..."
_WORKER_WRAPPED = re.compile(r"^Caught \w+ (?P<where>.*?)\.\nOriginal Traceback", re.DOTALL)


class UserError(ValueError):
    """A mistake the user can fix; `str(err)` is the whole one-line message, remedy included."""

    def __init__(self, message: str, remedy: str | None = None):
        self.where = None
        wrapped = _WORKER_WRAPPED.match(message)
        if wrapped:  # re-raised by a DataLoader: keep the original message, not the worker's traceback
            self.where = wrapped.group("where")
            last = message.rstrip().splitlines()[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
        self.remedy = remedy
        super().__init__(f"{message}. {remedy}" if remedy else message)


class ConfigError(UserError):
    """One or more problems in a configuration; the message lists all of them, one per line."""

    def __init__(self, problems: list[str] | str, header: str = "invalid configuration"):
        if isinstance(problems, str):  # rebuilt from its text (DataLoader worker)
            super().__init__(problems)
            self.problems, self.header = [problems], header
            return
        self.problems, self.header = list(problems), header
        super().__init__(f"{header}:\n  - " + "\n  - ".join(self.problems))

    def __reduce__(self):
        return (type(self), (self.problems, self.header))


class DataError(UserError):
    """The dataset cannot be used as given (no videos, one class, too many undecodable files...)."""


class CheckpointError(UserError):
    """A file given as a videoft checkpoint is not one, or does not fit this run."""


class WeightsError(UserError):
    """Pretrained or given backbone weights cannot be fetched, are corrupt, or do not fit the backbone."""


E = TypeVar("E", bound=Callable[..., int])


def report_user_errors(main: E) -> E:
    """Decorate a tool's `main`: a UserError becomes `error: ...` on stderr and exit code 2.

    Under torchrun every rank prints its own error, prefixed with its rank.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {_rank_prefix()}{err}", file=sys.stderr)
            return 2

    return wrapper  # type: ignore[return-value]


def _rank_prefix() -> str:
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return f"[rank {os.environ.get('RANK', '0')}] " if world > 1 else ""


__all__ = ["CheckpointError", "ConfigError", "DataError", "UserError", "WeightsError", "report_user_errors"]
