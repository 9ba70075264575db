"""The linear probe solved to convergence on cached features: standardised, L2 chosen from a grid.

A linear head on frozen features is a convex problem (multinomial logistic regression), so it
need not be trained by SGD for a fixed number of epochs: full-batch L-BFGS on the cached
features reaches the optimum in seconds. What is left to choose is the L2 strength, from a small
log grid by held-out log loss (continuous, unlike the accuracy of a few dozen videos, which moves
in steps of 1/n and ties across the grid): on the validation videos when there are at least
`min_val_videos` of them, otherwise by stratified k-fold cross-validation over the training
videos (all views of a video in one fold). The chosen strength is then refitted on all training
features from zero. Features are standardised with the training mean and std, and the result is
folded back into one Linear layer on the raw features, so a checkpoint, inference and export
need no extra state.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("videoft")

# of mean cross-entropy + l2 / 2 * ||W||^2 on standardised features; a few dozen training videos of
# 1024-d features wanted 1 or more (measured on ucf101-mini), thousands want the small end
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
MAX_FOLDS = 5


@dataclass
class ProbeFit:
    """A solved linear probe: the head on raw features, and how it was chosen (plain data, broadcastable)."""
    weight: np.ndarray          # [K, D] on raw (unstandardised) features
    bias: np.ndarray            # [K]
    l2: float
    selection: str              # how the L2 strength was chosen
    grid: list[dict] = field(default_factory=list)  # [{"l2", "heldout_log_loss"}] in grid order
    train_loss: float = math.nan   # mean cross-entropy (no penalty) of the final head on the training views
    train_acc: float = math.nan
    iterations: int = 0
    seconds: float = 0.0


def standardization(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # [N, D] -> mean [D], std [D]
    """Per-feature mean and std of the training rows; constant features keep std 1 (they stay at 0)."""
    mean, std = x.mean(0), x.std(0, unbiased=False)
    return mean, torch.where(std > 1e-6, std, torch.ones_like(std))


def fold_standardization(w: torch.Tensor, b: torch.Tensor, mean: torch.Tensor,
                         std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W (x - mean) / std + b  ==  (W / std) x + (b - (W / std) mean): one Linear on raw features."""
    w_raw = w / std
    return w_raw, b - w_raw @ mean


def fit_softmax(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, *,
                init: torch.Tensor | None = None, max_iter: int = 500,
                tol: float = 1e-6) -> tuple[torch.Tensor, int]:  # x [N, D], y [N] -> [K, D + 1] (bias last)
    """Multinomial logistic regression by full-batch L-BFGS: mean cross-entropy + l2 / 2 * ||W||^2
    (bias not penalised); returns the weights and the iterations taken."""
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1)  # [N, D + 1]
    w = (torch.zeros(num_classes, x.shape[1] + 1, dtype=x.dtype, device=x.device) if init is None
         else init.clone()).requires_grad_(True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-10,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xb @ w.T, y) + 0.5 * l2 * w[:, :-1].pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), int(opt.state[w].get("n_iter", 0))


def video_log_loss(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:  # w [K, D + 1], x [n, V, D]
    """Mean -log p(label) of each video, p averaged over its views (as video-level evaluation does)."""
    logits = x @ w[:, :-1].T + w[:, -1]  # [n, V, K]
    probs = logits.softmax(-1).mean(1)  # [n, K]
    return float(-probs.gather(1, y[:, None]).clamp_min(1e-12).log().mean())


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:  # [n] -> fold of each video [n]
    """Each class's videos dealt round-robin (in a seeded order) to k folds."""
    rng = np.random.default_rng(seed)
    folds = np.zeros(len(labels), np.int64)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        folds[members] = np.arange(len(members)) % k
    return folds


def _rows(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # [n, V, D] -> [n * V, D]
    return x.flatten(0, 1), y.repeat_interleave(x.shape[1])


def _path_scores(train: tuple[torch.Tensor, torch.Tensor], held: tuple[torch.Tensor, torch.Tensor],
                 num_classes: int, grid: tuple[float, ...]) -> list[float]:
    """Held-out video log loss along the grid, strongest L2 first, each fit warm-started from the last."""
    w, scores = None, {}
    for l2 in sorted(grid, reverse=True):
        w, _ = fit_softmax(*_rows(*train), num_classes, l2, init=w)
        scores[l2] = video_log_loss(w, *held)
    return [scores[l2] for l2 in grid]


def choose_l2(x: torch.Tensor, y: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor] | None, num_classes: int, *,
              grid: tuple[float, ...] = L2_GRID, min_val_videos: int = 30, seed: int = 0) -> tuple[list[float], str]:
    """Held-out log loss per grid value and how it was measured: on `val` (standardised [n, V, D], labels)
    when it has at least `min_val_videos` videos, else by k-fold cross-validation over the training videos."""
    if val is not None and len(val[1]) >= min_val_videos:
        return _path_scores((x, y), val, num_classes, grid), f"validation ({len(val[1])} videos)"
    labels = y.cpu().numpy()
    k = min(MAX_FOLDS, int(np.bincount(labels, minlength=num_classes).min()))
    n_val = 0 if val is None else len(val[1])
    if k < 2:  # a class with a single training video: no fold can hold it out
        if n_val:
            return (_path_scores((x, y), val, num_classes, grid),
                    f"validation ({n_val} videos; too few training videos to cross-validate)")
        middle = grid[len(grid) // 2]
        return [0.0 if l2 == middle else math.inf for l2 in grid], "none possible (default strength)"
    folds = torch.as_tensor(stratified_folds(labels, k, seed), device=x.device)
    total = np.zeros(len(grid))
    for f in range(k):
        tr, te = folds != f, folds == f
        total += np.asarray(_path_scores((x[tr], y[tr]), (x[te], y[te]), num_classes, grid)) * int(te.sum())
    reason = f"{n_val} validation videos < train.min_val_videos {min_val_videos}" if n_val else "no validation"
    return list(total / len(labels)), f"{k}-fold cross-validation on the training videos ({reason})"


def solve_linear_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, *,
                       val: tuple[torch.Tensor, torch.Tensor] | None = None, grid: tuple[float, ...] = L2_GRID,
                       min_val_videos: int = 30, seed: int = 0, verbose: bool = True) -> ProbeFit:
    """Training features x [n, V, D] with labels y [n] (and optional validation features) -> the probe."""
    t0 = time.perf_counter()
    x = x.float()
    mean, std = standardization(x.flatten(0, 1))
    xs = (x - mean) / std
    vs = None if val is None or len(val[1]) == 0 else ((val[0].float().to(x.device) - mean) / std, val[1].to(x.device))
    scores, selection = choose_l2(xs, y, vs, num_classes, grid=grid, min_val_videos=min_val_videos, seed=seed)
    best = int(np.argmin(scores))
    l2 = float(grid[best])
    if verbose and len(grid) > 1 and best in (0, len(grid) - 1) and math.isfinite(scores[best]):
        log.warning("linear probe: the chosen L2 %g is at the end of the grid %s: the best may lie beyond it", l2,
                    list(grid))
    w, iterations = fit_softmax(*_rows(xs, y), num_classes, l2)  # the refit, from zero, on all training videos
    rows, labels = _rows(xs, y)
    logits = rows @ w[:, :-1].T + w[:, -1]
    w_raw, b_raw = fold_standardization(w[:, :-1], w[:, -1], mean, std)
    fit = ProbeFit(weight=w_raw.cpu().numpy(), bias=b_raw.cpu().numpy(), l2=l2, selection=selection,
                   grid=[{"l2": float(g), "heldout_log_loss": float(s)} for g, s in zip(grid, scores)],
                   train_loss=float(F.cross_entropy(logits, labels)),
                   train_acc=float((logits.argmax(1) == labels).float().mean()), iterations=iterations,
                   seconds=time.perf_counter() - t0)
    log.log(logging.INFO if verbose else logging.DEBUG,
            "linear probe: L2 %g chosen by %s (held-out log loss %s); refit in %d L-BFGS iterations: train "
            "loss %.4f, acc %.3f (%.1f s)", l2, selection,
            " ".join(f"{g:g}:{s:.3f}" for g, s in zip(grid, scores)), iterations, fit.train_loss, fit.train_acc,
            fit.seconds)
    return fit


@dataclass
class StageChoice:
    """The probe solved on each backbone stage's features, and the stage kept (plain data, broadcastable)."""
    stage: str
    fit: ProbeFit
    table: list[dict]           # [{"stage", "l2", "heldout_log_loss"}] in stage order


def solve_probe_over_stages(x: torch.Tensor, y: torch.Tensor, columns: dict[str, slice], num_classes: int, *,
                            val: tuple[torch.Tensor, torch.Tensor] | None = None, grid: tuple[float, ...] = L2_GRID,
                            min_val_videos: int = 30, seed: int = 0) -> StageChoice:
    """The probe on each stage's features (`columns` of x [n, V, sum D]); the stage whose held-out log loss, at
    its own best L2, is lowest (model.feature_stage=auto). With no held-out measure possible: the last stage."""
    fits = {stage: solve_linear_probe(x[..., cols], y, num_classes, grid=grid, min_val_videos=min_val_videos,
                                      val=None if val is None else (val[0][..., cols], val[1]), seed=seed,
                                      verbose=False)
            for stage, cols in columns.items()}
    table = [{"stage": stage, "l2": f.l2, "heldout_log_loss": min(g["heldout_log_loss"] for g in f.grid)}
             for stage, f in fits.items()]
    measured = [r for r in table if math.isfinite(r["heldout_log_loss"])]
    none_possible = next(iter(fits.values())).selection.startswith("none possible")
    stage = table[-1]["stage"] if none_possible or not measured else \
        min(measured, key=lambda r: r["heldout_log_loss"])["stage"]
    fit = fits[stage]
    log.info("linear probe over %d stages, by held-out log loss (%s): %s; kept %s (L2 %g)", len(table),
             fit.selection, " ".join(f"{r['stage']}:{r['heldout_log_loss']:.3f}" for r in table), stage, fit.l2)
    return StageChoice(stage=stage, fit=fit, table=table)


def load_into_head(head: torch.nn.Module, fit: ProbeFit) -> None:
    """Copy the solved weights into the head's (last) Linear layer."""
    linear = head[-1] if isinstance(head, torch.nn.Sequential) else head
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(fit.weight))
        linear.bias.copy_(torch.as_tensor(fit.bias))
