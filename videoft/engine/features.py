"""Linear probing on cached features: run the frozen backbone once, then train the head on the cache.

With the whole backbone frozen (BatchNorm in eval mode) and deterministic views (the eval
preset), the backbone's output for a view never changes, so computing it once gives the same
training as recomputing it every epoch, at a fraction of the decoding and forward cost.
"""
from __future__ import annotations

import logging
import time

import torch
from torch.utils.data import DataLoader, Dataset

from videoft.data.dataset import Item, collate
from videoft.data.loaders import build_eval_loader
from videoft.engine.distributed import DistInfo, merge_from_ranks
from videoft.engine.evaluate import forward_views
from videoft.progress import progress

log = logging.getLogger("videoft")


@torch.no_grad()
def extract_features(backbone: torch.nn.Module, loader: DataLoader, *, device: torch.device,
                     amp_dtype: torch.dtype | None = None, show_progress: bool = True) -> tuple[dict, list]:
    """{dataset index: features [V, D]} for every decodable video of `loader`, and the failures."""
    was_training = backbone.training
    backbone.eval()
    feats: dict[int, torch.Tensor] = {}
    failures: list = []
    for batch in progress(loader, desc="cache features", enabled=show_progress, unit="batch"):
        failures += batch["failures"]
        valid = batch["valid"]
        if not valid.any():
            continue
        out = forward_views(backbone, batch["video"][valid], device=device, amp_dtype=amp_dtype)  # [B, V, D]
        for k, idx in enumerate(batch["index"][valid].tolist()):
            feats[idx] = out[k]
    backbone.train(was_training)
    return feats, failures


class FeatureDataset(Dataset):
    """Cached per-view features in the place of videos: items look like VideoClipDataset's."""

    def __init__(self, features: dict[int, torch.Tensor], labels: list[int]):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        """Nothing to re-draw: the views are deterministic."""

    def __getitem__(self, index: int) -> Item:
        feats = self.features.get(index)
        return Item(video=feats, label=self.labels[index], index=index, valid=feats is not None,
                    frame_indices=None, failures=[])


def cache_features(backbone: torch.nn.Module, loader: DataLoader, dist: DistInfo,
                   amp_dtype: torch.dtype | None = None) -> tuple[DataLoader, list]:
    """Run the frozen backbone once over the training views of `loader` (sharded over ranks), share
    them, and return a loader of cached features with the same sampler, batch size and generator,
    plus the (path, reason) decode failures."""
    ds = loader.dataset
    shard = build_eval_loader(ds, batch_size=loader.batch_size, num_workers=loader.num_workers,
                              rank=dist.rank, world_size=dist.world_size, device=dist.device)
    t0 = time.perf_counter()
    feats, failures = extract_features(backbone, shard, device=dist.device, amp_dtype=amp_dtype,
                                       show_progress=dist.is_main)
    merged, all_failures = merge_from_ranks(feats, failures)
    log.info("linear probe: cached features of %d training videos (%d views each) in %.1f s",
             len(merged), ds.num_clips * getattr(ds.transform, "num_crops", 1), time.perf_counter() - t0)
    cached = FeatureDataset(merged, [s.label for s in ds.samples])
    return DataLoader(cached, batch_size=loader.batch_size, sampler=loader.sampler, collate_fn=collate,
                      generator=loader.generator), all_failures
