"""Study bookkeeping without training: which trials count, recovering a dead worker's trial, the outputs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState, create_trial

from videoft.config import load_config
from videoft.sweep import study as st
from videoft.sweep.outputs import SweepView, format_summary, write_outputs
from videoft.sweep.runner import Objective, SweepSettings, Watch
from videoft.sweep.space import load_space

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.yaml"


@pytest.fixture(autouse=True)
def quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def dead_worker_id() -> str:
    """The worker id of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "from videoft.sweep.study import worker_id; print(worker_id())"],
                          capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def test_worker_alive_tells_a_live_process_from_a_dead_one():
    assert st.worker_alive(st.worker_id())
    assert not st.worker_alive(dead_worker_id())


def test_recover_fails_a_dead_workers_trial_and_queues_a_retry(tmp_path):
    study = st.open_study(st.open_storage(st.default_storage(tmp_path), heartbeat_s=0), "s", definition={"v": 1},
                          sampler=optuna.samplers.RandomSampler(seed=0), pruner=optuna.pruners.NopPruner())
    done = study.ask()
    done.suggest_float("x", 0, 1)
    study.tell(done, 0.5)
    orphan = study.ask()  # left RUNNING by a sweep process that died
    x = orphan.suggest_float("x", 0, 1)
    orphan.set_user_attr("worker", dead_worker_id())
    alive = study.ask()  # RUNNING in a live process (this one): left alone
    alive.suggest_float("x", 0, 1)
    alive.set_user_attr("worker", st.worker_id())
    interrupted = study.ask()  # Ctrl-C: FAIL with the attribute, retried on the next start
    interrupted.suggest_float("x", 0, 1)
    interrupted.set_user_attr("interrupted", True)
    study.tell(interrupted, state=TrialState.FAIL)
    failed = study.ask()  # failed by its own fault: counts as done, not retried
    failed.suggest_float("x", 0, 1)
    study.tell(failed, state=TrialState.FAIL)
    assert st.count_done(study) == 2

    st.recover_interrupted(study)
    trials = study.get_trials()
    assert [t.state for t in trials[:5]] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING,
                                             TrialState.FAIL, TrialState.FAIL]
    retries = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs["retry_of"] for t in retries) == [orphan.number, interrupted.number]
    assert st.count_done(study) == 2 and st.count_running(study) == 1
    st.recover_interrupted(study)  # a second start queues nothing more
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 2
    retry = study.ask()  # the queued parameters come back
    assert retry.suggest_float("x", 0, 1) == x and retry.user_attrs["retry_of"] == orphan.number


def test_a_study_made_for_another_sweep_is_refused(tmp_path):
    storage = st.open_storage(st.default_storage(tmp_path), heartbeat_s=0)
    kwargs = {"sampler": optuna.samplers.RandomSampler(), "pruner": optuna.pruners.NopPruner()}
    st.open_study(storage, "s", definition={"space": {"a": 1}, "metric": "top1"}, **kwargs)
    st.open_study(storage, "s", definition={"space": {"a": 1}, "metric": "top1"}, **kwargs)  # a restart: fine
    with pytest.raises(ValueError, match=r"created for another sweep \(space.a: 1 -> 2\)"):
        st.open_study(storage, "s", definition={"space": {"a": 2}, "metric": "top1"}, **kwargs)


def make_view(tmp_path: Path, values: list[float | None]) -> SweepView:
    """A study with one trial per value (None: a failed trial), as a finished sweep leaves it."""
    space_file = tmp_path / "space.yaml"
    space_file.write_text("optim.lr: {low: 1.0e-4, high: 0.1, log: true}\noptim.name: [sgd, adamw]\n")
    overrides = ["data.root=/data/clips"]
    space = load_space(space_file, DEMO, overrides)
    study = optuna.create_study(direction="maximize", study_name="demo")
    for i, value in enumerate(values):
        curve = {} if value is None else {e: value * e / 3 for e in (1, 2, 3)}
        state = TrialState.FAIL if value is None else TrialState.PRUNED if i == 2 else TrialState.COMPLETE
        if state == TrialState.PRUNED:
            curve = {1: curve[1]}
        study.add_trial(create_trial(
            state=state, value=value if state == TrialState.COMPLETE else None, intermediate_values=curve,
            params={"optim.lr": 10 ** (-1 - i / 2), "optim.name": ["sgd", "adamw"][i % 2]},
            distributions=space.distributions(),
            user_attrs={"error": "NonFiniteLossError: loss is nan"} if value is None else
            {"best_epoch": 3, "epochs": len(curve), "out_dir": str(tmp_path / f"trial_{i:04d}")}))
    settings = SweepSettings(config=str(DEMO), overrides=overrides, sweep_dir=tmp_path, metric="mean_class_accuracy")
    return SweepView.of(study, settings, space)


def test_outputs_of_a_sweep(tmp_path):
    view = make_view(tmp_path, [0.6, None, 0.3, 0.8, 0.5])
    written = write_outputs(view)
    assert set(written) == {"summary.csv", "best_config.yaml", "history.png", "curves.png", "importance.png",
                            "slices.png", "sweep.html"}
    rows = (tmp_path / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("trial,state,value,best_epoch,epochs,minutes,optim.lr,optim.name,note")
    assert [r.split(",")[1] for r in rows[1:]] == ["complete", "failed", "pruned", "complete", "complete"]
    assert "NonFiniteLossError" in rows[2]
    best = load_config(tmp_path / "best_config.yaml")  # a ready config for tools/train.py
    assert best.optim.lr == pytest.approx(10 ** -2.5) and best.optim.name == "adamw"
    assert best.data.root == "/data/clips" and best.out_dir == str(tmp_path / "best_run")
    header = (tmp_path / "best_config.yaml").read_text().split("\n", 5)[:5]
    assert "trial 3" in header[0] and "tools/evaluate.py" in header[3] and "--split test" in header[3]
    assert yaml.safe_load((tmp_path / "best_config.yaml").read_text())["optim"]["lr"] == best.optim.lr
    html = (tmp_path / "sweep.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "Parameter importance" in html
    text = format_summary(view)
    assert "*3" in text and "best: trial 3, mean_class_accuracy 0.8000" in text


def test_importance_needs_two_complete_trials_that_differ(tmp_path):
    view = make_view(tmp_path, [0.6, None])
    written = write_outputs(view)
    assert "importance.png" not in written and "best_config.yaml" in written
    assert "needs at least 2 complete trials" in (tmp_path / "sweep.html").read_text()
    same = make_view(tmp_path, [0.5, 0.5, 0.5, 0.5])
    assert "importance.png" not in write_outputs(same)
    assert "have the same value" in (tmp_path / "sweep.html").read_text()


@pytest.mark.parametrize("name", ["median", "halving", "hyperband"])
def test_prune_warmup_counts_the_epochs_a_trial_runs_before_it_can_be_pruned(name):
    """--prune-warmup 1: a hopeless trial survives its first epoch and is pruned at its second."""
    pruner = st.build_pruner(name, startup_trials=1, warmup_epochs=1, max_epochs=8)
    study = optuna.create_study(direction="maximize", pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):  # good trials reporting 1.0 every epoch (asked, so halving records their rungs)
        good = study.ask()
        for epoch in range(1, 9):
            good.report(1.0, epoch)
            good.should_prune()
        study.tell(good, 1.0)
    trial = study.ask()
    trial.report(0.0, 1)
    assert not trial.should_prune()
    if name != "hyperband":  # hyperband puts trials in brackets by hash: this one may have no rivals yet
        trial.report(0.0, 2)
        assert trial.should_prune()


def test_a_retry_carries_epochs_the_killed_sweep_never_reported(tmp_path):
    # the sweep was killed after the run validated epoch 2 but before it read that line of metrics.jsonl
    study = optuna.create_study(direction="maximize")
    killed = study.ask()
    killed.report(0.25, 1)
    study.tell(killed, state=TrialState.FAIL)
    settings = SweepSettings(config=str(DEMO), overrides=[], sweep_dir=tmp_path, metric="top1")
    run = settings.trial_dir(killed.number)
    run.mkdir()
    (run / "last.pt").write_bytes(b"checkpoint")  # only its presence matters here
    (run / "metrics.jsonl").write_text('{"epoch": 1, "val_top1": 0.25}\n{"epoch": 2, "val_top1": 0.5}\n'
                                       '{"epoch": 3, "val_top1": NaN}\n{"epoch": 4, "val_')  # cut mid-line
    st.enqueue_retry(study, study.trials[0], "was interrupted")
    retry = study.ask()
    resume, carried = Objective(settings, None).resume_retry(retry)
    assert resume == [f"resume={run / 'last.pt'}"]
    assert carried == {1: 0.25, 2: 0.5}
    assert study.trials[1].intermediate_values == {1: 0.25, 2: 0.5}


@pytest.mark.parametrize("score_last, expected, scored", [(0, 0.9, None), (3, 0.6, "3-5"), (9, 0.6, "1-5")])
def test_score_last_scores_a_trial_by_its_last_epochs_not_its_luckiest(tmp_path, score_last, expected, scored):
    """A lucky early epoch (0.9 at epoch 2) is the trial's value by default; --score-last K averages the
    last K validated epochs (all of them when fewer), and the summary says which."""
    study = optuna.create_study(direction="maximize")
    settings = SweepSettings(config=str(DEMO), overrides=[], sweep_dir=tmp_path, metric="top1", score_last=score_last)
    trial = study.ask()
    found = Watch(values={1: 0.3, 2: 0.9, 3: 0.5, 4: 0.6, 5: 0.7}, last_epoch=5, last_reported=5, returncode=0)
    value = Objective(settings, None).outcome(trial, found, tmp_path)
    assert value == pytest.approx(expected)
    assert trial.user_attrs.get("scored_epochs") == scored and trial.user_attrs["best_epoch"] == 2
    study.tell(trial, value)
    (tmp_path / "space.yaml").write_text("optim.lr: {low: 1.0e-4, high: 0.1, log: true}\n")
    text = format_summary(SweepView.of(study, settings, load_space(tmp_path / "space.yaml", DEMO, [])))
    assert (f"mean of epochs {scored}" if scored else "at epoch 2") in text
    assert (f"mean of the last {score_last} validated epochs" if score_last else "best epoch") in text
