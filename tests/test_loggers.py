"""MLflow and W&B beside TensorBoard (src/litlab/loggers.py): a sweep read back from an MLflow server (its
SQLite store served by `make mlflow`, seen in headless Chromium; a PostgreSQL store), a W&B run's offline
files, a killed run resumed into the same tracker runs, names and tags."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from litlab import checks, entry
from litlab.checkpoints import load
from litlab.errors import ConfigError
from litlab.loggers import wandb_items
from tests.conftest import ROOT, free_port, run_train
from tests.signal_at import signal_at
from tests.test_checkpoints import run_dirs, start_train, wait_for_epoch
from tests.test_tensorboard_browser import CHROMEDRIVER, CHROMIUM
from tests.test_train import events, hparams_session

mlflow = pytest.importorskip("mlflow", reason="pip install -e '.[mlflow]'")
SWEEP = (
    "-m",
    "optimizer.lr=0.01,0.05",
    "trainer.max_epochs=30",
    "trainer.check_val_every_n_epoch=10",
    "tags=[lesson]",
)


def serve(command: list[str], url: str, cwd: Path = ROOT) -> subprocess.Popen:
    """Start a server (its own process group) and wait until url answers."""
    server = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return server
        except OSError:
            if server.poll() is not None:
                raise AssertionError(f"{' '.join(command)} ended with {server.returncode}") from None
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer")


def stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def check_sweep(
    uri: str, sweep: Path, artifacts: tuple[str, ...] = ("config.yaml", "fit.gif", "images")
) -> list:
    """The sweep as MLflow's client reads it: one experiment, a run per job with the job's params, every
    scalar's last value equal to the job's metrics.json and each scalar at TensorBoard's steps, status
    tags, config.yaml, fit.gif and the fit pictures. Returns the runs."""
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(f"train/{sweep.name}")
    runs = client.search_runs([experiment.experiment_id])
    jobs = {d.name: d for d in sweep.iterdir() if (d / "metrics.json").is_file()}
    assert sorted(r.info.run_name for r in runs) == sorted(jobs) and len(runs) == 2
    assert sorted(r.data.params["optimizer.lr"] for r in runs) == ["0.01", "0.05"]
    for run in runs:
        job = jobs[run.info.run_name]
        result = json.loads((job / "metrics.json").read_text())
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        assert (tags["status"], tags["epochs"], tags["lesson"], tags["optimizer.lr"]) == (
            "ok",
            "30",
            "",
            run.data.params["optimizer.lr"],
        )
        assert run.data.params["data"] == "temperature" and run.data.params["optimizer"] == "SGD"
        assert run.data.metrics == result["metrics"]  # every scalar's last value
        logged = events(job)
        for key in result["metrics"]:
            steps = [(m.step, float32(m.value)) for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == [(e.step, e.value) for e in logged.Scalars(key)], key  # TensorBoard: float32
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert set(artifacts) <= files, files
        pictures = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
        assert any(p.startswith("images/fit~line+step+30+") and p.endswith(".png") for p in pictures)
    return runs


@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="headless Chromium is not installed")
def test_make_mlflow_serves_a_sweep_that_chromium_sees(tmp_path):
    """The default store (logs/mlflow.db, no server while training), served as the README says."""
    (tmp_path / "logs").mkdir()
    mlflow.MlflowClient(f"sqlite:///{tmp_path}/logs/mlflow.db").search_experiments()  # the store's tables
    port = free_port()
    make = [
        "make",
        "-s",
        "mlflow",
        f"PYTHON={sys.executable}",
        "INSTALLED=",
        f"MLFLOW_PORT={port}",
        f"LOGDIR={tmp_path / 'logs'}",
    ]
    url = f"http://127.0.0.1:{port}"
    webdriver = pytest.importorskip("selenium.webdriver")
    with ThreadPoolExecutor() as pool:  # the sweep, the server and the browser start at once
        # one job after the other in this process: a second run of the same MLflow experiment
        sweeping = pool.submit(
            run_train, tmp_path, *SWEEP, "logger=[tensorboard,mlflow]", "hydra/launcher=basic"
        )
        starting = pool.submit(chromium, webdriver)
        server = serve(make, f"{url}/health")
        sweeping.result()
        browser = starting.result()
    [sweep] = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    try:
        runs = check_sweep(url, sweep)
        try:
            experiment = runs[0].info.experiment_id
            browser.get(f"{url}/#/experiments/{experiment}/runs")
            text = lambda: browser.find_element("tag name", "body").text  # noqa: E731
            wait(lambda: all(r.info.run_name in text() for r in runs), "both runs in the runs table")
            browser.get(f"{url}/#/experiments/{experiment}/runs/{runs[0].info.run_id}/artifacts/fit.gif")
            shown = (  # the GIF's 640 pixels wide frames, loaded from the server as a blob
                "return [...document.querySelectorAll('img')]"
                ".filter(i => i.src.startsWith('blob:') && i.naturalWidth == 640).length"
            )
            wait(lambda: browser.execute_script(shown) > 0, "fit.gif drawn in the artifact view")
        finally:
            browser.quit()
    finally:
        stop(server)


def chromium(webdriver):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1000")
    return webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)


def wait(condition, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen: {what}")
        time.sleep(0.3)


@pytest.mark.slow
def test_a_sweep_reaches_an_mlflow_server_backed_by_postgresql(tmp_path, postgres):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        postgres,
        "--artifacts-destination",
        str(tmp_path / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    tracker = (
        "logger=[tensorboard,mlflow]",
        f"logger.mlflow.tracking_uri={url}",
        "logger.mlflow.log_model=true",
    )
    # the sweep starts beside the server: MLflow's client retries meanwhile
    with ThreadPoolExecutor() as pool:
        sweeping = pool.submit(run_train, tmp_path, *SWEEP, *tracker)
        server = serve(command, f"{url}/health")
        try:
            sweeping.result()
            [sweep] = (tmp_path / "logs" / "train" / "multiruns").iterdir()
            check_sweep(url, sweep, ("config.yaml", "fit.gif", "images", "best"))  # best.ckpt: log_model
            assert not (tmp_path / "logs" / "mlflow.db").exists()  # the server's store only
        finally:
            stop(server)


def float32(value: float) -> float:
    """A value as TensorBoard keeps it (MLflow and W&B keep float64: the optimum's reference is one)."""
    return float(np.float32(value))


def wandb_files(run: Path) -> dict:
    """What a run's offline W&B files hold, in the order written (the killed run's first): its id and tags,
    config, summary (each key's last value) and history rows."""
    found = {"ids": [], "tags": [], "config": {}, "summary": {}, "history": []}
    for path in sorted(run.glob("wandb/offline-run-*/run-*.wandb"), key=lambda f: f.parent.name):
        for kind, record, values in wandb_items(path):
            if kind == "run":
                found["ids"] = sorted({*found["ids"], record.run.run_id})
                found["tags"] = list(record.run.tags)
            if kind == "history":
                found["history"].append(values)
            else:
                found["config" if kind == "run" else kind] |= values
    return found


@pytest.mark.slow
def test_a_killed_run_resumes_into_the_same_mlflow_and_wandb_runs(tmp_path):
    pytest.importorskip("wandb", reason="pip install -e '.[wandb]'")
    args = (
        "logger=[tensorboard,mlflow,wandb]",
        "trainer.max_epochs=40",
        "data.batch_size=3",
        "trainer.check_val_every_n_epoch=4",
        "callbacks.last_checkpoint.every_s=0",
        "name=killed",
        "tags=[lesson]",
    )
    killed = start_train(tmp_path, *args)
    wait_for_epoch(tmp_path, 5, killed)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    [run] = run_dirs(tmp_path)
    assert run.name.endswith("_killed")
    stopped_at = load(run / "checkpoints" / "last.ckpt")["global_step"]
    first = OmegaConf.load(run / "config.yaml").logger
    run_train(tmp_path, f"resume={run}")
    config = OmegaConf.load(run / "config.yaml").logger
    assert (config.mlflow.run_id, config.wandb.id) == (first.mlflow.run_id, first.wandb.id)
    logged, result = events(run), json.loads((run / "metrics.json").read_text())
    assert (result["name"], result["tags"], result["status"]) == ("killed", ["lesson"], "ok")
    # MLflow: the same run, every step once, as TensorBoard has it
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/logs/mlflow.db")
    [tracked] = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert (tracked.info.run_id, tracked.info.run_name) == (config.mlflow.run_id, "killed")
    assert (tracked.data.tags["status"], tracked.info.status, tracked.data.tags["lesson"]) == (
        "ok",
        "FINISHED",
        "",
    )
    assert tracked.data.metrics == result["metrics"]
    for key in ("train/loss", "val/loss"):  # each step once: all before the checkpoint resumed, all after
        steps = [(m.step, float32(m.value)) for m in client.get_metric_history(tracked.info.run_id, key)]
        expected = [(e.step, e.value) for e in logged.Scalars(key)]  # TensorBoard: float32
        assert steps == sorted(set(steps)) and set(steps) <= set(expected), key
        # the killed epoch's own log is in MLflow or not, as the kill fell
        around = lambda s: stopped_at - 1 <= s[0] <= stopped_at + 3  # noqa: E731
        assert [s for s in expected if not around(s)] == [s for s in steps if not around(s)], key
    # W&B: the killed run and its resume under one id. W&B writes its offline file every 15 s (and at the
    # end): what it held back when the run was killed is gone; the rest is TensorBoard's, each step once.
    assert {r.name.rsplit("-", 1)[1] for r in run.glob("wandb/offline-run-*")} == {config.wandb.id}
    rows = [r for r in wandb_files(run)["history"] if "train/loss" in r]
    steps = [(r["trainer/global_step"], float32(r["train/loss"])) for r in rows]
    assert steps == sorted(set(steps)) and set(steps) <= {
        (e.step, e.value) for e in logged.Scalars("train/loss")
    }
    assert steps[-1][0] == logged.Scalars("train/loss")[-1].step


@pytest.mark.slow
def test_a_wandb_run_offline_holds_the_runs_values(tmp_path):
    """logger=wandb (offline, the default): its files hold the run's choices, every scalar at TensorBoard's
    steps, the final values and status, the pictures and config.yaml."""
    pytest.importorskip("wandb", reason="pip install -e '.[wandb]'")
    run_train(
        tmp_path,
        "logger=[tensorboard,wandb]",
        "trainer.max_epochs=30",
        "trainer.check_val_every_n_epoch=10",
        "tags=[lesson]",
        "name=book",
    )
    [run] = run_dirs(tmp_path)
    logged, result = events(run), json.loads((run / "metrics.json").read_text())
    assert (result["name"], result["tags"]) == ("book", ["lesson"]) and run.name.endswith("_book")
    hparams = hparams_session(logged)[0]  # TensorBoard's
    assert (hparams["name"], hparams["tags"], hparams["status"]) == ("book", "['lesson']", "ok")
    wandb = wandb_files(run)
    assert wandb["ids"] == [OmegaConf.load(run / "config.yaml").logger.wandb.id] and wandb["tags"] == [
        "lesson"
    ]
    assert wandb["config"]["data"] == "temperature" and wandb["config"]["optimizer.lr"] == 0.01
    assert (wandb["summary"]["status"], wandb["summary"]["epochs"]) == ("ok", 30)
    for key, value in result["metrics"].items():
        rows = [r for r in wandb["history"] if key in r]
        assert [(r["trainer/global_step"], float32(r[key])) for r in rows] == [
            (e.step, e.value) for e in logged.Scalars(key)
        ], key
        assert wandb["summary"][key] == value, key
    files = {
        p.relative_to(next(run.glob("wandb/offline-run-*/files"))).as_posix()
        for p in run.glob("wandb/offline-run-*/files/**/*")
        if p.is_file()
    }
    assert {"config.yaml", "fit.gif"} <= files and any(
        f.startswith("media/images/fit/line_") for f in files
    ), files


def test_a_refused_run_leaves_no_mlflow_store(tmp_path):
    """Lightning refuses the trainer after the MLflow logger made its store: the command removes it."""
    proc = run_train(tmp_path, "logger=[tensorboard,mlflow]", "trainer.num_nodes=0", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: Lightning refuses these trainer settings: `num_nodes` must be a positive integer, but got 0."
    ]
    assert "mlflow" not in proc.stdout and not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    "override,error",
    [
        ("name=a/b", "name=a/b must be one word of letters, digits, '.', '_' and '-'"),
        ("tags=[ok,'a b']", "tags=[ok,a b] must be a list of words of letters, digits, '.', '_' and '-'"),
        ("tags=book", "tags=book must be a list of words"),
    ],
)
def test_names_and_tags_are_words(tmp_path, override, error):
    proc = run_train(tmp_path, override, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith(f"error: {error}"), proc.stderr
    assert not (tmp_path / "logs").exists()


def test_a_logger_whose_package_is_missing_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(checks.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        ConfigError, match=r"^logger=wandb needs wandb, which is not installed: pip install -e '\.\[wandb\]'$"
    ):
        checks.check_extras(OmegaConf.create({"wandb": {"_target_": "litlab.loggers.Wandb"}}))


@pytest.mark.slow
def test_diverged_jobs_of_a_parallel_sweep_fail_in_one_new_mlflow_store(tmp_path):
    """Two jobs start at once on a store not made yet (they take turns making it: loggers.one_at_a_time)."""
    run_train(
        tmp_path, "-m", "experiment=book_divergence", "optimizer.lr=0.01,0.02", "logger=[tensorboard,mlflow]"
    )
    [sweep] = (tmp_path / "logs" / "book_divergence" / "multiruns").iterdir()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/logs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(f"book_divergence/{sweep.name}").experiment_id])
    assert len(runs) == 2
    for run in runs:
        result = json.loads((sweep / run.info.run_name / "metrics.json").read_text())
        assert (run.info.status, run.data.tags["status"], result["status"]) == (
            "FAILED",
            "diverged",
            "diverged",
        )
        assert result["error"].startswith(f"diverged at epoch {run.data.tags['epochs']} (loss=inf)")


@pytest.mark.slow
def test_sigterm_ends_the_mlflow_run_killed_and_its_resume_finishes_it(tmp_path):
    """SLURM's SIGTERM: the run stops where it resumes exactly, KILLED in MLflow (status interrupted); the
    resume continues the same MLflow run to FINISHED, each step once."""
    args = ("logger=[tensorboard,mlflow]", "trainer.max_epochs=30", "trainer.check_val_every_n_epoch=10")
    stopped = run_train(tmp_path, *args, *signal_at("SIGTERM", "on_train_epoch_start", 12), check=False)
    assert stopped.returncode == 1 and stopped.stderr.startswith("error: stopped by SIGTERM after "), (
        stopped.stderr
    )
    epochs = stopped.stderr.split(" after ")[1].split()[0]
    [run] = run_dirs(tmp_path)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/logs/mlflow.db")
    [tracked] = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    status = (tracked.info.status, tracked.data.tags["status"], tracked.data.tags["epochs"])
    assert status == ("KILLED", "interrupted", epochs) and 0 < int(epochs) < 30
    run_train(tmp_path, f"resume={run}")
    resumed = client.get_run(tracked.info.run_id)
    assert (resumed.info.status, resumed.data.tags["status"], resumed.data.tags["epochs"]) == (
        "FINISHED",
        "ok",
        "30",
    )
    logged = events(run)
    for key in ("train/loss", "val/loss"):
        steps = [(m.step, float32(m.value)) for m in client.get_metric_history(tracked.info.run_id, key)]
        assert steps == [(e.step, e.value) for e in logged.Scalars(key)], key


def test_each_logger_says_how_to_view_it(tmp_path, monkeypatch):
    """The run's closing lines, one per logger: from the project's directory by make, elsewhere by the
    commands beside this Python; a server by its address."""
    logs = tmp_path / "logs"
    loggers = OmegaConf.create(
        {
            "tensorboard": {"_target_": "litlab.cockpit.TensorBoard"},
            "mlflow": {"_target_": "litlab.loggers.MLflow", "tracking_uri": f"sqlite:///{logs}/mlflow.db"},
            "wandb": {"_target_": "litlab.loggers.Wandb", "offline": True},
            "csv": {"_target_": "lightning.pytorch.loggers.CSVLogger"},
        }
    )
    monkeypatch.chdir(ROOT)
    assert entry.viewers(logs, loggers)[:2] == [
        f"view it: make tensorboard LOGDIR={logs}",
        f"view it in MLflow: make mlflow LOGDIR={logs}",
    ]
    monkeypatch.chdir(tmp_path)
    bin_dir = Path(sys.executable).parent
    assert entry.viewers(Path("logs"), loggers) == [
        f"view it: {bin_dir / 'tensorboard'} --logdir logs",
        f"view it in MLflow: {bin_dir / 'mlflow'} ui --backend-store-uri sqlite:///{logs}/mlflow.db",
        f"upload it to W&B: {bin_dir / 'wandb'} sync <run directory>/wandb/offline-run-*",
        "its scalars: <run directory>/metrics.csv",
    ]
    loggers.mlflow.tracking_uri = "http://127.0.0.1:5000"
    assert entry.viewers(Path("logs"), loggers)[1] == "view it in MLflow: http://127.0.0.1:5000"
