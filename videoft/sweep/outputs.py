"""What a sweep writes: summary table (stdout and summary.csv), the best config, plots, sweep.html.

Everything is rebuilt from the study's storage, so any worker of a shared study (or a later run of
tools/sweep.py with the same --trials) writes the same files. Plots use matplotlib's Figure (no pyplot,
no global backend state), like the evaluation report, whose page style sweep.html shares.
"""
from __future__ import annotations

import csv
import html
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from videoft.config import load_config, to_dict
from videoft.engine.report import _CSS, _align, _data_uri, _html_table  # the evaluation report's page style
from videoft.sweep.runner import SweepSettings
from videoft.sweep.space import SearchSpace, overrides_for, yaml_scalar
from videoft.sweep.study import retried_numbers

FILES = ("summary.csv", "best_config.yaml", "history.png", "curves.png", "importance.png", "slices.png",
         "sweep.html")
_FIXED_COLUMNS = ["trial", "state", "value", "best epoch", "epochs", "minutes"]


@dataclass
class SweepView:
    """A study's trials as the outputs need them."""

    study: optuna.Study
    settings: SweepSettings
    space: SearchSpace
    trials: list[FrozenTrial]
    best: FrozenTrial | None

    @classmethod
    def of(cls, study: optuna.Study, settings: SweepSettings, space: SearchSpace) -> SweepView:
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
        return cls(study, settings, space, trials, best)

    def state(self, t: FrozenTrial) -> str:
        if t.state == TrialState.FAIL and (t.user_attrs.get("interrupted") or t.number in retried_numbers(self.trials)):
            return "interrupted"
        return {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
                TrialState.RUNNING: "running", TrialState.WAITING: "queued"}[t.state]

    def note(self, t: FrozenTrial) -> str:
        a = t.user_attrs
        retried_as = [u.number for u in self.trials if u.user_attrs.get("retry_of") == t.number]
        parts = [a.get("error"), a.get("stopped"), f"retry of trial {a['retry_of']}" if "retry_of" in a else None,
                 f"retried as trial {retried_as[0]}" if retried_as else None]
        if t.state == TrialState.PRUNED and t.intermediate_values:
            parts.append(f"pruned at epoch {max(t.intermediate_values)}")
        return "; ".join(p for p in parts if p)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[self.state(t)] = out.get(self.state(t), 0) + 1
        return out


def _fmt(value, precise: bool) -> str:
    """A parameter value as YAML (false, null, [1.0, 1.25]); floats to 4 digits unless `precise`."""
    if isinstance(value, float) and not precise:
        return f"{value:.4g}"
    return yaml_scalar(value)


def summary_rows(view: SweepView, *, note_chars: int | None = None, precise: bool = False) -> list[list[str]]:
    """Header + one row per trial: number (* = best), state, value, epochs, minutes, parameters, note."""
    keys = view.space.keys
    rows = [[*_FIXED_COLUMNS, *keys, "note"]]
    for t in view.trials:
        a = t.user_attrs
        values = view.space.config_values(t.params)
        note = view.note(t)
        if note_chars and len(note) > note_chars:
            note = note[:note_chars - 3] + "..."
        mark = "*" if view.best is not None and t.number == view.best.number else ""
        rows.append([f"{mark}{t.number}", view.state(t), "" if t.value is None else f"{t.value:.4f}",
                     str(a.get("best_epoch", "")), str(a.get("epochs", "")), str(a.get("minutes", "")),
                     *[_fmt(values[k], precise) if k in values else "" for k in keys], note])
    return rows


def format_summary(view: SweepView) -> str:
    """The summary table for the terminal, with the best trial and how to use it."""
    lines = _align(summary_rows(view, note_chars=70))
    counts = ", ".join(f"{n} {state}" for state, n in view.counts().items())
    lines += ["", f"study {view.study.study_name}: {counts}; objective: validation {view.settings.metric} (max, "
              f"{_objective(view.settings)})"]
    if view.best is not None:
        b = view.best
        lines += [f"best: trial {b.number}, {view.settings.metric} {b.value:.4f} {_scored(b)} "
                  f"({b.user_attrs.get('out_dir', '')})",
                  "  " + " ".join(overrides_for(view.space.config_values(b.params)))]
    return "\n".join(lines)


def _objective(settings: SweepSettings) -> str:
    return f"mean of the last {settings.score_last} validated epochs" if settings.score_last else "best epoch"


def _scored(trial: FrozenTrial) -> str:
    """Where a trial's value comes from: its best epoch, or the epochs averaged (--score-last)."""
    a = trial.user_attrs
    return f"mean of epochs {a['scored_epochs']}" if "scored_epochs" in a else f"at epoch {a.get('best_epoch', '?')}"


def write_summary_csv(view: SweepView, path: Path) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    rows = summary_rows(view, precise=True)
    writer.writerow([c.replace(" ", "_") for c in rows[0]])
    for row, t in zip(rows[1:], view.trials):
        writer.writerow([t.number, *row[1:]])  # the number without the best mark; the mark is in best_config.yaml
    _write_atomic(path, buf.getvalue())


def write_best_config(view: SweepView, path: Path) -> None:
    """The base config with the best trial's parameters: a ready config for tools/train.py."""
    s, best = view.settings, view.best
    assert best is not None
    values = view.space.config_values(best.params)
    cfg = load_config(s.config, [*s.overrides, *overrides_for(values), f"out_dir={s.sweep_dir / 'best_run'}"])
    trial_dir = best.user_attrs.get("out_dir", s.trial_dir(best.number))
    header = [
        f"# Best trial of sweep {view.study.study_name}: trial {best.number}, validation {s.metric} "
        f"{best.value:.4f} {_scored(best)}.",
        f"# Base config {s.config} with: " + " ".join([*s.overrides, *overrides_for(values)]),
        "# Train with it:           python tools/train.py " + str(path),
        f"# Its checkpoint on test:  python tools/evaluate.py {trial_dir}/best.pt --data {cfg.data.root} "
        "--split test",
        "# (the sweep never reads the test split: evaluate the chosen config on it once, at the end)",
    ]
    _write_atomic(path, "\n".join(header) + "\n" + yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _write_atomic(path: Path, text: str) -> None:
    """Several workers of one study may write the same file: never leave a torn one."""
    tmp = path.with_name(f".{path.name}.{id(text)}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def param_importances(view: SweepView) -> tuple[dict[str, float], str | None]:
    """PED-ANOVA importances over complete trials, or ({}, why they cannot be estimated)."""
    complete = [t for t in view.trials if t.state == TrialState.COMPLETE]
    varied = [k for k in view.space.keys if len({repr(t.params.get(k)) for t in complete}) > 1]
    if len(complete) < 2 or not varied:
        return {}, (f"needs at least 2 complete trials with different parameter values "
                    f"({len(complete)} complete, {len(varied)} parameter(s) varied)")
    if len({t.value for t in complete}) == 1:
        return {}, f"all {len(complete)} complete trials have the same value ({complete[0].value:.4f})"
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PED-ANOVA warns on few trials; the plot's title says how many
        try:
            scores = get_param_importances(view.study, evaluator=PedAnovaImportanceEvaluator(), params=varied)
        except (ValueError, RuntimeError) as err:
            return {}, f"could not be estimated: {err}"
    return dict(scores), None


def write_outputs(view: SweepView) -> dict[str, Path]:
    """Every output file that the study's state allows; returns {name: path} of those written."""
    from videoft.sweep import plots

    out = view.settings.sweep_dir
    written = {"summary.csv": out / "summary.csv"}
    write_summary_csv(view, written["summary.csv"])
    if view.best is not None:
        written["best_config.yaml"] = out / "best_config.yaml"
        write_best_config(view, written["best_config.yaml"])
    importances, why_not = param_importances(view)
    images = plots.write_plots(view, importances, out)
    written.update(images)
    written["sweep.html"] = out / "sweep.html"
    _write_atomic(written["sweep.html"], render_html(view, images, importances, why_not))
    return written


def render_html(view: SweepView, images: dict[str, Path], importances: dict[str, float], why_not: str | None
                ) -> str:
    """One self-contained page: what was searched, the best trial, the table, the plots."""
    e, s = html.escape, view.settings
    space_rows = [["key", "searched"]] + [[p.key, p.describe()] for p in view.space.params]
    best = "<p>No complete trial yet.</p>"
    if view.best is not None:
        b = view.best
        best = (f"<p>Trial {b.number}: validation {e(s.metric)} <b>{b.value:.4f}</b> {e(_scored(b))}, "
                f"in {e(str(b.user_attrs.get('out_dir', '')))}.</p>\n"
                f"<pre>{e(' '.join(overrides_for(view.space.config_values(b.params))))}</pre>\n"
                f"<p>Config: {e(str(s.sweep_dir / 'best_config.yaml'))}. The test split was not used; "
                "evaluate the chosen model on it once, with tools/evaluate.py (see that file's header).</p>")
    titles = {"history.png": "Optimisation history", "curves.png": "Validation curves (what the pruner saw)",
              "importance.png": "Parameter importance", "slices.png": "Objective against each parameter"}
    figures = "".join(f'<h2>{e(titles[name])}</h2>\n<img alt="{e(titles[name])}" src="{_data_uri(p)}">\n'
                      for name, p in images.items())
    if not importances:
        figures += f"<h2>Parameter importance</h2>\n<p>Not shown: {e(why_not or '')}.</p>\n"
    counts = ", ".join(f"{n} {state}" for state, n in view.counts().items())
    notes = [["trial", "note"]] + [[str(t.number), view.note(t)] for t in view.trials if view.note(t)]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Sweep {e(view.study.study_name)}</title>
<style>{_CSS}</style></head><body>
<h1>Sweep {e(view.study.study_name)}</h1>
<dl><dt>base config</dt><dd>{e(s.config)} {e(' '.join(s.overrides))}</dd>
<dt>objective</dt><dd>validation {e(s.metric)}, maximised ({e(_objective(s))})</dd>
<dt>trials</dt><dd>{e(counts)}</dd></dl>
<h2>Best trial</h2>
{best}
<h2>Search space</h2>
{_html_table(space_rows, 2)}
<h2>Trials</h2>
<p>* marks the best trial; value: {e(_objective(s))} (pruned: the last reported); notes below.</p>
{_trials_table([row[:-1] for row in summary_rows(view)])}
<h2>Notes (errors, early stops, retries)</h2>
{_html_table(notes, 2) if len(notes) > 1 else '<p>None.</p>'}
{figures}</body></html>
"""


def _trials_table(rows: list[list[str]]) -> str:
    """The summary as an HTML table: numbers right-aligned, text (state, choices, note) left-aligned."""
    def cell(c: str) -> str:
        numeric = c.lstrip("*").replace(".", "", 1).replace("e-", "", 1).lstrip("-").isdigit()
        return f"<td{' class=n' if numeric else ''}>{html.escape(c)}</td>"

    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(cell(c) for c in r) + "</tr>\n" for r in rows[1:])
    return f"<table><tr>{head}</tr>\n{body}</table>"
