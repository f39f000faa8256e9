"""A big table with a known answer, for streaming (data=table data.stream=true), tests and the bench.

python scripts/make_table.py --rows 1e8 --features 64 --task regression --out big.parquet

x ~ N(0, 1) float32 features f0 .. f{d-1}; y = x w + b + noise * N(0, 1) (regression) or y ~ Bernoulli(
sigmoid(x w + b)) as 0/1 (binary), with w ~ N(0, 1 / d) and b = 0.3 from --seed. Written chunk by chunk in
row groups of --group-rows rows, so the table is never held whole: any size the disk takes. The weights,
bias and noise are in the file's metadata (key b"litlab"): the least-squares optimum of a regression table is
close to noise^2 (0.25 at the default noise), and exactly that in expectation.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from pyarrow import parquet


def write_table(
    out: Path,
    rows: int,
    features: int,
    task: str = "regression",
    seed: int = 0,
    noise: float = 0.5,
    group_rows: int = 1 << 17,
    compression: str = "none",
) -> dict:
    """Write the table; return what it was drawn from (weights, bias, noise)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(features) / np.sqrt(features)).astype(np.float32)
    truth = {"task": task, "weights": w.tolist(), "bias": 0.3, "noise": noise, "seed": seed}
    names = [f"f{i}" for i in range(features)]
    schema = pa.schema([*(pa.field(n, pa.float32()) for n in names), pa.field("y", pa.float32())])
    schema = schema.with_metadata({b"litlab": json.dumps(truth).encode()})
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    chunk = group_rows * max(1, (1 << 20) // group_rows)  # about a million rows at a time
    with parquet.ParquetWriter(partial, schema, compression=compression, use_dictionary=False) as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            x = rng.standard_normal((n, features), dtype=np.float32)
            logits = x @ w + np.float32(0.3)
            if task == "regression":
                y = logits + np.float32(noise) * rng.standard_normal(n, dtype=np.float32)
            else:
                y = (rng.random(n, dtype=np.float32) < 1 / (1 + np.exp(-logits))).astype(np.float32)
            columns = [pa.array(x[:, i]) for i in range(features)] + [pa.array(y)]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema), row_group_size=group_rows)
    partial.replace(out)
    return truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, required=True, help="rows, e.g. 1e7")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--task", choices=["regression", "binary"], default="regression")
    parser.add_argument("--out", type=Path, required=True, help="the .parquet file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=0.5, help="regression: the noise's standard deviation")
    parser.add_argument("--group-rows", type=int, default=1 << 17, help="rows of each Parquet row group")
    parser.add_argument("--compression", default="none", help="none, snappy, zstd, ...")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = int(args.rows)
    write_table(
        args.out, rows, args.features, args.task, args.seed, args.noise, args.group_rows, args.compression
    )
    size = args.out.stat().st_size
    print(
        f"wrote {args.out}: {rows} rows x {args.features} features, {size / 1e9:.2f} GB, "
        f"in {time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
