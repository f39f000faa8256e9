"""Beyond one machine, against real engines: a SLURM cluster of two nodes on this host (munge, slurmctld and
two slurmd from Debian's slurm-wlm), the submitit launcher's sweep, cancel and requeue under it, and DDP
over two nodes started by srun and by torchrun. `make cluster-test` runs these alone. The SLURM tests skip,
with the reason, where SLURM cannot start here."""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from litlab.train import train
from tests.conftest import SYSTEM_PATH, compose_train, free_port, train_command

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SLURM_CONF = """\
ClusterName=litlab
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={home}/munge.sock
StateSaveLocation={home}/state
SlurmdSpoolDir={home}/spool-%n
SlurmctldPidFile={home}/slurmctld.pid
SlurmdPidFile={home}/slurmd-%n.pid
SlurmctldLogFile={home}/slurmctld.log
SlurmdLogFile={home}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerParameters=sched_interval=1
KillWait=10
NodeName=n1 NodeHostname={host} NodeAddr=127.0.0.1 Port={port_1} CPUs=1 RealMemory=4000 State=UNKNOWN
NodeName=n2 NodeHostname={host} NodeAddr=127.0.0.1 Port={port_2} CPUs=1 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
# The launcher's preset (conf/hydra/launcher/slurm.yaml) on this cluster's CPU-only, one-core nodes.
ON_THIS_CLUSTER = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "trainer=cpu",
]


@pytest.fixture(scope="module")
def slurm():
    """A two-node SLURM cluster on this host, in a temp dir of its own: its environment (SLURM_CONF)."""
    tools = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol")
    missing = [t for t in tools if not shutil.which(t, path=SYSTEM_PATH)]
    if missing:
        pytest.skip(f"no SLURM here ({', '.join(missing)} missing): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("slurmd runs jobs as root on this test cluster: run the tests as root")
    home = Path(tempfile.mkdtemp(prefix="litlab-slurm-"))
    key = home / "munge.key"
    system_key = Path("/etc/munge/munge.key")
    key.write_bytes(system_key.read_bytes() if system_key.is_file() else os.urandom(1024))
    key.chmod(0o600)
    munge = [f"--socket={home}/munge.sock", f"--key-file={key}", f"--pid-file={home}/munged.pid"]
    munge += [f"--log-file={home}/munged.log", f"--seed-file={home}/munged.seed"]
    conf = home / "slurm.conf"
    conf.write_text(
        SLURM_CONF.format(
            host=socket.gethostname(),
            home=home,
            ctld_port=free_port(),
            port_1=free_port(),
            port_2=free_port(),
        )
    )
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": SYSTEM_PATH}
    try:
        subprocess.run(["munged", "--force", *munge], env=env, check=True, capture_output=True, timeout=10)
        subprocess.run(["slurmctld", "-c", "-i"], env=env, check=True, capture_output=True, timeout=10)
        for node in ("n1", "n2"):
            subprocess.run(["slurmd", "-N", node], env=env, check=True, capture_output=True, timeout=10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True
            )
            if states.stdout.split() == ["idle", "idle"]:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the nodes did not come up: {states.stdout.split()}")
    except (subprocess.SubprocessError, RuntimeError) as e:
        logs = "".join(p.read_text()[-300:] for p in home.glob("*.log"))
        stop_slurm(home, env)
        pytest.skip(f"SLURM did not start here: {e} {logs}")
    yield SimpleNamespace(env=env, home=home)
    stop_slurm(home, env)


def stop_slurm(home: Path, env: dict) -> None:
    subprocess.run(["scancel", "--full", "--user=root"], env=env, capture_output=True)
    subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True)
    for pid_file in home.glob("*.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
    time.sleep(0.5)
    shutil.rmtree(home, ignore_errors=True)


def queued(env: dict) -> list[str]:
    """The ids of the jobs SLURM has queued or running."""
    return subprocess.run(
        ["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True
    ).stdout.split()


def job_state(env: dict, job: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.3)
    return found


def test_a_sweep_runs_under_slurm_and_is_summarised(tmp_path, slurm):
    sweep_dir = tmp_path / "sweep"
    args = ["-m", *ON_THIS_CLUSTER, f"hydra.sweep.dir={sweep_dir}", "optimizer=sgd,adam", "seed=0,1"]
    proc = subprocess.run(
        train_command(tmp_path, *args, "trainer.max_epochs=200"),
        cwd=tmp_path,
        env=slurm.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = pd.read_csv(sweep_dir / "jobs.csv")
    assert len(jobs) == 4 and set(jobs["status"]) == {"ok"}
    # each job ran as a task of one SLURM job array: submitit's folder holds its log as <array>_<task>
    job_logs = list((sweep_dir / ".submitit").glob("*/*_log.out"))
    assert len(job_logs) == 4 and all(re.fullmatch(r"\d+_\d", p.parent.name) for p in job_logs)
    assert (sweep_dir / "summary.md").is_file()


def start_one_job(tmp_path: Path, slurm, epochs: int) -> tuple[subprocess.Popen, Path]:
    """A one-job sweep under SLURM (stepping=lightning on the book's data: a few ms an epoch); once it
    trains: (the sweep's process, the job's run directory)."""
    sweep_dir = tmp_path / "sweep"
    args = ["-m", *ON_THIS_CLUSTER, f"hydra.sweep.dir={sweep_dir}", f"trainer.max_epochs={epochs}"]
    proc = subprocess.Popen(
        train_command(tmp_path, *args, "callbacks.last_checkpoint.every_s=1"),
        cwd=tmp_path,
        env=slurm.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = wait_for(lambda: next(sweep_dir.glob("0_*/checkpoints/last.ckpt"), None), 60, "training to start")
    return proc, last.parents[1]


def test_a_job_that_slurm_cancels_ends_interrupted_with_its_last_checkpoint(tmp_path, slurm):
    proc, run_dir = start_one_job(tmp_path, slurm, 1_000_000)
    try:
        (job,) = queued(slurm.env)
        time.sleep(2)  # some epochs
        subprocess.run(["scancel", job], env=slurm.env, check=True)
        result = wait_for(
            lambda: json.loads(p.read_text()) if (p := run_dir / "metrics.json").exists() else None,
            30,
            "the job to record how it ended",
        )
        assert result["status"] == "interrupted" and "stopped by SIGTERM" in result["error"]
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()
        wait_for(lambda: not queued(slurm.env), 20, "SLURM to end the job")
    finally:
        proc.kill()  # it waits for the cancelled job's result (without accounting, sacct cannot tell it)
        proc.wait()


def test_a_requeued_job_saves_requeues_and_finishes_where_it_stopped(tmp_path, slurm):
    epochs = 2000
    proc, run_dir = start_one_job(tmp_path, slurm, epochs)
    (job,) = queued(slurm.env)
    time.sleep(2)
    subprocess.run(["scontrol", "requeue", job], env=slurm.env, check=True)  # as a preemption does
    # SLURM holds a requeued job for two minutes (Reason=BeginTime); an administrator may start it now.
    wait_for(lambda: "BeginTime" in job_state(slurm.env, job), 30, "SLURM to requeue the job")
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm.env, check=True)
    assert proc.wait(timeout=120) == 0
    assert "SLURM requeued this job (restart 1): resuming from" in (run_dir / "train.log").read_text()
    first_start = (tmp_path / "sweep" / ".submitit" / job / f"{job}_0_log.err").read_text()
    assert "stopped by SIGTERM after" in first_start  # and saved last.ckpt, which the restart resumed
    result = json.loads((run_dir / "metrics.json").read_text())
    assert result["status"] == "ok"
    unbroken = compose_train(tmp_path / "unbroken", "trainer=cpu", f"trainer.max_epochs={epochs}")
    train(unbroken)
    expected = json.loads((tmp_path / "unbroken" / "run" / "metrics.json").read_text())["metrics"]
    for name in ("train/loss", "val/loss"):
        assert result["metrics"][name] == pytest.approx(expected[name], rel=1e-6), name
    assert pd.read_csv(tmp_path / "sweep" / "jobs.csv")["status"].tolist() == ["ok"]


# 1000 generated rows: 800 training rows, 400 a rank on two ranks, so the shards are equal.
EVEN_SPLIT = ("data=regression", "data.preset=generated", "trainer.max_epochs=40", "trainer=cpu")
TWO_NODES = ("trainer.num_nodes=2", "trainer.devices=1", "trainer.strategy=ddp")


def one_process(tmp_path: Path) -> dict:
    train(compose_train(tmp_path / "single", *EVEN_SPLIT))
    return json.loads((tmp_path / "single" / "run" / "metrics.json").read_text())["metrics"]


def check_two_nodes(run_dirs: list[Path], single: dict) -> None:
    """One run directory, written by rank 0: one TensorBoard run, one last.ckpt, metrics as one process's."""
    assert len(run_dirs) == 1, run_dirs
    run_dir = run_dirs[0]
    writers = {p.name.split(".")[-2] for p in run_dir.glob("events.out.tfevents.*")}  # <host>.<pid>.<n>
    assert len(writers) == 1  # one process, rank 0, wrote TensorBoard's events
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    for name in ("train/loss", "val/loss", "val/r2"):
        assert metrics[name] == pytest.approx(single[name], rel=1e-5), name


def test_ddp_over_two_nodes_started_by_srun(tmp_path, slurm):
    env = {**slurm.env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}  # n1 resolves nowhere
    command = ["srun", "--nodes=2", "--ntasks-per-node=1", *train_command(tmp_path, *EVEN_SPLIT, *TWO_NODES)]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    run_dirs = list((tmp_path / "logs" / "train" / "runs").iterdir())
    assert run_dirs[0].name.startswith("slurm-")
    check_two_nodes(run_dirs, one_process(tmp_path))


def test_ddp_over_two_nodes_as_a_job_of_a_slurm_sweep(tmp_path, slurm):
    env = {**slurm.env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    args = ["-m", *ON_THIS_CLUSTER, f"hydra.sweep.dir={tmp_path}/sweep", *EVEN_SPLIT, *TWO_NODES]
    proc = subprocess.run(
        train_command(tmp_path, *args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    check_two_nodes(
        [d for d in (tmp_path / "sweep").iterdir() if d.name.startswith("0_")], one_process(tmp_path)
    )


def torchrun(port: int) -> list[str]:
    command = [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node=1"]
    return command + ["--master-addr=127.0.0.1", f"--master-port={port}"]


def test_ranks_that_torchrun_starts_without_a_run_id_are_refused_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    command = [*torchrun(free_port()), "--nnodes=1", "--nproc-per-node=2"]
    script = train_command(tmp_path, "trainer=cpu", "trainer.devices=2", "trainer.strategy=ddp")[1:]
    proc = subprocess.run(
        [*command, *script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    # each rank refuses in one line, unless torchrun stopped it first (SIGTERM, once another rank had ended)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    refusals = [line for line in lines if "give torchrun --rdzv-id=<name>" in line]
    stopped = [line for line in lines if line.startswith("error: stopped by SIGTERM")]
    assert refusals and len(refusals) + len(stopped) == len(lines) <= 2, proc.stderr[-1500:]
    assert not (tmp_path / "logs").exists()


def test_ddp_over_two_nodes_started_by_torchrun(tmp_path):
    command = [*torchrun(free_port()), "--nnodes=2", "--rdzv-id=two-nodes"]
    script = train_command(tmp_path, *EVEN_SPLIT, *TWO_NODES)[1:]  # torchrun runs the script itself
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    nodes = [
        subprocess.Popen(
            [*command, f"--node-rank={rank}", *script],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=120)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-1500:] + outputs[1][-1500:]
    run_dirs = list((tmp_path / "logs" / "train" / "runs").iterdir())
    assert [d.name for d in run_dirs] == ["torchrun-two-nodes"]
    check_two_nodes(run_dirs, one_process(tmp_path))
