"""litlab's Optuna sweeper (Hydra finds sweepers only in the hydra_plugins package). Its config:
conf/hydra/sweeper/optuna.yaml; the study, its slots and its trials: src/litlab/search.py."""

import logging
import os
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from litlab import search
from litlab.checks import typed
from litlab.entry import highest_missing, remove_empty
from litlab.errors import ConfigError

log = logging.getLogger(__name__)


class OptunaSweeper(Sweeper):
    """Runs a study's trials through Hydra's launcher, a batch of n_jobs at a time, until the study's
    n_trials slots are all taken; several processes given one storage and study_name share the slots."""

    def __init__(
        self,
        storage: str,
        study_name: str,
        direction: str,
        n_trials: int,
        n_jobs: int | None,
        sampler: str,
        sampler_kwargs: DictConfig | None,
        seed: int | None,
        pruner: str,
        pruner_kwargs: DictConfig | None,
        max_failure_rate: float,
        params: DictConfig | None,
        custom_search_space: str | None,
    ) -> None:
        self.storage, self.study_name, self.direction = storage, study_name, direction
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.sampler, self.seed, self.pruner = sampler, seed, pruner
        self.sampler_kwargs, self.pruner_kwargs, self.params = sampler_kwargs, pruner_kwargs, params
        self.custom_search_space = custom_search_space

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        space, fixed, extend, pruner, batch = self.check(arguments)
        sweep_dir = Path(self.config.hydra.sweep.dir).absolute()
        made = highest_missing(sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)  # where the default storage lives
        try:
            storage = search.storage_of(self.storage)
        except ConfigError:  # refused: nothing of the sweep stays
            if made is not None:
                remove_empty(sweep_dir, made)
            raise
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")  # as Hydra's own sweeper does
        # A sampler seeded alike in every process (or on every resume) would propose the same trials again:
        # the study's creator takes `seed`; a process that joins or resumes it, `seed` mixed with the trials
        # done and its process id.
        study, created = search.open_study(storage, self.study_name, self.direction, pruner, self.n_trials)
        interrupted = search.fail_interrupted(study)
        done = len(search.finished(study))
        seed = self.seed if created or self.seed is None else search.joiner_seed(self.seed, done)
        study.sampler = search.sampler_of(self.sampler, self.sampler_kwargs, seed, space)
        log.info(
            f"study {self.study_name} in {self.storage}: {done} of {self.n_trials} trials done"
            + (f" ({len(interrupted)} interrupted: failed)" if interrupted else "")
            + f"; {batch} at a time, sampler {type(study.sampler).__name__} (seed {seed}), "
            f"pruner {type(pruner).__name__}"
        )
        while trials := search.claim(study, self.n_trials, batch):
            try:
                overrides = []
                for trial in trials:
                    search.suggest(trial, space)
                    if extend is not None:
                        extend(self.config, trial)
                    overrides.append([*fixed, *(f"{k}={v}" for k, v in trial.params.items())])
                going_on = self.run(study, trials, overrides)
            except BaseException:  # Ctrl-C, a launcher's error: the claimed trials are not running any more
                states = [t.state for t in study.get_trials(deepcopy=False)]
                for trial in trials:
                    if states[trial.number] == optuna.trial.TrialState.RUNNING:
                        study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            if not going_on:
                log.info("the sampler has no more trials to propose (a grid sampler's grid is done)")
                break
            if search.failure_rate(study) > self.max_failure_rate:
                log.error(
                    f"more than {self.max_failure_rate:.0%} of the trials failed "
                    "(hydra.sweeper.max_failure_rate): stopping the search; see the summary"
                )
                break
        search.log_best(study)

    def check(self, arguments: list[str]) -> tuple[dict, list[str], Any, Any, int]:
        """Every setting of the sweeper checked before anything is written (a refused sweep leaves no study,
        no directory): (the search space, the fixed overrides, the custom search space function, the pruner,
        trials per batch)."""
        for key in ("storage", "study_name", "sampler", "pruner"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ConfigError(f"hydra.sweeper.{key}={typed(getattr(self, key))} must be a non-empty text")
        for key in ("sampler_kwargs", "pruner_kwargs", "params"):
            value = getattr(self, key)
            if value is not None and not OmegaConf.is_dict(value):
                raise ConfigError(
                    f"hydra.sweeper.{key}={typed(value)} must be a mapping of key: value (or {{}})"
                )
            setattr(self, key, OmegaConf.to_container(value) if value else {})
        if self.direction not in ("minimize", "maximize"):
            raise ConfigError(f"hydra.sweeper.direction={self.direction}: minimize or maximize")
        if isinstance(self.n_trials, bool) or not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise ConfigError(f"hydra.sweeper.n_trials={self.n_trials} must be a whole number >= 1")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32
        ):
            raise ConfigError(f"hydra.sweeper.seed={self.seed} must be a whole number in [0, 2**32), or null")
        rate = self.max_failure_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise ConfigError(
                f"hydra.sweeper.max_failure_rate={rate} must be in [0, 1]: 1 never stops the search"
            )
        custom = self.custom_search_space
        if custom is not None and not isinstance(custom, str):
            raise ConfigError(
                f"hydra.sweeper.custom_search_space={typed(custom)} must name a function, or be null"
            )
        space, fixed = search.parse_space(self.params, arguments)
        extend = search.search_space_function(custom) if custom else None
        pruner = search.pruner_of(self.pruner, self.pruner_kwargs)
        search.sampler_of(self.sampler, self.sampler_kwargs, self.seed, space)  # its kwargs, refused here
        return space, fixed, extend, pruner, self.batch_size()

    def run(self, study: Any, trials: list, overrides: list[list[str]]) -> bool:
        """Launch the trials (job number = trial number, so each job finds its trial) and tell Optuna;
        False where the sampler has no more trials to propose."""
        start, going_on = 0, True
        while start < len(trials):  # consecutive numbers launch together: one batch for the launcher
            end = start + 1
            while end < len(trials) and trials[end].number == trials[end - 1].number + 1:
                end += 1
            jobs = self.launcher.launch(overrides[start:end], initial_job_idx=trials[start].number)
            for trial, job in zip(trials[start:end], jobs, strict=True):
                state, value, status, error = search.outcome(job)
                trial.set_user_attr("status", status)
                if error:
                    trial.set_user_attr("error", error)
                going_on &= search.tell(study, trial, value, state)
            start = end
        return going_on

    def batch_size(self) -> int:
        """Trials per batch: hydra.sweeper.n_jobs, else as many as the launcher runs at once (joblib: its
        n_jobs, -1 for one per core; submitit: its array_parallelism); 1 for a launcher that runs one job
        at a time."""
        if self.n_jobs is not None:
            if isinstance(self.n_jobs, bool) or not isinstance(self.n_jobs, int) or self.n_jobs < 1:
                raise ConfigError(f"hydra.sweeper.n_jobs={self.n_jobs} must be a whole number >= 1 (or null)")
            return self.n_jobs
        launcher = self.config.hydra.launcher
        workers = launcher.get("n_jobs", launcher.get("array_parallelism"))
        if workers is None:
            return 1
        return max(1, (os.cpu_count() or 1) + 1 + workers) if workers < 0 else workers  # joblib's meaning
