"""The downloader against a local HTTP server: checksums, atomic writes, interrupted transfers, the CLI."""

import functools
import http.server
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from litlab.data.files import FILES, SHA256, download, require, sha256
from litlab.errors import ConfigError
from tests.conftest import ROOT, SHARED_DATA, needs_real_data

pytestmark = needs_real_data
WINE = FILES["wine"]


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves SHARED_DATA; mode "corrupt" flips a byte, "cut" closes the connection halfway through a body,
    "endless" streams without end and no Content-Length, "slow" sends half the body, then waits."""

    mode = "ok"
    requests: list[str] = []

    def do_GET(self):
        type(self).requests.append(self.path)
        if self.mode == "ok":
            return super().do_GET()
        body = (SHARED_DATA / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        if self.mode == "endless":
            self.end_headers()
            while True:
                self.wfile.write(b"1,2,3\n" * 10000)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.mode == "corrupt":
            self.wfile.write(body[:-2] + b"0\n")
        elif self.mode == "slow":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            time.sleep(30)
        else:
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """Base URL of a server on 127.0.0.1 serving the shared data files; set .mode on the yielded class."""
    Handler.mode, Handler.requests = "ok", []
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(SHARED_DATA))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_download_verifies_and_keeps_a_good_file_once(server, tmp_path):
    path = download(WINE, tmp_path, server)
    assert path == tmp_path / WINE and sha256(path) == SHA256[WINE]
    assert download(WINE, tmp_path, server) == path and len(Handler.requests) == 1  # kept, not fetched again
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left beside it


def test_a_downloaded_file_is_readable_as_the_umask_allows(server, tmp_path):
    umask = os.umask(0o022)
    try:
        path = download(WINE, tmp_path, server)
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644  # a shared data directory: others may read it


def test_sigterm_removes_the_partial_file(server, tmp_path):
    Handler.mode = "slow"
    script = [sys.executable, str(ROOT / "scripts" / "download.py"), "wine", "--data-dir", str(tmp_path)]
    proc = subprocess.Popen([*script, "--base-url", server], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.rglob("*.part")):
        assert proc.poll() is None and time.monotonic() < deadline, "no transfer started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and err.strip() == "error: stopped by SIGTERM; nothing was saved"
    assert list(tmp_path.rglob("*.*")) == []


@pytest.mark.parametrize(
    "mode, message",
    [
        ("corrupt", "SHA-256 .* expected 76c3f8.*nothing was saved"),
        ("cut", "interrupted after"),  # half the body, then the connection closes
        ("endless", "sent more than the 264426 bytes .* nothing was saved"),  # cut off at the file's size
    ],
)
def test_a_bad_transfer_saves_nothing(server, tmp_path, mode, message):
    Handler.mode = mode
    with pytest.raises(ConfigError, match=message):
        download(WINE, tmp_path, server)
    assert list(tmp_path.rglob("*.*")) == []


def test_a_corrupt_local_copy_is_replaced_atomically(server, tmp_path):
    (tmp_path / WINE).parent.mkdir(parents=True)
    (tmp_path / WINE).write_text("half a file")
    Handler.mode = "cut"
    with pytest.raises(ConfigError):
        download(WINE, tmp_path, server)
    assert (tmp_path / WINE).read_text() == "half a file"  # untouched until a good copy arrives
    Handler.mode = "ok"
    assert sha256(download(WINE, tmp_path, server)) == SHA256[WINE]


def test_unreachable_server_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="download of http://127.0.0.1:9/.* failed") as e:
        download(WINE, tmp_path, "http://127.0.0.1:9/", timeout=5)
    assert "\n" not in str(e.value)


def test_missing_file_names_the_place_and_the_command(tmp_path):
    with pytest.raises(ConfigError) as e:
        require(tmp_path / WINE, "wine")
    assert str(tmp_path / WINE) in str(e.value) and "`make data`" in str(e.value)
    assert "python scripts/download.py wine" in str(e.value) and "\n" not in str(e.value)


def test_cli_downloads_every_dataset_and_refuses_unknown_names(server, tmp_path):
    script = [sys.executable, str(ROOT / "scripts" / "download.py"), "--data-dir", str(tmp_path)]
    done = subprocess.run([*script, "--base-url", server], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in FILES.values():
        assert sha256(tmp_path / name) == SHA256[name]
    bad = subprocess.run([*script, "wines"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown dataset wines" in bad.stderr
