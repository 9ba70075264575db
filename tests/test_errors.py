"""The user-error family: one line (`error: ...`, exit 2) in every tool, also across a DataLoader worker."""
from __future__ import annotations

import pickle

import pytest
from torch._utils import ExceptionWrapper

from videoft.errors import CheckpointError, ConfigError, DataError, UserError, WeightsError, report_user_errors


@pytest.mark.parametrize("kind", [ConfigError, DataError, CheckpointError, WeightsError])
def test_every_kind_is_a_user_error_and_a_value_error(kind):
    assert issubclass(kind, UserError) and issubclass(kind, ValueError)  # `except ValueError` callers keep working


def test_remedy_is_part_of_the_one_line():
    err = DataError("no videos under /d", remedy="data.root is a folder of class folders")
    assert str(err) == "no videos under /d. data.root is a folder of class folders"
    assert err.remedy == "data.root is a folder of class folders"


def test_rebuilt_from_a_dataloader_worker_traceback_keeps_only_the_message():
    """torch re-raises a worker's exception as `type(message)` where message is the whole traceback."""
    try:
        raise DataError("21 videos in a row failed to decode (last: /d/x.mp4: empty)", remedy="Run tools/audit.py")
    except DataError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 1")
    with pytest.raises(DataError) as err:
        wrapper.reraise()
    assert str(err.value) == "21 videos in a row failed to decode (last: /d/x.mp4: empty). Run tools/audit.py"
    assert err.value.where == "in DataLoader worker process 1"


def test_config_error_lists_problems_and_pickles():
    err = ConfigError(["a: bad", "b: worse"], header="cannot start this run")
    assert str(err) == "cannot start this run:\n  - a: bad\n  - b: worse"
    clone = pickle.loads(pickle.dumps(err))
    assert clone.problems == ["a: bad", "b: worse"] and str(clone) == str(err)


def test_tools_print_user_errors_in_one_line_and_exit_2(capsys):
    @report_user_errors
    def main() -> int:
        raise WeightsError("could not download weights from http://x/y.pth", remedy="pass model.weights=FILE")

    assert main() == 2
    assert capsys.readouterr().err == "error: could not download weights from http://x/y.pth. pass model.weights=FILE\n"


def test_anything_else_keeps_its_traceback():
    @report_user_errors
    def main() -> int:
        return {}["missing"]  # a bug, not a user error

    with pytest.raises(KeyError):
        main()


def test_ranks_prefix_their_errors(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")

    @report_user_errors
    def main() -> int:
        raise CheckpointError("x.pt: not a videoft checkpoint")

    assert main() == 2
    assert capsys.readouterr().err == "error: [rank 1] x.pt: not a videoft checkpoint\n"
