"""Headless Chromium opens `make tensorboard` over a small sweep and reads what a user sees there."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import ROOT, free_port, run_train

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="headless Chromium is not installed (Debian: apt-get install chromium chromium-driver)",
    ),
]

# document.querySelectorAll that also looks inside shadow roots (TensorBoard's Polymer dashboards).
DEEP = """
const deep = (root, selector, found = []) => {
  root.querySelectorAll(selector).forEach(e => found.push(e));
  root.querySelectorAll('*').forEach(e => e.shadowRoot && deep(e.shadowRoot, selector, found));
  return found;
};
"""


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1000")
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def make_tensorboard(tmp_path):
    """The URL that `make tensorboard` prints, over a sweep of two optimizers (two jobs at once)."""
    run_train(
        tmp_path, "-m", "optimizer=sgd,adam", "trainer.max_epochs=60", "trainer.check_val_every_n_epoch=20"
    )
    port = free_port()
    # INSTALLED= : this interpreter, which runs the tests, is set up already
    command = ["make", "-s", "tensorboard", f"PYTHON={sys.executable}", "INSTALLED=", f"TB_PORT={port}"]
    server = subprocess.Popen(
        [*command, f"LOGDIR={tmp_path / 'logs'}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # make and its TensorBoard: one process group to stop
    )
    try:
        url = re.search(r"http://\S+", server.stdout.readline()).group()
        deadline = time.monotonic() + 60
        while not listening(url):
            assert server.poll() is None and time.monotonic() < deadline, "tensorboard did not start"
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)


def listening(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.split("#")[0] + "data/plugins_listing", timeout=5):
            return True
    except OSError:
        return False


def seen(driver, selector: str, until, timeout_s: float = 60) -> list[str]:
    """The text of every element matching selector, once `until(texts)` holds (the dashboards load lazily)."""
    deadline = time.monotonic() + timeout_s
    while True:
        texts = driver.execute_script(
            DEEP + f"return deep(document, {selector!r}).map(e => e.textContent.trim()).filter(t => t);"
        )
        if until(texts) or time.monotonic() > deadline:
            return texts
        time.sleep(0.3)


def test_tensorboard_opens_on_the_losses_and_lists_the_swept_keys_first(make_tensorboard, browser):
    # What `make tensorboard` opens on: the losses first, train, val and the optimum on one chart.
    browser.get(make_tensorboard)
    charts = seen(browser, ".category-name, .chart-title, .tf-card-heading, .name", lambda t: "loss" in t)
    # 2 runs x (train/loss, val/loss, train/optimum_loss); TensorBoard loads the runs' events lazily
    matches = seen(browser, "*", lambda t: "Matches (6)" in t)
    assert charts.index("losses") < charts.index("loss") < charts.index("metrics"), charts
    assert "Matches (6)" in matches, [m for m in matches if m.startswith("Matches (")]

    # Time Series: no epoch counter and no single-point final values among the cards; a fit picture shows.
    browser.get(make_tensorboard.split("#")[0] + "#timeseries")
    cards = seen(browser, "card-view .name, .card-title, .tag", lambda t: "fit/line" in t)
    assert "fit/line" in cards and not [c for c in cards if c == "epoch" or c.startswith("final/")], cards
    deadline = time.monotonic() + 30
    while not browser.execute_script(
        DEEP + "return deep(document, 'img').some(i => i.complete && i.naturalWidth >= 300);"
    ):
        assert time.monotonic() < deadline, "no picture of the fit loaded"
        time.sleep(0.3)

    # HParams: the swept key first among the settings, the optimised metric first among the metrics.
    browser.get(make_tensorboard.split("#")[0] + "#hparams")
    header = seen(browser, "vaadin-grid-cell-content", lambda t: "val/loss" in t)
    columns = header[header.index("Show Metrics") + 1 :] if "Show Metrics" in header else header
    assert columns[0] == "optimizer", header
    metrics = [c for c in columns if "/" in c]
    assert metrics[0] == "val/loss", header
