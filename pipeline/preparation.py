"""The Ray Data chain that turns a source into a shard dataset.

    ray.data.from_items(items)            one small dict per video (or per chunk of sequences),
                                          a few per task
      .flat_map(source.rows, config)      decode + window in the task: one row per clip pair
      .write_datasink(ShardDatasink)      per-split zstd Parquet shards, streamed per task

then, on the driver, `errors.jsonl` and finally `manifest.json`. Config and source are validated
before Ray starts; an output that already holds this dataset makes the run a no-op.

A run that prepares no window at all (every input skipped) fails with `NoWindowsError` after
writing errors.jsonl and the manifest (which records the empty dataset, so a loader says the
split is empty and points at errors.jsonl). Such an output is neither a no-op nor protected:
the next run prepares it again, whatever its config (the fingerprint knows where the inputs
are, not what they hold, so fixed files under the same names would otherwise never be read).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path

from pipeline.config import ShardConfig
from pipeline.shards import (ERRORS, MANIFEST, DataError, check_output, clear_output, commit,
                             fingerprint, read_manifest)
from pipeline.storage import Location
from pipeline.summary import build_summary, format_table


class NoWindowsError(DataError):
    """A preparation that gave no usable window: every input skipped or too short."""


def _windows(summary: dict) -> int:
    return summary.get("windows_train", 0) + summary.get("windows_test", 0)


def _holds_no_windows(out: Location) -> bool:
    """A manifest that records no window (a run whose every input was skipped)."""
    try:
        return out.exists(MANIFEST) and not sum(read_manifest(out)["rows"].values())
    except (OSError, ValueError, KeyError):
        return False


def _check_folder(out: Location) -> None:
    """A local output must be a folder or become one: before Ray, not as a task's traceback."""
    if not out.is_local:
        return
    for p in (out.root, *(str(q) for q in Path(out.root).parents)):
        if os.path.exists(p):
            if not os.path.isdir(p):
                where = "is an existing file" if p == out.root else f"is under {p!r}, a file"
                raise NotADirectoryError(f"output {out.uri!r} {where}; the output is a shard "
                                         "folder: name a new or an existing folder")
            return


def _rows(item: dict, source, config: ShardConfig):
    """The flat_map stage: a plain generator, testable without Ray as `source.rows(item, cfg)`."""
    yield from source.rows(item, config)


def prepare(source, output: str, config: ShardConfig | None = None, *, overwrite: bool = False,
            verbose: bool = True, address: str | None = None) -> dict:
    """Prepare `source` into shards at `output` (path or s3://); returns the summary dict.

    The summary has counts (videos read/skipped, windows per split, frames decoded and written,
    bytes), the wall time and frames/s, plus `output` and `noop` (True when the output already
    held this exact dataset and nothing was done). Ray is started or joined
    (`pipeline.cluster.connect(address)`) only when there is work to do. When no input gave a
    window, raises `NoWindowsError` (counts and the errors file named) once errors.jsonl and the
    manifest are written.
    """
    config = config or ShardConfig()
    if hasattr(source, "check"):
        source.check(config)
    described = source.describe()
    fp = fingerprint(config, described)
    out = Location.of(output)
    _check_folder(out)
    # an output whose run prepared nothing holds nothing to protect or to reuse
    existing = check_output(out, fp, config, described, overwrite or _holds_no_windows(out))
    if existing is not None:
        summary = {**existing["summary"], "output": out.uri, "noop": True}
        if verbose:
            print(f"{out.uri} already holds this dataset (same config): nothing to do")
        return summary

    t0 = time.perf_counter()
    items = source.items()  # listing errors surface here, before Ray starts
    listing = time.perf_counter() - t0
    if not items:
        where = described.get("input")
        raise ValueError(f"the {described.get('dataset', '')} source"
                         + (f" at {where}" if where else "")
                         + " has no inputs (no video files or frame folders found there)")
    clear_output(out)

    import ray

    from pipeline.cluster import connect
    from pipeline.sink import ShardDatasink   # before joining: a job driver's copy of the code
                                              # can be swapped while it connects
    connect(address)
    t0 = time.perf_counter() - listing  # the run's time, without Ray's start-up
    if hasattr(source, "digits") and isinstance(source.digits, dict):
        # shipped once, not inside every task; a copy, so the caller's source keeps its arrays
        source = dataclasses.replace(source, digits=ray.put(source.digits))
    sink = ShardDatasink(out, config)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    tasks = max(math.ceil(len(items) / config.inputs_per_task), min(len(items), 2 * cpus))
    (ray.data.from_items(items, override_num_blocks=tasks)
        .flat_map(_rows, fn_kwargs={"source": source, "config": config})
        .write_datasink(sink))
    seconds = time.perf_counter() - t0
    summary = build_summary(sink.result, sink.result["shards"], seconds, len(items))
    commit(out, sink.result, config, described, fp, summary)
    if verbose:
        print(format_table(summary, f"prepared {out.uri}"))
    if not _windows(summary):
        raise NoWindowsError(
            f"no usable window prepared in {out.uri}: {summary['videos_skipped']} of "
            f"{summary['inputs']} input(s) skipped, reasons in {out.uri_of(ERRORS)}"
            + (f"; {summary['videos_read']} read gave no window" if summary["videos_read"] else ""))
    return {**summary, "output": out.uri, "noop": False}
