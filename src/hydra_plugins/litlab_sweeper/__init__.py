"""Hydra finds sweepers only in the hydra_plugins package: litlab's Optuna sweeper lives here."""

import logging
import math
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

log = logging.getLogger(__name__)


class ResumableOptunaSweeper(OptunaSweeper):
    """Optuna's sweeper with three fixes for long searches:

    - n_trials is the study's total: re-running the same command with the same hydra.sweep.dir (so the
      same sqlite storage) continues an interrupted search instead of adding n_trials more;
    - a job that returns nan (train.py's value for a failed or diverged job) becomes a FAIL trial: the
      stock sweeper 1.3 aborts the whole search there ("Values cannot be specified when state is FAIL");
    - a study whose every trial failed ends with a warning instead of an error, so the summary is written.
    """

    def setup(self, **kwargs: Any) -> None:
        super().setup(**kwargs)
        launch = self.sweeper.launcher.launch
        self.sweeper.launcher.launch = lambda overrides, initial_job_idx: [
            failed_if_nan(r) for r in launch(overrides, initial_job_idx=initial_job_idx)
        ]

    def sweep(self, arguments: list[str]) -> None:
        from litlab.sweep import resume_study

        resume_study(self.sweeper)
        try:
            return self.sweeper.sweep(arguments)
        except ValueError as e:
            # study.best_trial after the last batch, in memory or in a database
            if not any(m in str(e) for m in ("No trials are completed yet", "Record does not exist")):
                raise
            log.warning("no trial completed: every job failed (see the summary)")


def failed_if_nan(job: JobReturn) -> JobReturn:
    """A completed job whose value is nan, marked failed, so that the sweeper tells Optuna FAIL."""
    value = job._return_value
    if job.status == JobStatus.COMPLETED and isinstance(value, float) and math.isnan(value):
        job.status = JobStatus.FAILED
        job._return_value = ValueError(f"{' '.join(job.overrides or [])} returned nan: see its metrics.json")
    return job
