"""Process-group set-up: a group under torchrun even for one process, none for a plain run; the helpers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist

from tests.tools.tool_helpers import free_port
from videoft.engine.distributed import (
    all_reduce_sum,
    average_buffers_,
    broadcast_from_main,
    cleanup_distributed,
    collective_device,
    gather_to_main,
    setup_distributed,
)
from videoft.engine.evaluate import _Merged


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_plain_python_run_has_no_group(no_torchrun_env):
    info = setup_distributed("cpu")
    assert not dist.is_initialized() and info.backend is None and not info.distributed
    t = torch.arange(3.0)
    assert torch.equal(all_reduce_sum(t), t) and all_reduce_sum(t) is not t
    assert gather_to_main({"a": 1}) == [{"a": 1}] and broadcast_from_main(7) == 7


def test_torchrun_with_one_process_creates_the_group(no_torchrun_env):
    """What `torchrun --nproc_per_node 1` sets: the group exists, so DDP and the collectives run as on N GPUs."""
    for key, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())}.items():
        no_torchrun_env.setenv(key, value)
    info = setup_distributed("cpu")
    try:
        assert dist.is_initialized() and info.backend == "gloo" and info.distributed and info.world_size == 1
        assert collective_device() == torch.device("cpu")
        assert all_reduce_sum(torch.tensor([1.5, 2.0], dtype=torch.float64)).tolist() == [1.5, 2.0]
        buffers = [torch.full((2, 2), 3.0), torch.tensor([1.0])]
        average_buffers_(buffers)
        assert buffers[0].tolist() == [[3.0, 3.0], [3.0, 3.0]] and buffers[1].tolist() == [1.0]
        assert gather_to_main(("x", [1])) == [("x", [1])] and broadcast_from_main({"top1": 0.5}) == {"top1": 0.5}
    finally:
        cleanup_distributed()
    assert not dist.is_initialized()


def test_world_size_without_a_rendezvous_is_a_clear_error(no_torchrun_env):
    no_torchrun_env.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="MASTER_ADDR is not"):
        setup_distributed("cpu")


def test_rank0_fills_every_ranks_rows_in_dataset_order_round_by_round():
    """Rank 0 took videos 0, 2, 4 (4 failed to decode), rank 1 videos 1, 3; 2 views, 3 classes; one video per
    rank per round."""
    probs = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    meta = [(np.array([0, 2]), np.array([1, 0]), (2, 3), [("v4.mp4", "broken")]),
            (np.array([1, 3]), np.array([2, 2]), (2, 3), [])]
    merged = _Merged(meta, (2, 3), centre_view=1)
    row_bytes = 2 * 3 * 4
    assert merged.plan(2 * row_bytes) == (1, 2)  # 1 video per rank per round, 2 rounds
    assert merged.plan(100 * row_bytes) == (50, 1)
    for start in (0, 1):
        merged.fill([(probs[[0, 2]][start:start + 1], [[[0]], [[2]]][start:start + 1]),
                     (probs[[1, 3]][start:start + 1], [[[1]], [[3]]][start:start + 1])], start=start)
    pred = merged.predictions()
    assert pred.indices == [0, 1, 2, 3] and pred.centre_view == 1
    assert np.array_equal(pred.view_probs, probs[:4]) and pred.labels.tolist() == [1, 2, 0, 2]
    assert pred.frame_indices == [[[0]], [[1]], [[2]], [[3]]] and pred.failures == [("v4.mp4", "broken")]
    empty = _Merged([(np.array([], np.int64), np.array([], np.int64), None, [])] * 2, (2, 3), 1)
    assert empty.plan(1000)[1] == 0 and empty.predictions().view_probs.shape == (0, 2, 3)


def test_shard_rows_cross_batch_boundaries():
    from videoft.engine.evaluate import _Shard

    part = _Shard()
    for start, n in ((0, 3), (3, 1), (4, 2)):
        part.add(list(range(start, start + n)), [0] * n, np.arange(start, start + n, dtype=np.float32)[:, None, None],
                 [None] * n)
    assert [part.probs_rows(a, b).ravel().tolist() for a, b in ((0, 2), (2, 5), (5, 9), (6, 8))] == \
        [[0, 1], [2, 3, 4], [5], []]
    assert _Shard().probs_rows(0, 4) is None
