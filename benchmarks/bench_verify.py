"""What checking shards against their manifest costs a job (`pipeline.verify_dataset`, docs/design.md §5).

    python benchmarks/bench_verify.py                          # 16 shards x 48 windows, 128x128x20
    python benchmarks/bench_verify.py --shards 512 --rows 2    # many small files: per-file cost

Writes a shard folder of the stated size (the pipeline's Parquet schema and manifest, frames of
random pixels so that nothing compresses away; no Ray), then times
  1. the first verify: stat every file, hash every file (sha256), read every Parquet footer,
     write the record: MB/s and ms per shard,
  2. the second verify: stat every file, everything else from the record: ms per shard,
  3. a verify after one file was rewritten (the same bytes): that file alone is hashed again.
The files were just written, so they are in the page cache: (1) measures sha256 and the footer
reads, not the disk; a cold first verify is bounded by the storage's read rate instead.
"""
import argparse
import hashlib
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def make_shards(out: str, shards: int, rows: int, img_size: int, frames: int) -> int:
    """A dataset of ``shards`` train files of ``rows`` windows each; returns its bytes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.config import ShardConfig
    from pipeline.shards import SHARD_SCHEMA, commit, fingerprint
    from pipeline.storage import Location

    cfg = ShardConfig(short_len=10, out_len=frames - 10, img_size=img_size)
    rng = np.random.default_rng(0)
    loc = Location.of(out)
    entries = []
    for k in range(shards):
        n = rows
        table = pa.table({
            "video_id": [f"v{k}"] * n, "split": ["train"] * n, "start": list(range(n)),
            "frames": [rng.integers(0, 256, frames * img_size * img_size, np.uint8).tobytes()
                       for _ in range(n)],
            "num_frames": [frames] * n, "height": [img_size] * n, "width": [img_size] * n,
            "channels": [1] * n, "short_len": [10] * n, "out_len": [frames - 10] * n,
            "long_len": [None] * n, "action": [None] * n, "person": [None] * n,
            "scenario": [None] * n}, schema=SHARD_SCHEMA)
        tmp = os.path.join(out, f".tmp-{k}.parquet")
        os.makedirs(out, exist_ok=True)
        pq.write_table(table, tmp, compression="none", row_group_size=32,
                       write_statistics=[f.name for f in SHARD_SCHEMA if f.name != "frames"])
        with open(tmp, "rb") as f:
            h = hashlib.sha256(f.read()).hexdigest()
        rel = f"train/part-{h[:24]}.parquet"
        size = os.path.getsize(tmp)
        loc.put_file(tmp, rel)
        entries.append({"path": rel, "split": "train", "rows": n, "frames": n * frames,
                        "bytes": size, "sha256": h})
    source = {"dataset": "bench"}
    commit(loc, {"errors": [], "shards": entries}, cfg, source, fingerprint(cfg, source), {})
    return sum(e["bytes"] for e in entries)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--rows", type=int, default=48, help="windows per shard file")
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--frames", type=int, default=20, help="frames per window")
    p.add_argument("--dir", help="where to write the dataset (default: a temp folder)")
    a = p.parse_args()

    from pipeline import verify_dataset

    work = tempfile.mkdtemp(prefix="bench-verify-", dir=a.dir)
    out = os.path.join(work, "shards")
    try:
        total = make_shards(out, a.shards, a.rows, a.img_size, a.frames)
        print(f"dataset: {a.shards} shard files x {a.rows} windows of {a.frames}x{a.img_size}x"
              f"{a.img_size} uint8 = {total / 1e6:.1f} MB ({total / a.shards / 1e6:.2f} MB/file)")
        first = verify_dataset(out, ("train",), log=None)
        second = verify_dataset(out, ("train",), log=None)
        rel = sorted(os.listdir(os.path.join(out, "train")))[0]
        path = os.path.join(out, "train", rel)
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data)
        third = verify_dataset(out, ("train",), log=None)
        assert (first.hashed, second.hashed, third.hashed) == (a.shards, 0, 1)
        print(f"first verify (hash all):   {first.seconds:8.3f} s  "
              f"{first.bytes_hashed / 1e6 / first.seconds:8.1f} MB/s  "
              f"{first.seconds / a.shards * 1e3:8.3f} ms/shard   [{first}]")
        print(f"second (from the record):  {second.seconds:8.3f} s  {'':13}"
              f"{second.seconds / a.shards * 1e3:8.3f} ms/shard   [{second}]")
        print(f"one file rewritten:        {third.seconds:8.3f} s  (1 file hashed again)")
        print(f"record: {first.record} ({os.path.getsize(first.record) / 1e3:.1f} kB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
