"""The Ray Data sink that turns row blocks into clip-pair shards (layout: `pipeline.shards`)."""
from __future__ import annotations

import os
import tempfile
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data import Datasink

from pipeline.config import ShardConfig
from pipeline.rows import DECODED, KIND, PATH, REASON
from pipeline.shards import SHARD_SCHEMA, SPLITS, sha256_file
from pipeline.storage import Location, new_temp_file


class ShardDatasink(Datasink):
    """Ray Data sink: window rows -> per-split Parquet shards; bookkeeping rows -> the result.

    `write` runs in the Ray tasks and returns {"shards", "errors", "videos"}; `on_write_complete`
    runs on the driver and keeps the merged result in `self.result` for `prepare` to commit.
    """

    def __init__(self, out: Location, config: ShardConfig):
        self.out, self.config = out, config
        self.result: dict | None = None

    def get_name(self) -> str:
        return "ClipPairShards"

    def write(self, blocks: Iterable, ctx=None) -> dict:  # runs in a Ray task
        writers: dict[str, tuple[str, pq.ParquetWriter]] = {}
        errors, videos = [], []
        try:
            for block in blocks:
                table = block if isinstance(block, pa.Table) else pa.Table.from_pandas(block)
                kinds = table.column(KIND).to_pylist()
                for i, kind in enumerate(kinds):
                    if kind == "error":
                        errors.append({"path": table[PATH][i].as_py(),
                                       "reason": table[REASON][i].as_py()})
                    elif kind == "video":
                        videos.append({"path": table[PATH][i].as_py(),
                                       "frames": table[DECODED][i].as_py()})
                windows = table.filter(pc.equal(table[KIND], "window"))
                if not windows.num_rows:  # only skipped inputs in this block
                    continue
                for split in SPLITS:
                    part = windows.filter(pc.equal(windows["split"], split))
                    if part.num_rows:
                        self._writer(writers, split).write_table(self._conform(part),
                                                                 self.config.row_group_rows)
            shards = [self._commit(split, tmp, writer) for split, (tmp, writer) in writers.items()]
        finally:
            for tmp, writer in writers.values():
                if os.path.exists(tmp):
                    writer.close()
                    os.remove(tmp)
        return {"shards": shards, "errors": errors, "videos": videos}

    def _writer(self, writers: dict, split: str) -> pq.ParquetWriter:
        if split not in writers:
            # the finished file is moved into a local output as it is: the usual mode, not 0600
            fd, tmp = new_temp_file(tempfile.gettempdir(), "lmc-shard-", ".parquet")
            os.close(fd)
            writers[split] = (tmp, pq.ParquetWriter(
                tmp, SHARD_SCHEMA, compression="zstd", compression_level=self.config.zstd_level,
                use_dictionary=["video_id", "split", "action", "scenario"],
                write_statistics=[f.name for f in SHARD_SCHEMA if f.name != "frames"]))
        return writers[split][1]

    @staticmethod
    def _conform(table: pa.Table) -> pa.Table:
        """Cast a block to the shard schema (all-null label columns arrive typed `null`)."""
        cols = []
        for f in SHARD_SCHEMA:
            col = table[f.name] if f.name in table.column_names else pa.nulls(table.num_rows)
            cols.append(col.cast(f.type))
        return pa.Table.from_arrays(cols, schema=SHARD_SCHEMA)

    def _commit(self, split: str, tmp: str, writer: pq.ParquetWriter) -> dict:
        writer.close()
        num_frames = pq.read_table(tmp, columns=["num_frames"])["num_frames"]
        rows, frames = len(num_frames), pc.sum(num_frames).as_py()
        digest, size = sha256_file(tmp), os.path.getsize(tmp)
        rel = f"{split}/part-{digest[:24]}.parquet"
        self.out.put_file(tmp, rel)
        return {"path": rel, "split": split, "rows": rows, "frames": frames, "bytes": size,
                "sha256": digest}

    def on_write_complete(self, write_result) -> None:
        returns = getattr(write_result, "write_returns", write_result)
        self.result = {key: [x for r in returns for x in r[key]]
                       for key in ("shards", "errors", "videos")}
