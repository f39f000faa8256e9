"""Hyperparameter search on Optuna's ask/tell API: the study and its storage, the search space, the trials
a process claims, and how a job's result becomes a trial's state.

The Hydra sweeper (src/hydra_plugins/litlab_sweeper) drives it; a job reports its optimised metric to its
trial through litlab.callbacks.Pruning. A study holds exactly n_trials trials: the process that creates it
enqueues n_trials empty (WAITING) trials, its slots, and every process sharing the study claims slots one at
a time until none is left, so no trial runs twice and the total never exceeds n_trials, however many
processes on however many machines share the storage. Optuna is imported inside the functions: the
sweeper module is imported by every Hydra run."""

import importlib
import importlib.util
import inspect
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from omegaconf import DictConfig, OmegaConf

from litlab.entry import in_sweep
from litlab.errors import ConfigError

log = logging.getLogger(__name__)

SLOTS = "n_trials"  # the study's user attribute: how many slots its creator enqueued
WORKER = "worker"  # a trial's user attribute: host:pid of the process that claimed it
JOIN_WAIT_S = 60.0  # how long a process joining a new study waits for its creator's slots


def storage_of(url: str) -> Any:
    """An Optuna storage: a database URL (sqlite:///..., postgresql://..., mysql+pymysql://...) or the path of
    a journal file (a shared filesystem: NFS, Lustre; optuna-dashboard opens either as given)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if "://" not in url:
        path = Path(url).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_file() and path.stat().st_size and "op_code" not in json.loads(first_line(path)):
                raise ValueError("its first line is not an operation of Optuna's journal")
            storage = JournalStorage(JournalFileBackend(str(path)))
            storage.get_all_studies()
            return storage
        except Exception as e:  # a directory, a place that cannot be written, a file that is no journal
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}"
            raise ConfigError(
                f"hydra.sweeper.storage={url} is not an Optuna journal one can write here ({why}): "
                "give a new file's path (e.g. logs/study.journal) or a database URL (sqlite:///logs/study.db)"
            ) from e
    from sqlalchemy.exc import IntegrityError

    for attempt in range(10):
        try:
            return optuna.storages.RDBStorage(url)
        except IntegrityError:
            # Two processes creating a fresh database's tables at once: one wins, the other finds them made.
            time.sleep(0.2 * (attempt + 1))
        except Exception as e:  # a driver that is not installed, a server that does not answer, a bad URL
            driver = {"postgresql": "postgres", "mysql": "mysql"}.get(url.split(":")[0].split("+")[0])
            hint = f" (pip install -e '.[{driver}]')" if driver and "DB access module" in str(e) else ""
            raise ConfigError(
                f"hydra.sweeper.storage={url}: Optuna cannot open it{hint}: {str(e).splitlines()[0]}"
            ) from e
    return optuna.storages.RDBStorage(url)


def first_line(path: Path) -> str:
    with open(path, errors="replace") as f:
        return f.readline(1_000_000)


def optuna_class(module: Any, name: str, suffix: str, what: str) -> type:
    """optuna.samplers.TPESampler for ('tpe', 'Sampler'); every class Optuna offers has a short name."""
    classes = {c.lower().removesuffix(suffix.lower()): c for c in module.__all__ if c.endswith(suffix)}
    classes["none"] = classes.get("nop", "NopPruner") if suffix == "Pruner" else None
    key = name.lower().removesuffix(suffix.lower())
    if classes.get(key) is None:
        known = " | ".join(sorted(k for k, c in classes.items() if c))
        raise ConfigError(f"hydra.sweeper.{what}={name} is not one of Optuna's: {known}")
    return getattr(module, classes[key])


def sampler_of(name: str, kwargs: dict, seed: int | None, space: dict) -> Any:
    """The configured sampler; the grid sampler gets its grid from the search space."""
    import inspect

    import optuna

    cls = optuna_class(optuna.samplers, name, "Sampler", "sampler")
    kwargs = dict(kwargs or {})
    if "seed" in inspect.signature(cls).parameters:
        kwargs.setdefault("seed", seed)
    if cls is optuna.samplers.TPESampler:  # trials of one batch told apart while their results are pending
        kwargs.setdefault("constant_liar", True)
    if cls is optuna.samplers.GridSampler:
        kwargs.setdefault("search_space", grid_of(space))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"hydra.sweeper.sampler_kwargs: {cls.__name__} refuses them: {e}") from e


def pruner_of(name: str, kwargs: dict) -> Any:
    import optuna

    cls = optuna_class(optuna.pruners, name, "Pruner", "pruner")
    try:
        return cls(**(kwargs or {}))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"hydra.sweeper.pruner_kwargs: {cls.__name__} refuses them: {e}") from e


def parse_space(params: dict, arguments: list[str]) -> tuple[dict, list[str]]:
    """({name: Optuna distribution}, fixed overrides) from the sweeper's params and the command line:
    choice(a, b) or a,b is categorical, range(...) a stepped int or float, interval(lo, hi) continuous
    (tag(int, interval(...)) whole numbers), tag(log, ...) on a log scale; anything else is passed to every
    job as it is."""
    parser = OverridesParser.create()
    typed = parser.parse_overrides([f"{k}={v}" for k, v in (params or {}).items()])
    given = parser.parse_overrides(arguments)
    overrides = {o.get_key_element(): o for o in [*typed, *given]}  # the command line wins
    space: dict = {}
    fixed: list[str] = []
    for key, override in overrides.items():
        if not override.is_sweep_override():
            fixed.append(override.input_line)
            continue
        try:
            space[key] = distribution(override)
        except ConfigError:
            raise
        except (ValueError, TypeError, ZeroDivisionError) as e:  # Optuna's or Python's refusal of the bounds
            raise ConfigError(f"{override.input_line}: not a search space Optuna takes: {e}") from e
    return space, fixed


def distribution(override: Any) -> Any:
    """The Optuna distribution of one sweep override."""
    import optuna.distributions as d

    value = override.value()
    log_scale = "log" in value.tags
    if isinstance(value, ChoiceSweep):
        return d.CategoricalDistribution(list(override.sweep_iterator(transformer=str_choice)))
    if isinstance(value, RangeSweep):  # Python's range: the stop is left out
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"{override.input_line}: an empty range")
        kind = d.IntDistribution if all(isinstance(v, int) for v in values) else d.FloatDistribution
        return kind(values[0], values[-1], step=value.step)
    if isinstance(value, IntervalSweep) and "int" in value.tags:  # tag(int, interval(1, 8))
        return d.IntDistribution(int(value.start), int(value.end), log=log_scale)
    if isinstance(value, IntervalSweep):  # floats, as in Hydra
        return d.FloatDistribution(value.start, value.end, log=log_scale)
    raise ConfigError(f"{override.input_line}: not a search space Optuna takes (choice, range, interval)")


def str_choice(value: Any) -> Any:
    """A choice as Optuna stores it: numbers, strings and flags as they are, anything else as text."""
    return value if value is None or isinstance(value, bool | int | float | str) else str(value)


def grid_of(space: dict) -> dict[str, list]:
    """GridSampler's search space: every value of each parameter; continuous ones have no grid."""
    import numpy as np
    import optuna.distributions as d

    grid = {}
    for name, dist in space.items():
        if isinstance(dist, d.CategoricalDistribution):
            grid[name] = list(dist.choices)
        elif dist.step is not None and not getattr(dist, "log", False):
            grid[name] = np.arange(dist.low, dist.high + dist.step / 2, dist.step).tolist()
        else:
            raise ConfigError(
                f"hydra.sweeper.sampler=grid: {name} is continuous (interval): use choice() or range()"
            )
    return grid


def suggest(trial: Any, space: dict) -> None:
    """Let the sampler choose this trial's value of each parameter."""
    import optuna.distributions as d

    for name, dist in space.items():
        if isinstance(dist, d.CategoricalDistribution):
            trial.suggest_categorical(name, dist.choices)
        elif isinstance(dist, d.IntDistribution):
            trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def open_study(storage: Any, name: str, direction: str, pruner: Any, n_trials: int) -> tuple[Any, bool]:
    """(the study `name` in the storage, whether this process created it): created with n_trials slots, or
    joined; a larger n_trials than its slots adds the difference (so `hydra.sweeper.n_trials=40` extends
    a finished 20-trial search). The caller sets its sampler."""
    import optuna

    sampler = optuna.samplers.RandomSampler()  # replaced by the caller's; no TPE set up for nothing
    try:
        study = optuna.create_study(
            storage=storage, study_name=name, direction=direction, sampler=sampler, pruner=pruner
        )
        slots, created = 0, True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = (
            optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner),
            False,
        )
        if study.direction.name.lower() != direction:
            raise ConfigError(
                f"study {name} in this storage maximises or minimises the other way "
                f"({study.direction.name.lower()}s): keep its optimized_mode, or give another "
                "hydra.sweeper.study_name="
            ) from None
        slots = joined_slots(study)
    if n_trials > slots:
        for _ in range(n_trials - slots):  # not enqueue_trial: its fixed_params={} would bar GridSampler
            study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING))
        study.set_user_attr(SLOTS, n_trials)
    return study, created


def finished(study: Any) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))


def failure_rate(study: Any) -> float:
    """The share of the study's finished trials that failed."""
    done = finished(study)
    return sum(t.state.name == "FAIL" for t in done) / len(done) if done else 0.0


def joiner_seed(seed: int, done: int) -> int:
    """The sampler's seed in a process that joins or resumes a study: `seed`, the trials done and the
    process id mixed, so that its random proposals are not those of the study's first process again."""
    import numpy as np

    return int(np.random.SeedSequence([seed, done, os.getpid()]).generate_state(1)[0])


def log_best(study: Any) -> None:
    """The study's best trial so far, in one line (or why there is none)."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        log.warning(f"study {study.study_name}: no trial completed yet; see the summary")
        return
    best = study.best_trial
    params = " ".join(f"{k}={v}" for k, v in best.params.items())
    log.info(f"study {study.study_name}: best trial {best.number}, value {best.value:.6g}: {params}")


def joined_slots(study: Any) -> int:
    """The slots of a study another process created: wait (up to JOIN_WAIT_S) while it enqueues them."""
    deadline = time.monotonic() + JOIN_WAIT_S
    while (slots := study.user_attrs.get(SLOTS)) is None:
        if time.monotonic() > deadline:  # a study of another tool, or its creator died: ours from now
            return len(study.get_trials(deepcopy=False))
        time.sleep(0.2)
    return int(slots)


def claim(study: Any, n_trials: int, k: int) -> list:
    """Up to k of the study's waiting slots numbered below n_trials, each now RUNNING and this process's.

    What Study.ask does, without its fallback of creating a trial when no slot is left (that would run more
    than n_trials in all). Claiming is atomic in every storage: of two processes claiming one slot, exactly
    one succeeds."""
    import optuna
    from optuna.trial import TrialState

    claimed = []
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    for slot in sorted(waiting, key=lambda t: t.number):
        if len(claimed) == k or slot.number >= n_trials:
            break
        storage, trial_id = trial_id_of(study, slot.number)
        try:
            # Named first, so that a kill right after the claim still leaves a RUNNING trial with its owner
            # (fail_interrupted); a process that loses the claim has its name overwritten by the winner's.
            storage.set_trial_user_attr(trial_id, WORKER, worker())
            if not storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                continue  # another process claimed it first
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        trial = optuna.trial.Trial(study, trial_id)
        trial.set_user_attr(WORKER, worker())
        claimed.append(trial)
    return claimed


def trial_of(study: Any, number: int) -> Any:
    """The trial `number` of the study, to report to, suggest in or tell."""
    import optuna

    return optuna.trial.Trial(study, trial_id_of(study, number)[1])


def trial_id_of(study: Any, number: int) -> tuple[Any, int]:
    """(the study's storage, the storage's id of trial `number`). Optuna has no public API to pop a waiting
    trial without creating one, or to reopen a trial by number in another process: this is the one place
    that reads a Study's storage and id (tests/test_search.py fails when an upgrade moves them)."""
    storage = study._storage
    return storage, storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


def worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_interrupted(study: Any) -> list[int]:
    """Mark FAIL the trials that a killed process of this machine left RUNNING; the numbers. A trial
    another machine runs is left alone: only its own machine can tell whether it is still running."""
    from optuna.trial import TrialState

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = str(trial.user_attrs.get(WORKER, "")).rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not alive(int(pid)):
            trial_of(study, trial.number).set_user_attr("error", "interrupted: its process ended")
            study.tell(trial.number, state=TrialState.FAIL)
            failed.append(trial.number)
    return failed


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def outcome(job: Any) -> tuple[Any, float | None, str, str]:
    """(Optuna state, value, status, error) of a finished job, from its metrics.json: COMPLETE with a finite
    value where it ended ok, PRUNED where the pruner stopped it, FAIL otherwise (failed, diverged,
    interrupted, no result)."""
    import json

    from hydra.core.utils import JobStatus
    from optuna.trial import TrialState

    result = {"status": "no result"}
    if job.hydra_cfg is not None:
        path = Path(job.hydra_cfg.hydra.runtime.output_dir) / "metrics.json"
        result = json.loads(path.read_text()) if path.is_file() else result
    status, error = result["status"], result.get("error", "")
    value = job.return_value if job.status == JobStatus.COMPLETED else None
    if status == "pruned":
        return TrialState.PRUNED, None, status, error
    if status == "ok" and isinstance(value, int | float) and math.isfinite(value):
        return TrialState.COMPLETE, float(value), status, error
    return TrialState.FAIL, None, status, error or f"{status}: see its metrics.json"


def tell(study: Any, trial: Any, value: float | None, state: Any) -> bool:
    """Finish the trial; False where the sampler asks to stop the study (GridSampler, its grid done: it calls
    Study.stop, which Optuna allows only inside Study.optimize; the trial's state is stored before that)."""
    try:
        study.tell(trial, value, state=state)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise
        return False
    return True


def job_trial() -> Any:
    """This job's Optuna trial where it is one of our sweeper's (its job number is the trial's number);
    None in any other run."""
    if not in_sweep():
        return None
    sweeper = HydraConfig.get().sweeper
    if sweeper.get("_target_") != "hydra_plugins.litlab_sweeper.OptunaSweeper":
        return None
    import optuna

    storage = storage_of(str(sweeper.storage))
    study = optuna.load_study(
        study_name=str(sweeper.study_name),
        storage=storage,
        sampler=optuna.samplers.RandomSampler(),  # it suggests nothing here; no model to fit
        pruner=pruner_of(sweeper.pruner, OmegaConf.to_container(sweeper.pruner_kwargs)),
    )
    return trial_of(study, HydraConfig.get().job.num)


def search_space_function(name: str) -> Callable[[DictConfig, Any], None]:
    """hydra.sweeper.custom_search_space: a function (config, trial) of litlab or of a module of one's own
    project (below the working directory), never any callable Python can import (os.system). The module is
    checked before it is imported."""
    module, _, function = name.rpartition(".")
    spec = importlib.util.find_spec(module.split(".")[0]) if module else None
    origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    ours = module.startswith("litlab.") or (
        origin is not None and origin.is_relative_to(Path.cwd().resolve())
    )
    what = (
        f"hydra.sweeper.custom_search_space={name} must name a function (config, trial) of litlab or of a "
        "module of this project, as litlab.search.optimizer_knobs does"
    )
    if not ours:
        raise ConfigError(what)
    try:
        found = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{what}: {e}") from e
    if not inspect.isfunction(found) or len(inspect.signature(found).parameters) != 2:
        raise ConfigError(what)
    return found


def optimizer_knobs(config: DictConfig, trial: Any) -> None:
    """Optuna custom search space: the knobs of the optimizer this trial chose (momentum exists for
    sgd and rmsprop, not adam, so it cannot be a plain sweeper param)."""
    if trial.params.get("optimizer") in ("sgd", "rmsprop"):
        trial.suggest_float("optimizer.momentum", 0.0, 0.95)
    if trial.params.get("optimizer") == "rmsprop":
        trial.suggest_float("optimizer.alpha", 0.9, 0.999)
