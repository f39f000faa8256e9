"""Pictures drawn with matplotlib (Agg, no pyplot) and Pillow, and the process that draws the fitted line's
frames while training goes on: `python -m litlab.drawing` (Frames starts it). Neither imports torch, so that
process starts in half a second.

Matplotlib is imported inside the functions that draw, so `python train.py` only pays for it when a
picture is due."""

import atexit
import io
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections import deque
from contextlib import suppress
from multiprocessing.connection import Connection, Pipe
from pathlib import Path

import numpy as np
from PIL import Image

READY = ("ready",)  # a drawing process's first answer: it has drawn the background and takes frames


def rgb(canvas) -> Image.Image:
    """What an Agg canvas holds now, as an RGB image."""
    return Image.frombuffer(
        "RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1
    ).convert("RGB")


def render(fig) -> Image.Image:
    """A matplotlib Figure drawn by Agg as an RGB image (no pyplot, no GUI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return rgb(canvas)


def new_figure(size: tuple[int, int], ncols: int = 1, layout: str | None = "constrained"):
    """(figure, axes) of exactly size = (width, height) pixels."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] / 100, size[1] / 100), dpi=100, layout=layout)
    return fig, fig.subplots(1, ncols)


def png_bytes(image: Image.Image) -> bytes:
    """An RGB or palette image as a PNG at zlib level 1: a third of the time add_image takes (which
    rescales through float32 and compresses at level 6) for a plot of flat colours, a sixth for a
    palette image."""
    png = io.BytesIO()
    image.save(png, format="PNG", compress_level=1)
    return png.getvalue()


def save_gif(path: Path, frames: list[Image.Image], frame_ms: int) -> None:
    """An animated GIF that loops, of palette frames. One shared palette and no optimize pass: 8 ms for
    eleven 640x480 frames (the same pixels as with Pillow's optimize, a quarter larger), against 17 ms
    with it, 0.12 s with a palette per frame and 0.55 s through imageio's quantizer."""
    first, *rest = frames
    first.save(path, save_all=True, append_images=rest, duration=frame_ms, loop=0, optimize=False)


class LineFrames:
    """The book's temperature plot, data points and fitted line in original units, drawn once: each
    frame pastes that background and draws only the line and the title (Agg blitting), then maps its
    colours onto the background's palette, which the TensorBoard PNG and the GIF then share."""

    def __init__(
        self,
        points: dict[str, tuple[np.ndarray, np.ndarray]],
        grid: np.ndarray,
        outputs: int,
        size,
        xlabel: str,
    ):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        # Fixed margins in pixels: constrained layout would double the time of the one full draw.
        fig, self.ax = new_figure(size, layout=None)
        w, h = size
        fig.subplots_adjust(left=70 / w, right=1 - 15 / w, bottom=50 / h, top=1 - 35 / h)
        for split, (x, y) in points.items():
            self.ax.plot(x[:, 0], y, "o", label=split, alpha=0.7)
        # Axes fit the data, not the line: a line far off early in training leaves the frame.
        self.lines = self.ax.plot(grid[:, 0], np.zeros((len(grid), outputs)), "-k", scaley=False)
        self.lines[0].set_label("model")
        self.ax.set(xlabel=xlabel, ylabel="target")
        self.ax.legend(loc="upper left")  # its "model" entry puts the line's black in the palette
        for line in self.lines:
            line.set_visible(False)
        self.canvas = FigureCanvasAgg(fig)
        self.canvas.draw()  # the one full draw
        self.background = self.canvas.copy_from_bbox(fig.bbox)
        self.palette = rgb(self.canvas).quantize(method=Image.Quantize.FASTOCTREE)
        for line in self.lines:
            line.set_visible(True)

    def frame(self, fitted: np.ndarray, title: str) -> Image.Image:
        """A palette picture with the line at fitted [len(grid), outputs]."""
        self.canvas.restore_region(self.background)
        for line, values in zip(self.lines, fitted.T, strict=True):
            line.set_ydata(values)
            self.ax.draw_artist(line)
        self.ax.set_title(title)
        self.ax.draw_artist(self.ax.title)
        return rgb(self.canvas).quantize(palette=self.palette, dither=Image.Dither.NONE)


class Drawing:
    """The fitted line's frames (LineFrames) as PNG bytes, kept for the GIF of them all."""

    def __init__(self, *args):
        self.lines, self.frames = LineFrames(*args), []

    def frame(self, fitted: np.ndarray, title: str) -> bytes:
        self.frames.append(self.lines.frame(fitted, title))
        return png_bytes(self.frames[-1])

    def gif(self, path: Path, frame_ms: int) -> None:
        save_gif(path, self.frames, frame_ms)


def draw_frames(conn: Connection) -> None:
    """A drawing process's work, until the pipe closes: for ("start", *args) received, Drawing(*args) (a
    run's background; the last run's again where its arguments were the same, as in a sweep) and READY sent
    back; for each ("frame", step, fitted, title), (step, PNG bytes) sent back; for ("gif", path,
    frame_ms), the GIF written and ("gif",) sent back."""
    drawing, started = None, b""
    try:
        while True:
            message = conn.recv_bytes()
            what, *rest = pickle.loads(message)
            if what == "start":
                if message != started:
                    drawing, started = Drawing(*rest), message
                drawing.frames = []
                conn.send(READY)
            elif what == "gif":
                drawing.gif(*rest)
                conn.send(("gif",))
            else:
                step, fitted, title = rest
                conn.send((step, drawing.frame(fitted, title)))
    except EOFError:  # the training process closed the pipe, or ended
        return


class Frames:
    """The fitted line's frames, drawn by a process of their own on another core while training goes on
    (the book's fit spent ~150 ms of its ~800 ms drawing them in the training process): a new interpreter
    (`python -m litlab.drawing`, no torch), which shares no memory with this one (a forked copy made every
    page this process wrote afterwards a copy: ~900 page faults in the book fit's steps). Frames come back
    as PNG bytes in the order they were asked for. They are drawn here where no process can start
    (Windows) or none is wanted (process=False: a run that draws one frame, at its end), where it stops
    answering (WAIT_S) or dies, or where it is still starting when every frame is wanted (a short run:
    drawing here is then as quick as waiting): the same pictures."""

    WAIT_S = 60.0

    def __init__(self, *args, process: bool = True):
        self.args, self.asked, self.received = args, deque(), []
        self.conn: Connection | None = None
        self.process: subprocess.Popen | None = None
        self.sending: threading.Thread | None = None
        self.ready = False  # the process has sent READY
        self.here: Drawing | None = None
        self.gif_asked: tuple[Path, int] | None = None
        if process and os.name == "posix":  # a socket pair passed by its file descriptor
            self.start()

    def start(self) -> None:
        """A drawing process: the one an earlier run of this process left (sweeps, notebooks), else a new
        one; then the run's arguments, sent while it starts (many points need not fit in the socket's
        buffer): training goes on."""
        while IDLE and self.process is None:
            process, conn = IDLE.pop()
            if process.poll() is None:
                self.process, self.conn = process, conn
            else:
                conn.close()
        if self.process is None and sys.executable:  # embedded Pythons may have no interpreter to start
            self.spawn()
        if self.process is not None:
            self.sending = threading.Thread(target=self.post, args=(("start", *self.args),), daemon=True)
            self.sending.start()

    def spawn(self) -> None:
        ours, theirs = Pipe()
        # The signals this process handles (Ctrl-C, Lightning's SIGUSR1 requeue under SLURM) are its own:
        # the drawing process ignores them, and they wait until it does. SIGTERM ends it.
        handled = [n for n in signal.valid_signals() if callable(signal.getsignal(n)) and n != signal.SIGTERM]
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, handled)
        try:
            fd = str(theirs.fileno())
            command = [sys.executable, "-m", __name__, fd, *(str(int(n)) for n in handled)]
            self.process = subprocess.Popen(command, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
            self.conn = ours
        except OSError:
            ours.close()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            theirs.close()

    def ask(self, step: int, fitted: np.ndarray, title: str) -> None:
        self.asked.append((step, fitted, title))
        if self.process is not None:
            self.send("frame", step, fitted, title)

    def ask_gif(self, path: Path, frame_ms: int) -> None:
        """The GIF of every frame, written by the time end() returns."""
        self.gif_asked = path, frame_ms
        if self.process is not None:
            self.send("gif", path, frame_ms)

    def drawn(self, wait: bool = False) -> list[tuple[int, bytes]]:
        """(step, PNG) of the frames drawn since the last call, in order; wait: of every one asked for."""
        frames = []
        while self.asked:
            if (answer := self.answer(wait)) is None:
                if self.process is not None:
                    break  # not drawn yet
                step, fitted, title = self.asked[0]  # no process (any more): drawn here
                answer = step, self.drawing().frame(fitted, title)
            frames.append(answer)
            self.asked.popleft()
        self.received += [png for _, png in frames]
        return frames

    def end(self) -> list[tuple[int, bytes]]:
        """Every frame not returned yet, and the GIF asked for written; the process is kept for this
        process's next run (one still starting ends)."""
        frames = self.drawn(wait=True)
        if self.gif_asked is not None and self.answer(wait=True) is None:
            self.drawing().gif(*self.gif_asked)
        if self.process is not None and self.ready:  # it has answered all this run asked for
            IDLE.append((self.process, self.conn))
            self.process = None
        self.stop()
        return frames

    def send(self, *message) -> None:
        if self.sending is not None:  # the arguments go first
            self.sending.join()
            self.sending = None
        self.post(message)

    def post(self, message: tuple) -> None:
        with suppress(OSError):  # the process is gone: answer() finds out
            self.conn.send(message)

    def answer(self, wait: bool):
        """The process's next answer, or None: none yet (not waiting), or no process (any more: then
        stopped)."""
        if self.process is None:
            return None
        try:
            if not self.ready and self.conn.poll(0):
                self.ready = self.conn.recv() == READY
            if self.ready and self.conn.poll(self.WAIT_S if wait else 0):
                return self.conn.recv()
            if not wait:
                return None
        except (EOFError, OSError):
            pass
        self.stop()  # gone, silent for WAIT_S, or still starting when every frame is wanted
        return None

    def drawing(self) -> Drawing:
        """The frames drawn here, after those the process sent back."""
        if self.here is None:
            self.here = Drawing(*self.args)
            self.here.frames = [Image.open(io.BytesIO(png)) for png in self.received]
        return self.here

    def stop(self) -> None:
        """The process ends (killed: it holds nothing to save), and is reaped without waiting (a later stop
        reaps what is left, the end of this process the rest)."""
        if self.process is not None:
            self.process.kill()
            if self.sending is not None:  # the kill closed the socket's other end: the send ends
                self.sending.join()
                self.sending = None
            self.conn.close()
            ENDED.append(self.process)
            self.process = None
        for process in list(ENDED):
            if process.poll() is not None:
                ENDED.remove(process)


ENDED: list[subprocess.Popen] = []  # drawing processes stopped and not reaped yet
IDLE: list[tuple[subprocess.Popen, Connection]] = []  # a drawing process that ended its run, for the next


@atexit.register
def end_idle() -> None:
    """An idle drawing process ends with this one (it would on its own, at the pipe's end)."""
    while IDLE:
        process, conn = IDLE.pop()
        conn.close()
        process.kill()
        process.wait()


def main(fd: str, *ignored: str) -> None:
    """The drawing process: the training process's signals ignored (they were blocked as it started),
    then draw_frames on the socket it passed."""
    for number in ignored:
        signal.signal(int(number), signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [int(n) for n in ignored])
    draw_frames(Connection(int(fd)))


if __name__ == "__main__":
    main(*sys.argv[1:])
