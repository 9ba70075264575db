"""The study side of a sweep: storage, sampler and pruner, counting trials, and recovering interrupted ones.

A sweep asks for `--trials N` trials that ran to an end (complete, pruned, or failed by their own fault).
A trial whose *sweep process* died (kill -9, a lost machine) or was interrupted (Ctrl-C, SIGTERM) is not
one of them: it is marked FAIL and a retry with the same parameters is enqueued (user attribute
`retry_of`), which resumes from the interrupted trial's last checkpoint. Interrupted trials are found

- on this machine, at start: RUNNING trials whose sweep process (host, pid and start time) is gone;
- on any machine, with an RDB storage: RUNNING trials whose heartbeat stopped (Optuna's heartbeat,
  `--heartbeat` seconds; the grace period is twice that), checked before each new trial.
"""
from __future__ import annotations

import logging
import os
import random
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from videoft.config import Config, to_dict

log = logging.getLogger("videoft.sweep")

PRUNERS = ("median", "halving", "hyperband", "none")
SAMPLERS = ("tpe", "random", "grid")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def default_storage(sweep_dir: str | Path) -> str:
    return f"sqlite:///{Path(sweep_dir) / 'sweep.db'}"


def open_storage(url: str, *, heartbeat_s: int = 60) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL: an RDB URL (sqlite:///FILE, postgresql://..., mysql://...) or
    `journal:FILE` (Optuna's journal file, for several machines on a shared file system)."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = url[len("journal:"):]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        raise ValueError(f"--storage {url!r}: expected an RDB URL (sqlite:///sweep.db, postgresql://...) "
                         "or journal:FILE")
    import sqlalchemy.exc

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None  # several writers
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat: "experimental"
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_s or None,
                    grace_period=2 * heartbeat_s if heartbeat_s else None, heartbeat_stale_trial_callback=_retry_stale)
        except ImportError as err:  # e.g. postgresql:// without psycopg2
            raise ValueError(f"--storage {url}: {err} (install the driver SQLAlchemy names for it)") from None
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
            # workers started together on a new database race to create its tables: the loser finds them made
            if attempt == 2:
                raise
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def build_sampler(name: str, *, seed: int | None, trials: int, grid: dict[str, list] | None = None
                  ) -> optuna.samplers.BaseSampler:
    """TPE (random start-up trials: a quarter of the sweep, 3 to 10), plain random search, or every point of
    `grid` once (in random order; the study stops when they are all done)."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name != "tpe":
        raise ValueError(f"--sampler {name!r} is not one of {list(SAMPLERS)}")
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, trials // 4)))


def build_pruner(name: str, *, startup_trials: int, warmup_epochs: int, max_epochs: int
                 ) -> optuna.pruners.BasePruner:
    """Steps are epochs (1-based); a trial runs `warmup_epochs` epochs before it can be pruned."""
    # Optuna prunes from step == n_warmup_steps (and at the first rung, step == min_resource); with
    # 1-based epochs the first epoch that may be pruned is warmup_epochs + 1
    first = warmup_epochs + 1
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=first)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=max(first, max_epochs),
                                              reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"--pruner {name!r} is not one of {list(PRUNERS)}")


# set per trial, or about this machine rather than the result: a restart elsewhere may change them
NOT_PART_OF_THE_STUDY = ("out_dir", "resume", "data.num_workers", "data.decoder", "train.threads", "model.model_dir")


def study_config(cfg: Config) -> dict:
    """The base config as stored with the study (a restart must search from the same one)."""
    d = to_dict(cfg)
    for key in NOT_PART_OF_THE_STUDY:
        *sections, leaf = key.split(".")
        node = d
        for section in sections:
            node = node[section]
        node.pop(leaf)
    return d


def claim_folder(sweep_dir: Path, study: str, storage: str) -> None:
    """One study per sweep folder (trial folders are numbered per study)."""
    marker = sweep_dir / "study.txt"
    line = f"{study} {storage}\n"
    if marker.is_file() and marker.read_text() != line:
        raise ValueError(f"{sweep_dir} holds study {marker.read_text().strip()!r}; give another --out for "
                         f"study {study!r} in {storage}")
    marker.write_text(line)


def open_study(storage: optuna.storages.BaseStorage, name: str, *, definition: dict,
               sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """Create the study or load it (a restart, another worker), refusing one made for a different sweep."""
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    stored = study.user_attrs.get("videoft_sweep")
    if stored is None:
        study.set_user_attr("videoft_sweep", definition)
    elif stored != definition:
        old, new = _flat(stored), _flat(definition)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:6])
        raise ValueError(f"study {name!r} was created for another sweep ({shown}{', ...' if len(changed) > 6 else ''})"
                         "; continue it with the same config, overrides and space, or give a new --study")
    return study


def _flat(d: dict, prefix: str = "") -> dict:
    """Nested dicts as {dotted.key: value}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ---- counting and recovery ------------------------------------------------------------------------------
def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    return {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}


def count_done(study: optuna.Study) -> int:
    """Trials that ran to an end: COMPLETE, PRUNED, and FAIL except interrupted ones (they get a retry)."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) or
               (t.state == TrialState.FAIL and t.number not in retried and not t.user_attrs.get("interrupted"))
               for t in trials)


def count_running(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def enqueue_retry(study: optuna.Study, trial: FrozenTrial, why: str) -> None:
    """Queue the same parameters again; the retry resumes from the trial's last checkpoint."""
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    log.warning("trial %d %s: queued again with the same parameters", trial.number, why)


def _retry_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's heartbeat callback: a trial failed because its process stopped beating."""
    enqueue_retry(study, trial, "lost its heartbeat (its sweep process or machine is gone)")


def recover_interrupted(study: optuna.Study) -> None:
    """Fail the RUNNING trials of dead sweep processes on this machine; queue a retry of every interrupted trial."""
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        owner = t.user_attrs.get("worker")
        if t.state != TrialState.RUNNING or not owner or owner.split(":")[0] != socket.gethostname():
            continue
        if not worker_alive(owner):
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except (RuntimeError, ValueError, optuna.exceptions.UpdateFinishedTrialError):
                continue  # another process recovered it first
            enqueue_retry(study, t, f"was left RUNNING by a sweep process that died ({owner})")
    retried = retried_numbers(study.get_trials(deepcopy=False))
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.user_attrs.get("interrupted") and t.number not in retried:
            enqueue_retry(study, t, "was interrupted")


# ---- which process owns a trial --------------------------------------------------------------------------
def worker_id() -> str:
    """host:pid:start-time of this process (the start time tells a reused pid apart)."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def worker_alive(worker: str) -> bool:
    """Is the process named by `worker_id()` (on this host) still running?"""
    _, pid, start = worker.split(":")
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _start_time(int(pid)) == start  # a zombie (state Z) or a new process with the same pid: gone


@dataclass(frozen=True)
class _ProcStat:
    state: str
    start: str


def _proc_stat(pid: int) -> _ProcStat | None:
    """State and start time from /proc (Linux); None elsewhere or when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return _ProcStat(state=fields[0], start=fields[19])


def _start_time(pid: int) -> str:
    stat = _proc_stat(pid)
    if stat is None:
        return "?"
    return "zombie" if stat.state == "Z" else stat.start
