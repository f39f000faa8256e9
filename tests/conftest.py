"""Shared fixtures: compose the real config tree in-process, or run train.py as a user would."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"
SYSTEM_PATH = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"  # daemons (SLURM, munge) and runuser live there
REAL_DATA = ("wine", "bike", "text", "table")  # conf/data options that read files from paths.data_dir
# Every composed config (the test_config.py grid too) finds the real files where CI and worktrees keep them.
os.environ["LITLAB_DATA_DIR"] = str(SHARED_DATA)
# One thread in every run: the thread count changes float sums in their last bits, and tests compare runs
# made at different moments bit for bit (threads=auto follows the load; its own tests set it).
os.environ["LITLAB_THREADS"] = "1"
needs_real_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data files not in {SHARED_DATA}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip the config grid's runs on real data where the files are absent (composing needs no files)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec and callspec.params.get("data") in REAL_DATA:
            item.add_marker(needs_real_data)


def compose_train(root: Path, *overrides: str) -> DictConfig:
    """The config `python train.py <overrides>` would run, writing below root instead of ./logs."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={root}", *overrides], return_hydra_config=True)
    with open_dict(cfg):  # as in a run, the choices (model=...) name what the user typed; no overrides typed
        cfg.hydra.overrides.task = []
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    cfg.paths.output_dir = str(root / "run")  # what Hydra's run dir would be
    (root / "run").mkdir(parents=True, exist_ok=True)
    return cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(root: Path, *args: str, script: str = "train.py") -> list[str]:
    """`python train.py args` (flags first) with its logs under root."""
    flags, overrides = [a for a in args if a.startswith("-")], [a for a in args if not a.startswith("-")]
    return [sys.executable, str(ROOT / script), *flags, f"paths.root_dir={root}", *overrides]


def run_train(
    root: Path, *args: str, script: str = "train.py", check: bool = True
) -> subprocess.CompletedProcess:
    """`python train.py args` in a subprocess with its logs under root."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        train_command(root, *args, script=script),
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{script} {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def run_dirs(root: Path) -> list[Path]:
    """Every run directory (one per event-file folder) below root/logs."""
    return sorted({p.parent for p in (root / "logs").rglob("events.out.tfevents.*")})


@pytest.fixture
def cfg_factory(tmp_path):
    return lambda *overrides: compose_train(tmp_path, *overrides)


def postgres_bin(name: str) -> str | None:
    found = shutil.which(name, path=SYSTEM_PATH)
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return found or (str(versions[-1]) if versions else None)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A PostgreSQL server of its own in a temp dir (initdb, pg_ctl), on a free port; its URL."""
    pytest.importorskip("psycopg", reason="pip install -e '.[postgres]'")
    initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("no PostgreSQL server here (apt-get install postgresql)")
    home = Path(tempfile.mkdtemp(prefix="litlab-pg-"))  # not below pytest's root-only temp dirs
    data = home / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        runuser = shutil.which("runuser", path=SYSTEM_PATH)
        if not runuser:
            pytest.skip("running as root without runuser: PostgreSQL cannot start")
        as_user = [runuser, "-u", "postgres", "--"]
        shutil.chown(home, "postgres")
    port = free_port()
    setup = subprocess.run(
        [*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust"], capture_output=True
    )
    if setup.returncode != 0:
        pytest.skip(f"initdb failed: {setup.stderr.decode()[-300:]}")
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    started = subprocess.run(
        [*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(data / "server.log"), "-w", "start"],
        capture_output=True,
    )
    if started.returncode != 0:
        pytest.skip(f"pg_ctl start failed: {started.stderr.decode()[-300:]}")
    yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True)
    shutil.rmtree(home, ignore_errors=True)
