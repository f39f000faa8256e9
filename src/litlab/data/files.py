"""The real data files: where they come from, their SHA-256, a checked download, and checked reading."""

import csv
import hashlib
import http.client
import math
import os
import tempfile
import urllib.request
from pathlib import Path

from litlab.errors import ConfigError

# The book's repository keeps exact copies of every file (see data/README.md); LITLAB_DATA_URL overrides.
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max: the data's dtype
BASE_URL = "https://raw.githubusercontent.com/deep-learning-with-pytorch/dlwpt-code/master/data/p1ch4/"
SHA256 = {
    "tabular-wine/winequality-white.csv": "76c3f809815c17c07212622f776311faeb31e87610d52c26d87d6e361b169836",
    "bike-sharing-dataset/hour-fixed.csv": "ae5b1b828676fb7696ebfd838f105c71cda9c867aa752f75eed6fa6d0eacf991",
    "jane-austen/1342-0.txt": "c96e628c6f84bf45d3cee2c2da66166ccbeda328ecb76bb9b2ab1bc91961d0d1",
}
# Their sizes in bytes: a server that sends more is cut off there (an endless response fills no disk).
SIZES = {
    "tabular-wine/winequality-white.csv": 264426,
    "bike-sharing-dataset/hour-fixed.csv": 1148001,
    "jane-austen/1342-0.txt": 711298,
}
FILES = {
    "wine": "tabular-wine/winequality-white.csv",
    "bike": "bike-sharing-dataset/hour-fixed.csv",
    "text": "jane-austen/1342-0.txt",
}


def require(path: str | Path, dataset: str) -> Path:
    """The path of an existing, non-empty data file; otherwise one line saying how to fetch it."""
    path = Path(path)
    if path.exists() and not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file (a FIFO, a device?)"
        raise ConfigError(f"data file {path} is {kind}: point data.path= at the {dataset} file itself")
    if not path.is_file() and dataset not in FILES:
        raise ConfigError(f"data file {path} not found: point data.path= at your file")
    if not path.is_file():
        raise ConfigError(
            f"data file {path} not found: fetch it with `make data` (or `python scripts/download.py "
            f"{dataset}`), or point data.path= or LITLAB_DATA_DIR= at a copy"
        )
    if path.stat().st_size == 0:
        raise ConfigError(
            f"data file {path} is empty: fetch it again with `python scripts/download.py {dataset}`"
        )
    return path


def read_table(path: Path, columns: list[str], delimiter: str = ",") -> list[list[float]]:
    """Rows of the named columns as floats (UTF-8, with or without a BOM; blank lines skipped); a missing
    column, a cell that is not a finite float32 number, or a file that is not UTF-8 text is one ConfigError
    line."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            return table_rows(path, reader, columns)
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None
    except csv.Error as e:  # a field over the csv module's limit (131072 characters), a NUL byte, ...
        raise ConfigError(
            f"{path}, line {reader.line_num} is not a row of a {delimiter!r}-separated table ({e}): a binary "
            "file or a broken line? fix or drop it"
        ) from None


def not_utf8(path: Path, e: UnicodeDecodeError) -> ConfigError:
    return ConfigError(
        f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}): convert it, e.g. "
        f"`iconv -f latin1 -t utf-8`, or fetch it again"
    )


def table_rows(path: Path, reader, columns: list[str]) -> list[list[float]]:
    header = next(reader, None) or []
    missing = [c for c in columns if c not in header]
    if missing:
        raise ConfigError(f"{path}: no column {', '.join(map(repr, missing))} in its header {header}")
    where = [header.index(c) for c in columns]
    rows = []
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):  # its cells would land under the wrong names
            raise ConfigError(
                f"{path}, line {line} has {len(row)} cells and the header {len(header)}: a shifted or "
                "broken row? fix or drop it"
            )
        values = [number(row[i]) if i < len(row) else None for i in where]
        bad = next((c for c, v in zip(columns, values, strict=True) if v is None), None)
        if bad is not None:
            i = where[columns.index(bad)]
            cell = row[i] if i < len(row) else ""
            what = (
                "not a finite number that float32 holds (|x| < 3.4e38)" if is_float(cell) else "not a number"
            )
            raise ConfigError(
                f"{path}, line {line}, column {bad!r}: {cell!r} is {what}; fill or drop that row"
            )
        rows.append(values)
    if not rows:
        raise ConfigError(f"{path} has a header but no rows")
    return rows


def is_float(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def number(cell: str) -> float | None:
    """The cell as a float that float32 holds finitely, else None (text, nan, inf, 1e308)."""
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) and abs(value) < FLOAT32_MAX else None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(name: str, data_dir: str | Path, base_url: str | None = None, timeout: float = 60) -> Path:
    """Fetch one file below data_dir, keeping it only if its SHA-256 matches: a temp file renamed at the end,
    so an interrupted or corrupt transfer never leaves a half-written file where a reader looks. Reads at
    most the file's size; the file is saved readable as the umask allows (a shared data directory)."""
    target = Path(data_dir) / name
    if target.is_file() and sha256(target) == SHA256[name]:
        return target
    url = (base_url or os.environ.get("LITLAB_DATA_URL") or BASE_URL).rstrip("/") + "/" + name
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            expected, received, digest = response.headers.get("Content-Length"), 0, hashlib.sha256()
            if expected is not None and int(expected) != SIZES[name]:
                raise ConfigError(
                    f"download of {url} is {expected} bytes, not the {SIZES[name]} of {name}: "
                    "nothing was saved"
                )
            for block in iter(lambda: response.read(1 << 16), b""):
                out.write(block)
                digest.update(block)
                received += len(block)
                if received > SIZES[name]:
                    raise ConfigError(
                        f"download of {url} sent more than the {SIZES[name]} bytes of {name}: "
                        "nothing was saved"
                    )
        # http.client returns a short body without complaint when the server closes early
        if expected is not None and received != int(expected):
            raise ConfigError(
                f"download of {url} interrupted after {received} of {expected} bytes: run it again"
            )
        if digest.hexdigest() != SHA256[name]:
            raise ConfigError(
                f"download of {url} has SHA-256 {digest.hexdigest()}, expected {SHA256[name]}: "
                "nothing was saved"
            )
        # mkstemp's file is private (0600); the data file: as readable as the umask allows
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except (OSError, http.client.HTTPException) as e:  # URLError, refused, timeout, disk full, bad reply
        raise ConfigError(f"download of {url} failed: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
