"""MLflow and Weights & Biases beside TensorBoard (conf/logger/): Lightning's own loggers, given what our
TensorBoard logger shows. Lightning sends each of them the same scalars at the same steps; train.py adds, for
every logger that has them:

- `begin(params, tags, resumed)` as the run starts: the run's choices (the flat keys of TensorBoard's
  HParams) and its tags; returns what config.yaml records of the tracker's run, so that a resume continues
  it;
- `log_picture(tag, image, step)`: the fit pictures at TensorBoard's steps (cockpit.FitPictures);
- `end(status, epochs, files)` as the run ends: its status and epochs, fit.gif and config.yaml.

A resumed run sends no scalar at a step that the tracker holds already: the run resumes exactly, so the
values are the same, and MLflow and W&B would keep both. mlflow and wandb are imported only by these
loggers (the extras .[mlflow] and .[wandb])."""

import fcntl
import json
import logging
import struct
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image

from litlab.cockpit import as_image
from litlab.entry import MADE_FILES, sqlite_file

# MLflow's lines as it makes a new SQLite store's tables: the store is ours to make, quietly
for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
    logging.getLogger(name).setLevel(logging.WARNING)
SEND_EVERY_S = 2.0  # MLflow's scalars are sent together at most this long after they are logged
# Our statuses in MLflow's terms (diverged and failed runs: FAILED)
MLFLOW_STATUS = {"ok": "FINISHED", "pruned": "FINISHED", "debug": "FINISHED", "interrupted": "KILLED"}


class MLflow(MLFlowLogger):
    """Lightning's MLFlowLogger: the run's choices as params, its status and epochs as tags, the fit pictures
    as MLflow images at their steps, fit.gif and config.yaml as artifacts; tags=[...] as tags of an empty
    value. Beside a SQLite store (sqlite:///.../mlflow.db) the artifacts go to mlartifacts/ next to it."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str = "train",
        run_name: str | None = None,
        tags: list[str] | None = None,
        run_id: str | None = None,
        log_model: bool | str = False,
        artifact_location: str | None = None,
    ):
        if (db := sqlite_file(tracking_uri)) is not None:
            MADE_FILES.extend(p for p in (db, Path(f"{db}.lock")) if not p.exists())  # a refusal removes them
            artifact_location = artifact_location or (db.parent / "mlartifacts").as_uri()
        with one_at_a_time(tracking_uri):  # MlflowClient makes a new SQLite store's tables
            super().__init__(
                experiment_name=experiment_name,
                run_name=run_name,
                tracking_uri=tracking_uri,
                tags=dict.fromkeys(tags or [], ""),
                log_model=log_model,
                artifact_location=artifact_location,
                run_id=run_id,
            )
        self.sent: dict[str, int] = {}  # a resumed run: each scalar's last step in MLflow
        self.pending: list = []  # scalars not sent yet (log_metrics)
        self.sent_at, self.send_next = time.monotonic(), False

    def log_hyperparams(self, params) -> None:
        """Lightning's call with the module's hparams: begin() logs the run's choices instead (an MLflow param
        keeps its first value)."""

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        """Held back and sent together (MLflow's log_batch takes 1000) every SEND_EVERY_S seconds: one call a
        step cost 6.6 ms an epoch against the book fit's 0.35 ms (the store commits each call)."""
        from mlflow.entities import Metric

        step, now = step or 0, int(time.time() * 1000)
        for key, value in metrics.items():
            if key != "epoch" and step > self.sent.get(key, -1):
                self.pending.append(Metric(key, float(value), now, step))
        if len(self.pending) >= 1000 or time.monotonic() - self.sent_at > SEND_EVERY_S or self.send_next:
            self.send()

    def send(self, next_too: bool = False) -> None:
        """The scalars held back, to MLflow; next_too: the next log_metrics call's too, at once. A checkpoint
        sends (checkpoints.ResumeState) and so does the epoch's log that Lightning writes after it: a run
        killed later resumes from that checkpoint, and MLflow holds every step before it."""
        for first in range(0, len(self.pending), 1000):
            self.experiment.log_batch(self.run_id, metrics=self.pending[first : first + 1000])
        self.pending, self.sent_at, self.send_next = [], time.monotonic(), next_too

    def begin(self, params: dict, tags: dict[str, str], resumed: bool) -> dict:
        from mlflow.entities import Param, RunTag

        client, run_id = self.start()
        if resumed:
            run = client.get_run(run_id)
            for key in run.data.metrics:
                self.sent[key] = max(m.step for m in client.get_metric_history(run_id, key))
            params = {k: v for k, v in params.items() if k not in run.data.params}  # a param keeps its value
            client.update_run(run_id, status="RUNNING")
        client.log_batch(
            run_id,
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag(k, str(v)) for k, v in {**tags, "status": "running"}.items()],
        )
        return {"run_id": run_id}

    def start(self) -> tuple:
        """(client, run id): the store, the experiment and the run made where they are not. A sweep's jobs
        start at once: a SQLite store is made by one at a time (flock on <db>.lock: its tables), and an
        experiment that another job made meanwhile is taken."""
        from mlflow.exceptions import MlflowException

        with one_at_a_time(self._tracking_uri):
            try:
                return self.experiment, self.run_id
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                return self.experiment, self.run_id  # the experiment another job made

    @rank_zero_only
    def log_picture(self, tag: str, picture: Image.Image | bytes, step: int) -> None:
        self.experiment.log_image(self.run_id, as_image(picture).convert("RGB"), key=tag, step=step)

    @rank_zero_only
    def end(self, status: str, epochs: int, files: list[Path]) -> None:
        client, run_id = self.experiment, self.run_id
        self.send()
        client.set_tag(run_id, "status", status)
        client.set_tag(run_id, "epochs", str(epochs))
        for path in files:
            client.log_artifact(run_id, str(path))
        if self._checkpoint_callback:  # log_model=true: the checkpoints, as Lightning's finalize sends them
            self._scan_and_log_checkpoints(self._checkpoint_callback)
        client.set_terminated(run_id, MLFLOW_STATUS.get(status, "FAILED"))

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Lightning's end of fit: the run goes on (the final validation, the pictures) and end() closes it;
        a fit that failed with an error (a bug) ends as MLflow's FAILED here."""
        if status == "failed" and self._initialized:
            self.send()
            self.experiment.set_terminated(self.run_id, "FAILED")


class Wandb(WandbLogger):
    """Lightning's WandbLogger, offline by default (the files in <run>/wandb/, `wandb sync` uploads them): the
    run's choices as its config, the fit pictures as W&B images at their steps, status and epochs in its
    summary, fit.gif and config.yaml as files. A sweep's jobs share a group."""

    def __init__(
        self,
        project: str = "litlab",
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        offline: bool = True,
        id: str | None = None,
        save_dir: str = ".",
        log_model: bool | str = False,
    ):
        import wandb

        super().__init__(
            name=name,
            save_dir=save_dir,
            offline=offline,
            id=id or uuid.uuid4().hex[:8],  # W&B's form of id: 8 of [a-z0-9]
            project=project,
            log_model=log_model,
            group=group,
            tags=list(tags or []),
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )
        self.sent = -1  # a resumed run: the last trainer/global_step its offline files hold

    def log_hyperparams(self, params) -> None:
        """Lightning's call with the module's hparams: begin() logs the run's choices instead."""

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if step is None or step > self.sent:
            super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)

    def begin(self, params: dict, tags: dict[str, str], resumed: bool) -> dict:
        if resumed:
            runs = Path(self._save_dir).glob(f"wandb/*-{self._id}/run-{self._id}.wandb")
            self.sent = max(
                (row.get("trainer/global_step", -1) for f in runs for row in history(f)), default=-1
            )
        run = self.experiment
        run.config.update(params, allow_val_change=True)
        run.tags = tuple(dict.fromkeys([*run.tags, *(f"{k}={v}" if v else k for k, v in tags.items())]))
        run.summary["status"] = "running"
        return {"id": run.id}

    @rank_zero_only
    def log_picture(self, tag: str, picture: Image.Image | bytes, step: int) -> None:
        import wandb

        if step > self.sent:
            image = wandb.Image(as_image(picture).convert("RGB"))
            self.experiment.log({tag: image, "trainer/global_step": step})

    @rank_zero_only
    def end(self, status: str, epochs: int, files: list[Path]) -> None:
        run = self.experiment
        run.summary.update({"status": status, "epochs": epochs})
        for path in files:
            run.save(str(path), base_path=str(path.parent), policy="now")
        run.finish(exit_code=0 if status in MLFLOW_STATUS else 1)
        self._experiment = None  # a sequential sweep's next job starts a run of its own


@contextmanager
def one_at_a_time(tracking_uri: str) -> Iterator[None]:
    """Held while a SQLite store may be made or an experiment created: an flock on <db>.lock, which the
    jobs of a sweep that start at once take in turn (MLflow makes the tables of a new store with no lock of
    its own: 'table experiments already exists'). A server serialises its clients itself."""
    if (db := sqlite_file(tracking_uri)) is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def records(path: Path) -> Iterator[bytes]:
    """The records of a W&B run file (run-<id>.wandb): a 7-byte W&B header, then LevelDB's log format,
    blocks of 32 KiB holding chunks of [crc32c: 4][length: 2][type: 1: full, 2: first, 3: middle, 4: last]."""
    data, pos, record = path.read_bytes(), 7, b""
    while pos + 7 <= len(data):
        if (left := 32768 - pos % 32768) < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        record += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield record
            record = b""


# where each kind of W&B record keeps its {key: value} items
WANDB_ITEMS = {
    "run": lambda r: r.run.config.update,
    "config": lambda r: r.config.update,
    "summary": lambda r: r.summary.update,
    "history": lambda r: r.history.item,
}


def wandb_items(path: Path) -> Iterator[tuple[str, Any, dict]]:
    """The run, config, summary and history records of a W&B run file, in the order written:
    (kind, the record, its {key: value})."""
    from wandb.proto import wandb_internal_pb2

    for raw in records(path):
        record = wandb_internal_pb2.Record.FromString(raw)
        kind = record.WhichOneof("record_type")
        if kind in WANDB_ITEMS:
            items = WANDB_ITEMS[kind](record)
            yield kind, record, {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


def history(path: Path) -> Iterator[dict]:
    """The history rows (wandb.log calls) of a W&B run file, as {key: value}."""
    return (values for kind, _, values in wandb_items(path) if kind == "history")
