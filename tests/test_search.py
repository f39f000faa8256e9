"""The Optuna sweeper (src/litlab/search.py, src/hydra_plugins/litlab_sweeper): its search space, samplers
and pruners, slots claimed by several processes, resume after a kill, FAIL and PRUNED trials, parallel
trials, and one study shared through a journal file or a real PostgreSQL server."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from litlab import search
from litlab.errors import ConfigError
from tests.conftest import free_port, run_train, train_command
from tests.test_train import events, hparams_session

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_the_one_place_that_reaches_inside_optuna_still_finds_what_it_reads(tmp_path):
    # Optuna has no public API to pop a waiting trial without creating one: trial_id_of reads Study's
    # _storage and _study_id. An upgrade that moves them fails here first.
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="s")
    study.enqueue_trial({})
    storage, trial_id = search.trial_id_of(study, 0)
    assert storage.get_trial(trial_id).number == 0 and storage.get_trial(trial_id).state == TrialState.WAITING


def test_search_space_from_params_and_the_command_line():
    params = {"optimizer": "choice(sgd, adam)", "optimizer.lr": "tag(log, interval(1e-4, 1.0))"}
    space, fixed = search.parse_space(
        params, ["seed=1", "model.hidden=range(8, 33, 8)", "data.k=tag(int, interval(1,4))"]
    )
    d = optuna.distributions
    assert space == {
        "optimizer": d.CategoricalDistribution(["sgd", "adam"]),
        "optimizer.lr": d.FloatDistribution(1e-4, 1.0, log=True),
        "model.hidden": d.IntDistribution(8, 32, step=8),
        "data.k": d.IntDistribution(1, 4),
    }
    assert fixed == ["seed=1"]
    assert search.grid_of({"optimizer": space["optimizer"], "model.hidden": space["model.hidden"]}) == {
        "optimizer": ["sgd", "adam"],
        "model.hidden": [8, 16, 24, 32],
    }
    with pytest.raises(ConfigError, match="sampler=grid: optimizer.lr is continuous"):
        search.grid_of(space)


def test_every_optuna_sampler_and_pruner_by_its_short_name():
    for name, cls in [("tpe", "TPESampler"), ("random", "RandomSampler"), ("nsgaii", "NSGAIISampler")]:
        assert type(search.sampler_of(name, {}, 0, {})).__name__ == cls
    grid = search.sampler_of("grid", {}, 0, {"x": optuna.distributions.CategoricalDistribution([1, 2])})
    assert isinstance(grid, optuna.samplers.GridSampler)
    for name, cls in [("median", "MedianPruner"), ("hyperband", "HyperbandPruner"), ("none", "NopPruner")]:
        assert type(search.pruner_of(name, {})).__name__ == cls
    with pytest.raises(ConfigError, match=r"sampler=bayes is not one of Optuna's: .*tpe"):
        search.sampler_of("bayes", {}, 0, {})
    with pytest.raises(ConfigError, match="pruner_kwargs: MedianPruner refuses them"):
        search.pruner_of("median", {"patience": 3})


def test_processes_sharing_a_study_claim_each_slot_once(tmp_path):
    storage = search.storage_of(str(tmp_path / "journal.log"))
    study, created = search.open_study(storage, "s", "minimize", optuna.pruners.NopPruner(), 12)
    assert created and len(study.trials) == 12

    def worker(_: int) -> list[int]:  # a process of its own: another Study object on the same file
        joined, created = search.open_study(
            search.storage_of(str(tmp_path / "journal.log")), "s", "minimize", None, 12
        )
        assert not created
        numbers = []
        while trials := search.claim(joined, 12, 2):
            for trial in trials:
                joined.tell(trial, float(trial.number))
                numbers.append(trial.number)
        return numbers

    with ThreadPoolExecutor(4) as pool:
        claimed = [n for numbers in pool.map(worker, range(4)) for n in numbers]
    assert sorted(claimed) == list(range(12))  # each slot once, none beyond n_trials
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 12
    bigger, _ = search.open_study(storage, "s", "minimize", None, 15)  # n_trials raised: 3 more slots
    assert len(bigger.trials) == 15 and len(search.claim(bigger, 15, 10)) == 3
    with pytest.raises(ConfigError, match="maximises or minimises the other way"):
        search.open_study(storage, "s", "maximize", None, 15)


def test_only_this_machines_dead_processes_trials_are_failed(tmp_path):
    study, _ = search.open_study(search.storage_of(f"sqlite:///{tmp_path}/s.db"), "s", "minimize", None, 3)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trials = search.claim(study, 3, 3)
    host = socket.gethostname()
    for trial, worker in zip(
        trials, [f"{host}:{dead.pid}", f"{host}:{os.getpid()}", "elsewhere:1"], strict=True
    ):
        trial.set_user_attr(search.WORKER, worker)
    assert search.fail_interrupted(study) == [0]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING]
    assert study.trials[0].user_attrs["error"] == "interrupted: its process ended"


def search_args(root: Path, *args: str) -> list[str]:
    """A small search on the book fit (no validation split, train/loss), jobs in the sweeper's process."""
    return [
        "-m",
        "hparams_search=optimizers",
        "experiment=book_temperature",
        "trainer.max_epochs=500",
        "hydra/launcher=basic",
        f"hydra.sweep.dir={root}/sweep",
        *args,
    ]


def trials_of(storage: str, name: str = "book_temperature") -> list:
    return optuna.load_study(study_name=name, storage=search.storage_of(storage)).trials


@pytest.mark.slow
def test_a_killed_search_resumes_to_n_trials_without_repeating_a_trial(tmp_path):
    args = search_args(tmp_path, "hydra.sweeper.n_trials=5")
    db = f"sqlite:///{tmp_path}/sweep/optuna.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = train_command(tmp_path, *args)
    proc = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill it (no chance to clean up) once 2 are told and 1 runs
        time.sleep(0.2)
        assert proc.poll() is None, "the search ended before it was killed"
        if not (tmp_path / "sweep" / "optuna.db").exists():
            continue
        try:
            states = [t.state for t in trials_of(db)]
        except KeyError:  # no study yet
            continue
        told = states.count(TrialState.COMPLETE) + states.count(TrialState.FAIL)
        if told >= 2 and states.count(TrialState.RUNNING) == 1:  # not between a tell and the next claim
            break
    proc.send_signal(signal.SIGKILL)  # the sweeper and, with hydra/launcher=basic, its running job
    proc.wait()
    before = trials_of(db)
    assert sum(t.state.is_finished() for t in before) >= 2 and len(before) == 5  # 5 slots from the start
    run_train(tmp_path, *args)  # the same command
    after = trials_of(db)
    assert len(after) == 5 and all(t.state.is_finished() for t in after)
    interrupted = [t.number for t in after if t.user_attrs.get("error") == "interrupted: its process ended"]
    assert len(interrupted) == sum(t.state == TrialState.RUNNING for t in before) == 1
    # every trial ran to its end after the resume (a large lr may diverge: FAIL, status diverged)
    assert all(t.user_attrs.get("status") in ("ok", "diverged") for t in after if t.number not in interrupted)
    done_before = {t.number for t in before if t.state.is_finished()}
    first, then = (
        [tuple(sorted(t.params.items())) for t in after if (t.number in done_before) == was]
        for was in (True, False)
    )
    assert not set(first) & set(then)  # the resumed sampler proposed new trials, not the first ones again


@pytest.mark.slow
def test_failed_and_pruned_trials(tmp_path):
    # Steps of 250 epochs, so that a report comes before the end: lr 1e-5 is still far from the fit (loss 67
    # of 80 at the start) at the first report (epoch 250): pruned; lr 0.5 diverges. The grid runs in
    # trial-number order.
    args = search_args(
        tmp_path,
        "stepping.epochs=250",
        "hydra.sweeper.sampler=grid",
        "hydra.sweeper.custom_search_space=null",
        "hydra.sweeper.params={optimizer:sgd,optimizer.lr:'choice(1e-2,1e-5,0.5)'}",
        "hydra.sweeper.pruner=threshold",
        "+hydra.sweeper.pruner_kwargs.upper=50",
        "hydra.sweeper.n_trials=3",
    )
    run_train(tmp_path, *args)
    sweep = tmp_path / "sweep"
    trials = {t.params["optimizer.lr"]: t for t in trials_of(f"sqlite:///{sweep}/optuna.db")}
    assert {lr: t.state for lr, t in trials.items()} == {
        0.01: TrialState.COMPLETE,
        1e-5: TrialState.PRUNED,
        0.5: TrialState.FAIL,
    }
    reported = trials[1e-5].intermediate_values
    assert list(reported) == [250] and reported[250] > 50  # stopped at the first report over the threshold
    assert trials[0.5].user_attrs["status"] == "diverged"
    jobs = pd.read_csv(sweep / "jobs.csv").set_index("job")
    pruned = jobs.loc[trials[1e-5].number]
    assert pruned["status"] == "pruned" and jobs.loc[trials[0.01].number, "status"] == "ok"
    run_dir = sweep / pruned["dir"]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "pruned"
    hparams, _ = hparams_session(events(run_dir))
    assert hparams["status"] == "pruned" and hparams["epochs"] == 250
    settings = pd.read_csv(sweep / "settings.csv")
    assert settings["setting"][0] == "optimizer.lr=0.01" and settings["rank"].notna().sum() == 1


@pytest.mark.slow
def test_a_search_stops_claiming_past_max_failure_rate(tmp_path):
    # optimizer.lr=-1 on the command line wins over the searched lr: every trial fails its config check
    args = search_args(
        tmp_path, "optimizer.lr=-1", "hydra.sweeper.n_trials=4", "hydra.sweeper.max_failure_rate=0.5"
    )
    proc = run_train(tmp_path, *args)
    assert "more than 50% of the trials failed" in proc.stdout + proc.stderr
    trials = trials_of(f"sqlite:///{tmp_path}/sweep/optuna.db")
    assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.WAITING] * 3  # the rest not run
    assert trials[0].user_attrs["status"] == "failed" and "optimizer.lr=-1" in trials[0].user_attrs["error"]


@pytest.mark.slow
def test_two_trials_run_at_once_on_two_cores(tmp_path):
    args = search_args(
        tmp_path,
        "hydra.sweeper.n_trials=2",
        "trainer.max_epochs=5000",  # about 2 s of training each
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    )
    proc = run_train(tmp_path, *args)
    assert "2 at a time" in proc.stdout + proc.stderr
    spans, pids = [], set()
    for result in (tmp_path / "sweep").glob("*/metrics.json"):
        end = result.stat().st_mtime  # metrics.json is written as the run ends, with its duration
        spans.append((end - json.loads(result.read_text())["duration_s"], end))
        pids |= {
            p.name.split(".")[-2] for p in result.parent.glob("events.out.tfevents.*")
        }  # <host>.<pid>.<n>
    (start_a, end_a), (start_b, end_b) = sorted(spans)
    assert len(pids) == 2 and start_b < end_a  # two worker processes; the second began before the first ended


def start_searches(root: Path, storage: str, n: int) -> list[subprocess.CompletedProcess]:
    """Two `python train.py -m ...` processes at once, each with its own sweep directory, one storage."""

    def one(i: int) -> subprocess.CompletedProcess:
        args = search_args(
            root / f"machine{i}",
            f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.study_name=shared",
            f"hydra.sweeper.n_trials={n}",
            "hydra.sweeper.n_jobs=1",
        )
        (root / f"machine{i}").mkdir()
        return run_train(root / f"machine{i}", *args)

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(one, range(2)))


def check_shared(root: Path, storage: str, n: int) -> None:
    trials = trials_of(storage, "shared")
    assert len(trials) == n and all(t.state.is_finished() for t in trials)
    workers = {t.user_attrs[search.WORKER] for t in trials}
    jobs = [int(p.parent.name.split("_")[0]) for p in root.glob("machine*/sweep/*/metrics.json")]
    assert sorted(jobs) == list(range(n))  # every trial ran once, on one of the two
    assert len(workers) == 2  # both took part


@pytest.mark.slow
def test_two_processes_share_one_study_in_a_journal_file(tmp_path):
    storage = str(tmp_path / "shared" / "study.log")
    start_searches(tmp_path, storage, 6)
    check_shared(tmp_path, storage, 6)


@pytest.mark.slow
def test_two_processes_share_one_study_on_a_postgresql_server(tmp_path, postgres):
    start_searches(tmp_path, postgres, 6)
    check_shared(tmp_path, postgres, 6)


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_optuna_dashboard_opens_a_study_as_the_readme_says(tmp_path, kind):
    pytest.importorskip("optuna_dashboard", reason="pip install -e '.[dashboard]'")
    storage = str(tmp_path / "study.log") if kind == "journal" else f"sqlite:///{tmp_path}/optuna.db"
    study, _ = search.open_study(search.storage_of(storage), "shown", "minimize", None, 2)
    for trial in search.claim(study, 2, 2):
        study.tell(trial, 1.0)
    port = free_port()
    command = [str(Path(sys.executable).with_name("optuna-dashboard")), storage, "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def get(path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return json.loads(answer.read())

    try:
        deadline, studies = time.monotonic() + 20, None
        while studies is None and time.monotonic() < deadline:
            try:
                studies = get("/api/studies")["study_summaries"]
            except OSError:
                time.sleep(0.2)
        assert studies is not None, "optuna-dashboard did not answer"
        assert [s["study_name"] for s in studies] == ["shown"]
        trials = get(f"/api/studies/{studies[0]['study_id']}")["trials"]
        assert [t["state"] for t in trials] == ["Complete", "Complete"]
    finally:
        server.terminate()
        server.wait()


def test_a_custom_search_space_is_a_function_of_ours_or_of_the_project(tmp_path, monkeypatch):
    """Never any callable Python can import (os.system)."""
    from litlab.search import optimizer_knobs, search_space_function

    assert search_space_function("litlab.search.optimizer_knobs") is optimizer_knobs
    for name in (
        "os.system",
        "builtins.print",
        "antigravity.fly",
        "litlab.search.nope",
        "litlab.search.finished",
    ):
        with pytest.raises(ConfigError, match=f"custom_search_space={name} must name a function"):
            search_space_function(name)
    (tmp_path / "myspace.py").write_text("def knobs(config, trial):\n    trial.suggest_float('x', 0, 1)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert search_space_function("myspace.knobs").__name__ == "knobs"  # one's own, below the project


@pytest.mark.parametrize("content", [None, "hello\n", "[1, 2]\n"])
def test_a_journal_storage_that_is_a_directory_or_no_journal_is_refused_in_one_line(tmp_path, content):
    from litlab.search import storage_of

    path = tmp_path if content is None else tmp_path / "study.journal"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=f"hydra.sweeper.storage={path} is not an Optuna journal"):
        storage_of(str(path))


@pytest.mark.parametrize(
    "override,message",
    [
        ("x=interval(1,0)", "`low <= high` must hold"),
        ("x=tag(log,interval(0,1))", "`low > 0` must hold for `log=True`"),
        ("x=range(1,5,0)", "range() arg 3 must not be zero"),
    ],
)
def test_a_search_space_optuna_refuses_is_one_line(override, message):
    from litlab.search import parse_space

    with pytest.raises(
        ConfigError, match=re.escape(f"{override}: not a search space Optuna takes: {message}")
    ):
        parse_space({}, [override])
