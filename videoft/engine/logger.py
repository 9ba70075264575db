"""What a user watches during a run: one log line per epoch, metrics.jsonl, TensorBoard, curves PNG."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

log = logging.getLogger("videoft")


class RunLogger:
    """Rank 0 writes; other ranks get a disabled logger that does nothing."""

    def __init__(self, out_dir: str | Path, class_names: list[str], *, enabled: bool = True):
        self.out_dir = Path(out_dir)
        self.class_names = class_names
        self.enabled = enabled
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but keep training if it is broken
                log.warning("tensorboard is not importable; writing metrics.jsonl only")

    def epoch(self, row: dict) -> None:
        """Log the epoch's summary line, append to metrics.jsonl, write TensorBoard scalars."""
        if not self.enabled:
            return
        parts = [f"epoch {row['epoch']}", f"train loss {row['train_loss']:.4f}", f"acc {row['train_acc']:.3f}"]
        if "val_top1" in row:
            parts += [f"val loss {row.get('val_loss', math.nan):.4f}", f"val top1 {row['val_top1']:.3f}",
                      f"mean-class {row['val_mean_class_accuracy']:.3f}",
                      f"video top1 {row['val_video_top1']:.3f}"]
            if "val_online_video_top1" in row:  # train.ema_decay: the trained weights beside their average
                parts += [f"trained weights: val top1 {row['val_online_top1']:.3f}, video top1 "
                          f"{row['val_online_video_top1']:.3f}"]
        parts += [f"lr {row['lr']:.2e}", f"{row['clips_per_s']:.1f} clips/s"]
        log.info(" | ".join(parts))
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            step = row["step"]
            loss = {"train": row["train_loss"]}
            if "val_loss" in row and not math.isnan(row["val_loss"]):
                loss["val"] = row["val_loss"]
            self.writer.add_scalars("loss", loss, step)  # one chart: train beside val
            acc = {"train": row["train_acc"]}
            if "val_top1" in row:
                acc["val"] = row["val_top1"]
                self.writer.add_scalar("val/mean_class_accuracy", row["val_mean_class_accuracy"], step)
                self.writer.add_scalar("val/video_top1", row["val_video_top1"], step)
            self.writer.add_scalars("accuracy", acc, step)
            self.writer.add_scalar("lr", row["lr"], step)
            self.writer.add_scalar("throughput/clips_per_s", row["clips_per_s"], step)
            self.writer.flush()

    def confusion(self, metrics: dict, step: int) -> None:
        """The validation confusion matrix as a TensorBoard image."""
        if not self.enabled or self.writer is None or not metrics.get("video_level"):
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        cm = np.array(metrics["video_level"]["confusion_matrix"], dtype=float)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        n = len(self.class_names)
        fig, ax = plt.subplots(figsize=(2 + 0.35 * n, 2 + 0.35 * n))
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(n), self.class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), self.class_names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.tight_layout()
        self.writer.add_figure("val/confusion_matrix", fig, step)  # closes the figure

    def close(self, history: list[dict]) -> None:
        """Write train_curves.png (loss and accuracy, train vs val) and close TensorBoard."""
        if not self.enabled:
            return
        if self.writer is not None:
            self.writer.close()
        if history:
            write_curves(history, self.out_dir / "train_curves.png")


def write_curves(history: list[dict], path: str | Path) -> None:
    """Loss and accuracy per epoch, train beside val, so overfitting is visible at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ema = any("val_online_loss" in r for r in history)  # train.ema_decay: validation of the average and the weights
    of = ", average" if ema else ""
    val_loss = [(r["epoch"], r["val_loss"]) for r in history if not math.isnan(r.get("val_loss", math.nan))]
    if val_loss:
        ax_loss.plot([v[0] for v in val_loss], [v[1] for v in val_loss], "s-", label=f"val (clip{of})")
    online = [(r["epoch"], r["val_online_loss"], r["val_online_video_top1"]) for r in history
              if "val_online_loss" in r]
    if online:
        ax_loss.plot([v[0] for v in online], [v[1] for v in online], "s:", label="val (clip, trained weights)")
    ax_loss.set_title("loss (cross-entropy)")
    ax_acc.plot(epochs, [r["train_acc"] for r in history], "o-", label="train (clip)")
    val = [(r["epoch"], r["val_top1"], r["val_video_top1"]) for r in history
           if "val_top1" in r and not math.isnan(r["val_top1"])]
    if val:
        ax_acc.plot([v[0] for v in val], [v[1] for v in val], "s-", label=f"val (clip{of})")
        ax_acc.plot([v[0] for v in val], [v[2] for v in val], "^--", label=f"val (video{of})")
    if online:
        ax_acc.plot([v[0] for v in online], [v[2] for v in online], "^:", label="val (video, trained weights)")
    ax_acc.set_ylim(0, 1.02)
    ax_acc.set_title("accuracy")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
