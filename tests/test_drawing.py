"""The drawing process of the fitted line's frames: the same pictures as drawn here, kept for the next run,
drawn here where it dies or is still starting, deaf to the training process's signals."""

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from litlab import drawing
from litlab.drawing import ENDED, IDLE, Drawing, Frames, end_idle


@pytest.fixture(autouse=True)
def no_idle_process():
    """Each test starts its own drawing process, and leaves none."""
    end_idle()
    yield
    end_idle()


def frame_inputs(frames: int = 4) -> tuple[tuple, list[tuple[int, np.ndarray, str]]]:
    """Frames' arguments (the book's points, a grid) and what each frame asks for."""
    x = np.linspace(20.0, 80.0, 11, dtype=np.float32)[:, None]
    grid = np.linspace(20.0, 80.0, 100, dtype=np.float32)[:, None]
    args = ({"train": (x, 0.5 * x - 17)}, grid, 1, (320, 240), "input")
    return args, [(step, (0.1 * step) * grid - 17, f"epoch {step}") for step in range(1, frames + 1)]


def drawn_here(args: tuple, asked: list, gif: Path) -> list[bytes]:
    here = Drawing(*args)
    pngs = [here.frame(fitted, title) for _, fitted, title in asked]
    here.gif(gif, 200)
    return pngs


def started(frames: Frames) -> None:
    """Wait until the drawing process has drawn its background (a short run would draw here instead)."""
    deadline = time.monotonic() + 30
    while not frames.ready and time.monotonic() < deadline:
        assert frames.answer(wait=False) is None and frames.process is not None
        time.sleep(0.01)
    assert frames.ready


def test_frames_drawn_by_the_process_are_those_drawn_here_and_a_second_run_reuses_it(tmp_path):
    args, asked = frame_inputs()
    expected = drawn_here(args, asked, tmp_path / "here.gif")
    frames = Frames(*args)
    process = frames.process
    assert process is not None  # POSIX: python -m litlab.drawing
    started(frames)
    for ask in asked[:2]:
        frames.ask(*ask)
    drawn = frames.drawn(wait=True)
    for ask in asked[2:]:
        frames.ask(*ask)
    frames.ask_gif(tmp_path / "process.gif", 200)
    drawn += frames.end()
    assert drawn == [(step, png) for (step, _, _), png in zip(asked, expected, strict=True)]
    assert (tmp_path / "process.gif").read_bytes() == (tmp_path / "here.gif").read_bytes()
    assert [(process, frames.conn)] == IDLE and process.poll() is None  # kept for the next run

    again = Frames(*args)  # the same background: the process draws the same frames again, and a new GIF
    assert again.process is process and not IDLE
    started(again)
    for ask in asked[:3]:
        again.ask(*ask)
    again.ask_gif(tmp_path / "again.gif", 200)
    assert [png for _, png in again.end()] == expected[:3]
    drawn_here(args, asked[:3], tmp_path / "here3.gif")
    assert (tmp_path / "again.gif").read_bytes() == (tmp_path / "here3.gif").read_bytes()

    end_idle()  # as this process exits
    assert process.poll() is not None


def test_frames_of_a_process_that_dies_are_drawn_here_and_the_gif_has_them_all(tmp_path):
    args, asked = frame_inputs(5)
    expected = drawn_here(args, asked, tmp_path / "here.gif")
    frames = Frames(*args)
    started(frames)
    frames.ask(*asked[0])
    first = frames.drawn(wait=True)
    process = frames.process
    os.kill(process.pid, signal.SIGKILL)  # killed (out of memory, say) with two frames asked for
    frames.ask(*asked[1])
    frames.ask(*asked[2])
    rest = frames.drawn(wait=True)
    assert frames.process is None  # drawn here from now on
    frames.ask(*asked[3])
    frames.ask(*asked[4])
    rest += frames.drawn()
    assert [png for _, png in first + rest] == expected
    frames.ask_gif(tmp_path / "fallback.gif", 200)
    assert frames.end() == [] and not IDLE
    assert (tmp_path / "fallback.gif").read_bytes() == (tmp_path / "here.gif").read_bytes()
    for _ in range(100):  # reaped by a later stop
        frames.stop()
        if process not in ENDED:
            break
        time.sleep(0.05)
    assert process not in ENDED and process.returncode is not None


def test_a_short_run_draws_here_rather_than_wait_for_the_process_to_start(tmp_path):
    args, asked = frame_inputs(2)
    expected = drawn_here(args, asked, tmp_path / "here.gif")
    frames = Frames(*args)  # a new interpreter takes ~0.5 s to draw its background
    process = frames.process
    for ask in asked:
        frames.ask(*ask)
    frames.ask_gif(tmp_path / "short.gif", 200)
    assert [png for _, png in frames.end()] == expected
    assert (tmp_path / "short.gif").read_bytes() == (tmp_path / "here.gif").read_bytes()
    assert not IDLE and (process in ENDED or process.poll() is not None)  # stopped, not kept
    idle = Frames(*args)  # a run that asks for nothing: its READY, unread, must not reach the next run
    assert idle.end() == [] and not IDLE
    here = Frames(*args, process=False)  # one frame, at the end: no process to wait for
    assert here.process is None
    here.ask(*asked[0])
    assert [png for _, png in here.end()] == expected[:1] and not IDLE


def test_the_drawing_process_ignores_the_parents_signal_handlers_and_ends_on_sigterm(tmp_path):
    args, asked = frame_inputs(3)
    called = tmp_path / "handler ran"
    previous = signal.signal(signal.SIGUSR1, lambda *_: called.touch())  # as Lightning's SLURM requeue
    try:
        frames = Frames(*args)
        for number in (signal.SIGUSR1, signal.SIGINT):  # SLURM's --signal, a Ctrl-C: the parent's to handle
            os.kill(frames.process.pid, number)  # at once: the process is still starting
        started(frames)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    process = frames.process
    for number in (signal.SIGUSR1, signal.SIGINT):  # and once it has started
        os.kill(process.pid, number)
    frames.ask(*asked[0])
    assert [step for step, _ in frames.drawn(wait=True)] == [1] and frames.process is process
    os.kill(process.pid, signal.SIGTERM)  # the process ends; what is asked for then is drawn here
    frames.ask(*asked[1])
    frames.ask(*asked[2])
    assert [step for step, _ in frames.drawn(wait=True)] == [2, 3] and frames.process is None
    assert process.wait(10) == -signal.SIGTERM and not called.exists()


def test_the_process_imports_no_torch():
    frames = Frames(*frame_inputs(1)[0])
    started(frames)
    modules = Path(f"/proc/{frames.process.pid}/maps").read_text()
    assert "libtorch" not in modules and drawing.__name__ == "litlab.drawing"
    frames.stop()
