"""A real TensorBoard server over a fresh run: what a user's browser would get from its HTTP data API."""

import io
import json
import subprocess
import sys
import time
import urllib.request
from urllib.parse import parse_qsl, urlencode

import pytest
from PIL import Image

from litlab.train import train
from tests.conftest import compose_train, free_port

ALL_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def get(url: str, path: str, **query: str) -> bytes:
    with urllib.request.urlopen(f"{url}{path}?{urlencode(query)}", timeout=10) as response:
        return response.read()


def post_json(url: str, path: str, body: dict) -> dict:
    """The hparams plugin takes its request proto as JSON in a POST body."""
    request = urllib.request.Request(
        url + path, json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for_run(url: str, run: str, server: subprocess.Popen, timeout_s: float = 90) -> None:
    """Until the server answers and has loaded the run's train/loss (it loads in the background)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, "tensorboard exited early"
        try:
            if "train/loss" in json.loads(get(url, "/data/plugin/scalars/tags")).get(run, {}):
                return
        except OSError:  # not listening yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"tensorboard did not serve {run} within {timeout_s} s")


@pytest.fixture
def tensorboard(tmp_path):
    """(url, run name) of a TensorBoard server on a free loopback port over one short logistic run."""
    cfg = compose_train(
        tmp_path,
        "model=logistic",
        "trainer=cpu",
        "trainer.max_epochs=100",
        "trainer.check_val_every_n_epoch=50",
        "stepping=fast",
    )
    train(cfg)
    port = free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path), "--load_fast=false"]
    with open(tmp_path / "tensorboard.log", "w") as log:
        server = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for_run(url, "run", server)
            yield url, "run"
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)


@pytest.mark.slow
def test_tensorboard_serves_scalars_hparams_and_images(tensorboard, tmp_path):
    url, run = tensorboard
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]

    loss = json.loads(get(url, "/data/plugin/scalars/scalars", run=run, tag="train/loss"))
    assert [step for _, step, _ in loss] == [49, 99]  # [wall time, step, value]: steps count epochs
    assert loss[-1][2] == pytest.approx(final["train/loss"])
    tags = json.loads(get(url, "/data/plugin/scalars/tags"))[run]
    assert "L-BFGS" in tags["train/gap"]["description"]

    groups = post_json(
        url,
        "/data/plugin/hparams/session_groups",
        {"experimentName": "", "allowedStatuses": ALL_STATUSES, "startIndex": 0, "sliceSize": 10},
    )["sessionGroups"]
    [group] = [g for g in groups if g["name"] == run]
    assert group["hparams"]["model.net.init_bias"] == "None" and group["hparams"]["optimizer"] == "SGD"
    metrics = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
    assert metrics["val/loss"] == pytest.approx(final["val/loss"])  # the last point of the curve
    assert "epoch" not in tags and not [t for t in tags if t.startswith("final/")]

    images = json.loads(get(url, "/data/plugin/images/tags"))[run]
    assert {"fit/roc", "fit/calibration", "fit/confusion_matrix"} <= set(images)
    [entry] = json.loads(get(url, "/data/plugin/images/images", run=run, tag="fit/roc"))
    assert entry["step"] == 100
    png = get(url, "/data/plugin/images/individualImage", **dict(parse_qsl(entry["query"])))
    assert Image.open(io.BytesIO(png)).size == (640, 480)
