"""What the entry points (train.py, eval.py, predict.py) share: quiet start-up, one line per user error, and
finding the run that resume= or ckpt_path= names."""

import contextlib
import fcntl
import gc
import importlib
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import threading
import time
import types
import typing
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from litlab.errors import ConfigError, disk_full, one_line

# Raised inside Lightning 2.6 by torch >= 2.10's pytree; says nothing about the user's run.
warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
# ModelCheckpoint(save_on_train_epoch_end) on an epoch without validation, where val/loss is not yet
# logged; optimized_metric is checked up front (train.py), so the warning says nothing about the run.
warnings.filterwarnings("ignore", message=".*could not find the monitored key.*")
# A resume inside an epoch with a loader that cannot say where it stopped: ResumeState says it in one line.
warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended")
# A streamed table's IterableDataset has a length: each worker serves its own row groups, counted exactly.
warnings.filterwarnings("ignore", message=".*Your `IterableDataset` has `__len__` defined")
# torchdata's StatefulDataLoader calls a torch function that torch has deprecated, at every iteration.
warnings.filterwarnings("ignore", message=".*'set_vital' is deprecated")
# Lightning suggests srun wherever SLURM is installed, also to ranks that torchrun started.
warnings.filterwarnings("ignore", message=".*The `srun` command is available on your system but is not used")
# Lightning advertises its cloud logger and model registry, lists the accelerators it did not use (train.py's
# own first line says where the run trains), that max_epochs was reached (the last line says it) and which
# checkpoint a resume restores (our line says it).
QUIET = re.compile(
    r"litlogger|litmodels|[GTHI]PU available: |`Trainer.fit` stopped: `max_(epochs|steps)=|"
    r"Restor(ing|ed) (all )?states from the checkpoint"  # train.py's own line says which checkpoint
)
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda r: not QUIET.search(r.getMessage())
)
# MLflow's first run of a store or a sweep makes its experiment: a warning in Lightning's words
logging.getLogger("lightning.pytorch.loggers.mlflow").addFilter(
    lambda r: "Creating it." not in r.getMessage()
)
# A resumed run's checkpoints/ holds its own checkpoints, of course.
warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
# Run directories end in _<microseconds>-<pid>: two runs started at the same moment never share one.
# Cached in the config, like Hydra's ${now:}: a parallel launcher's worker keeps the sweep's directory.
OmegaConf.register_new_resolver("pid", os.getpid, replace=True, use_cache=True)


def locate(path: str | Path, default: str = "last.ckpt") -> tuple[Path, Path]:
    """(run directory, checkpoint) for a run directory or for a checkpoint file inside its checkpoints/."""
    path = Path(path).expanduser().absolute()
    run_dir, ckpt = (path, path / "checkpoints" / default) if path.is_dir() else (path.parent.parent, path)
    if not ckpt.is_file():
        raise ConfigError(
            f"{ckpt} does not exist: give a run directory (logs/<task>/runs/<time>) or a .ckpt inside one"
        )
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(
            f"{run_dir} holds no config.yaml: a checkpoint is rebuilt from the run directory it was saved in "
            "(<run dir>/checkpoints/<name>.ckpt)"
        )
    return run_dir, ckpt


def env_int(name: str, default: int = 1) -> int:
    """A whole number that a launcher (SLURM, torchrun) or the user put in the environment."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise ConfigError(
            f"the environment variable {name}={value} is not a whole number: correct or unset it"
        )
    return int(value)


def run_name() -> str:
    """A new run's directory name: <date_time_microseconds>-<pid>. For one of several ranks that a launcher
    started together (srun, torchrun: every rank runs train.py), a name all ranks derive alike, so that they
    share one run directory, which rank 0 writes: slurm-<job id>.<step id>, torchrun-<its --rdzv-id>."""
    if env_int("SLURM_NTASKS") > 1 and "SLURM_JOB_ID" in os.environ:
        return f"slurm-{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '0')}"
    if env_int("WORLD_SIZE") > 1 and "TORCHELASTIC_RUN_ID" in os.environ:
        run_id = os.environ["TORCHELASTIC_RUN_ID"]
        if run_id in ("", "none"):
            raise ConfigError(
                "each rank that torchrun starts composes its own config and would write a run directory of "
                "its own: give torchrun --rdzv-id=<name> (the same on every node), or hydra.run.dir=<dir>"
            )
        return f"torchrun-{run_id}"
    return f"{datetime.now():%Y-%m-%d_%H-%M-%S_%f}-{os.getpid()}"


OmegaConf.register_new_resolver("litlab.run_name", run_name, replace=True, use_cache=True)


def in_sweep() -> bool:
    """Whether this process runs a job of a multirun (-m)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def named(name: str | None) -> str:
    """The end of a run's or sweep's directory name: _<name> for name=<name> (checked: it names a
    directory and a tracker run), nothing without one."""
    if name is None:
        return ""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(
            f"name={name} must be one word of letters, digits, '.', '_' and '-' (it ends the run directory's "
            "name): try name=baseline"
        )
    return f"_{name}"


def run_label(name: str | None, output_dir: str) -> str:
    """What trackers call a run: its name, else its directory's; a sweep job its directory's
    (0_optimizer=adam,seed=1: the sweep's experiment bears the name)."""
    return Path(output_dir).name if in_sweep() or not name else name


def experiment(task_name: str) -> str:
    """A tracker's experiment (MLflow) or group (W&B): a sweep's own, <task>/<sweep directory>; the task's
    (train) for single runs."""
    return f"{task_name}/{Path(HydraConfig.get().sweep.dir).name}" if in_sweep() else task_name


OmegaConf.register_new_resolver("litlab.named", named, replace=True)
OmegaConf.register_new_resolver("litlab.run_label", run_label, replace=True)
OmegaConf.register_new_resolver("litlab.experiment", experiment, replace=True)
OmegaConf.register_new_resolver("litlab.absolute", lambda path: str(Path(path).absolute()), replace=True)


def run_choices(run_dir: str | Path) -> dict[str, str]:
    """The run's own options (data=wine, model=mlp, ...), as Hydra recorded them when the run started
    (.hydra/hydra.yaml): a resume's command composes the defaults (model=linear) around the saved config.
    Hydra's choices of this command where the run has no record of its own (a test without Hydra: none)."""
    recorded = Path(run_dir) / ".hydra" / "hydra.yaml"
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no record, or one edited beyond reading
        return {k: v for k, v in OmegaConf.load(recorded).hydra.runtime.choices.items() if v is not None}
    if not HydraConfig.initialized():
        return {}
    return {k: v for k, v in HydraConfig.get().runtime.choices.items() if v is not None}


def as_typed(path: Path) -> Path:
    """A path as the user would type it: relative to the working directory where it lies below it."""
    path = path.absolute()
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


def sqlite_file(uri: str) -> Path | None:
    """The database file of an MLflow store at sqlite:///<path>; None for a server's address."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def viewers(log_dir: Path, loggers: DictConfig | None) -> list[str]:
    """How to look at the runs under log_dir in each configured logger: TensorBoard and MLflow's UI by make
    from the project's directory, else by the commands installed beside this Python (on PATH only inside
    its venv); an MLflow server by its address; W&B's offline files by wandb sync; the CSV logger's file."""
    log_dir, lines = as_typed(log_dir), []
    here = Path("Makefile").is_file() and Path("train.py").is_file()
    elsewhere = "" if log_dir == Path("logs") else f" LOGDIR={shlex.quote(str(log_dir))}"
    for node in (loggers or {}).values():
        target = str((node or {}).get("_target_", ""))
        if target.endswith("TensorBoard"):
            command = f"{installed('tensorboard')} --logdir {shlex.quote(str(log_dir))}"
            lines.append(f"view it: {f'make tensorboard{elsewhere}' if here else command}")
        elif target.endswith("loggers.MLflow"):
            uri = str(node.tracking_uri)
            if (db := sqlite_file(uri)) is None:
                lines.append(f"view it in MLflow: {uri}")
            elif db == (log_dir / "mlflow.db").absolute() and here:
                lines.append(f"view it in MLflow: make mlflow{elsewhere}")
            else:
                lines.append(
                    f"view it in MLflow: {installed('mlflow')} ui --backend-store-uri {shlex.quote(uri)}"
                )
        elif target.endswith("CSVLogger"):
            lines.append("its scalars: <run directory>/metrics.csv")
        elif target.endswith("loggers.Wandb") and node.get("offline", True):
            lines.append(f"upload it to W&B: {installed('wandb')} sync <run directory>/wandb/offline-run-*")
    return lines


def installed(command: str) -> str:
    """A command installed beside this Python (a venv's, on PATH only inside it), else as it is."""
    path = Path(sys.executable).parent / command
    return str(path) if path.is_file() else command


def hold(run_dir: Path) -> IO:
    """An exclusive lock on a run directory while this process writes it (keep the returned file open):
    a second process that would write the same run, such as two resumes at once, is refused in one line."""
    try:
        handle = open(run_dir / ".lock", "a")  # noqa: SIM115 - held open as the lock; "a": the file stays as is
    except OSError as e:  # a read-only run (its permissions, a read-only disk)
        raise ConfigError(
            f"cannot write into {run_dir} ({e.strerror}): a resume writes into its run; make it writable "
            "(chmod -R u+w), or copy it (cp -r) and resume the copy"
        ) from e
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        handle.close()
        raise ConfigError(
            f"{run_dir} is being written by another process (a run or a resume of it): wait for that to "
            "end, or resume a copy of the run"
        ) from e
    return handle


# The highest directory that a new run's path lacked before Hydra made it (run_dir_of): a command refused
# before its work starts removes it again, with the .hydra/ that Hydra wrote into it.
MADE: list[Path | None] = []
# Files a logger made before the work started (a new MLflow store): a refused command removes them too.
MADE_FILES: list[Path] = []


def highest_missing(path: Path) -> Path | None:
    """The highest ancestor of path (or path itself) that does not exist; None if path exists."""
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def run_dir_of(resume: str | None, new_dir: str) -> str:
    """hydra.run.dir: the directory of the run that resume= names, else new_dir (conf/hydra/default.yaml).
    A resume= that names no run, or a run another process is writing, is refused here, in one line, before
    Hydra writes anything into it (.hydra/, the log); train() then holds the run while it trains."""
    if not resume:
        if not MADE:  # before Hydra makes it: what a refused command removes again (discard_refused_run)
            MADE.append(highest_missing(Path(new_dir).absolute()))
        return new_dir
    run_dir = locate(resume)[0]
    hold(run_dir).close()
    return str(run_dir)


def hydra_subdir(resume: str | None) -> str | None:
    """hydra.output_subdir: .hydra for a new run; none for a resume, whose .hydra/ stays the run's own."""
    return None if resume else ".hydra"


OmegaConf.register_new_resolver("litlab.hydra_subdir", hydra_subdir, replace=True)


def one_name(override_dirname: str) -> str:
    """hydra.sweep.subdir: a job's overrides as one directory name; a path among them (data.path=/data/a.csv)
    would make one directory per part of it."""
    return override_dirname.replace(os.sep, "%2F")


OmegaConf.register_new_resolver("litlab.one_name", one_name, replace=True)


class RunLog(logging.FileHandler):
    """The run's log file (conf/hydra/default.yaml), held back until the command starts its work (start()):
    a command refused before then appends no line to a run it names, nor leaves a log of its own behind.
    A sweep's jobs write at once: a failed job's log says why."""

    started = False
    held: typing.ClassVar[list[tuple[logging.Handler, logging.LogRecord]]] = []
    run_dir: Path | None = None  # a single run's directory (Hydra's job config may be gone at its end)

    def __init__(self, filename: str, **kwargs: typing.Any):
        super().__init__(filename, delay=True, **kwargs)
        self.at_once = in_sweep()  # Hydra configures the job's logging once the job's config is set
        RunLog.run_dir = None if self.at_once else Path(filename).absolute().parent

    def emit(self, record: logging.LogRecord) -> None:
        if RunLog.started or self.at_once:
            super().emit(record)
        else:
            RunLog.held.append((self, record))

    @classmethod
    def start(cls) -> None:
        """The command's work starts: write what was held, and from now on every line."""
        cls.started = True
        for handler, record in cls.held:
            handler.emit(record)
        cls.held.clear()


def discard_refused_run() -> None:
    """After a refusal before the work started: remove the new run directory Hydra made, with the .hydra/ it
    wrote there, and the parents it made for it while they are empty (a resume's own directory is never
    touched). Directory by directory with rmdir, which leaves one another command has just written into."""
    if RunLog.started:
        return
    for path in MADE_FILES:
        path.unlink(missing_ok=True)
    if not MADE or MADE[0] is None or RunLog.run_dir is None:
        return
    discard_new_run(RunLog.run_dir.absolute(), MADE[0])


def discard_new_run(run_dir: Path, made: Path) -> None:
    """Remove a new run's .hydra/ and .lock, then the run directory and the parents this command made (made:
    the highest) while they are empty: what a command refused before its work leaves of it."""
    if not run_dir.is_relative_to(made):
        return
    shutil.rmtree(run_dir / ".hydra", ignore_errors=True)
    (run_dir / ".lock").unlink(missing_ok=True)
    remove_empty(run_dir, made)


def remove_empty(directory: Path, made: Path) -> None:
    """Remove directory and its parents up to made (the highest that this command made) while each is empty:
    rmdir leaves one that another command has just written into."""
    for path in (directory, *directory.parents):
        if not path.is_relative_to(made):
            break
        try:
            path.rmdir()
        except OSError:  # holds more than ours (another run's): it stays
            break


OmegaConf.register_new_resolver("litlab.run_dir", run_dir_of, replace=True)
FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR") == "1"  # the user's wish, before run() sets it for Hydra


def exit_on_user_error(error: Exception) -> None:
    """In a Hydra task's `except`: exit with `error: <one line>` for an error the user can act on (errors.py:
    one_line), else re-raise. (Here rather than in run(): Hydra would first print the job's overrides.)"""
    message = one_line(error)
    if message is None or FULL_ERROR:
        raise error
    discard_refused_run()
    sys.exit(f"error: {message}")


def import_quickly(module: str) -> types.ModuleType:
    """importlib.import_module with Python's cyclic garbage collector paused: it went over every object made
    so far six times while Lightning imported (0.6 s of `import lightning`'s 3.3 s here, row (c) of
    docs/benchmarks.md). What the first import leaves alive, the modules' own objects, is then moved out of
    the collector's sight for good (gc.freeze), so that later collections skip it; a later call (a sweep's
    next job in the same worker) finds the module imported and freezes nothing, not the last run's garbage."""
    if module in sys.modules:
        return sys.modules[module]
    gc.disable()
    try:
        return importlib.import_module(module)
    finally:
        gc.freeze()
        gc.enable()


def run_task(target: str, cfg: DictConfig) -> None:
    """eval.py's, predict.py's and export.py's task: call "module:function" on cfg, imported only now
    (Lightning takes seconds: after --help and composing), a user's error in one line."""
    module, _, function = target.partition(":")
    try:
        getattr(import_quickly(module), function)(cfg)
    except Exception as e:
        exit_on_user_error(e)


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the process's name (state, parent, ..., user and system ticks at
    11 and 12); None once it has ended, or without /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def parents() -> dict[int, int]:
    """Each process's parent process (Linux /proc; empty elsewhere)."""
    stats = {int(p.name): stat_fields(p.name) for p in Path("/proc").glob("[0-9]*")}
    return {pid: int(fields[1]) for pid, fields in stats.items() if fields}


def cpu_ticks(pid: int) -> int | None:
    """A process's user + system CPU time in clock ticks; None once it has ended."""
    fields = stat_fields(pid)
    return None if fields is None or fields[0] == "Z" else int(fields[11]) + int(fields[12])


def tree_ticks(pid: int, ppid: dict[int, int]) -> tuple[int, ...]:
    """The CPU ticks of a process and of every process under it (a run's drawing process), in pid order,
    `ppid` being parents(); any change means one of them worked or ended."""
    tree, below = [pid], [pid]
    while below:
        below = [child for child, parent in ppid.items() if parent in below]
        tree += below
    return tuple(ticks for ticks in map(cpu_ticks, sorted(tree)) if ticks is not None)


def busy_ticks() -> tuple[float, int, int] | None:
    """(monotonic seconds, busy clock ticks of all CPUs, this process's own ticks); None without /proc."""
    try:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return time.monotonic(), user + nice + system + irq + softirq + steal, cpu_ticks(os.getpid()) or 0


STARTED = busy_ticks()  # when the entry point started: the window busy_elsewhere() measures


def busy_elsewhere() -> float | None:
    """How many cores other processes have kept busy since this process started (its imports: seconds);
    None where /proc cannot tell or too little time has passed to."""
    now = busy_ticks()
    if STARTED is None or now is None or now[0] - STARTED[0] < 0.2:
        return None
    ticks = os.sysconf("SC_CLK_TCK") * (now[0] - STARTED[0])
    return max(0.0, (now[1] - STARTED[1] - (now[2] - STARTED[2])) / ticks)


def stop_workers(signum: int, frame: object, grace_s: float = 30.0) -> None:
    """SIGTERM and Ctrl-C handler of a parallel sweep's main process: SIGTERM to its workers (which ignore a
    Ctrl-C), each of which stops its run as a single run does (last.ckpt, metrics.json `interrupted`); once
    they have ended or gone idle (at most grace_s), the sweep ends in one line. A second Ctrl-C stops at once.
    Without it the workers trained on, orphaned, or were killed with no status recorded."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ppid = parents()
    workers = [pid for pid, parent in ppid.items() if parent == os.getpid()]
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline, before = time.monotonic() + grace_s, [tree_ticks(pid, ppid) for pid in workers]
    # until neither a worker nor a process of its own (its drawing process, drawing the frames the worker
    # waits for) has used the CPU for a second (two half-second samples in a row: one that records its run's
    # end on busy cores may go half a second without a tick), at most grace_s
    idle = 0
    while time.monotonic() < deadline and idle < 2:
        time.sleep(0.5)
        ppid = parents()  # one pass over /proc for every worker
        now = [tree_ticks(pid, ppid) for pid in workers]
        idle = idle + 1 if now == before else 0
        before = now
    raise KeyboardInterrupt("SIGTERM" if signum == signal.SIGTERM else "Ctrl-C")


# Set while a run trains and records how it ended: Lightning's and SafeStop's handlers stop it where it can
# resume. Outside (start-up, checks, the last lines) a SIGTERM or Ctrl-C stops the command in one line
# (run()). One that comes while it is set but neither of those listens (Lightning's set-up before the first
# batch, the final validation, the pictures, recording the end) waits in DEFERRED: SafeStop takes it at the
# first batch, or the command stops once the run has recorded its end.
TRAINING = threading.Event()
DEFERRED: list[str] = []


def stop_outside_training(signum: int, frame: object) -> None:
    why = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    if not TRAINING.is_set() or (why == "Ctrl-C" and why in DEFERRED):  # Ctrl-C twice: stop now
        raise KeyboardInterrupt(why)
    DEFERRED.append(why)


def quiet_disk_full(args: threading.ExceptHookArgs) -> None:
    """Threads' excepthook: a writer thread that found the disk full (TensorBoard's) prints nothing; the main
    thread meets the same error at its next write and says it in one line."""
    if disk_full(args.exc_value) is None or FULL_ERROR:
        threading.__excepthook__(args)


# Keys whose value is a path the user copies from the shell: taken as they are (quoted for Hydra's grammar).
PATH_KEYS = ("resume", "ckpt_path", "input_file")


def paths_as_typed(argv: list[str]) -> list[str]:
    """A sweep job's directory (1_data=wine,model.net.hidden=[32,32]) as `ls` shows it, in resume=, ckpt_path=
    or input_file=: quoted, so that Hydra's override grammar reads it as one string."""
    typed = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        plain = re.fullmatch(r"[\w./~+@%:-]*", value) or value[:1] in ("'", '"')
        if sep and key.lstrip("+") in PATH_KEYS and not plain:
            value = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        typed.append(f"{key}{sep}{value}")
    return typed


def run(main: Callable[[], object]) -> None:
    """Call a @hydra.main function; Hydra's composition errors (unknown option or key, bad override)
    become the same one line as ours. HYDRA_FULL_ERROR is Hydra's documented switch to raise them."""
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.argv[1:] = paths_as_typed(sys.argv[1:])
    threading.excepthook = quiet_disk_full
    signal.signal(signal.SIGTERM, stop_outside_training)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where Ctrl-C is ignored
        signal.signal(signal.SIGINT, stop_outside_training)
    try:
        main()
    except KeyboardInterrupt as e:  # outside training, or in a parallel sweep's main process (a job stops
        if FULL_ERROR:  # by itself: SystemExit)
            raise
        discard_refused_run()  # stopped before it started: nothing of it stays
        why = "SIGTERM" if str(e) == "SIGTERM" else "Ctrl-C"
        sys.exit(f"error: stopped by {why}; each run that had started training keeps its last.ckpt")
    except Exception as e:
        if FULL_ERROR or (message := one_line(e)) is None:
            raise
        sys.exit(f"error: {message}")
