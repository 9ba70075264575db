"""A DataLoader worker's heap gives memory back: large buffers when freed, the heap's free pages after each
evaluation item (videoft/data/heap.py)."""
from __future__ import annotations

import subprocess
import sys

import torch
from torch.utils.data import DataLoader

from videoft.data import dataset as dataset_module
from videoft.data.dataset import VideoClipDataset, VideoSample
from videoft.data.loaders import loader_options
from videoft.data.transforms import build_transform

# In a fresh process (mallopt is process-wide): 2,000 blocks of 60 kB (a small frame's size, below the mmap
# threshold) interleaved with small blocks that stay allocated, then the large ones freed: holes inside the
# heap that the trim threshold never returns. Prints the RSS (kB) after the frees and after give_back.
FRAGMENT = """
import ctypes, sys
from videoft.data import heap
heap.release_large_buffers()
libc = ctypes.CDLL("libc.so.6"); libc.malloc.restype = ctypes.c_void_p; libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def rss():
    return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmRSS")))
big, small = [], []
for _ in range(2000):
    b = libc.malloc(60 * 1024); libc.memset(b, 1, 60 * 1024); big.append(b); small.append(libc.malloc(64))
for b in big:
    libc.free(b)
before = rss()
heap.give_back_free_memory()
print(before, rss())
"""


def test_give_back_returns_the_free_pages_inside_the_heap():
    out = subprocess.run([sys.executable, "-c", FRAGMENT], capture_output=True, text=True, check=True).stdout.split()
    before, after = int(out[0]), int(out[1])
    assert before - after > 80_000, (before, after)  # of the ~117 MB freed, most was still held before the trim


def test_an_evaluation_item_gives_the_worker_heap_back(lossless_video, monkeypatch):
    """Each evaluation item ends with give_back_free_memory (a no-op outside a worker set up for it); the
    workers of every loader built with release_memory are set up for it."""
    calls = []
    monkeypatch.setattr(dataset_module, "give_back_free_memory", lambda: calls.append(1))
    ds = VideoClipDataset([VideoSample(str(lossless_video), 0)] * 2, clip_len=4, stride=2, train=False,
                          transform=build_transform(False, crop_size=32, short_side=40), short_side=40, num_clips=3)
    assert ds[0]["valid"] and ds[1]["valid"] and len(calls) == 2

    def worker_heap_managed(_):
        from videoft.data import heap
        return torch.tensor([heap._libc is not None])

    options = loader_options(1, torch.device("cpu"), release_memory=True)
    managed = next(iter(DataLoader(range(1), batch_size=1, **{**options, "collate_fn": worker_heap_managed})))
    plain = next(iter(DataLoader(range(1), batch_size=1, **{**loader_options(1, torch.device("cpu")),
                                                               "collate_fn": worker_heap_managed})))
    assert managed.item() and not plain.item()
