"""The README and docs/ as a reader meets them: every link lands, every `make` target exists, and every
line of the README's quick start runs."""

import json
import math
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import REAL_DATA, ROOT, SHARED_DATA, run_dirs, run_train

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^ {0,3}(```|~~~)")
LINK = re.compile(r"(?<!\\)\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
MAKE = re.compile(r"\bmake ([A-Za-z][\w-]*)")
QUICK_START = "<!-- quick-start"
LINE_BUDGET_S = 60  # each line took 6-20 s on 2 busy cores; a line over this is no quick start


def split_code(text: str) -> tuple[list[str], list[str]]:
    """(prose lines, code) of a markdown page: fenced blocks and inline code spans are code."""
    prose, code, fenced = [], [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif fenced:
            code.append(line)
        else:
            code += [m.group(2) for m in INLINE_CODE.finditer(line)]
            prose.append(INLINE_CODE.sub("", line))
    return prose, code


def slugs(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to hyphens,
    a repeated heading suffixed -1, -2, ..."""
    found, counts, fenced = set(), {}, False
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
        heading = None if fenced else re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1))  # a link's text only
            slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
            n = counts.get(slug, 0)
            counts[slug] = n + 1
            found.add(f"{slug}-{n}" if n else slug)
    return found


def makefile_targets() -> set[str]:
    """Targets with a rule of their own (`name:`) that .PHONY declares commands."""
    text = (ROOT / "Makefile").read_text()
    rules = set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", text, re.M))
    phony = {t for line in re.findall(r"^\.PHONY\s*:(.*)$", text, re.M) for t in line.split()}
    return rules & phony


def broken_links(page: Path) -> list[str]:
    """The page's relative links (outside code) to a file that is not there, or a heading that is not."""
    prose, _ = split_code(page.read_text())
    broken = []
    for target in (m.group(1) for line in prose for m in LINK.finditer(line)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
            continue
        path, _, anchor = target.partition("#")
        where = (page.parent / path).resolve() if path else page
        if not where.exists():
            broken.append(f"{target}: no such file")
        elif anchor and where.suffix == ".md" and anchor not in slugs(where):
            broken.append(f"{target}: no heading #{anchor} in {where.name}")
    return broken


def test_broken_links_are_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# B: `b.py` here\n")
    page = tmp_path / "a.md"
    page.write_text(
        "# Top\n## Top\n[ok](docs/b.md#b-bpy-here) [ok](#top-1) [bad](docs/b.md#nope) [bad](c.md)\n"
        "`[code](x.md)` [web](https://example.org/x.md)\n```\n[fenced](y.md)\n```\n[bad](#top-2)\n"
    )
    assert broken_links(page) == [
        "docs/b.md#nope: no heading #nope in b.md",
        "c.md: no such file",
        "#top-2: no heading #top-2 in a.md",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_lands(page):
    assert not broken_links(page), f"{page.relative_to(ROOT)}: " + "; ".join(broken_links(page))


def test_readme_links_every_docs_page():
    prose, _ = split_code((ROOT / "README.md").read_text())
    linked = {m.group(1).partition("#")[0] for line in prose for m in LINK.finditer(line)}
    pages = {f"docs/{p.name}" for p in PAGES[1:]}
    assert pages <= linked, f"README.md does not link {sorted(pages - linked)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_make_target_named_exists(page):
    _, code = split_code(page.read_text())
    named = {m.group(1) for snippet in code for m in MAKE.finditer(snippet)}
    assert named <= makefile_targets(), f"not Makefile targets: {sorted(named - makefile_targets())}"


def quick_start() -> list[str]:
    """The command lines of the README's quick start: the first ```bash block after its marker."""
    text = (ROOT / "README.md").read_text()
    assert text.count(QUICK_START) == 1, f"README.md needs exactly one {QUICK_START} marker"
    block = re.search(r"^```bash\n(.*?)^```", text.split(QUICK_START, 1)[1], re.M | re.S)
    assert block, f"no ```bash block after {QUICK_START} in README.md"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def arguments(line: str) -> list[str]:
    """What a quick-start line passes to train.py, as the shell splits it (comments dropped)."""
    words = shlex.split(line, comments=True)
    assert words[:2] == ["python", "train.py"], f"not a train.py line: {line}"
    return words[2:]


def jobs(args: list[str]) -> int:
    """Runs a command line makes: one, or under -m the product of the comma lists swept."""
    if "-m" not in args and "--multirun" not in args:
        return 1
    values = [a.split("=", 1)[1] for a in args if "=" in a and not a.startswith("-")]
    return math.prod(len(v.split(",")) for v in values if not v.startswith(("[", "{", "'", '"')))


LINES = quick_start()


def test_quick_start_covers_the_groups():
    words = " ".join(LINES)
    for group in ("data=", "model=", "optimizer=", "scheduler=", "trainer=", "experiment=", "debug="):
        assert f" {group}" in words, f"the quick start shows no {group}..."
    assert any(jobs(arguments(line)) > 1 for line in LINES), "the quick start shows no sweep"
    assert 6 <= len(LINES) <= 12


@pytest.fixture(scope="module")
def quick_start_runs(tmp_path_factory) -> Callable[[str], tuple[Path, object, float]]:
    """A line's (root, proc, seconds). The quick-start lines run two at a time (2 cores), four at once: the
    line a test asks for and the next ones not run yet, so that no test waits for more than four runs."""

    def run(line: str) -> tuple[Path, object, float]:
        root = tmp_path_factory.mktemp("quick")
        start = time.perf_counter()
        proc = run_train(root, *arguments(line), check=False)
        return root, proc, time.perf_counter() - start

    needed = [line for line in LINES if not needs_missing_data(line)]
    done: dict[str, tuple[Path, object, float]] = {}

    def result(line: str) -> tuple[Path, object, float]:
        if line not in done:
            batch = [other for other in needed[needed.index(line) :] if other not in done][:4]
            with ThreadPoolExecutor(max_workers=2) as pool:
                done.update(zip(batch, pool.map(run, batch), strict=True))
        return done[line]

    return result


def needs_missing_data(line: str) -> bool:
    return not SHARED_DATA.is_dir() and any(f"data={name}" in line.split() for name in REAL_DATA)


@pytest.mark.slow
@pytest.mark.parametrize("line", LINES, ids=lambda line: " ".join(arguments(line)) or "(defaults)")
def test_quick_start_line_runs(line, quick_start_runs):
    if needs_missing_data(line):
        pytest.skip(f"real data files not in {SHARED_DATA}")
    root, proc, seconds = quick_start_runs(line)
    assert proc.returncode == 0, f"{line}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    runs = run_dirs(root)
    assert len(runs) == jobs(arguments(line)), runs
    for run in runs:
        assert json.loads((run / "metrics.json").read_text())["status"] == "ok"
    assert seconds < LINE_BUDGET_S, f"{line} took {seconds:.0f} s: pick a quicker line for the quick start"


def python_snippet() -> str:
    """The README's Python block (From Python)."""
    text = (ROOT / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)


@pytest.mark.slow
def test_the_readmes_python_snippet_runs_twice_in_one_process(tmp_path):
    """Two fits in one process keep apart: their own directories, logs and seeds (the same numbers), and
    handlers gone after each; a mistake raises the one-line ConfigError and leaves no directory."""
    script = f"""
import json, logging
from litlab import config, fit
from litlab.errors import ConfigError
runs = []
for _ in range(2):
{indent(python_snippet())}
    runs.append(run)
    assert not logging.getLogger("litlab").handlers
try:
    fit(config("optimizer.lr=-1"))
except ConfigError as e:
    refused = str(e)
print(json.dumps({{"dirs": [str(r.dir) for r in runs], "acc": [r.metrics["val/acc"] for r in runs],
                  "model": type(runs[0].model).__name__, "refused": refused}}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    first, second = map(Path, found["dirs"])
    assert first != second and run_dirs(tmp_path) == sorted([first, second])
    assert found["acc"][0] == found["acc"][1] > 0.7 and found["model"] == "TaskModel"
    assert found["refused"] == "optimizer.lr=-1 must be > 0: try optimizer.lr=0.01"
    for run in (first, second):
        log = (run / "train.log").read_text()
        assert log.count("model=logistic, optimizer=Adam") == 1 and f"runs/{run.name}" in log
        assert json.loads((run / "metrics.json").read_text())["status"] == "ok"


def indent(code: str) -> str:
    return "".join(f"    {line}\n" for line in code.splitlines())
