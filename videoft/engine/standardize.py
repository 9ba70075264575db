"""The linear probe trained by steps (train.probe_solver=sgd) on standardised features.

A frozen backbone's pooled features sit away from zero mean and unit scale, each feature at its own scale
(the pretrained S3D features of the README's transfer runs: means 0.22-0.85, std 0.055-2.46), which a
first-order optimizer pays for with badly conditioned steps. The probe's head is therefore trained in
standardised coordinates: a Linear on (features - mean) / std, mean and std from every training view (as
the solved probe, engine/probe.py, does). The model keeps its plain head: after every optimizer step the
trained head is folded into it (W / std, b - W mean / std), so validation, EMA, checkpoints, inference and
export see one Linear on raw features, exactly as before. The standardised head itself (and the mean and
std) travel in the training state, so a resume continues with the very tensors it stopped with rather
than an unfolded approximation.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from videoft.engine.probe import fold_standardization


def feature_moments(rows: Iterable[torch.Tensor], dim: int) -> torch.Tensor:  # each [..., dim] -> [1 + 2 dim]
    """(row count, per-feature sum, per-feature sum of squares) in float64: summable across ranks (zeros for
    no rows, so a rank whose videos all failed still takes part)."""
    total = torch.zeros(1 + 2 * dim, dtype=torch.float64)
    for x in rows:
        x = x.detach().reshape(-1, dim).double().cpu()
        total[0] += len(x)
        total[1:1 + dim] += x.sum(0)
        total[1 + dim:] += x.square().sum(0)
    return total


def standardization_from(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # -> mean [D], std [D]
    """Mean and (population) std from feature_moments; constant features keep std 1 (as probe.standardization)."""
    n, dim = moments[0], (len(moments) - 1) // 2
    if n == 0:
        raise ValueError("no training features to standardise with (no training video decoded)")
    mean = moments[1:1 + dim] / n
    std = (moments[1 + dim:] / n - mean.square()).clamp_min(0).sqrt()
    return mean.float(), torch.where(std > 1e-6, std, torch.ones_like(std)).float()


class StandardizedHead(nn.Module):
    """Dropout, then a Linear on (x - mean) / std: the linear probe's head in the coordinates it trains in.

    Built from the model's head (Dropout(p), Linear): the same dropout and shape, the Linear starting from
    zero (every class equally likely, a loss of ln K), as the solver starts: a convex problem needs no random
    start, and a random one can be aligned with the features. With the seed of the run that trained the
    backbone, the new head re-draws that run's initial head, which the backbone's features grew along:
    measured on a transfer split (S3D pretrained with seed 0, probed with seed 0), a training loss of 2.9 at
    that start against 0.65-0.86 with seeds 1-3 (two classes: ln 2 = 0.69). `features`: the frozen model seen
    as its features (FeatureExtractor) when they are computed every step (train.cache_features=false); None
    when the inputs are cached features already.
    """

    def __init__(self, head: nn.Sequential, mean: torch.Tensor, std: torch.Tensor,
                 features: nn.Module | None = None):
        super().__init__()
        raw = head[-1]
        self.dropout = nn.Dropout(head[0].p if isinstance(head[0], nn.Dropout) else 0.0)
        self.linear = nn.Linear(raw.in_features, raw.out_features, device=raw.weight.device, dtype=raw.weight.dtype)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("mean", mean.to(raw.weight))
        self.register_buffer("std", std.to(raw.weight))
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # features [B, D] (or clips, with `features`) -> logits
        if self.features is not None:
            x = self.features(x)
        return self.linear(self.dropout((x - self.mean) / self.std))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """What the training step calls on uint8 clips: the classifier's normalisation (features pass unchanged)."""
        return self.features.classifier.normalize(x) if self.features is not None else x

    @torch.no_grad()
    def fold_into(self, head: nn.Sequential) -> None:
        """Write the equivalent Linear on raw features into the model's head (its last layer)."""
        weight, bias = fold_standardization(self.linear.weight, self.linear.bias, self.mean, self.std)
        head[-1].weight.copy_(weight)
        head[-1].bias.copy_(bias)

    def training_state(self) -> dict[str, torch.Tensor]:
        """The standardised head and its standardisation, for an exact resume."""
        return {"weight": self.linear.weight.detach().clone(), "bias": self.linear.bias.detach().clone(),
                "mean": self.mean.clone(), "std": self.std.clone()}

    @torch.no_grad()
    def load_training_state(self, state: dict[str, torch.Tensor]) -> None:
        self.linear.weight.copy_(state["weight"])
        self.linear.bias.copy_(state["bias"])
        self.mean.copy_(state["mean"])
        self.std.copy_(state["std"])

    @torch.no_grad()
    def unfold_from(self, head: nn.Sequential) -> None:
        """The inverse of fold_into (for a checkpoint that holds only the raw head): W std, b + W mean."""
        raw = head[-1]
        self.linear.weight.copy_(raw.weight * self.std)
        self.linear.bias.copy_(raw.bias + raw.weight @ self.mean)
