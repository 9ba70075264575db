"""Loaders: persistent workers start once and still see every epoch; batches equal whatever the workers."""
from __future__ import annotations

import pytest
import torch

from videoft.data.dataset import VideoSample
from videoft.data.loaders import build_eval_loader, build_train_loader, loader_options
from videoft.data.transforms import Preprocessing

PRE = Preprocessing(4, 2, 24, 28, (0.45, 0.45, 0.45), (0.225, 0.225, 0.225))


@pytest.fixture(scope="module")
def samples(tmp_path_factory, make_class_folder) -> list[VideoSample]:
    root = make_class_folder(tmp_path_factory.mktemp("loaders"), {"a": 3, "b": 3}, num_frames=24, width=40, height=32)
    return [VideoSample(str(p), int(p.parent.name == "b")) for p in sorted(root.rglob("*.mp4"))]


def epochs_of(loader, epochs: int) -> list[list[tuple[list[int], torch.Tensor]]]:
    """Every batch (indices, clips) of each epoch, as the recipe iterates: set_epoch, then one pass."""
    out = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        out.append([(b["index"].tolist(), b["video"].clone()) for b in loader])
    return out


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_persistent_workers_give_the_single_process_batches_every_epoch(samples, start_method):
    reference = epochs_of(build_train_loader(samples, PRE, batch_size=2, num_workers=0, seed=5), 3)
    loader = build_train_loader(samples, PRE, batch_size=2, num_workers=2, seed=5, persistent_workers=True,
                                start_method=start_method)
    loader.sampler.set_epoch(0)
    next(iter(loader))  # start the workers; a half-read pass must not leak into the next one
    pids = [w.pid for w in loader._iterator._workers]
    got = epochs_of(loader, 3)
    assert [w.pid for w in loader._iterator._workers] == pids  # the same workers served all three epochs
    for epoch, (ref, new) in enumerate(zip(reference, got)):
        assert [i for i, _ in ref] == [i for i, _ in new], epoch
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(ref, new)), epoch
    # and the epochs really differ (a worker holding a stale epoch would repeat epoch 0's clips)
    first = {i: v for idx, video in reference[0] for i, v in zip(idx, video)}
    second = {i: v for idx, video in reference[1] for i, v in zip(idx, video)}
    assert any(not torch.equal(first[i], second[i]) for i in first)


def test_worker_eval_batches_equal_the_single_process_ones(samples):
    """Workers stack a batch straight into shared memory (videoft.data.dataset._stack); the batches, 3 clips of
    each video written clip by clip into one tensor, equal the single-process ones."""
    def batches(workers: int) -> list[torch.Tensor]:
        return [b["video"] for b in build_eval_loader(samples, PRE, num_clips=3, batch_size=2, num_workers=workers)]
    single, workers = batches(0), batches(2)
    assert len(single) == len(workers) == 3
    assert all(torch.equal(a, b) for a, b in zip(single, workers))
    assert single[0].shape == (2, 3, 3, 4, 24, 24) and single[0].dtype == torch.uint8
    assert not torch.equal(single[0][0, 0], single[0][0, 2])  # the three clips are different frames


def test_loader_options_pin_spawn_and_prefetch_on_cuda_only():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    opts = loader_options(2, cuda, persistent=True, prefetch_factor=4)
    assert opts["pin_memory"] and opts["multiprocessing_context"] == "spawn"
    assert opts["persistent_workers"] and opts["prefetch_factor"] == 4
    assert loader_options(0, cuda)["pin_memory"]  # the main process pins too
    cpu_opts = loader_options(2, cpu, persistent=True)
    assert not cpu_opts["pin_memory"] and cpu_opts["multiprocessing_context"] is None
    assert "persistent_workers" not in loader_options(0, cpu)  # DataLoader refuses it without workers


class _Niceness(torch.utils.data.Dataset):
    """Each item is the nice level of the process that loads it."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        import os
        return os.nice(0)


@pytest.mark.parametrize("device, nice, expected", [("cpu", None, 19), ("cpu", 5, 5), ("cpu", 0, 0),
                                                    ("cuda", None, 0)])
def test_workers_run_at_the_configured_nice_level(device, nice, expected):
    import os
    options = loader_options(1, torch.device(device), nice=nice)
    options.update(collate_fn=None, pin_memory=False, multiprocessing_context="fork")  # no CUDA here: fork
    levels = [int(v) for batch in torch.utils.data.DataLoader(_Niceness(), batch_size=1, **options) for v in batch]
    assert levels == [min(19, os.nice(0) + expected)] * 2  # relative to this process's own level (19 at most)
