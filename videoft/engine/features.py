"""Linear probing on cached features: run the frozen backbone once, then train the head on the cache.

With the whole backbone frozen (BatchNorm in eval mode) and deterministic views (the eval
preset), the backbone's output for a view never changes, so computing it once gives the same
training as recomputing it every epoch, at a fraction of the decoding and forward cost.

The cache lives on disk: each rank writes the features of its shard of the videos to its own
file as they are computed (one batch in memory at a time), then every rank opens every rank's
file: loaded into RAM when the whole cache is below a threshold, memory-mapped above it (the
pages are then shared by the ranks of a machine through the page cache and read on demand).
Nothing is gathered through the process group. Several machines need the cache folder on a
shared filesystem (as `out_dir` already is for resuming).
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from videoft.data.dataset import Item
from videoft.data.loaders import build_eval_loader, loader_options
from videoft.data.samplers import epoch_key
from videoft.engine.distributed import DistInfo, all_reduce_sum, barrier, gather_to_main
from videoft.engine.evaluate import forward_views
from videoft.engine.standardize import feature_moments
from videoft.progress import progress

log = logging.getLogger("videoft")


@torch.no_grad()
def write_feature_shard(backbone: torch.nn.Module, loader, path: str | Path, *, num_videos: int,
                        device: torch.device, amp_dtype: torch.dtype | None = None, show_progress: bool = True) -> list:
    """Features [V, D] of every decodable video of `loader` (at most `num_videos`), written batch by batch
    to `path`.npy (float32 [num_videos, V, D]), their dataset indices to `path`.index.npy; returns the failures."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = backbone.training
    backbone.eval()
    data: np.memmap | None = None
    indices: list[int] = []
    failures: list = []
    for batch in progress(loader, desc="cache features", enabled=show_progress, unit="batch"):
        failures += batch["failures"]
        valid = batch["valid"]
        if not valid.any():
            continue
        out = forward_views(backbone, batch["video"][valid], device=device, amp_dtype=amp_dtype)  # [B, V, D]
        if data is None:  # the feature shape is known at the first batch
            data = np.lib.format.open_memmap(path.with_suffix(".npy"), mode="w+", dtype=np.float32,
                                             shape=(num_videos, *out.shape[1:]))
        data[len(indices):len(indices) + len(out)] = out.numpy()
        indices += batch["index"][valid].tolist()
    backbone.train(was_training)
    if data is not None:
        data.flush()
        del data
    np.save(path.with_suffix(".index.npy"), np.asarray(indices, np.int64))  # written last: the shard is complete
    return failures


class FeatureStore:
    """Every rank's feature shard, looked up by dataset index: in RAM or memory-mapped."""

    def __init__(self, shards: list[tuple[np.ndarray, np.ndarray]], num_samples: int, *, nbytes: int = 0,
                 memory_mapped: bool = False):
        """shards: (dataset indices [n], features [>= n, V, D]) per rank."""
        self.shards = [data for _, data in shards]
        self.nbytes, self.memory_mapped = nbytes, memory_mapped
        self.shard_of = np.full(num_samples, -1, np.int32)
        self.row_of = np.zeros(num_samples, np.int64)
        for s, (indices, _) in enumerate(shards):
            self.shard_of[indices] = s
            self.row_of[indices] = np.arange(len(indices))

    @classmethod
    def open(cls, paths: list[Path], num_samples: int, *, ram_limit_bytes: float) -> FeatureStore:
        """Open the shards written by write_feature_shard; memory-map them when their total exceeds the limit."""
        data_files = [p.with_suffix(".npy") for p in paths]
        total = sum(f.stat().st_size for f in data_files if f.exists())
        mmap = total > ram_limit_bytes
        shards = []
        for path, data_file in zip(paths, data_files):
            indices = np.load(path.with_suffix(".index.npy"))
            data = np.load(data_file, mmap_mode="r" if mmap else None) if data_file.exists() else np.empty((0,))
            shards.append((indices, data))
        return cls(shards, num_samples, nbytes=total, memory_mapped=mmap)

    def __len__(self) -> int:
        return int((self.shard_of >= 0).sum())

    def indices(self) -> np.ndarray:
        """The dataset indices of the cached videos (those that decoded), in order."""
        return np.flatnonzero(self.shard_of >= 0)

    def arrays(self, labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:  # features [n, V, D], labels [n]
        """Every cached video's features in dataset order, with its label (for a full-batch solver)."""
        indices = self.indices()
        feats = [self.get(int(i)) for i in indices]
        x = torch.stack(feats) if feats else torch.empty(0)
        return x, torch.as_tensor(np.asarray(labels)[indices], dtype=torch.long)

    def moments(self, dim: int) -> torch.Tensor:
        """feature_moments over every cached view (each rank reads every shard: the same on every rank)."""
        return feature_moments((self.get(int(i)) for i in self.indices()), dim)

    def get(self, index: int) -> torch.Tensor | None:  # [V, D]
        s = self.shard_of[index]
        return None if s < 0 else torch.from_numpy(np.array(self.shards[s][self.row_of[index]]))


class FeatureDataset(Dataset):
    """Cached per-view features in the place of videos: items look like VideoClipDataset's."""

    def __init__(self, features: FeatureStore, labels: list[int]):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        """Nothing to re-draw: the views are deterministic."""

    def __getitem__(self, key: int | tuple[int, int]) -> Item:
        index, _ = epoch_key(key, 0)
        feats = self.features.get(index)
        return Item(video=feats, label=self.labels[index], index=index, valid=feats is not None,
                    frame_indices=None, failures=[])


def _write_and_open(backbone: torch.nn.Module, shard: DataLoader, dist: DistInfo, cache_dir: Path, *,
                    amp_dtype: torch.dtype | None, ram_limit_mb: float) -> tuple[FeatureStore, list]:
    """Each rank writes the features of its shard, then opens every rank's; returns the store and this
    rank's decode failures."""
    if dist.is_main:  # a previous run's shards (maybe of another world size) must not be read
        shutil.rmtree(cache_dir, ignore_errors=True)
        cache_dir.mkdir(parents=True)
    barrier()
    paths = [cache_dir / f"rank{r:05d}" for r in range(dist.world_size)]
    failures = write_feature_shard(backbone, shard, paths[dist.rank], num_videos=len(shard.sampler),
                                   device=dist.device, amp_dtype=amp_dtype, show_progress=dist.is_main)
    barrier()  # every shard is complete
    return FeatureStore.open(paths, len(shard.dataset), ram_limit_bytes=ram_limit_mb * 2**20), failures


def cache_eval_features(backbone: torch.nn.Module, loader: DataLoader, dist: DistInfo, cache_dir: str | Path, *,
                        amp_dtype: torch.dtype | None = None, ram_limit_mb: float = 1024
                        ) -> tuple[FeatureStore, list]:
    """The frozen backbone's features of every view of an evaluation loader (already sharded by rank),
    e.g. the validation videos, for choosing the linear probe's L2 strength and validating the solved head;
    and the (path, reason) decode failures of every rank (on rank 0)."""
    return _write_and_open(backbone, loader, dist, Path(cache_dir), amp_dtype=amp_dtype, ram_limit_mb=ram_limit_mb)


def cache_features(backbone: torch.nn.Module, loader: DataLoader, dist: DistInfo, cache_dir: str | Path, *,
                   amp_dtype: torch.dtype | None = None, ram_limit_mb: float = 1024) -> tuple[DataLoader, list]:
    """Run the frozen backbone once over the training views of `loader` (sharded over ranks) into
    `cache_dir`, and return a loader of cached features with the same sampler and batch size, plus the
    (path, reason) decode failures of every rank (on rank 0; empty elsewhere)."""
    ds = loader.dataset
    shard = _shard_of(loader, dist)
    t0 = time.perf_counter()
    store, failures = _write_and_open(backbone, shard, dist, Path(cache_dir), amp_dtype=amp_dtype,
                                      ram_limit_mb=ram_limit_mb)
    log.info("linear probe: cached features of %d training videos (%d views each) in %.1f s: %.1f MB %s", len(store),
             ds.num_clips * getattr(ds.transform, "num_crops", 1), time.perf_counter() - t0, store.nbytes / 2**20,
             f"memory-mapped from {cache_dir}" if store.memory_mapped else "in RAM")
    cached = FeatureDataset(store, [s.label for s in ds.samples])
    parts = gather_to_main(failures)
    options = {**loader_options(0, dist.device), "generator": loader.generator}
    return (DataLoader(cached, batch_size=loader.batch_size, sampler=loader.sampler, **options),
            [f for part in parts or [] for f in part])


def _shard_of(loader: DataLoader, dist: DistInfo) -> DataLoader:
    """This rank's share of a fixed-view training loader's videos, each video once (no padding)."""
    return build_eval_loader(loader.dataset, batch_size=loader.batch_size, num_workers=loader.num_workers,
                             rank=dist.rank, world_size=dist.world_size, device=dist.device)


@torch.no_grad()
def view_feature_moments(backbone: torch.nn.Module, loader: DataLoader, dist: DistInfo, dim: int, *,
                         amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """feature_moments of the frozen backbone's features of every training view of `loader` (fixed views),
    without a cache: each rank its shard, summed over the ranks (the linear probe trained by steps on
    features computed every step standardises with them)."""
    was_training = backbone.training
    backbone.eval()
    rows = (forward_views(backbone, batch["video"][batch["valid"]], device=dist.device, amp_dtype=amp_dtype)
            for batch in progress(_shard_of(loader, dist), desc="feature statistics", enabled=dist.is_main,
                                  unit="batch") if batch["valid"].any())
    try:
        moments = feature_moments(rows, dim)
    finally:
        backbone.train(was_training)
    return all_reduce_sum(moments)
