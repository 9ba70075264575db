"""The linear-probe feature cache: per-rank shard files, read back in RAM or memory-mapped by dataset index."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from videoft.data.samplers import EpochKey
from videoft.engine.features import FeatureDataset, FeatureStore, write_feature_shard

V = 3  # views per video


def batch(indices: list[int], valid: list[bool]) -> dict:
    """Eval-style batch: video i is filled with the value i ([B, V, 1, 1, 1, 2] 'clips')."""
    video = torch.stack([torch.full((V, 1, 1, 1, 2), float(i)) for i in indices])
    return {"video": video, "index": torch.tensor(indices), "label": torch.zeros(len(indices), dtype=torch.long),
            "valid": torch.tensor(valid), "frame_indices": [None] * len(indices),
            "failures": [(f"v{i}.mp4", "broken") for i, ok in zip(indices, valid) if not ok]}


@pytest.fixture
def shards(tmp_path):
    """Two ranks' shards of 5 videos: rank 0 has 0, 2, 4 (4 undecodable), rank 1 has 1, 3."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(2, 4))
    paths = [tmp_path / "rank00000", tmp_path / "rank00001"]
    failures = [write_feature_shard(backbone, [batch([0, 2], [True, True]), batch([4], [False])], paths[0],
                                    num_videos=3, device=torch.device("cpu"), show_progress=False),
                write_feature_shard(backbone, [batch([1, 3], [True, True])], paths[1], num_videos=2,
                                    device=torch.device("cpu"), show_progress=False)]
    with torch.no_grad():
        expected = {i: backbone(torch.full((V, 1, 1, 1, 2), float(i))) for i in range(4)}  # [V, D]
    return paths, failures, expected


@pytest.mark.parametrize("ram_limit", [2**30, 0])
def test_every_rank_reads_every_shard(shards, ram_limit):
    paths, failures, expected = shards
    assert failures == [[("v4.mp4", "broken")], []]
    store = FeatureStore.open(paths, 5, ram_limit_bytes=ram_limit)
    assert store.memory_mapped == (ram_limit == 0)
    assert all(isinstance(s, np.memmap) == store.memory_mapped for s in store.shards)
    assert len(store) == 4 and store.get(4) is None
    for i, feats in expected.items():
        torch.testing.assert_close(store.get(i), feats)
    ds = FeatureDataset(store, [0, 1, 0, 1, 0])
    item = ds[EpochKey(3, 7)]  # the training sampler's keys
    assert item["index"] == 3 and item["label"] == 1 and item["valid"]
    torch.testing.assert_close(item["video"], expected[3])
    assert not ds[4]["valid"]
