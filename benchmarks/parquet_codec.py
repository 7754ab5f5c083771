"""Parquet settings for the image and mask bytes: CPU to write and to read, bytes on disk (not a
test).

    .venv/bin/python benchmarks/parquet_codec.py [--images 16] [--size 1024] [--repeats 5]

The rows are the pipeline's own (``process_record`` on the full-field synthetic scanned-film
DICOMs of ``benchmarks/preprocess.py``, 4000 x 3000 16-bit RLE, to ``--size`` px), in the
pipeline's schema. Each variant of :data:`VARIANTS` writes them the way Ray Data's
``write_parquet`` does (``pyarrow.dataset.write_dataset``, partitioned by ``status``, one file,
the variant's ``ParquetFileFormat`` write options) and reads the two columns training reads
back (``image``, ``mask``); the variants take turns within each repeat, so the machine's noise
hits all alike. CPU is ``time.process_time`` of this process (pyarrow's own threads
included), per image; medians over the repeats. Every variant's read-back bytes must equal the
rows written.

Prints a table and writes ``benchmarks/results/parquet_codec.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# name -> None (pyarrow's defaults, as before) or the pipeline's options with (codec, level).
VARIANTS: dict[str, tuple[str, int | None] | None] = {
    "pyarrow default (snappy, dictionary, statistics)": None,
    "snappy, bytes plain": ("snappy", None),
    "none, bytes plain": ("none", None),
    "lz4, bytes plain": ("lz4", None),
    "zstd 1, bytes plain": ("zstd", 1),
    "zstd 3, bytes plain": ("zstd", 3),
}


def write_options(name: str) -> dict:
    """The variant's write options: "bytes plain" ones are the pipeline's own
    (``parquet_write_options``: no dictionary and no statistics for the image and mask
    bytes) with the variant's codec and level."""
    from mammoray.core.config import config_from_dict
    from preprocessing.pipeline import parquet_write_options

    if VARIANTS[name] is None:
        return {}
    codec, level = VARIANTS[name]
    opts = parquet_write_options(config_from_dict({"data": {"parquet_compression": codec}}).data)
    return opts if level is None else {**opts, "compression_level": level}


def processed_rows(recs: list[dict], size: int):
    import pyarrow as pa

    from mammoray.core.config import config_from_dict
    from preprocessing.transform import SCHEMA, process_record

    cfg = config_from_dict({"data": {"size": size}}).data
    rows = [process_record(rec, cfg) for rec in recs]
    assert all(r["status"] == "ok" for r in rows), [r["reason"] for r in rows]
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def write(table, directory: str, options: dict) -> None:
    import pyarrow.dataset as ds

    ds.write_dataset(table, directory, format="parquet", partitioning=["status"],
                     partitioning_flavor="hive", basename_template="part-{i}.parquet",
                     existing_data_behavior="overwrite_or_ignore", use_threads=True,
                     file_options=ds.ParquetFileFormat().make_write_options(**options))


def read(directory: str, columns: list[str]):
    import pyarrow.parquet as pq

    return pq.read_table(directory, columns=columns)


def disk_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(directory) for f in fs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--data", default=os.path.join(REPO, "benchmarks", "data"))
    p.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results",
                                                  "parquet_codec.json"))
    args = p.parse_args(argv)
    from preprocess import ensure_data, records, subset

    from preprocessing.pipeline import BYTES_COLUMNS

    columns = list(BYTES_COLUMNS)
    patients = -(-args.images // 4)
    full = ensure_data(args.data, max(12, patients), 4000, 3000)  # preprocess.py's data
    recs = records(subset(full, patients))[:args.images]
    table = processed_rows(recs, args.size)
    n = table.num_rows
    want = table.select(columns)
    cpu: dict[str, dict[str, list[float]]] = {v: {"write": [], "read": []} for v in VARIANTS}
    size: dict[str, int] = {}
    work = tempfile.mkdtemp(prefix="parquet-codec-")
    try:
        for _ in range(args.repeats):
            for name in VARIANTS:
                directory = os.path.join(work, str(list(VARIANTS).index(name)))
                shutil.rmtree(directory, ignore_errors=True)
                c0 = time.process_time()
                write(table, directory, write_options(name))
                cpu[name]["write"].append((time.process_time() - c0) / n)
                size[name] = disk_bytes(directory)
                c0 = time.process_time()
                got = read(directory, columns)
                cpu[name]["read"].append((time.process_time() - c0) / n)
                assert got.equals(want), f"{name}: read-back bytes differ from the rows"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    raw = sum(len(v) for c in columns for v in table.column(c).to_pylist()) / n
    result = {"images": n, "size": args.size, "repeats": args.repeats,
              "raw_bytes_per_image": raw,
              "variants": {name: {"options": write_options(name),
                                  "write_cpu_ms": 1000 * statistics.median(c["write"]),
                                  "read_cpu_ms": 1000 * statistics.median(c["read"]),
                                  "bytes_per_image": size[name] / n}
                           for name, c in cpu.items()}}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"\nParquet, {n} rows of {args.size} px (image + mask {raw / 1e6:.2f} MB raw); "
          f"CPU ms per image, medians of {args.repeats}")
    print(f"{'variant':50} {'write':>7} {'read':>7} {'MB/image':>9} {'of raw':>7}")
    for name, v in result["variants"].items():
        print(f"{name:50} {v['write_cpu_ms']:7.1f} {v['read_cpu_ms']:7.1f} "
              f"{v['bytes_per_image'] / 1e6:9.2f} {v['bytes_per_image'] / raw:7.0%}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
