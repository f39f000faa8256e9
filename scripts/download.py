"""python scripts/download.py [wine bike text] [--data-dir DIR] [--base-url URL]: fetch the real data files.

Each file is checked against its SHA-256 (data/README.md) and only then renamed into place; one already
there with the right checksum is kept. LITLAB_DATA_DIR and LITLAB_DATA_URL set the defaults."""

import argparse
import os
import signal
import sys

from litlab.data.files import BASE_URL, FILES, download
from litlab.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", help=f"any of {', '.join(FILES)} (default: all)")
    parser.add_argument("--data-dir", default=os.environ.get("LITLAB_DATA_DIR", "data"))
    parser.add_argument("--base-url", default=os.environ.get("LITLAB_DATA_URL", BASE_URL))
    args = parser.parse_args(argv)
    # SIGTERM (a job scheduler, `kill`) stops as Ctrl-C does: the temp file of a transfer is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("error: stopped by SIGTERM; nothing was saved"))
    unknown = set(args.datasets) - set(FILES)
    if unknown:
        parser.error(f"unknown dataset {', '.join(sorted(unknown))}: choose from {', '.join(FILES)}")
    try:
        for name in args.datasets or FILES:
            print(f"{name}: {download(FILES[name], args.data_dir, args.base_url)}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
