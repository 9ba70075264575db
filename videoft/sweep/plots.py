"""The sweep's plots: optimisation history, validation curves, parameter importance, objective per parameter.

matplotlib's Figure with the Agg canvas (no pyplot): headless, and no figure is left open.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial, TrialState

from videoft.sweep.space import Param, yaml_scalar

if TYPE_CHECKING:
    from videoft.sweep.outputs import SweepView

_COMPLETE, _PRUNED, _FAILED, _BEST = "tab:blue", "tab:gray", "tab:red", "tab:orange"


def write_plots(view: SweepView, importances: dict[str, float], out: Path) -> dict[str, Path]:
    """The PNGs the study's state allows (none before a trial has finished); {file name: path}."""
    finished = [t for t in view.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    written = {}
    if finished:
        written["history.png"] = plot_history(view, out / "history.png")
    if any(t.intermediate_values for t in view.trials):
        written["curves.png"] = plot_curves(view, out / "curves.png")
    if importances:
        complete = sum(t.state == TrialState.COMPLETE for t in view.trials)
        written["importance.png"] = plot_importance(importances, out / "importance.png", complete)
    if any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in view.trials):
        written["slices.png"] = plot_slices(view, out / "slices.png")
    return written


def _value(t: FrozenTrial) -> float | None:
    """A complete trial's value; a pruned one's best reported value."""
    if t.state == TrialState.COMPLETE:
        return t.value
    if t.state == TrialState.PRUNED and t.intermediate_values:
        return max(t.intermediate_values.values())
    return None


def plot_history(view: SweepView, path: Path) -> Path:
    """Each trial's value by trial number, the best so far as a step line, failures marked on the axis."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.2), dpi=110)
    ax = fig.add_subplot()
    done = [t for t in view.trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in view.trials if _value(t) is not None and t.state == TrialState.PRUNED]
    failed = [t for t in view.trials if t.state == TrialState.FAIL]
    ax.plot([t.number for t in done], [t.value for t in done], "o", color=_COMPLETE, label="complete")
    if pruned:
        ax.plot([t.number for t in pruned], [_value(t) for t in pruned], "x", color=_PRUNED,
                label="pruned (best reported)")
    if done:
        xs, best, running = [], [], -math.inf
        for t in sorted(done, key=lambda t: t.number):
            running = max(running, t.value)
            xs.append(t.number)
            best.append(running)
        ax.step(xs + [view.trials[-1].number], best + [best[-1]], where="post", color=_BEST, label="best so far")
    lo, hi = ax.get_ylim() if done or pruned else (0.0, 1.0)
    if failed:
        ax.plot([t.number for t in failed], [lo] * len(failed), "v", color=_FAILED, clip_on=False,
                label="failed / interrupted")
    ax.set_ylim(lo, hi)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {view.settings.metric}")
    ax.set_title("Optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_curves(view: SweepView, path: Path) -> Path:
    """The validation metric per epoch of every trial (pruned ones grey, the best one thick)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.2), dpi=110)
    ax = fig.add_subplot()
    best = view.best.number if view.best is not None else None
    for t in view.trials:
        if not t.intermediate_values:
            continue
        epochs = sorted(t.intermediate_values)
        values = [t.intermediate_values[e] for e in epochs]
        if t.number == best:
            ax.plot(epochs, values, "o-", color=_BEST, linewidth=2.5, zorder=3, label=f"best (trial {t.number})")
        elif t.state == TrialState.PRUNED:
            ax.plot(epochs, values, "x--", color=_PRUNED, linewidth=1)
        else:
            ax.plot(epochs, values, ".-", color=_COMPLETE, linewidth=1, alpha=0.7)
    if any(t.state == TrialState.PRUNED and t.intermediate_values for t in view.trials):
        ax.plot([], [], "x--", color=_PRUNED, label="pruned")
    if any(t.number != best and t.state != TrialState.PRUNED and t.intermediate_values for t in view.trials):
        ax.plot([], [], ".-", color=_COMPLETE, label="other trials")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {view.settings.metric}")
    ax.set_title("Validation curves")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_importance(importances: dict[str, float], path: Path, complete_trials: int) -> Path:
    """Horizontal bars, most important on top."""
    from matplotlib.figure import Figure

    names = list(importances)[::-1]
    fig = Figure(figsize=(8, 1.2 + 0.35 * len(names)), dpi=110)
    ax = fig.add_subplot()
    ax.barh(range(len(names)), [importances[n] for n in names], color=_COMPLETE)
    ax.set_yticks(range(len(names)), names, fontsize=9)
    for i, n in enumerate(names):
        ax.text(importances[n], i, f" {importances[n]:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max(importances.values()) * 1.15 or 1.0)
    ax.set_xlabel("importance (PED-ANOVA, sums to 1)")
    rough = "; rough below ~10" if complete_trials < 10 else ""
    ax.set_title(f"Parameter importance (from {complete_trials} complete trials{rough})")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_slices(view: SweepView, path: Path) -> Path:
    """One panel per parameter: each trial's value against the parameter's value (log axis for log ranges)."""
    from matplotlib.figure import Figure

    params = view.space.params
    cols = min(3, len(params))
    rows = math.ceil(len(params) / cols)
    most = max((len(p.choices) for p in params if p.kind == "choices"), default=0)
    fig = Figure(figsize=(max(3.6, 0.42 * most) * cols, 2.9 * rows + (0.5 if most > 6 else 0)), dpi=110)
    axes = fig.subplots(rows, cols, squeeze=False)
    scored = [t for t in view.trials if _value(t) is not None]
    for ax, p in zip(axes.flat, params):
        for state, marker, color in ((TrialState.COMPLETE, "o", _COMPLETE), (TrialState.PRUNED, "x", _PRUNED)):
            ts = [t for t in scored if t.state == state and p.key in t.params]
            xs = [t.params[p.key] for t in ts]
            if p.kind == "choices":
                stored = [repr(c) for c in p.distribution().choices]
                xs = [stored.index(repr(x)) for x in xs]
            ax.plot(xs, [_value(t) for t in ts], marker, color=color, linestyle="none")
        _param_axis(ax, p)
        ax.set_title(p.key, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(params):]:
        ax.set_visible(False)
    fig.supylabel(f"validation {view.settings.metric}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _param_axis(ax, p: Param) -> None:
    """The x axis spans the parameter's whole range (or all its choices), so a panel shows where trials fell."""
    if p.kind == "choices":
        labels = [yaml_scalar(c) for c in p.choices]
        crowded = len(labels) > 6 or sum(map(len, labels)) > 40  # long or many labels: turned further
        ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=45 if crowded else 20 if len(labels) > 3 else 0,
                      ha="right" if crowded else "center")
        ax.set_xlim(-0.5, len(labels) - 0.5)
        return
    if p.log:
        from matplotlib.ticker import LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.set_xlim(p.low / 1.2, p.high * 1.2)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 3.0)))  # 1e-4, 3e-4, 1e-3, ...
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=p.kind == "int"))
        margin = 0.05 * (p.high - p.low)
        ax.set_xlim(p.low - margin, p.high + margin)
